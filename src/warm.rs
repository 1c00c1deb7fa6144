//! Warming the page cache for a mapped load (`load_state`), so that the caller's
//! touches find the bytes there instead of each page fault waiting for the disk.
//!
//! Why positional reads: `madvise(MADV_WILLNEED)` (and `readahead(2)`, `fadvise`)
//! reads at most `max(read_ahead_kb, max_sectors_kb)` per call, 8 MiB here, and drops
//! the rest of the range; calls in such pieces do read everything, but 2x slower than
//! `read()` here, and the later touch of what they cached is 10x slower (small folios,
//! where a large one is mapped by one fault). Large `preadv`s go through the kernel's
//! normal read-ahead, which allocates large folios: 2 threads, each reading half of the
//! bytes front to back in 32 MiB calls, read as fast as the raw `pread` row of the
//! benchmark (docs/ENGINE.md, "Cold loads").
//!
//! The bytes land in one 1 MiB buffer per thread, named repeatedly in the iovec
//! array: the copy stays in the CPU cache, and the warm-up raises RSS by 2 MiB at
//! most (page cache is not RSS: the mapping's RSS still grows only by the pages the
//! caller touches). A file that ends early (truncated meanwhile) returns a short read,
//! and nothing past it is read; nothing here touches a mapping, so nothing can fault.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::reader::Checkpoint;

/// Reader threads: 2 beat 1 and 4 and matched 3 on the 2-core test VM (docs/ENGINE.md).
pub const THREADS: usize = 2;
/// Bytes per read call: one call puts this much in flight at once (the kernel splits it
/// into device requests). 32 MiB beat 8 and 16 MiB and matched 64 and 128 MiB.
pub const PIECE: u64 = 32 << 20;
/// Per-thread buffer, repeated in the iovec array up to `PIECE` bytes.
const BUFFER: usize = 1 << 20;
/// Granularity of the residency check: a region whose sampled pages are all cached is
/// skipped, so a hot load costs a few `mincore` calls per 8 MiB.
const REGION: u64 = 8 << 20;
/// Pages sampled per region (evenly spread, first and last included).
const SAMPLES: u64 = 5;
const PAGE: u64 = 4096;

/// One file to warm: its descriptor and the byte ranges wanted, in order.
pub struct Job {
    pub file: File,
    pub ranges: Vec<(u64, u64)>,
}

/// Reads `[begin, end)` of `file` into the page cache, the bytes landing in `buf`.
/// Returns the bytes read, and false if the file ended first or a read failed: stop
/// reading it.
fn read_piece(file: &File, begin: u64, end: u64, buf: &mut [u8]) -> (u64, bool) {
    let mut at = begin;
    while at < end {
        let want = (end - at) as usize;
        let count = want.div_ceil(buf.len());
        let base = buf.as_mut_ptr().cast::<libc::c_void>();
        let iov: Vec<libc::iovec> = (0..count)
            .map(|k| libc::iovec {
                iov_base: base,
                iov_len: buf.len().min(want - k * buf.len()),
            })
            .collect();
        // SAFETY: every iovec names `buf`, which outlives the call; the kernel writes
        // the segments one after another into it, and nobody reads it.
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov.as_ptr(),
                count as libc::c_int,
                at as libc::off_t,
            )
        };
        if n <= 0 {
            return (at - begin, false);
        }
        at += n as u64;
    }
    (at - begin, true)
}

