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
//! on with SIGCONT. `CKPTIO_FAIL_AT=NAME#N` makes the N-th call of [`fail`] for `NAME`
//! return an I/O error (`EIO`) instead, as a failing disk would (`fsync`).

/// The points a save passes, in order (`data` and `file` repeat per tensor / file).
/// A durable local save writes every file, the manifest last, then fsyncs them all
/// together with the staging directory (`files_synced`).
pub const POINTS: &[&str] = &[
    "staged",
    "file",
    "data",
    "part",
    "data_written",
    "manifest_written",
    "files_synced",
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

/// An operation `name` (`"fsync"`) is about to run; without the feature, it may.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fail(_name: &str) -> std::io::Result<()> {
    Ok(())
}

/// An operation `name` is about to run: `Err(EIO)` if `CKPTIO_FAIL_AT` says this call
/// fails.
#[cfg(feature = "fault-injection")]
pub fn fail(name: &str) -> std::io::Result<()> {
    injected::fail(name)
}

#[cfg(feature = "fault-injection")]
mod injected {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    struct Trigger {
        point: String,
        nth: u64,
        /// 0: fail the call (`CKPTIO_FAIL_AT`) instead of signalling.
        signal: libc::c_int,
    }

    fn triggers() -> &'static [Trigger] {
        static TRIGGERS: OnceLock<Vec<Trigger>> = OnceLock::new();
        TRIGGERS.get_or_init(|| {
            [
                ("CKPTIO_CRASH_AT", libc::SIGKILL),
                ("CKPTIO_STOP_AT", libc::SIGSTOP),
                ("CKPTIO_FAIL_AT", 0),
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

    /// How many times `name` was reached in this process, this time included; `None`
    /// if no trigger names it.
    fn reached(name: &str) -> Option<u64> {
        if !triggers().iter().any(|t| t.point == name) {
            return None;
        }
        static SEEN: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let count = seen
            .get_or_insert_with(HashMap::new)
            .entry(name.to_owned())
            .or_insert(0);
        *count += 1;
        Some(*count)
    }

    pub fn point(name: &str) {
        let Some(count) = reached(name) else { return };
        for t in triggers() {
            if t.point == name && t.nth == count && t.signal != 0 {
                // SAFETY: signalling our own process.
                unsafe {
                    libc::kill(libc::getpid(), t.signal);
                }
            }
        }
    }

    pub fn fail(name: &str) -> std::io::Result<()> {
        let Some(count) = reached(name) else {
            return Ok(());
        };
        let hit = (triggers().iter()).any(|t| t.point == name && t.nth == count && t.signal == 0);
        if hit {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}
