//! A checkpoint's life after its save: describe it from its manifest alone, list the
//! checkpoints of a directory, edit the manifest's `user` section atomically, delete a
//! checkpoint atomically, remove what interrupted edits and deletes left, and verify
//! with progress reports.
//!
//! Each function takes the path of a checkpoint or of the directory holding them, so a
//! storage backend other than a local filesystem can take them over one by one. The
//! Python `Run` (named checkpoints, retention, TTL) is built on these alone.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::commit;
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::manifest::{self, Kind, Manifest, MANIFEST_NAME};
use crate::pool;
use crate::reader;

/// Tag of the hidden file a manifest edit is written to before it is renamed over
/// `ckptio.json`: `.ckptio.json.ckptio-edit-PID-NONCE`. Not the `.ckptio-tmp-` tag of
/// staging directories, which `commit::cleanup_leftovers` removes as directories.
const EDIT_TAG: &str = ".ckptio-edit-";

/// What the manifest says of a checkpoint, without opening its tensor files.
#[derive(Debug, Clone)]
pub struct Summary {
    pub kind: Kind,
    pub checkpoint_id: String,
    /// The manifest's `user` section, as JSON text.
    pub user_json: String,
    /// Bytes of every file the manifest lists, plus the manifest itself.
    pub size_bytes: u64,
    /// When `ckptio.json` was last written, in seconds since the Unix epoch.
    pub modified: f64,
}

fn summarize(dir_fd: &File, dir: &Path, m: &Manifest) -> Result<Summary> {
    let path = dir.join(MANIFEST_NAME);
    let meta = reader::openat(dir_fd, MANIFEST_NAME)
        .and_then(|f| f.metadata())
        .ctx("stat", &path)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(Summary {
        kind: m.kind,
        checkpoint_id: m.checkpoint_id.clone(),
        user_json: m.user.get().to_owned(),
        size_bytes: m.files.iter().map(|f| f.size).sum::<u64>() + meta.len(),
        modified,
    })
}

/// Reads and checks the manifest of the checkpoint at `dir` (as `open` does: size cap,
/// nesting, self-checksum, version, structure); maps no tensor file.
pub fn describe(dir: &Path) -> Result<Summary> {
    let dir_fd = reader::open_dir(dir)?;
    let m = reader::read_manifest(&dir_fd, dir)?;
    summarize(&dir_fd, dir, &m)
}

/// The checkpoints in `dir`, by name: every visible subdirectory (symbolic links are
/// not followed) with a valid manifest, or the error that makes it unreadable. Hidden
/// entries (leftovers of interrupted saves and deletes) and directories without a
/// manifest (not checkpoints, or deleted meanwhile) are left out.
pub fn list(dir: &Path) -> Result<Vec<(String, Result<Summary>)>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: "no such directory",
                path: dir.to_path_buf(),
            })
        }
        r => r.ctx("list", dir)?,
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", dir)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not a name ckptio writes
        };
        if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(name);
        }
    }
    names.sort();
    let described: Vec<(String, Result<Summary>)> = pool::get(0)?.install(|| {
        names
            .into_par_iter()
            .map(|name| {
                let r = describe(&dir.join(&name));
                (name, r)
            })
            .filter(|(_, r)| !matches!(r, Err(Error::NotFound { .. })))
            .collect()
    });
    Ok(described)
}

/// The entries of a JSON object in file order, each value kept as its exact text.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// `user` with `key` set to `value`; every other entry is kept byte for byte, in order.
fn with_entry(
    file: &Path,
    user: &RawValue,
    key: &str,
    value: Box<RawValue>,
) -> Result<Box<RawValue>> {
    let Entries(mut entries) = serde_json::from_str(user.get())
        .map_err(|e| Error::format(file, format!("the user section is not an object: {e}")))?;
    match entries.iter().position(|(k, _)| k == key) {
        Some(i) => {
            entries[i].1 = value;
            let mut seen = false;
            entries.retain(|(k, _)| k != key || !std::mem::replace(&mut seen, true));
        }
        None => entries.push((key.to_owned(), value)),
    }
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                serde_json::to_string(k).expect("a string"),
                v.get()
            )
        })
        .collect();
    Ok(RawValue::from_string(format!("{{{}}}", body.join(","))).expect("valid JSON"))
}

