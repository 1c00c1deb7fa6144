//! The local backend: a checkpoint is a directory. Files are created in a locked
//! staging directory (`commit.rs`), their blocks reserved with `fallocate`, tensors
//! hashed and `pwrite(v)`n straight from the caller's memory in parallel, everything
//! fsynced, and the directory renamed into place (`renameat2`).
//!
//! A durable save fsyncs once, at the end: the files stay open as they are written,
//! and when the manifest is written too, every file and the staging directory are
//! fsynced at once (one journal commit and device flush instead of one per step). Only
//! then is the directory renamed into place. docs/ENGINE.md "Small saves" has the
//! measurements.

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::pieces::{self, FileBytes, Segment, JOB_BYTES, PIECE};
use super::schedule::JobQueue;
use super::{Producer, Sink};
use crate::commit::{self, Staging};
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::fsync;
use crate::limits::MAX_OPEN_FILES;
use crate::manifest::MANIFEST_NAME;
use crate::pool;
use crate::save_plan::PlannedFile;
use crate::writer::SaveOptions;

/// A file written but not fsynced yet, and its path.
type Unsynced = (File, PathBuf);

/// A save in progress into a staging directory beside `target`.
pub(crate) struct LocalSink {
    staging: Staging,
    /// Durable saves: files written and not fsynced yet (at most [`MAX_OPEN_FILES`]).
    unsynced: Mutex<Vec<Unsynced>>,
}

impl LocalSink {
    pub(crate) fn stage(target: &Path, overwrite: bool) -> Result<LocalSink> {
        let staging = commit::stage(target, overwrite)?;
        fault::point("staged");
        Ok(LocalSink {
            staging,
            unsynced: Mutex::default(),
        })
    }

    /// Keeps `files` open to fsync them with the rest before the commit; fsyncs what is
    /// kept now if that would hold more than [`MAX_OPEN_FILES`] open.
    fn defer_sync(&self, files: Vec<Unsynced>) -> Result<()> {
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
        if unsynced.len() + files.len() > MAX_OPEN_FILES {
            sync_files(&unsynced)?;
            unsynced.clear();
        }
        unsynced.extend(files);
        Ok(())
    }
}

impl Sink for LocalSink {
    fn write_tensor_files(
        &self,
        files: &[PlannedFile],
        opts: &SaveOptions,
    ) -> Result<Vec<Vec<u64>>> {
        let (hashes, last) = pool::get(opts.threads)?
            .install(|| write_windows(&self.staging, files, opts.durable))?;
        if opts.durable {
            self.defer_sync(last)?;
        }
        Ok(hashes)
    }

    fn write_small_file(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let written = write_unsynced(&self.staging, name, bytes)?;
        if durable {
            self.defer_sync(vec![written])?;
        }
        Ok(())
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
            self.defer_sync(vec![(file, path)])?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>, manifest: &[u8], durable: bool) -> Result<()> {
        let manifest = write_unsynced(&self.staging, MANIFEST_NAME, manifest)?;
        fault::point("manifest_written");
        if durable {
            // Every file, the manifest and the staging directory, at once: nothing is
            // renamed into place before all of them are durable.
            let mut unsynced = self
                .unsynced
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            unsynced.push(manifest);
            self.staging.sync_with(&unsynced)?;
        }
        fault::point("files_synced");
        self.staging.commit(durable)
    }
}

