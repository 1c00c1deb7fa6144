//! Saving: lay out the tensor files, stream each tensor from the caller's memory into
//! its file (hashing each chunk as it is written, so every byte is read once), then
//! write the manifest and commit.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::checksum::{self, Hasher};
use crate::commit::{self, Staging};
use crate::dtype::{byte_len, Dtype};
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::format::{self, FileLayout};
use crate::manifest::{self, FileRecord, FileRole, Kind, Manifest, TensorRecord, MANIFEST_NAME};
use crate::pool;

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

/// A file to write: its layout and, per tensor, where the bytes come from.
struct PlannedFile<'a> {
    name: String,
    group: &'a str,
    layout: FileLayout,
    sources: Vec<&'a TensorSource<'a>>,
}

fn validate(groups: &[GroupSource]) -> Result<()> {
    let mut group_names = HashSet::new();
    for g in groups {
        if !manifest::is_valid_group(g.name) || !group_names.insert(g.name) {
            return Err(Error::InvalidArgument(format!(
                "invalid or repeated group name {:?}",
                g.name
            )));
        }
        let mut names = HashSet::new();
        for t in &g.tensors {
            if !names.insert(t.name) {
                return Err(Error::InvalidArgument(format!(
                    "duplicate tensor name {:?} in {:?}",
                    t.name, g.name
                )));
            }
            let need = byte_len(t.dtype, t.shape).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "tensor {:?}: shape {:?} overflows",
                    t.name, t.shape
                ))
            })?;
            if need != t.data.len() as u64 {
                return Err(Error::InvalidArgument(format!(
                    "tensor {:?}: {} {:?} needs {need} bytes, got {}",
                    t.name,
                    t.dtype,
                    t.shape,
                    t.data.len()
                )));
            }
        }
    }
    Ok(())
}

/// Side files take plain names the save does not write itself: never the manifest, a
/// tensor file or a shard index (`*.safetensors*`), which loaders would take for weights.
fn validate_side_files(files: &[SideFile]) -> Result<()> {
    let mut names = HashSet::new();
    for f in files {
        let reserved = f.name == MANIFEST_NAME
            || f.name.ends_with(".safetensors")
            || f.name.ends_with(".safetensors.index.json");
        if !manifest::is_safe_file_name(f.name) || reserved {
            return Err(Error::InvalidArgument(format!(
                "side file name {:?} is not allowed: use a plain name (letters, digits, \
                 '.', '-', '_'; not hidden), not ckptio.json or *.safetensors*",
                f.name
            )));
        }
        if !names.insert(f.name) {
            return Err(Error::InvalidArgument(format!(
                "side file {:?} given twice",
                f.name
            )));
        }
        if f.data.len() as u64 > manifest::MAX_SIDE_FILE_LEN {
            return Err(Error::InvalidArgument(format!(
                "side file {:?} is {} bytes, over the {}-byte cap",
                f.name,
                f.data.len(),
                manifest::MAX_SIDE_FILE_LEN
            )));
        }
    }
    Ok(())
}

/// Splits a group into shards in save order.
fn shard<'a>(g: &'a GroupSource<'a>, max: Option<u64>) -> Vec<Vec<&'a TensorSource<'a>>> {
    let Some(max) = max else {
        return vec![g.tensors.iter().collect()];
    };
    let mut shards: Vec<Vec<&TensorSource>> = vec![Vec::new()];
    let mut used = 0u64;
    for t in &g.tensors {
        let n = t.data.len() as u64;
        if used > 0 && used + n > max {
            shards.push(Vec::new());
            used = 0;
        }
        shards.last_mut().expect("non-empty").push(t);
        used += n;
    }
    shards
}

fn plan_files<'a>(
    groups: &'a [GroupSource<'a>],
    opts: &SaveOptions,
    checkpoint_id: &str,
) -> Result<Vec<PlannedFile<'a>>> {
    let mut files = Vec::new();
    for g in groups {
        let shards = shard(g, opts.max_shard_bytes);
        let n = shards.len();
        for (i, sources) in shards.into_iter().enumerate() {
            let name = if n == 1 {
                format!("{}.safetensors", g.name)
            } else {
                format!("{}-{:05}-of-{:05}.safetensors", g.name, i + 1, n)
            };
            let mut meta = g.header_metadata.clone();
            meta.push((manifest::CHECKPOINT_ID_KEY.into(), checkpoint_id.into()));
            let specs: Vec<(&str, Dtype, &[u64])> =
                sources.iter().map(|t| (t.name, t.dtype, t.shape)).collect();
            let layout = format::plan(&specs, &meta)?;
            files.push(PlannedFile {
                name,
                group: g.name,
                layout,
                sources,
            });
        }
    }
    Ok(files)
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

struct WrittenFile {
    group: String,
    record: FileRecord,
    tensors: Vec<TensorRecord>,
}

