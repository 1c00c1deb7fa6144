//! Saving: plan the files and the manifest (`save_plan`, which checks the limits),
//! stream each tensor from the caller's memory into its file (hashing each chunk as it
//! is written, so every byte is read once), then write the manifest and commit.

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::value::RawValue;

use crate::checksum::{self, Hasher};
use crate::commit::{self, Staging};
use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::limits::MAX_OPEN_FILES;
use crate::manifest::{self, Kind, MANIFEST_NAME};
use crate::pool;
use crate::save_plan::{self, Planned, PlannedFile};

/// Bytes hashed and written per step: small enough to stay in L2 between the hash and
/// the copy into the page cache.
const CHUNK: usize = 1 << 20;

/// One tensor to save, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct TensorSource<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

/// A named group of tensors (`"model"`, `"optimizer"`), saved to `GROUP.safetensors`
/// or, when sharded, `GROUP-00001-of-0000N.safetensors` + `GROUP.safetensors.index.json`.
#[derive(Debug, Clone)]
pub struct GroupSource<'a> {
    pub name: &'a str,
    pub tensors: Vec<TensorSource<'a>>,
    /// Extra `__metadata__` entries for this group's safetensors headers.
    pub header_metadata: Vec<(String, String)>,
}

/// A small file saved whole beside the tensor files (`config.json`, tokenizer files),
/// checksummed in the manifest and committed with the rest.
#[derive(Debug, Clone, Copy)]
pub struct SideFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub overwrite: bool,
    /// fsync files and directories so the checkpoint survives power loss.
    pub durable: bool,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Split a group into shards of at most this many data bytes (a larger tensor
    /// gets a shard of its own).
    pub max_shard_bytes: Option<u64>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            overwrite: false,
            durable: true,
            threads: 0,
            max_shard_bytes: None,
        }
    }
}

/// Hashes and writes `data` at `offset`, one chunk at a time.
fn write_tensor(file: &File, path: &Path, offset: u64, data: &[u8]) -> Result<u64> {
    let mut hasher = Hasher::new();
    let mut pos = offset;
    for chunk in data.chunks(CHUNK) {
        hasher.update(chunk);
        file.write_all_at(chunk, pos).ctx("write", path)?;
        pos += chunk.len() as u64;
    }
    Ok(hasher.finish())
}

/// Tensors smaller than this are written in runs, one `pwritev` per run.
const SMALL: usize = 256 << 10;
/// Limits of one run: bytes, and iovecs (well under `IOV_MAX`, 1024 on Linux).
const RUN_BYTES: usize = 4 << 20;
const RUN_TENSORS: usize = 512;

/// A unit of parallel work: one large tensor, or a run of small tensors that are
/// adjacent in one file (thousands of LoRA-sized tensors cost one syscall per run).
struct Job {
    file: usize,
    /// Indices into the file's tensors, in file order.
    tensors: Vec<usize>,
    bytes: usize,
}

fn plan_jobs(files: &[PlannedFile]) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        let mut order: Vec<usize> = (0..f.sources.len()).collect();
        order.sort_by_key(|&ti| f.layout.tensors[ti].begin);
        let mut run = Job {
            file: fi,
            tensors: Vec::new(),
            bytes: 0,
        };
        for ti in order {
            let len = f.sources[ti].data.len();
            let full = run.bytes + len > RUN_BYTES || run.tensors.len() == RUN_TENSORS;
            if !run.tensors.is_empty() && (len >= SMALL || full) {
                jobs.push(std::mem::replace(
                    &mut run,
                    Job {
                        file: fi,
                        tensors: Vec::new(),
                        bytes: 0,
                    },
                ));
            }
            if len >= SMALL {
                jobs.push(Job {
                    file: fi,
                    tensors: vec![ti],
                    bytes: len,
                });
            } else {
                run.tensors.push(ti);
                run.bytes += len;
            }
        }
        if !run.tensors.is_empty() {
            jobs.push(run);
        }
    }
    // Largest first, so the long jobs start early.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.bytes));
    jobs
}

/// Hashes each of a run of adjacent small tensors, then writes them in one `pwritev`.
fn write_batch(file: &File, path: &Path, offset: u64, datas: &[&[u8]]) -> Result<Vec<u64>> {
    let hashes = datas.iter().map(|d| checksum::hash(d)).collect();
    let mut slices: Vec<IoSlice> = datas.iter().map(|d| IoSlice::new(d)).collect();
    write_all_vectored_at(file, &mut slices, offset).ctx("write", path)?;
    Ok(hashes)
}

