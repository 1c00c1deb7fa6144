//! Parallel byte moves: the snapshot copy of an async save and the positional reads of
//! `load(copy=True)`. Large tensors are split into chunks so both cores share them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use crate::checksum;
use crate::error::{Error, Result};
use crate::limits::MAX_OPEN_FILES;
use crate::pool;
use crate::reader::{Checkpoint, TensorInfo};

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

/// Checks read jobs `(tensor index, destination)`: every index in range, every
/// destination exactly the tensor's size.
pub(crate) fn check_jobs(tensors: &[TensorInfo], jobs: &[(usize, &mut [u8])]) -> Result<()> {
    for (i, dst) in jobs {
        let t = tensors
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
    Ok(())
}

/// Reads tensors (by index into `ckpt.tensors`) into caller buffers, optionally
/// checking each tensor's checksum. Positional reads of each file reopened by name
/// (a file truncated meanwhile gives an error, where a mapping would fault), at most
/// [`MAX_OPEN_FILES`] files at a time; a file removed since the open (its checkpoint
/// was replaced) is read from its read-only mapping instead.
pub fn read_tensors(
    ckpt: &Checkpoint,
    mut jobs: Vec<(usize, &mut [u8])>,
    verify: bool,
    threads: usize,
) -> Result<()> {
    if verify {
        ckpt.require_checksums()?;
    }
    check_jobs(&ckpt.tensors, &jobs)?;
    jobs.sort_by_key(|(i, _)| ckpt.tensors[*i].file);
    let pool = pool::get(threads)?;
    while !jobs.is_empty() {
        // The next window: the jobs of up to MAX_OPEN_FILES files (jobs are in file order).
        let mut files: Vec<usize> = Vec::new();
        let mut n = 0;
        for (i, _) in &jobs {
            let fi = ckpt.tensors[*i].file;
            if files.last() != Some(&fi) {
                if files.len() == MAX_OPEN_FILES {
                    break;
                }
                files.push(fi);
            }
            n += 1;
        }
        let rest = jobs.split_off(n);
        let window = std::mem::replace(&mut jobs, rest);
        let opened: HashMap<usize, Option<File>> = files
            .iter()
            .map(|&fi| {
                let f = &ckpt.files[fi];
                Ok((fi, ckpt.reopen(&f.name, f.id())?))
            })
            .collect::<Result<_>>()?;
        pool.install(|| {
            window.into_par_iter().try_for_each(|(i, dst)| {
                read_one(ckpt, i, dst, opened[&ckpt.tensors[i].file].as_ref(), verify)
            })
        })?;
    }
    Ok(())
}

/// Reads tensor `i` from `file` (or, if None, from the file's read-only mapping).
fn read_one(
    ckpt: &Checkpoint,
    i: usize,
    dst: &mut [u8],
    file: Option<&File>,
    verify: bool,
) -> Result<()> {
    let t = &ckpt.tensors[i];
    let f = &ckpt.files[t.file];
    match file {
        Some(file) => dst
            .par_chunks_mut(CHUNK)
            .enumerate()
            .try_for_each(|(k, chunk)| {
                let offset = t.begin + (k * CHUNK) as u64;
                file.read_exact_at(chunk, offset)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => {
                            Error::corrupt(&f.path, Some(&t.name), "file shrank while it was read")
                        }
                        _ => Error::io("read", &f.path, e),
                    })
            })?,
        None => dst
            .par_chunks_mut(CHUNK)
            .zip(f.pristine()[t.begin as usize..t.end as usize].par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s)),
    }
    if verify && checksum::hash(dst) != t.xxh3 {
        return Err(Error::corrupt(
            &f.path,
            Some(&t.name),
            "data checksum mismatch",
        ));
    }
    Ok(())
}