fn write_files(dir: &Path, files: &[PlannedFile], durable: bool) -> Result<Vec<WrittenFile>> {
    // Open every file and write its header first, then stream all tensors in parallel.
    let mut handles = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx("create", &path)?;
        reserve(&file, &path, f.layout.file_len)?;
        file.write_all_at(&f.layout.header, 0).ctx("write", &path)?;
        handles.push((file, path));
        fault::point("file");
    }
    let jobs = plan_jobs(files);
    let hashes: Vec<((usize, usize), u64)> = jobs
        .par_iter()
        .map(|job| {
            let (file, path) = &handles[job.file];
            let f = &files[job.file];
            let offset = f.layout.tensors[job.tensors[0]].begin;
            let hashes = if let [ti] = job.tensors[..] {
                vec![write_tensor(file, path, offset, f.sources[ti].data)?]
            } else {
                let datas: Vec<&[u8]> = job.tensors.iter().map(|&ti| f.sources[ti].data).collect();
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
                .collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    fault::point("data_written");
    if durable {
        handles
            .par_iter()
            .try_for_each(|(file, path)| file.sync_all().ctx("fsync", path))?;
    }
    fault::point("files_synced");

    let mut out: Vec<WrittenFile> = files
        .iter()
        .map(|f| WrittenFile {
            group: f.group.to_owned(),
            record: FileRecord {
                name: f.name.clone(),
                role: FileRole::Tensors,
                size: f.layout.file_len,
                xxh3: checksum::to_hex(checksum::hash(&f.layout.header)),
            },
            tensors: Vec::new(),
        })
        .collect();
    let mut by_job = vec![Vec::new(); files.len()];
    for ((fi, ti), h) in hashes {
        by_job[fi].push((ti, h));
    }
    for (fi, mut hs) in by_job.into_iter().enumerate() {
        hs.sort_unstable();
        let f = &files[fi];
        out[fi].tensors = hs
            .into_iter()
            .map(|(ti, h)| {
                let t = &f.layout.tensors[ti];
                TensorRecord {
                    group: f.group.to_owned(),
                    name: t.name.clone(),
                    file: f.name.clone(),
                    dtype: t.dtype.name().into(),
                    shape: t.shape.clone(),
                    byte_range: [t.begin, t.end],
                    xxh3: checksum::to_hex(h),
                }
            })
            .collect();
    }
    Ok(out)
}

/// Writes a small file in one go (manifest, shard index, side file) and returns its
/// record.
fn write_small_file(
    dir: &Path,
    name: &str,
    role: FileRole,
    bytes: &[u8],
    durable: bool,
) -> Result<FileRecord> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx("create", &path)?;
    file.write_all_at(bytes, 0).ctx("write", &path)?;
    if durable {
        file.sync_all().ctx("fsync", &path)?;
    }
    Ok(FileRecord {
        name: name.to_owned(),
        role,
        size: bytes.len() as u64,
        xxh3: checksum::to_hex(checksum::hash(bytes)),
    })
}

/// The Hugging Face sharded-checkpoint index for one group.
fn shard_index(group: &str, written: &[WrittenFile]) -> Option<(String, Vec<u8>)> {
    let files: Vec<&WrittenFile> = written.iter().filter(|w| w.group == group).collect();
    if files.len() < 2 {
        return None;
    }
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for w in &files {
        for t in &w.tensors {
            total += t.byte_range[1] - t.byte_range[0];
            weight_map.insert(t.name.clone(), w.record.name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let mut bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    bytes.push(b'\n');
    Some((format!("{group}.safetensors.index.json"), bytes))
}

/// Saves a checkpoint directory at `target`.
///
/// `user` is stored verbatim in the manifest (metadata, step, optimizer skeleton).
/// On any error nothing is left behind and an existing checkpoint is untouched.
pub fn save(
    target: &Path,
    kind: Kind,
    groups: &[GroupSource],
    user: Box<serde_json::value::RawValue>,
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
    user: Box<serde_json::value::RawValue>,
    opts: &SaveOptions,
) -> Result<()> {
    validate(groups)?;
    validate_side_files(side_files)?;
    let staging: Staging = commit::stage(target, opts.overwrite)?;
    fault::point("staged");
    let checkpoint_id = checksum::to_hex(commit::nonce());
    let files = plan_files(groups, opts, &checkpoint_id)?;
    let written =
        pool::get(opts.threads)?.install(|| write_files(&staging.dir, &files, opts.durable))?;

    let mut file_records: Vec<FileRecord> = written.iter().map(|w| w.record.clone()).collect();
    for g in groups {
        if let Some((name, bytes)) = shard_index(g.name, &written) {
            file_records.push(write_small_file(
                &staging.dir,
                &name,
                FileRole::Index,
                &bytes,
                opts.durable,
            )?);
        }
    }
    for f in side_files {
        file_records.push(write_small_file(
            &staging.dir,
            f.name,
            FileRole::Side,
            f.data,
            opts.durable,
        )?);
    }
    // Tensor records in the caller's order.
    let mut tensors: Vec<TensorRecord> =
        Vec::with_capacity(groups.iter().map(|g| g.tensors.len()).sum());
    let mut by_key: std::collections::HashMap<(&str, &str), &TensorRecord> = written
        .iter()
        .flat_map(|w| w.tensors.iter())
        .map(|t| ((t.group.as_str(), t.name.as_str()), t))
        .collect();
    for g in groups {
        for t in &g.tensors {
            let rec = by_key
                .remove(&(g.name, t.name))
                .expect("every tensor was written");
            tensors.push(rec.clone());
        }
    }
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: manifest::FORMAT_VERSION,
        kind,
        checkpoint_id,
        checksum: checksum::ALGORITHM.into(),
        files: file_records,
        tensors,
        user,
    };
    write_small_file(
        &staging.dir,
        MANIFEST_NAME,
        FileRole::Index,
        &manifest::encode(&manifest),
        opts.durable,
    )?;
    fault::point("manifest_written");
    staging.commit(opts.durable)
}
