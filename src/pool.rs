//! Rayon thread pools, built once per (purpose, size) and process, and reused.
//!
//! Snapshot copies get a pool of their own: an async save's snapshot must not queue
//! behind the file writes of the previous save, which run on the IO pool.
//!
//! Fork safety: a child made by `fork` has only the forking thread, so a pool built
//! before the fork has no workers there and anything handed to it waits forever. The
//! cache therefore belongs to one process id: a child finds the parent's cache under
//! another pid and starts a new one. The parent's cache is leaked in the child, never
//! touched: its mutex may have been held by another thread at the moment of the fork
//! (it would never be released), and dropping its pools would wait on threads that do
//! not exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

use crate::error::{Error, Result};

/// The pools of one process.
struct Cache {
    pid: u32,
    pools: Mutex<HashMap<(Purpose, usize), Arc<ThreadPool>>>,
}

/// What a pool's threads do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// File writes and reads, hashing.
    Io,
    /// Memory-to-memory copies (async-save snapshots).
    Copy,
}

/// The cache of the calling process; replaced (and the old one leaked) after a fork.
fn cache() -> &'static Cache {
    static CURRENT: AtomicPtr<Cache> = AtomicPtr::new(std::ptr::null_mut());
    let pid = std::process::id();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in CURRENT comes from Box::leak below and is never
    // freed, so it is valid for 'static.
    if let Some(c) = unsafe { seen.as_ref() } {
        if c.pid == pid {
            return c;
        }
    }
    let fresh: *mut Cache = Box::leak(Box::new(Cache {
        pid,
        pools: Mutex::default(),
    }));
    match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: as above; `fresh` is now shared and never freed.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // Another thread of this process installed its cache first: use that one
            // (it was made in this process, since only the forking thread survives a
            // fork) and free ours, which nobody else has seen.
            // SAFETY: `fresh` came from Box::leak and was never published.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: a published pointer, never freed.
            unsafe { &*winner }
        }
    }
}

/// The pool for `purpose` with `threads` workers (0: one per core).
pub fn get_for(purpose: Purpose, threads: usize) -> Result<Arc<ThreadPool>> {
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    let mut pools = cache().pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&(purpose, threads)) {
        return Ok(p.clone());
    }
    let name = match purpose {
        Purpose::Io => "ckptio-io",
        Purpose::Copy => "ckptio-copy",
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert((purpose, threads), pool.clone());
    Ok(pool)
}

/// The IO pool with `threads` workers (0: one per core).
pub fn get(threads: usize) -> Result<Arc<ThreadPool>> {
    get_for(Purpose::Io, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_cached_per_purpose_and_size() {
        let a = get(2).unwrap();
        assert!(Arc::ptr_eq(&a, &get(2).unwrap()));
        assert!(!Arc::ptr_eq(&a, &get_for(Purpose::Copy, 2).unwrap()));
        assert_eq!(a.install(rayon::current_num_threads), 2);
    }
}