/// Reads every range of `jobs` into the page cache with `threads` threads, in pieces
/// of at most [`PIECE`] bytes; each thread reads a contiguous span of about equal bytes
/// (sequential streams read faster than interleaved pieces), then helps with the
/// others. Stops early once `keep_going` says so. Returns the bytes read.
pub fn warm(jobs: &[Job], threads: usize, keep_going: &(dyn Fn() -> bool + Sync)) -> u64 {
    let (pieces, spans) = plan(jobs, threads.max(1), PIECE);
    let cursors: Vec<AtomicUsize> = spans.iter().map(|s| AtomicUsize::new(s.start)).collect();
    // Per file: where a read came back short (its end, or an error): nothing after
    // that offset is read. Pieces before it, by other threads, still are.
    let ends: Vec<AtomicU64> = jobs.iter().map(|_| AtomicU64::new(u64::MAX)).collect();
    let read = AtomicU64::new(0);
    let worker = |t: usize| {
        // A background thread must not abort the process on an allocation failure
        // (an address-space limit): no buffer, no warm-up from this thread.
        let mut buf = Vec::new();
        if buf.try_reserve_exact(BUFFER).is_err() {
            return;
        }
        buf.resize(BUFFER, 0u8);
        for s in (t..spans.len()).chain(0..t) {
            loop {
                let i = cursors[s].fetch_add(1, Ordering::Relaxed);
                if i >= spans[s].end || !keep_going() {
                    break;
                }
                let (j, begin, stop) = pieces[i];
                if begin >= ends[j].load(Ordering::Relaxed) {
                    continue;
                }
                let (n, more) = read_piece(&jobs[j].file, begin, stop, &mut buf);
                read.fetch_add(n, Ordering::Relaxed);
                if !more {
                    ends[j].fetch_min(begin + n, Ordering::Relaxed);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for t in 1..spans.len() {
            // No thread (resource limits): the others do its span.
            let _ = std::thread::Builder::new().spawn_scoped(scope, move || worker(t));
        }
        worker(0);
    });
    read.into_inner()
}

/// A read of one job's file: `(job index, begin, end)`.
type Piece = (usize, u64, u64);

/// Cuts the ranges of `jobs` into `(job, begin, end)` pieces of at most `piece` bytes,
/// in order, and groups them into at most `threads` spans of about equal bytes (what
/// each thread reads from front to back: the raw read row's split).
fn plan(jobs: &[Job], threads: usize, piece: u64) -> (Vec<Piece>, Vec<Range<usize>>) {
    let total: u64 = jobs
        .iter()
        .flat_map(|j| &j.ranges)
        .map(|&(b, e)| e.saturating_sub(b))
        .sum();
    let span_len = total.div_ceil(threads as u64).max(1);
    let mut pieces = Vec::new();
    let mut spans = Vec::new();
    let mut done = 0; // bytes planned so far
    let mut span_start = 0;
    for (j, job) in jobs.iter().enumerate() {
        for &(begin, end) in &job.ranges {
            let mut at = begin;
            while at < end {
                let span_left = span_len - done % span_len;
                let next = end.min(at.saturating_add(piece.min(span_left)));
                pieces.push((j, at, next));
                done += next - at;
                at = next;
                if done % span_len == 0 {
                    spans.push(span_start..pieces.len());
                    span_start = pieces.len();
                }
            }
        }
    }
    if span_start < pieces.len() {
        spans.push(span_start..pieces.len());
    }
    (pieces, spans)
}

/// Is the page at `offset` of `map` in the page cache? (`mincore`; an error counts as
/// cached, so nothing is read on a doubt.)
fn page_cached(map: &[u8], offset: u64) -> bool {
    let at = (offset / PAGE * PAGE) as usize;
    if at >= map.len() {
        return true;
    }
    let mut vec = 0u8;
    // SAFETY: a page-aligned address inside a live mapping, one page, a 1-byte vector.
    let r = unsafe { libc::mincore(map.as_ptr().add(at).cast_mut().cast(), 1, &mut vec) };
    r != 0 || vec & 1 == 1
}

/// The parts of `map` (a mapping of a whole file) that look cold: regions of
/// [`REGION`] bytes with a sampled page missing from the page cache, adjacent ones
/// merged. A region only partly cached counts as cached when every sample is: its
/// missing pages are then read by the faults of the touch, as without a warm-up.
pub fn cold_ranges(map: &[u8]) -> Vec<(u64, u64)> {
    let len = map.len() as u64;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < len {
        let end = (at + REGION).min(len);
        let step = ((end - at) / (SAMPLES - 1)).max(1);
        if (0..SAMPLES).any(|k| !page_cached(map, (at + k * step).min(end - 1))) {
            match out.last_mut() {
                Some(last) if last.1 == at => last.1 = end,
                _ => out.push((at, end)),
            }
        }
        at = end;
    }
    out
}

/// Bytes a warm-up may bring in: half of `MemAvailable`, so that warming a checkpoint
/// larger than memory does not evict its own first pages before they are touched.
fn budget() -> u64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return u64::MAX;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib << 9)
}

