//! Crash points for the crash-consistency tests.
//!
//! With `CKPTIO_CRASH_AT=NAME` (or `NAME#N` for the N-th time, from 1) in the
//! environment, the process kills itself with SIGKILL when a save reaches that point,
//! exactly as a preemption would. Unset (the normal case), a point costs one load of
//! a cached value.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The points a save passes, in order (`data` and `file` repeat per tensor / file).
pub const POINTS: &[&str] = &[
    "staged",
    "file",
    "data",
    "data_written",
    "files_synced",
    "manifest_written",
    "before_commit",
    "moved_aside",
    "committed",
    "old_removed",
];

fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("CKPTIO_CRASH_AT").ok()?;
            match spec.split_once('#') {
                Some((name, n)) => Some((name.to_owned(), n.parse().ok()?)),
                None => Some((spec, 1)),
            }
        })
        .as_ref()
}

/// Marks that a save reached `name`; dies here if the environment says so.
pub fn point(name: &str) {
    let Some((want, nth)) = target() else {
        return;
    };
    if want != name {
        return;
    }
    static SEEN: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let count = seen
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert(0);
    *count += 1;
    if *count == *nth {
        // SAFETY: signalling our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