/// fsyncs `files` at once ([`fsync::fsync_all`]).
fn sync_files(files: &[Unsynced]) -> Result<()> {
    let all: Vec<(&File, &Path)> = files.iter().map(|(f, p)| (f, p.as_path())).collect();
    fsync::fsync_all(&all)
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

/// Creates the files of one window and reserves their blocks. The header is written
/// with the first piece of data (`pieces.rs`), so it does not leave a small folio at 0.
fn create_files(dir: &dyn CreateFile, files: &[PlannedFile]) -> Result<Vec<(File, PathBuf)>> {
    let mut handles = Vec::with_capacity(files.len());
    for f in files {
        let (file, path) = dir.create_file(&f.name)?;
        reserve(&file, &path, f.layout.file_len)?;
        handles.push((file, path));
        fault::point("file");
    }
    Ok(handles)
}

/// A planned file as the bytes to write: its header, then its tensors' memory.
fn file_bytes<'a>(f: &'a PlannedFile) -> FileBytes<'a> {
    let segments = (f.sources.iter().zip(&f.layout.tensors).enumerate())
        .map(|(index, (src, t))| Segment {
            index,
            begin: t.begin,
            data: src.data,
        })
        .collect();
    FileBytes::new(&f.layout.header, segments)
}

/// Writes every tensor file and fsyncs it (`durable`); returns each tensor's checksum,
/// per file, in the order of the file's tensors. See [`write_windows`].
pub(crate) fn write_files(
    dir: &dyn CreateFile,
    files: &[PlannedFile],
    durable: bool,
) -> Result<Vec<Vec<u64>>> {
    let (hashes, last) = write_windows(dir, files, durable)?;
    if durable {
        sync_files(&last)?;
    }
    fault::point("files_synced");
    Ok(hashes)
}

