//! Which write job a writer thread takes next: one in a file no other writer is in,
//! when there is such a file.
//!
//! Filesystems serialize buffered writes to one file: ext4 and XFS hold the inode's
//! lock across the copy into the page cache, and a thread that finds it taken spins on
//! it (`rwsem_spin_on_owner`) instead of hashing its next piece. Spreading the writers
//! over the files (a state has a weights file and an optimizer file) removes that wait;
//! a checkpoint of one file still has every writer in it, as before.

use std::sync::Mutex;

/// The jobs of one window of files, handed out one at a time.
pub(crate) struct JobQueue {
    state: Mutex<State>,
}

struct State {
    /// Per file, the jobs not started yet, the next one last.
    pending: Vec<Vec<usize>>,
    /// Per file, the bytes of its jobs not started yet.
    remaining: Vec<u64>,
    /// Per file, the writers in it now.
    writers: Vec<usize>,
    /// A writer failed: hand out nothing more.
    stopped: bool,
}

impl JobQueue {
    /// `jobs`: (file, bytes) of each job, in the order each file's jobs should run.
    pub(crate) fn new(files: usize, jobs: impl IntoIterator<Item = (usize, u64)>) -> JobQueue {
        let mut pending = vec![Vec::new(); files];
        let mut remaining = vec![0u64; files];
        for (index, (file, bytes)) in jobs.into_iter().enumerate() {
            pending[file].push(index);
            remaining[file] += bytes;
        }
        for jobs in &mut pending {
            jobs.reverse();
        }
        JobQueue {
            state: Mutex::new(State {
                pending,
                remaining,
                writers: vec![0; files],
                stopped: false,
            }),
        }
    }

    /// The next job (its index) for a writer that has just finished a job in file
    /// `left`, or None: nothing left, or the save failed. Takes the file with the
    /// fewest writers, then the one with the most bytes left (it would finish last).
    pub(crate) fn next(
        &self,
        left: Option<usize>,
        job_bytes: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = left {
            s.writers[file] -= 1;
        }
        if s.stopped {
            return None;
        }
        let file = (0..s.pending.len())
            .filter(|&f| !s.pending[f].is_empty())
            .min_by_key(|&f| (s.writers[f], std::cmp::Reverse(s.remaining[f])))?;
        let job = s.pending[file].pop()?;
        s.remaining[file] -= job_bytes(job);
        s.writers[file] += 1;
        Some(job)
    }

    /// Hands out no more jobs (a write failed; the save is abandoned).
    pub(crate) fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(jobs: &[(usize, u64)], files: usize) -> (JobQueue, impl Fn(usize) -> u64 + '_) {
        (JobQueue::new(files, jobs.iter().copied()), move |j| {
            jobs[j].1
        })
    }

    #[test]
    fn writers_spread_over_files_and_keep_each_files_order() {
        // File 1 has the most bytes: the first writer takes it, the second file 0.
        let jobs = [(0, 8), (0, 8), (1, 8), (1, 8), (1, 8), (1, 4)];
        let (q, bytes) = queue(&jobs, 2);
        assert_eq!(q.next(None, &bytes), Some(2));
        assert_eq!(q.next(None, &bytes), Some(0));
        assert_eq!(q.next(Some(1), &bytes), Some(3));
        assert_eq!(q.next(Some(0), &bytes), Some(1));
        // File 0 is done: its writer joins file 1, which the other writer is in.
        assert_eq!(q.next(Some(0), &bytes), Some(4));
        assert_eq!(q.next(Some(1), &bytes), Some(5));
        assert_eq!(q.next(Some(1), &bytes), None);
        assert_eq!(q.next(Some(1), &bytes), None);
    }

    #[test]
    fn one_file_still_has_every_writer() {
        let jobs = [(0, 8), (0, 8), (0, 8)];
        let (q, bytes) = queue(&jobs, 1);
        assert_eq!(q.next(None, &bytes), Some(0));
        assert_eq!(q.next(None, &bytes), Some(1));
        assert_eq!(q.next(Some(0), &bytes), Some(2));
        assert_eq!(q.next(Some(0), &bytes), None);
    }

    #[test]
    fn stop_hands_out_nothing_more() {
        let jobs = [(0, 8), (1, 8), (1, 8)];
        let (q, bytes) = queue(&jobs, 2);
        assert!(q.next(None, &bytes).is_some());
        q.stop();
        assert_eq!(q.next(None, &bytes), None);
        assert_eq!(q.next(Some(1), &bytes), None);
    }

    #[test]
    fn every_job_is_handed_out_once() {
        let jobs: Vec<(usize, u64)> = (0..50).map(|i| (i % 7, 1 + (i as u64 * 13) % 5)).collect();
        let (q, bytes) = queue(&jobs, 7);
        let mut seen = vec![false; jobs.len()];
        let mut held = [None, None, None];
        let mut turn = 0;
        loop {
            let w = turn % held.len();
            turn += 1;
            let left = held[w].take().map(|j: usize| jobs[j].0);
            match q.next(left, &bytes) {
                Some(j) => {
                    assert!(!seen[j]);
                    seen[j] = true;
                    held[w] = Some(j);
                }
                None if held.iter().all(Option::is_none) => break,
                None => {}
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