fn write_all_vectored_at(
    file: &File,
    mut bufs: &mut [IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                bufs.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        match n {
            n if n > 0 => {
                offset += n as u64;
                IoSlice::advance_slices(&mut bufs, n as usize);
            }
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Reserves the file's blocks up front, so a full disk fails before any data is copied.
fn reserve(file: &File, path: &Path, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len).ctx("resize", path),
        e => Err(Error::io(
            "allocate",
            path,
            std::io::Error::from_raw_os_error(e),
        )),
    }
}

/// Creates the files of one window, reserves their blocks and writes their headers.
fn create_files(staging: &Staging, files: &[PlannedFile]) -> Result<Vec<(File, PathBuf)>> {
    let mut handles = Vec::with_capacity(files.len());
    for f in files {
        let (file, path) = staging.create_file(&f.name)?;
        reserve(&file, &path, f.layout.file_len)?;
        file.write_all_at(&f.layout.header, 0).ctx("write", &path)?;
        handles.push((file, path));
        fault::point("file");
    }
    Ok(handles)
}

/// Writes every tensor file; returns each tensor's checksum, per file, in the order of
/// the file's tensors. Files are written [`MAX_OPEN_FILES`] at a time (created, filled
/// in parallel, fsynced, closed), so a save of thousands of shards stays within the
/// process's descriptor limit.
fn write_files(staging: &Staging, files: &[PlannedFile], durable: bool) -> Result<Vec<Vec<u64>>> {
    let mut hashes: Vec<Vec<u64>> = files.iter().map(|f| vec![0; f.sources.len()]).collect();
    let windows: Vec<(usize, &[PlannedFile])> = if files.is_empty() {
        vec![(0, files)]
    } else {
        files
            .chunks(MAX_OPEN_FILES)
            .enumerate()
            .map(|(w, chunk)| (w * MAX_OPEN_FILES, chunk))
            .collect()
    };
    let last = windows.len() - 1;
    for (w, &(first, window)) in windows.iter().enumerate() {
        let handles = create_files(staging, window)?;
        let done: Vec<Vec<((usize, usize), u64)>> = plan_jobs(window)
            .par_iter()
            .map(|job| {
                let (file, path) = &handles[job.file];
                let f = &window[job.file];
                let offset = f.layout.tensors[job.tensors[0]].begin;
                let hashes = if let [ti] = job.tensors[..] {
                    vec![write_tensor(file, path, offset, f.sources[ti].data)?]
                } else {
                    let datas: Vec<&[u8]> =
                        job.tensors.iter().map(|&ti| f.sources[ti].data).collect();
                    write_batch(file, path, offset, &datas)?
                };
                Ok(job
                    .tensors
                    .iter()
                    .zip(hashes)
                    .map(|(&ti, h)| {
                        fault::point("data");
                        ((job.file, ti), h)
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        for ((fi, ti), h) in done.into_iter().flatten() {
            hashes[first + fi][ti] = h;
        }
        if w == last {
            fault::point("data_written");
        }
        if durable {
            handles
                .par_iter()
                .try_for_each(|(file, path)| file.sync_all().ctx("fsync", path))?;
        }
    }
    fault::point("files_synced");
    Ok(hashes)
}

/// Writes a small file in one go (manifest, shard index).
fn write_small_file(staging: &Staging, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
    let (file, path) = staging.create_file(name)?;
    file.write_all_at(bytes, 0).ctx("write", &path)?;
    if durable {
        file.sync_all().ctx("fsync", &path)?;
    }
    Ok(())
}

/// Saves a checkpoint directory at `target`.
///
/// `user` is stored verbatim in the manifest (metadata, step, optimizer skeleton).
/// Everything but the tensor data is planned first and checked against the reader's
/// limits, so a save the reader would refuse fails before it touches the target. On
/// any error nothing is left behind and an existing checkpoint is untouched.
pub fn save(
    target: &Path,
    kind: Kind,
    groups: &[GroupSource],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<()> {
    save_with_files(target, kind, groups, &[], user, opts)
}

/// [`save`], plus side files written whole and committed with the tensors.
pub fn save_with_files(
    target: &Path,
    kind: Kind,
    groups: &[GroupSource],
    side_files: &[SideFile],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<()> {
    let Planned {
        files,
        indexes,
        mut manifest,
        locations,
        manifest_len,
    } = save_plan::plan(kind, groups, side_files, user, opts)?;
    let staging: Staging = commit::stage(target, opts.overwrite)?;
    fault::point("staged");
    let hashes =
        pool::get(opts.threads)?.install(|| write_files(&staging, &files, opts.durable))?;
    for (name, bytes) in &indexes {
        write_small_file(&staging, name, bytes, opts.durable)?;
    }
    for f in side_files {
        write_small_file(&staging, f.name, f.data, opts.durable)?;
    }
    for (rec, &(fi, ti)) in manifest.tensors.iter_mut().zip(&locations) {
        rec.xxh3 = checksum::to_hex(hashes[fi][ti]);
    }
    let bytes = manifest::encode(&manifest);
    debug_assert_eq!(bytes.len(), manifest_len, "checked manifest length changed");
    write_small_file(&staging, MANIFEST_NAME, &bytes, opts.durable)?;
    fault::point("manifest_written");
    staging.commit(opts.durable)
}