/// Writes every tensor file; returns each tensor's checksum, per file, in the order of
/// the file's tensors, and the files of the last window, still open and not yet
/// fsynced: with `durable`, the caller fsyncs them. Files are
/// written [`MAX_OPEN_FILES`] at a time (created, filled in parallel, fsynced, closed),
/// so a save of thousands of shards stays within the process's descriptor limit.
fn write_windows(
    dir: &dyn CreateFile,
    files: &[PlannedFile],
    durable: bool,
) -> Result<(Vec<Vec<u64>>, Vec<Unsynced>)> {
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
    let mut unsynced = Vec::new();
    for (w, &(first, window)) in windows.iter().enumerate() {
        let handles = create_files(dir, window)?;
        let bytes: Vec<FileBytes> = window.iter().map(file_bytes).collect();
        let jobs: Vec<pieces::Job> = (bytes.iter().enumerate())
            .flat_map(|(fi, b)| pieces::plan_jobs(fi, b, PIECE, JOB_BYTES))
            .collect();
        // Each file's jobs in file order; writers spread over the files.
        let queue = JobQueue::new(window.len(), jobs.iter().map(|j| (j.file, j.bytes)));
        let job_bytes = |j: usize| jobs[j].bytes;
        let writers = rayon::current_num_threads().clamp(1, jobs.len().max(1));
        let done: Vec<Vec<((usize, usize), u64)>> = (0..writers)
            .into_par_iter()
            .map(|_| {
                let mut out = Vec::new();
                let mut left = None;
                while let Some(j) = queue.next(left.take(), job_bytes) {
                    let job = &jobs[j];
                    let (file, path) = &handles[job.file];
                    let written = pieces::run_job(&bytes[job.file], job, PIECE, |slices, at| {
                        write_all_vectored_at(file, slices, at)
                    });
                    let written = written.ctx("write", path).inspect_err(|_| queue.stop())?;
                    for (ti, h) in written {
                        fault::point("data");
                        out.push(((job.file, ti), h));
                    }
                    left = Some(job.file);
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        for ((fi, ti), h) in done.into_iter().flatten() {
            hashes[first + fi][ti] = h;
        }
        if w == last {
            fault::point("data_written");
            unsynced = handles;
        } else if durable {
            sync_files(&handles)?;
        }
    }
    Ok((hashes, unsynced))
}

/// Writes a small file in one go (manifest, shard index) and leaves it open, unsynced.
fn write_unsynced(staging: &Staging, name: &str, bytes: &[u8]) -> Result<Unsynced> {
    let (file, path) = staging.create_file(name)?;
    file.write_all_at(bytes, 0).ctx("write", &path)?;
    Ok((file, path))
}

/// Writes a small file in one go (the manifest of a distributed save) and, `durable`,
/// fsyncs it together with the staging directory.
pub(crate) fn write_small_file(
    staging: &Staging,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> Result<()> {
    let written = write_unsynced(staging, name, bytes)?;
    if durable {
        staging.sync_with(&[written])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use crate::dtype::Dtype;
    use crate::format;
    use crate::writer::TensorSource;

    struct TempDir(PathBuf);

    impl CreateFile for TempDir {
        fn create_file(&self, name: &str) -> Result<(File, PathBuf)> {
            let path = self.0.join(name);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .ctx("create", &path)?;
            Ok((file, path))
        }
    }

    /// Tensors as the format lays them out (element size first, an empty F32 sharing
    /// its offset with a U8, a data start that is no multiple of a piece), written by
    /// `write_files` in large pieces: each file reads back as the header then every
    /// tensor at its offset, parses, and each checksum is that of the tensor's bytes.
    #[test]
    fn written_files_read_back_as_planned() {
        let mib = 1usize << 20;
        let specs: Vec<(&str, Dtype, Vec<u64>)> = vec![
            ("tiny_u8", Dtype::U8, vec![3]),
            ("empty_f32", Dtype::F32, vec![0, 4]),
            ("big", Dtype::F32, vec![(5 * mib / 4 + 3) as u64]), // spans 3-4 pieces
            ("small_f64", Dtype::F64, vec![1000]),
            ("mid", Dtype::F16, vec![(3 * mib / 2) as u64]),
            ("empty_u8", Dtype::U8, vec![0]),
            ("huge", Dtype::F32, vec![(9 * mib / 4) as u64]), // past JOB_BYTES alone
        ];
        let datas: Vec<Vec<u8>> = (specs.iter().enumerate())
            .map(|(i, (_, dt, shape))| {
                let n = crate::dtype::byte_len(*dt, shape).unwrap() as usize;
                (0..n).map(|k| (k * 7 + i * 13 + k / 4099) as u8).collect()
            })
            .collect();
        let sources: Vec<TensorSource> = (specs.iter().zip(&datas))
            .map(|((name, dtype, shape), data)| TensorSource {
                name,
                dtype: *dtype,
                shape,
                data,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        // Two files: one with every tensor, one with the first three (a short file).
        let mut files = Vec::new();
        for (name, n, meta) in [("a.safetensors", 7, "x"), ("b.safetensors", 3, "longer")] {
            let srcs: Vec<&TensorSource> = sources[..n].iter().collect();
            let list: Vec<(&str, Dtype, &[u64])> =
                srcs.iter().map(|s| (s.name, s.dtype, s.shape)).collect();
            let layout = format::plan(&list, &[(meta.into(), "v".repeat(37))]).unwrap();
            assert_ne!(layout.header.len() as u64 % PIECE, 0);
            files.push(PlannedFile {
                name: name.into(),
                group: "model",
                layout,
                sources: srcs,
            });
        }
        let hashes = write_files(&TempDir(dir.path().into()), &files, false).unwrap();
        for (f, hashes) in files.iter().zip(&hashes) {
            let bytes = std::fs::read(dir.path().join(&f.name)).unwrap();
            assert_eq!(bytes.len() as u64, f.layout.file_len);
            assert_eq!(&bytes[..f.layout.header.len()], &f.layout.header[..]);
            let parsed = format::parse(Path::new(&f.name), &bytes).unwrap();
            assert_eq!(parsed.tensors.len(), f.sources.len());
            for ((t, src), h) in f.layout.tensors.iter().zip(&f.sources).zip(hashes) {
                assert_eq!(
                    &bytes[t.begin as usize..t.end as usize],
                    src.data,
                    "{}",
                    t.name
                );
                assert_eq!(*h, checksum::hash(src.data), "checksum of {}", t.name);
            }
        }
    }
}