/// Sets the top-level `key` of the manifest's `user` section to the JSON `value` and
/// returns the new summary. Files, tensors and the checkpoint id are unchanged.
///
/// The new manifest goes to a hidden file in the checkpoint directory (opened relative
/// to the directory), is fsynced (`durable`), then renamed over `ckptio.json`, and the
/// directory is fsynced: a reader sees the old manifest or the new one, never a mix,
/// and processes that mapped the tensor files are unaffected. A crash leaves at most
/// the hidden file, which the next edit or `cleanup` removes.
///
/// With `expect_id`, the edit is made only if the checkpoint is still the save with
/// that id: a value computed from an older checkpoint under the same name (its loop
/// state, say) never lands in a newer one. Otherwise `NotFound`, and nothing changes.
pub fn update_user(
    dir: &Path,
    key: &str,
    value: &str,
    expect_id: Option<&str>,
    durable: bool,
) -> Result<Summary> {
    let value = RawValue::from_string(value.to_owned())
        .map_err(|e| Error::InvalidArgument(format!("value for {key:?} is not JSON: {e}")))?;
    let dir_fd = reader::open_dir(dir)?;
    remove_stale_edits(dir)?;
    let path = dir.join(MANIFEST_NAME);
    let mut m = reader::read_manifest(&dir_fd, dir)?;
    if expect_id.is_some_and(|id| id != m.checkpoint_id) {
        return Err(Error::NotFound {
            what: "replaced by another save since it was read (manifest not edited)",
            path: dir.to_path_buf(),
        });
    }
    m.user = with_entry(&path, &m.user, key, value)?;
    let bytes = manifest::encode(&m);
    // Never write a manifest that `open` would refuse (e.g. nested too deep).
    manifest::decode(&path, &bytes)?;

    let tmp = format!(
        ".{MANIFEST_NAME}{EDIT_TAG}{}-{:016x}",
        std::process::id(),
        commit::nonce()
    );
    let tmp_path = dir.join(&tmp);
    // The file stays open (and locked: the proof of life `cleanup` respects) until
    // the rename is done.
    let mut edit = None;
    let written = create_at(&dir_fd, &tmp).and_then(|mut f| {
        let _ = try_lock(&f);
        f.write_all(&bytes)?;
        if durable {
            f.sync_all()?;
        }
        edit = Some(f);
        Ok(())
    });
    fault::point("edit_written");
    let renamed = written
        .ctx("write", &tmp_path)
        .and_then(|()| rename_at(&dir_fd, &tmp, MANIFEST_NAME).ctx("replace", &path));
    if let Err(e) = renamed {
        let _ = unlink_at(&dir_fd, &tmp);
        return Err(e);
    }
    drop(edit);
    if durable {
        dir_fd.sync_all().ctx("fsync directory", dir)?;
    }
    summarize(&dir_fd, dir, &m)
}

fn c_name(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Creates `name` in the opened directory; fails if anything is there already.
fn create_at(dir_fd: &File, name: &str) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = c_name(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; on success the
    // new descriptor is owned by the returned File alone.
    let fd = unsafe {
        libc::openat(
            dir_fd.as_raw_fd(),
            name.as_ptr(),
            flags,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn rename_at(dir_fd: &File, from: &str, to: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (from, to) = (c_name(from)?, c_name(to)?);
    let fd = dir_fd.as_raw_fd();
    // SAFETY: a valid directory descriptor and NUL-terminated names.
    if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unlink_at(dir_fd: &File, name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let name = c_name(name)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir_fd.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Is `file_name` a manifest edit's temporary file (`.ckptio.json.ckptio-edit-PID-NONCE`)?
fn is_edit_name(file_name: &str) -> bool {
    let Some(tail) = file_name.strip_prefix(&format!(".{MANIFEST_NAME}{EDIT_TAG}")) else {
        return false;
    };
    tail.split_once('-').is_some_and(|(pid, nonce)| {
        pid.parse::<u32>().is_ok()
            && nonce.len() == 16
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Takes an exclusive `flock` on `file` without waiting: Ok(true) if taken, Ok(false)
/// if another open file description holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an owned, open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Is the edit file `path` abandoned? Its editor holds a lock on it until the rename
/// (the kernel drops it when the editor dies), so a lock we can take proves it dead,
/// wherever the editor ran (another PID namespace or host sharing the filesystem).
fn edit_is_abandoned(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .and_then(|f| try_lock(&f))
        .unwrap_or(false)
}

/// Removes manifest edits that dead processes left in the checkpoint `dir`.
fn remove_stale_edits(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_edit_name) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_file()) && edit_is_abandoned(&entry.path()) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove leftover", &path, e))
                }
                _ => removed.push(path),
            }
        }
    }
    Ok(removed)
}

fn split(dir: &Path) -> Result<(PathBuf, OsString)> {
    let name = dir
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a checkpoint path", dir.display()))
        })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_os_string()))
}

