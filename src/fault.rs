//! Crash points for the crash-consistency tests.
//!
//! They exist only in builds with the `fault-injection` cargo feature (the test build
//! of `tests/_faults.py`); in what users install, [`point`] is an empty function, so no
//! environment variable can make a user's save kill itself.
//!
//! With the feature, `CKPTIO_CRASH_AT=NAME` (or `NAME#N` for the N-th time, from 1) in
//! the environment makes the process kill itself with SIGKILL when a save reaches that
//! point, exactly as a preemption would. `CKPTIO_STOP_AT` (same syntax) stops it with
//! SIGSTOP instead, so a test can act while a save is paused there and then let it go
//! on with SIGCONT.

/// The points a save passes, in order (`data` and `file` repeat per tensor / file).
pub const POINTS: &[&str] = &[
    "staged",
    "file",
    "data",
    "part",
    "data_written",
    "files_synced",
    "manifest_written",
    "before_commit",
    "moved_aside",
    "committed",
    "old_removed",
];

/// Marks that a save reached `name`; without the feature, does nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Marks that a save reached `name`; dies or stops here if the environment says so.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    injected::point(name)
}

#[cfg(feature = "fault-injection")]
mod injected {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    struct Trigger {
        point: String,
        nth: u64,
        signal: libc::c_int,
    }

    fn triggers() -> &'static [Trigger] {
        static TRIGGERS: OnceLock<Vec<Trigger>> = OnceLock::new();
        TRIGGERS.get_or_init(|| {
            [
                ("CKPTIO_CRASH_AT", libc::SIGKILL),
                ("CKPTIO_STOP_AT", libc::SIGSTOP),
            ]
            .into_iter()
            .filter_map(|(var, signal)| {
                let spec = std::env::var(var).ok()?;
                let (point, nth) = match spec.split_once('#') {
                    Some((name, n)) => (name.to_owned(), n.parse().ok()?),
                    None => (spec, 1),
                };
                Some(Trigger { point, nth, signal })
            })
            .collect()
        })
    }

    pub fn point(name: &str) {
        let triggers = triggers();
        if !triggers.iter().any(|t| t.point == name) {
            return;
        }
        static SEEN: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
        let count = {
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            let count = seen
                .get_or_insert_with(HashMap::new)
                .entry(name.to_owned())
                .or_insert(0);
            *count += 1;
            *count
        };
        for t in triggers {
            if t.point == name && t.nth == count {
                // SAFETY: signalling our own process.
                unsafe {
                    libc::kill(libc::getpid(), t.signal);
                }
            }
        }
    }
}
