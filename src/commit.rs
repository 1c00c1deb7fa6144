//! Atomic, durable commit of a checkpoint directory.
//!
//! A save writes into a hidden staging directory beside the target
//! (`.NAME.ckptio-tmp-PID-NONCE`), which it holds open and `flock`ed for as long as it
//! lives (the proof of life that `cleanup` respects, see `held_dir.rs`), fsyncs the
//! files and the directory, then moves it into place and fsyncs the parent. A fresh
//! target is claimed with `renameat2(RENAME_NOREPLACE)`; an existing one is swapped
//! with `renameat2(RENAME_EXCHANGE)`, so the name always holds one complete checkpoint,
//! the old or the new. Where the filesystem lacks `renameat2`, the old checkpoint is
//! first renamed aside (`.NAME.ckptio-old-PID-NONCE`, locked like a staging directory),
//! which `cleanup` puts back if the process dies before the new one is in place.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cleanup::{cleanup_leftovers, OLD_TAG, TMP_TAG};
use crate::error::{Error, IoContext, Result};
use crate::fault;
use crate::held_dir::{HeldDir, Lock};
use crate::manifest::MANIFEST_NAME;

/// Fresh staging names tried before giving up (a name is abandoned when something
/// else already has it, or when `cleanup` took it between its creation and our lock).
const STAGE_ATTEMPTS: usize = 16;
/// Renames tried when concurrent saves of one name keep taking or freeing it.
const COMMIT_ATTEMPTS: usize = 16;
/// How long the two-rename fallback waits for another save's lock on the old
/// checkpoint (a concurrent replace of the same name that is committing).
const OLD_LOCK_WAIT: Duration = Duration::from_secs(10);

/// A staging directory that is removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    held: HeldDir,
    target: PathBuf,
    overwrite: bool,
    replace: bool,
    committed: bool,
    /// Files created in it so far, and how many of them its last fsync covered (a
    /// directory fsync makes the entries that exist when it starts durable).
    created: AtomicU64,
    synced: AtomicU64,
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

pub(crate) fn side_name(name: &OsStr, tag: &str) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!("{tag}{}-{:016x}", std::process::id(), nonce()));
    s
}

/// Refuses to replace `target` unless it is a directory (not a symlink) that is a
/// ckptio checkpoint (complete or not) or empty.
fn check_replaceable(target: &Path) -> Result<()> {
    let refuse = |hint| {
        Err(Error::AlreadyExists {
            path: target.to_path_buf(),
            hint,
        })
    };
    let is_dir = fs::symlink_metadata(target).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return refuse(" and is not a directory; refusing to replace it");
    }
    if target.join(MANIFEST_NAME).exists()
        || fs::read_dir(target).ctx("list", target)?.next().is_none()
    {
        return Ok(());
    }
    refuse(" and is not a ckptio checkpoint; refusing to replace it")
}