/// What to read of the tensor files `files` (indices into `ckpt.files`): the regions
/// not already cached, within [`budget`], each file reopened by name. A file that is
/// gone or was replaced since the open is skipped (its mapping still reads).
pub fn jobs_for(ckpt: &Checkpoint, files: &[usize]) -> Vec<Job> {
    let mut left = budget();
    let mut jobs = Vec::new();
    for &fi in files {
        let Some(f) = ckpt.files.get(fi) else {
            continue;
        };
        let mut ranges = cold_ranges(f.pristine());
        ranges.retain_mut(|r| {
            r.1 = r.1.min(r.0.saturating_add(left));
            left -= r.1 - r.0;
            r.0 < r.1
        });
        if ranges.is_empty() {
            continue;
        }
        if let Ok(Some(file)) = ckpt.reopen(&f.name, f.id()) {
            jobs.push(Job { file, ranges });
        }
    }
    jobs
}

/// The tensor files (indices into `ckpt.files`) holding a tensor of a group not in
/// `skip_groups`: what a load of those groups reads.
pub fn files_except(ckpt: &Checkpoint, skip_groups: &[String]) -> Vec<usize> {
    let mut wanted = vec![false; ckpt.files.len()];
    for t in &ckpt.tensors {
        if !skip_groups.contains(&t.group) {
            wanted[t.file] = true;
        }
    }
    (0..wanted.len()).filter(|&i| wanted[i]).collect()
}

