//! Rayon thread pools, built once per (purpose, size) and reused.
//!
//! Snapshot copies get a pool of their own: an async save's snapshot must not queue
//! behind the file writes of the previous save, which run on the IO pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::ThreadPool;

use crate::error::{Error, Result};

type Pools = HashMap<(Purpose, usize), Arc<ThreadPool>>;

/// What a pool's threads do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// File writes and reads, hashing.
    Io,
    /// Memory-to-memory copies (async-save snapshots).
    Copy,
}

/// The pool for `purpose` with `threads` workers (0: one per core).
pub fn get_for(purpose: Purpose, threads: usize) -> Result<Arc<ThreadPool>> {
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
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