/// Creates and locks a fresh staging directory for `name` in `parent`.
fn make_staging_dir(parent: &Path, name: &OsStr) -> Result<(PathBuf, HeldDir)> {
    for _ in 0..STAGE_ATTEMPTS {
        let dir = parent.join(side_name(name, TMP_TAG));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create staging directory", &dir, e)),
        }
        // Until we hold the lock, `cleanup` may take the new (empty) directory for a
        // dead save's and remove it; it removes only under the lock, so once we hold
        // the lock and the name is still our directory, it stays ours.
        let held = match HeldDir::open(&dir) {
            Ok(held) => held,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                ) =>
            {
                continue
            }
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(Error::io("open staging directory", &dir, e));
            }
        };
        match held.try_lock() {
            Ok(Lock::Taken) => {}
            // `cleanup` holds it and will remove it: leave it and take another name.
            Ok(Lock::Busy) => continue,
            // A filesystem without locks: save anyway; `cleanup` cannot prove any
            // save there dead, so it removes nothing (docs/GUARANTEES.md).
            Err(_) => {}
        }
        if held.is_at(&dir).ctx("check staging directory", &dir)? {
            return Ok((dir, held));
        }
    }
    Err(Error::io(
        "create staging directory",
        &parent.join(name),
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free staging name after {STAGE_ATTEMPTS} attempts"),
        ),
    ))
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: "parent directory does not exist",
                path: parent,
            })
        }
        Err(e) => return Err(Error::io("stat parent directory", &parent, e)),
    }
    // Leftovers of earlier saves to this name by dead processes; this may put back an
    // old checkpoint that an interrupted replace had moved aside, so it runs first.
    // Best effort: what it cannot remove (another user's entry, a planted file, a live
    // save) must not stop this save.
    let _ = cleanup_leftovers(&parent, Some(&name));
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
        Ok(_) => {
            check_replaceable(target)?;
            true
        }
    };
    let (dir, held) = make_staging_dir(&parent, &name)?;
    Ok(Staging {
        dir,
        held,
        target: target.to_path_buf(),
        overwrite,
        replace,
        committed: false,
        created: AtomicU64::new(0),
        synced: AtomicU64::new(u64::MAX),
    })
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Where the old checkpoint is after the new one took the name.
enum Replaced {
    /// There was none.
    Nothing,
    /// Exchanged: it is under the staging name.
    InStaging,
    /// Two-rename fallback: already removed.
    Removed,
}

/// Why a rename into place should be tried again the other way.
enum Retry {
    /// The name was taken meanwhile (by a concurrent save): replace it.
    AsReplace,
    /// The name was freed meanwhile: claim it as new.
    AsNew,
    /// The name changed while we locked it (two-rename fallback): look again.
    Again,
}

type Attempt = std::result::Result<Replaced, Retry>;

impl Staging {
    /// Creates the new file `name` in the staging directory (relative to the held
    /// descriptor: if the directory was removed, this fails). Returns it and its path.
    pub fn create_file(&self, name: &str) -> Result<(File, PathBuf)> {
        let path = self.dir.join(name);
        let file = self.held.create_file(name).ctx("create", &path)?;
        self.created.fetch_add(1, Ordering::AcqRel);
        Ok((file, path))
    }

    /// fsyncs `files` and the staging directory, all at once (`fsync::fsync_all`), so that
    /// [`Staging::commit`] need not fsync the directory again unless a file is created
    /// after this.
    pub fn sync_with(&self, files: &[(File, PathBuf)]) -> Result<()> {
        let created = self.created.load(Ordering::Acquire);
        let dir = self.held.as_file();
        let all: Vec<(&File, &Path)> = (files.iter().map(|(f, p)| (f, p.as_path())))
            .chain([(dir, self.dir.as_path())])
            .collect();
        crate::fsync::fsync_all(&all)?;
        self.synced.store(created, Ordering::Release);
        Ok(())
    }