/// Warms `files` of `ckpt` on a thread of its own and returns at once: the caller
/// builds its arrays and starts touching them while the reads run (a touch that gets
/// ahead of them faults its page in, as without a warm-up). The warm-up ends early
/// once the caller has dropped the checkpoint and every array of it.
pub fn start(ckpt: Arc<Checkpoint>, files: Vec<usize>) {
    let spawned = std::thread::Builder::new()
        .name("ckptio-warm".into())
        .spawn(move || {
            let jobs = jobs_for(&ckpt, &files);
            warm(&jobs, THREADS, &|| Arc::strong_count(&ckpt) > 1);
        });
    // No thread (resource limits): the load works without a warm-up.
    drop(spawned);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    /// A file of `len` bytes, fsynced and dropped from the page cache; None where the
    /// filesystem keeps it cached anyway (tmpfs), so coldness cannot be tested there.
    fn cold_file(dir: &std::path::Path, len: u64) -> (File, Option<memmap2::Mmap>) {
        let path = dir.join("f.bin");
        let mut f = File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
        for _ in 0..len / MIB {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(&chunk[..(len % MIB) as usize]).unwrap();
        f.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: advice only.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        // SAFETY: read-only mapping of a file nobody changes; only passed to mincore.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let cold = !page_cached(&map, 0) && !page_cached(&map, len - 1);
        (file, cold.then_some(map))
    }

    fn cached(map: &[u8], begin: u64, end: u64) -> bool {
        (begin..end)
            .step_by(PAGE as usize)
            .all(|o| page_cached(map, o))
    }

    #[test]
    fn warms_the_given_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (file, map) = cold_file(dir.path(), 40 * MIB + 123);
        if let Some(map) = &map {
            assert_eq!(cold_ranges(map), vec![(0, 40 * MIB + 123)]);
        }
        let ranges = vec![(0, 3 * MIB + 5), (20 * MIB, 40 * MIB + 123)];
        let job = Job { file, ranges };
        let read = warm(std::slice::from_ref(&job), 2, &|| true);
        assert_eq!(read, 3 * MIB + 5 + 20 * MIB + 123);
        if let Some(map) = &map {
            assert!(cached(map, 0, 3 * MIB + 5));
            assert!(cached(map, 20 * MIB, 40 * MIB + 123));
            // Regions read whole are skipped next time (the others may or may not be,
            // as the kernel reads ahead).
            let cold = cold_ranges(map);
            assert!(cold.iter().all(|&(_, e)| e <= 24 * MIB), "{cold:?}");
        }
    }

    #[test]
    fn a_short_file_ends_its_reads_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = cold_file(dir.path(), 2 * MIB + 7);
        // Ranges past the end, as after a truncation: only the bytes there are read.
        let ranges = vec![(MIB, 30 * MIB), (40 * MIB, 50 * MIB)];
        let job = Job { file, ranges };
        assert_eq!(warm(std::slice::from_ref(&job), 3, &|| true), MIB + 7);
        let empty = Job {
            file: job.file.try_clone().unwrap(),
            ranges: vec![(64 * MIB, 65 * MIB)],
        };
        assert_eq!(warm(&[empty], 1, &|| true), 0);
    }

    #[test]
    fn a_file_truncated_after_planning_stops_the_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = cold_file(dir.path(), 24 * MIB);
        let job = Job {
            file,
            ranges: vec![(0, 24 * MIB)],
        };
        File::options()
            .write(true)
            .open(dir.path().join("f.bin"))
            .unwrap()
            .set_len(3 * MIB)
            .unwrap();
        assert_eq!(warm(std::slice::from_ref(&job), 2, &|| true), 3 * MIB);
    }

    #[test]
    fn spans_split_the_bytes_evenly_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let file = || File::create(dir.path().join("x")).unwrap();
        let jobs = [
            Job {
                file: file(),
                ranges: vec![(0, 21 * MIB)],
            },
            Job {
                file: file(),
                ranges: vec![(0, 10 * MIB), (12 * MIB, 55 * MIB)],
            },
        ];
        let (pieces, spans) = plan(&jobs, 2, 32 * MIB);
        // 74 MiB: 37 MiB per thread, cut at the span border and at 32 MiB.
        let expected = [
            (0, 0, 21 * MIB),
            (1, 0, 10 * MIB),
            (1, 12 * MIB, 18 * MIB),
            (1, 18 * MIB, 50 * MIB),
            (1, 50 * MIB, 55 * MIB),
        ];
        assert_eq!(pieces, expected);
        assert_eq!(spans, vec![0..3, 3..5]);
        let (pieces, spans) = plan(&jobs, 8, 32 * MIB);
        assert_eq!(spans.len(), 8);
        assert!(spans.iter().all(|s| !s.is_empty()));
        let bytes: u64 = pieces.iter().map(|&(_, b, e)| e - b).sum();
        assert_eq!(bytes, 74 * MIB);
        assert_eq!(plan(&[], 2, 32 * MIB), (vec![], vec![]));
    }

    #[test]
    fn stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = cold_file(dir.path(), 4 * MIB);
        let job = Job {
            file,
            ranges: vec![(0, 4 * MIB)],
        };
        assert_eq!(warm(std::slice::from_ref(&job), 2, &|| false), 0);
        assert_eq!(warm(&[], 2, &|| true), 0);
    }

    #[test]
    fn picks_the_files_of_the_groups_loaded() {
        use crate::writer::{save, GroupSource, SaveOptions, TensorSource};
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 64];
        let group = |name| GroupSource {
            name,
            tensors: vec![TensorSource {
                name: "t",
                dtype: crate::Dtype::U8,
                shape: &[64],
                data: &data,
            }],
            header_metadata: vec![],
        };
        let target = dir.path().join("ck");
        let user = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        let opts = SaveOptions {
            durable: false,
            ..Default::default()
        };
        let groups = [group("model"), group("optimizer")];
        save(&target, crate::Kind::State, &groups, user, &opts).unwrap();
        let ckpt = Arc::new(crate::open(&target).unwrap());
        let model = ckpt
            .files
            .iter()
            .position(|f| f.name == "model.safetensors");
        assert_eq!(
            files_except(&ckpt, &["optimizer".into()]),
            vec![model.unwrap()]
        );
        assert_eq!(files_except(&ckpt, &[]), vec![0, 1]);
        // Files just written are cached: nothing to read.
        assert!(jobs_for(&ckpt, &[0, 1]).is_empty());
        start(ckpt.clone(), vec![0, 1]);
    }
}
