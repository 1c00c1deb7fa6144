//! Parallel byte moves: the snapshot copy of an async save and the positional reads of
//! `load(copy=True)`. Large tensors are split into chunks so both cores share them.

use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use crate::checksum;
use crate::error::{Error, IoContext, Result};
use crate::pool;
use crate::reader::Checkpoint;

/// Work unit: big enough to amortize scheduling, small enough to balance two cores.
const CHUNK: usize = 4 << 20;

/// Copies each `src` into its `dst` (equal lengths), in parallel.
pub fn copy_all(jobs: Vec<(&[u8], &mut [u8])>, threads: usize) -> Result<()> {
    if let Some((s, d)) = jobs.iter().find(|(s, d)| s.len() != d.len()) {
        return Err(Error::InvalidArgument(format!(
            "copy of {} bytes into a {}-byte buffer",
            s.len(),
            d.len()
        )));
    }
    pool::get_for(pool::Purpose::Copy, threads)?.install(|| {
        jobs.into_par_iter().for_each(|(src, dst)| {
            dst.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| d.copy_from_slice(s));
        })
    });
    Ok(())
}

/// Reads tensors (by index into `ckpt.tensors`) into caller buffers with positional
/// reads (no mapping involved), optionally checking each tensor's checksum.
pub fn read_tensors(
    ckpt: &Checkpoint,
    jobs: Vec<(usize, &mut [u8])>,
    verify: bool,
    threads: usize,
) -> Result<()> {
    if verify {
        ckpt.require_checksums()?;
    }
    for (i, dst) in &jobs {
        let t = ckpt
            .tensors
            .get(*i)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor index {i} out of range")))?;
        if t.end - t.begin != dst.len() as u64 {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?} has {} bytes, buffer has {}",
                t.name,
                t.end - t.begin,
                dst.len()
            )));
        }
    }
    pool::get(threads)?.install(|| {
        jobs.into_par_iter().try_for_each(|(i, dst)| {
            let t = &ckpt.tensors[i];
            let f = &ckpt.files[t.file];
            dst.par_chunks_mut(CHUNK)
                .enumerate()
                .try_for_each(|(k, chunk)| {
                    let offset = t.begin + (k * CHUNK) as u64;
                    f.file().read_exact_at(chunk, offset).ctx("read", &f.path)
                })?;
            if verify && checksum::hash(dst) != t.xxh3 {
                return Err(Error::corrupt(
                    &f.path,
                    Some(&t.name),
                    "data checksum mismatch",
                ));
            }
            Ok(())
        })
    })
}