    /// Did the last [`Staging::sync_with`] cover every file created in the directory?
    fn dir_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) == self.created.load(Ordering::Acquire)
    }

    /// Moves the staged checkpoint to the target name. With `durable`, the staging
    /// directory is fsynced before (unless [`Staging::sync_with`] covered every file in
    /// it) and the parent after; the files' own fsyncs are the caller's job.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        let (parent, name) = split_target(&self.target)?;
        if durable && !self.dir_synced() {
            fault::fail("fsync")
                .and_then(|()| self.held.sync())
                .ctx("fsync directory", &self.dir)?;
        }
        fault::point("before_commit");
        let mut replace = self.replace;
        let mut attempts = 0;
        let replaced = loop {
            attempts += 1;
            // A staging directory removed or swapped by someone else is never
            // committed: its content is not (all) ours.
            if !self
                .held
                .is_at(&self.dir)
                .ctx("check staging directory", &self.dir)?
            {
                return Err(Error::io(
                    "commit: the staging directory was removed or replaced by another process",
                    &self.dir,
                    io::Error::from_raw_os_error(libc::ENOENT),
                ));
            }
            let attempt = if replace {
                self.swap_in(&parent, &name, durable)?
            } else {
                self.claim_name()?
            };
            match attempt {
                Ok(replaced) => break replaced,
                Err(_) if attempts == COMMIT_ATTEMPTS => {
                    return Err(Error::io(
                        "rename into place (the name kept changing under concurrent saves)",
                        &self.target,
                        io::Error::from_raw_os_error(libc::EBUSY),
                    ))
                }
                // Concurrent first saves with overwrite=True: the later one wins.
                Err(Retry::AsReplace) => {
                    check_replaceable(&self.target)?;
                    replace = true;
                }
                Err(Retry::AsNew) => replace = false,
                Err(Retry::Again) => {}
            }
        };
        fault::point("committed");
        if durable {
            fsync_dir(&parent)?;
        }
        self.committed = true;
        if matches!(replaced, Replaced::InStaging | Replaced::Removed) {
            if matches!(replaced, Replaced::InStaging) {
                // After the exchange, the staging name holds the old checkpoint.
                let _ = fs::remove_dir_all(&self.dir);
            }
            fault::point("old_removed");
        }
        Ok(())
    }

    /// Renames the staging directory to a name that should be free.
    fn claim_name(&self) -> Result<Attempt> {
        let taken = || {
            if self.overwrite {
                Ok(Err(Retry::AsReplace))
            } else {
                Err(Error::AlreadyExists {
                    path: self.target.clone(),
                    hint: " (created by someone else during the save)",
                })
            }
        };
        match rename_noreplace(&self.dir, &self.target) {
            Ok(()) => Ok(Ok(Replaced::Nothing)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => taken(),
            Err(e) if exchange_unsupported(&e) => {
                // Without RENAME_NOREPLACE, rename(2) would silently replace an empty
                // directory created at the target meanwhile: check first (a narrow
                // race remains on such filesystems).
                if fs::symlink_metadata(&self.target).is_ok() {
                    return taken();
                }
                fs::rename(&self.dir, &self.target).ctx("rename into place", &self.target)?;
                Ok(Ok(Replaced::Nothing))
            }
            Err(e) => Err(Error::io("rename into place", &self.target, e)),
        }
    }

    /// Replaces the checkpoint under the name.
    fn swap_in(&self, parent: &Path, name: &OsStr, durable: bool) -> Result<Attempt> {
        match rename_exchange(&self.dir, &self.target) {
            Ok(()) => Ok(Ok(Replaced::InStaging)),
            Err(e) if exchange_unsupported(&e) => {
                self.replace_by_two_renames(parent, name, durable)
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && fs::symlink_metadata(&self.target).is_err() =>
            {
                Ok(Err(Retry::AsNew))
            }
            Err(e) => Err(Error::io("swap in new checkpoint", &self.target, e)),
        }
    }

    /// Moves the old checkpoint aside, the new one in, and removes the old one. The
    /// old one is locked first, so `cleanup` does not put it back while we run.
    fn replace_by_two_renames(
        &self,
        parent: &Path,
        name: &OsStr,
        durable: bool,
    ) -> Result<Attempt> {
        let old = match lock_existing(&self.target)? {
            Some(old) => old,
            None if fs::symlink_metadata(&self.target).is_err() => return Ok(Err(Retry::AsNew)),
            None => return Ok(Err(Retry::Again)),
        };
        if !old
            .is_at(&self.target)
            .ctx("check old checkpoint", &self.target)?
        {
            return Ok(Err(Retry::Again));
        }
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
        drop(old);
        Ok(Ok(Replaced::Removed))
    }
}

/// Opens and locks the existing checkpoint at `target`, waiting a while for a
/// concurrent save that holds it. `None`: it is gone or changed meanwhile.
fn lock_existing(target: &Path) -> Result<Option<HeldDir>> {
    let old = match HeldDir::open(target) {
        Ok(old) => old,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open old checkpoint", target, e)),
    };
    let start = std::time::Instant::now();
    loop {
        match old.try_lock() {
            Ok(Lock::Taken) | Err(_) => return Ok(Some(old)),
            Ok(Lock::Busy) if start.elapsed() < OLD_LOCK_WAIT => {
                if !old.is_at(target).ctx("check old checkpoint", target)? {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Lock::Busy) => {
                return Err(Error::io(
                    "lock old checkpoint (held by another process)",
                    target,
                    io::Error::from_raw_os_error(libc::EWOULDBLOCK),
                ))
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Remove only what is still our directory; never what someone put in its place.
        if !self.committed && self.held.is_at(&self.dir).unwrap_or(false) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn exchange_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)
    )
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
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
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn rename_exchange(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, libc::RENAME_EXCHANGE)
}

#[cfg(target_os = "linux")]
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

#[cfg(not(target_os = "linux"))]
fn rename_exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOTSUP))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn rename_noreplace(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOTSUP))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn first_saves_racing_with_overwrite_both_succeed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("ck");
        // Both staged while the name was free; the first takes it, the second
        // replaces it instead of failing.
        let first = stage(&target, true).unwrap();
        let second = stage(&target, true).unwrap();
        fs::write(first.dir.join(MANIFEST_NAME), b"first").unwrap();
        fs::write(second.dir.join(MANIFEST_NAME), b"second").unwrap();
        first.commit(false).unwrap();
        second.commit(false).unwrap();
        assert_eq!(fs::read(target.join(MANIFEST_NAME)).unwrap(), b"second");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
        // Without overwrite the loser still gets AlreadyExists.
        let late = root.path().join("late");
        let a = stage(&late, false).unwrap();
        let b = stage(&late, false).unwrap();
        a.commit(false).unwrap();
        assert!(matches!(b.commit(false), Err(Error::AlreadyExists { .. })));
        // ...and a non-checkpoint that appeared meanwhile is never replaced.
        let odd = root.path().join("odd");
        let s = stage(&odd, true).unwrap();
        fs::create_dir(&odd).unwrap();
        fs::write(odd.join("notes.txt"), b"x").unwrap();
        assert!(matches!(s.commit(false), Err(Error::AlreadyExists { .. })));
        assert_eq!(fs::read(odd.join("notes.txt")).unwrap(), b"x");
    }

    #[test]
    fn a_file_created_after_the_sync_makes_the_commit_sync_the_directory_again() {
        let root = tempfile::tempdir().unwrap();
        let s = stage(&root.path().join("ck"), false).unwrap();
        assert!(!s.dir_synced());
        s.sync_with(&[]).unwrap(); // an empty directory, synced
        assert!(s.dir_synced());
        let a = s.create_file("a").unwrap();
        assert!(!s.dir_synced());
        s.sync_with(&[a]).unwrap();
        assert!(s.dir_synced());
        let _b = s.create_file(MANIFEST_NAME).unwrap();
        assert!(!s.dir_synced());
        s.commit(true).unwrap();
        assert!(root.path().join("ck").join("a").is_file());
    }

    #[test]
    fn a_vanished_or_swapped_staging_directory_is_never_committed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("ck");
        let s = stage(&target, false).unwrap();
        fs::remove_dir_all(&s.dir).unwrap();
        assert!(s.create_file("model.safetensors").is_err());
        fs::create_dir(&s.dir).unwrap(); // someone else's directory under our name
        fs::write(s.dir.join(MANIFEST_NAME), b"not ours").unwrap();
        let dir = s.dir.clone();
        assert!(matches!(s.commit(false), Err(Error::Io { .. })));
        assert!(!target.exists());
        // Dropping the failed staging left the other directory alone.
        assert_eq!(fs::read(dir.join(MANIFEST_NAME)).unwrap(), b"not ours");
    }
}
