//! Atomic, durable commit of a checkpoint directory.
//!
//! A save writes into a hidden staging directory beside the target
//! (`.NAME.ckptio-tmp-PID-NONCE`), fsyncs the files and the directory, then moves it
//! into place and fsyncs the parent. A fresh target is claimed with
//! `renameat2(RENAME_NOREPLACE)`; an existing one is swapped with
//! `renameat2(RENAME_EXCHANGE)`, so the name always holds one complete checkpoint, the
//! old or the new. Where the filesystem lacks `renameat2`, the old checkpoint is first
//! renamed aside (`.NAME.ckptio-old-PID-NONCE`), which `cleanup` puts back if the
//! process dies before the new one is in place.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::manifest::MANIFEST_NAME;

pub(crate) const TMP_TAG: &str = ".ckptio-tmp-";
const OLD_TAG: &str = ".ckptio-old-";

/// A staging directory that is removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    target: PathBuf,
    replace: bool,
    committed: bool,
}

/// A process-unique, hard-to-guess token for temporary names and checkpoint ids.
pub fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut seed = [0u8; 28];
    seed[..16].copy_from_slice(&t.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    seed[20..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    crate::checksum::hash(&seed)
}

fn split_target(target: &Path) -> Result<(PathBuf, OsString)> {
    let name = target
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a valid checkpoint path", target.display()))
        })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_os_string()))
}

pub(crate) fn side_name(name: &OsString, tag: &str) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!("{tag}{}-{:016x}", std::process::id(), nonce()));
    s
}

/// Is `dir` something we may replace: a ckptio checkpoint (complete or not) or empty?
fn is_replaceable(dir: &Path) -> Result<bool> {
    if dir.join(MANIFEST_NAME).exists() {
        return Ok(true);
    }
    Ok(fs::read_dir(dir).ctx("list", dir)?.next().is_none())
}

/// Checks the target and creates the staging directory beside it.
pub fn stage(target: &Path, overwrite: bool) -> Result<Staging> {
    let (parent, name) = split_target(target)?;
    match fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "{}: parent is not a directory",
                target.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: "parent directory does not exist",
                path: parent,
            })
        }
        Err(e) => return Err(Error::io("stat parent directory", &parent, e)),
    }
    // Leftovers of earlier saves to this name by dead processes; this may put back an
    // old checkpoint that an interrupted replace had moved aside, so it runs first.
    cleanup_leftovers(&parent, Some(&name))?;
    let replace = match fs::symlink_metadata(target) {
        Err(_) => false,
        Ok(m) if !m.is_dir() => {
            return Err(Error::AlreadyExists {
                path: target.to_path_buf(),
                hint: " and is not a directory; refusing to replace it",
            })
        }
        Ok(_) if !overwrite => {
            return Err(Error::AlreadyExists {
                path: target.to_path_buf(),
                hint: "; pass overwrite=True to replace it",
            })
        }
        Ok(_) if !is_replaceable(target)? => {
            return Err(Error::AlreadyExists {
                path: target.to_path_buf(),
                hint: " and is not a ckptio checkpoint; refusing to replace it",
            })
        }
        Ok(_) => true,
    };
    let dir = parent.join(side_name(&name, TMP_TAG));
    fs::create_dir(&dir).ctx("create staging directory", &dir)?;
    Ok(Staging {
        dir,
        target: target.to_path_buf(),
        replace,
        committed: false,
    })
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

