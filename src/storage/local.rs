//! The local backend: a checkpoint is a directory. Files are created in a locked
//! staging directory (`commit.rs`), their blocks reserved with `fallocate`, tensors
//! hashed and `pwrite(v)`n straight from the caller's memory in parallel, everything
//! fsynced, and the directory renamed into place (`renameat2`).

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Producer, Sink};
use crate::checksum::{self, Hasher};
use crate::commit::{self, Staging};
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::limits::MAX_OPEN_FILES;
use crate::manifest::MANIFEST_NAME;
use crate::pool;
use crate::save_plan::PlannedFile;
use crate::writer::SaveOptions;

/// A save in progress into a staging directory beside `target`.
pub(crate) struct LocalSink {
    staging: Staging,
}

impl LocalSink {
    pub(crate) fn stage(target: &Path, overwrite: bool) -> Result<LocalSink> {
        let staging = commit::stage(target, overwrite)?;
        fault::point("staged");
        Ok(LocalSink { staging })
    }
}

impl Sink for LocalSink {
    fn write_tensor_files(
        &self,
        files: &[PlannedFile],
        opts: &SaveOptions,
    ) -> Result<Vec<Vec<u64>>> {
        pool::get(opts.threads)?.install(|| write_files(&self.staging, files, opts.durable))
    }

    fn write_small_file(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        write_small_file(&self.staging, name, bytes, durable)
    }

    fn write_streamed(
        &self,
        name: &str,
        len: u64,
        opts: &SaveOptions,
        produce: &mut Producer<'_>,
    ) -> Result<()> {
        let (file, path) = self.staging.create_file(name)?;
        reserve(&file, &path, len)?;
        let mut pos = 0u64;
        produce(&mut |bytes: &[u8]| {
            file.write_all_at(bytes, pos).ctx("write", &path)?;
            pos += bytes.len() as u64;
            Ok(())
        })?;
        if pos != len {
            return Err(Error::InvalidArgument(format!(
                "{}: {pos} bytes written, {len} planned",
                path.display()
            )));
        }
        if opts.durable {
            file.sync_all().ctx("fsync", &path)?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>, manifest: &[u8], durable: bool) -> Result<()> {
        write_small_file(&self.staging, MANIFEST_NAME, manifest, durable)?;
        fault::point("manifest_written");
        self.staging.commit(durable)
    }
}

/// Bytes hashed and written per step: small enough to stay in L2 between the hash and
/// the copy into the page cache.
const CHUNK: usize = 1 << 20;

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

/// Where tensor files are created: a save's own staging directory, or one that another
/// process staged and this one writes a part of (`dcp.rs`).
pub(crate) trait CreateFile: Sync {
    /// Creates the new file `name` (never replacing one); returns it and its path.
    fn create_file(&self, name: &str) -> Result<(File, PathBuf)>;
}

impl CreateFile for Staging {
    fn create_file(&self, name: &str) -> Result<(File, PathBuf)> {
        Staging::create_file(self, name)
    }
}

/// Creates the files of one window, reserves their blocks and writes their headers.
fn create_files(dir: &dyn CreateFile, files: &[PlannedFile]) -> Result<Vec<(File, PathBuf)>> {
    let mut handles = Vec::with_capacity(files.len());
    for f in files {
        let (file, path) = dir.create_file(&f.name)?;
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
pub(crate) fn write_files(
    dir: &dyn CreateFile,
    files: &[PlannedFile],
    durable: bool,
) -> Result<Vec<Vec<u64>>> {
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
        let handles = create_files(dir, window)?;
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
pub(crate) fn write_small_file(
    staging: &Staging,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> Result<()> {
    let (file, path) = staging.create_file(name)?;
    file.write_all_at(bytes, 0).ctx("write", &path)?;
    if durable {
        file.sync_all().ctx("fsync", &path)?;
    }
    Ok(())
}
