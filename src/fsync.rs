//! fsync, many at once.
//!
//! A durable save makes every file it wrote, and the directory listing them, durable
//! before it renames the directory into place. Issued one after another, each fsync
//! that finds its metadata uncommitted waits for its own journal commit and device
//! cache flush (0.5-5 ms on the ext4 of docs/ENGINE.md, even for a tiny file); fsyncs
//! that overlap share one commit. So they are issued together, on a few threads.
//! `syncfs` would need one call, but it also waits for every other process's dirty
//! data on the filesystem (docs/ENGINE.md "Small saves").

use std::fs::File;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fault;

/// Most fsyncs [`fsync_all`] runs at once.
const SYNC_THREADS: usize = 8;

/// fsyncs every file at once (on up to [`SYNC_THREADS`] threads); returns when every
/// fsync has returned, with the first error.
pub(crate) fn fsync_all(files: &[(&File, &Path)]) -> Result<()> {
    let sync = |(file, path): &(&File, &Path)| -> Result<()> {
        fault::fail("fsync")
            .and_then(|()| file.sync_all())
            .ctx("fsync", path)
    };
    if files.len() <= 1 {
        return files.iter().try_for_each(sync);
    }
    let lanes = files.len().min(SYNC_THREADS);
    std::thread::scope(|scope| {
        let spawned: Vec<_> = (1..lanes)
            .map(|lane| {
                scope.spawn(move || files.iter().skip(lane).step_by(lanes).try_for_each(sync))
            })
            .collect();
        let mine = files.iter().step_by(lanes).try_for_each(sync);
        // Every lane is joined before returning: no fsync outlives the call.
        let theirs: Vec<Result<()>> = spawned
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        theirs.into_iter().fold(mine, Result::and)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_every_file_and_reports_a_failure_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..20).map(|i| dir.path().join(format!("f{i}"))).collect();
        let files: Vec<File> = (paths.iter())
            .map(|p| {
                std::fs::write(p, b"x").unwrap();
                File::open(p).unwrap()
            })
            .collect();
        let all: Vec<(&File, &Path)> = files
            .iter()
            .zip(&paths)
            .map(|(f, p)| (f, p.as_path()))
            .collect();
        fsync_all(&all).unwrap();
        fsync_all(&all[..1]).unwrap();
        fsync_all(&[]).unwrap();
        // fsync of a character device fails (EINVAL), in any lane.
        let null = File::open("/dev/null").unwrap();
        for at in [0, 5, 19] {
            let mut some = all.clone();
            some[at] = (&null, Path::new("/dev/null"));
            let err = fsync_all(&some).unwrap_err().to_string();
            assert!(err.contains("/dev/null"), "{err}");
        }
    }
}