impl Staging {
    /// Moves the staged checkpoint to the target name. With `durable`, the staging
    /// directory is fsynced before and the parent after (files are the caller's job).
    pub fn commit(mut self, durable: bool) -> Result<()> {
        let (parent, name) = split_target(&self.target)?;
        if durable {
            fsync_dir(&self.dir)?;
        }
        fault::point("before_commit");
        if self.replace {
            match rename_exchange(&self.dir, &self.target) {
                Ok(()) => {}
                Err(e) if exchange_unsupported(&e) => {
                    self.replace_by_two_renames(&parent, &name, durable)?
                }
                Err(e) => return Err(Error::io("swap in new checkpoint", &self.target, e)),
            }
        } else {
            match rename_noreplace(&self.dir, &self.target) {
                Ok(()) => {}
                // Without RENAME_NOREPLACE, rename(2) would silently replace an empty
                // directory created at the target meanwhile: check first (a narrow race
                // remains on such filesystems).
                Err(e)
                    if exchange_unsupported(&e) && fs::symlink_metadata(&self.target).is_err() =>
                {
                    fs::rename(&self.dir, &self.target).ctx("rename into place", &self.target)?
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        || exchange_unsupported(&e) =>
                {
                    return Err(Error::AlreadyExists {
                        path: self.target.clone(),
                        hint: " (created by someone else during the save)",
                    })
                }
                Err(e) => return Err(Error::io("rename into place", &self.target, e)),
            }
        }
        fault::point("committed");
        if durable {
            fsync_dir(&parent)?;
        }
        self.committed = true;
        if self.replace {
            // After the exchange, the staging name holds the old checkpoint.
            let _ = fs::remove_dir_all(&self.dir);
            fault::point("old_removed");
        }
        Ok(())
    }

    fn replace_by_two_renames(&self, parent: &Path, name: &OsString, durable: bool) -> Result<()> {
        let aside = parent.join(side_name(name, OLD_TAG));
        fs::rename(&self.target, &aside).ctx("move old checkpoint aside", &self.target)?;
        fault::point("moved_aside");
        if let Err(e) = fs::rename(&self.dir, &self.target) {
            let _ = fs::rename(&aside, &self.target);
            return Err(Error::io("rename into place", &self.target, e));
        }
        if durable {
            fsync_dir(parent)?;
        }
        let _ = fs::remove_dir_all(&aside);
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn exchange_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)
    )
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn rename_exchange(from: &Path, to: &Path) -> std::io::Result<()> {
    renameat2(from, to, libc::RENAME_EXCHANGE)
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

#[cfg(not(target_os = "linux"))]
fn rename_exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOTSUP))
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOTSUP))
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Parses `.NAME<TAG>PID-NONCE` into (NAME, is_old, PID).
fn parse_side_name(file_name: &str) -> Option<(&str, bool, u32)> {
    let rest = file_name.strip_prefix('.')?;
    let (name, tail, old) = if let Some(i) = rest.rfind(TMP_TAG) {
        (&rest[..i], &rest[i + TMP_TAG.len()..], false)
    } else {
        let i = rest.rfind(OLD_TAG)?;
        (&rest[..i], &rest[i + OLD_TAG.len()..], true)
    };
    let (pid, nonce) = tail.split_once('-')?;
    if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((name, old, pid.parse().ok()?))
}

/// Removes what dead saves left in `parent` (for one target name, or all). An old
/// checkpoint moved aside by an interrupted replace is put back if its name is free.
/// Returns the paths removed or restored.
pub fn cleanup_leftovers(parent: &Path, only: Option<&OsString>) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for entry in fs::read_dir(parent).ctx("list", parent)? {
        let entry = entry.ctx("list", parent)?;
        let file_name = entry.file_name();
        let Some((name, old, pid)) = file_name.to_str().and_then(parse_side_name) else {
            continue;
        };
        if only.is_some_and(|o| o.to_str() != Some(name)) || pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        let target = parent.join(name);
        if old && fs::symlink_metadata(&target).is_err() {
            fs::rename(&path, &target).ctx("restore old checkpoint", &target)?;
        } else {
            fs::remove_dir_all(&path).ctx("remove leftover", &path)?;
        }
        done.push(path);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_side_names() {
        assert_eq!(
            parse_side_name(".step-1.ckptio-tmp-42-00000000deadbeef"),
            Some(("step-1", false, 42))
        );
        assert_eq!(
            parse_side_name(".a.ckptio-old-7-0123456789abcdef"),
            Some(("a", true, 7))
        );
        assert_eq!(parse_side_name("step-1"), None);
        assert_eq!(parse_side_name(".x.ckptio-tmp-1-zz"), None);
    }

    #[test]
    fn stage_commit_replace_and_refuse() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("ck");
        let s = stage(&target, false).unwrap();
        fs::write(s.dir.join(MANIFEST_NAME), b"one").unwrap();
        s.commit(true).unwrap();
        assert_eq!(fs::read(target.join(MANIFEST_NAME)).unwrap(), b"one");

        assert!(matches!(
            stage(&target, false),
            Err(Error::AlreadyExists { .. })
        ));
        let s = stage(&target, true).unwrap();
        fs::write(s.dir.join(MANIFEST_NAME), b"two").unwrap();
        s.commit(true).unwrap();
        assert_eq!(fs::read(target.join(MANIFEST_NAME)).unwrap(), b"two");
        // Only the checkpoint is left in the parent.
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);

        let s = stage(&target, true).unwrap();
        drop(s);
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);

        let plain = root.path().join("plain");
        fs::create_dir(&plain).unwrap();
        fs::write(plain.join("notes.txt"), b"x").unwrap();
        assert!(matches!(
            stage(&plain, true),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            stage(&root.path().join("no/such"), false),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn cleanup_restores_an_old_checkpoint_moved_aside() {
        let root = tempfile::tempdir().unwrap();
        // pid 0x7fffffff is not alive.
        let aside = root
            .path()
            .join(".ck.ckptio-old-2147483646-0123456789abcdef");
        fs::create_dir(&aside).unwrap();
        let tmp = root
            .path()
            .join(".ck.ckptio-tmp-2147483646-0123456789abcdee");
        fs::create_dir(&tmp).unwrap();
        let done = cleanup_leftovers(root.path(), None).unwrap();
        assert_eq!(done.len(), 2);
        assert!(root.path().join("ck").is_dir());
        assert!(!tmp.exists());
    }
}