/// Deletes the checkpoint at `dir` atomically: it is renamed to a hidden leftover name
/// in the same directory (`.NAME.ckptio-tmp-PID-NONCE`, which `cleanup` removes once
/// this process is gone), the parent is fsynced (`durable`), then the leftover is
/// removed, manifest first. A process that has the files mapped keeps valid data.
/// Refuses anything that is not a directory holding a `ckptio.json`.
pub fn delete(dir: &Path, durable: bool) -> Result<()> {
    let (parent, name) = split(dir)?;
    let not_found = || Error::NotFound {
        what: "no checkpoint at",
        path: dir.to_path_buf(),
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(Error::io("stat", dir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::InvalidArgument(format!(
                "{}: not a checkpoint directory; refusing to delete it",
                dir.display()
            )))
        }
        Ok(_) => {}
    }
    if !fs::symlink_metadata(dir.join(MANIFEST_NAME)).is_ok_and(|m| m.is_file()) {
        return Err(Error::InvalidArgument(format!(
            "{}: not a ckptio checkpoint (no ckptio.json manifest); refusing to delete it",
            dir.display()
        )));
    }
    let hidden = parent.join(commit::side_name(&name, crate::cleanup::TMP_TAG));
    fs::rename(dir, &hidden).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        _ => Error::io("move aside to delete", dir, e),
    })?;
    fault::point("delete_renamed");
    if durable {
        commit::fsync_dir(&parent)?;
    }
    remove_tree(&hidden)
}

/// Removes a checkpoint directory moved aside: the manifest first (what is left no
/// longer opens as a checkpoint), then the rest. Retries when a concurrent manifest
/// edit added a file meanwhile.
fn remove_tree(dir: &Path) -> Result<()> {
    let gone = |r: std::io::Result<()>, path: &Path| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    };
    gone(
        fs::remove_file(dir.join(MANIFEST_NAME)),
        &dir.join(MANIFEST_NAME),
    )?;
    let mut attempt = 0;
    loop {
        for entry in fs::read_dir(dir).ctx("list", dir)? {
            let entry = entry.ctx("list", dir)?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                gone(fs::remove_dir_all(&path), &path)?;
            } else {
                gone(fs::remove_file(&path), &path)?;
            }
            fault::point("delete_file");
        }
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && attempt < 3 => attempt += 1,
            r => return gone(r, dir),
        }
    }
}

/// Removes what interrupted saves, deletes and manifest edits left in `dir` (a
/// directory of checkpoints) once they are proven over, and puts back an old
/// checkpoint an interrupted replace moved aside. Reports what it did and what it left.
pub fn cleanup(dir: &Path) -> Result<crate::cleanup::Cleanup> {
    let mut report = crate::cleanup::cleanup_leftovers(dir, None)?;
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let visible = !entry.file_name().to_string_lossy().starts_with('.');
        let path = entry.path();
        if visible
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && path.join(MANIFEST_NAME).is_file()
        {
            report.done.extend(remove_stale_edits(&path)?);
        }
    }
    Ok(report)
}

/// `Checkpoint::verify` of the checkpoint at `dir`, with `progress(done, total)`
/// called from worker threads as tensor bytes are hashed. Returns the entries the
/// manifest does not cover.
pub fn verify(
    dir: &Path,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<String>> {
    reader::open(dir)?.verify_with_progress(threads, progress)
}
