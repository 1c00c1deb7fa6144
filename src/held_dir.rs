//! A directory held open (never through a symlink) and, once locked, `flock`ed.
//!
//! This is how a save proves it is alive to `cleanup`, in any PID namespace and from
//! any host that shares the lock: the saver holds an exclusive `flock` on its staging
//! directory (and on an old checkpoint it moves aside) until it commits or gives up,
//! and `cleanup` removes a leftover only while it holds that lock itself. The lock is
//! released by the kernel when the saver dies, however it dies.
//!
//! Files are created relative to the held descriptor, so a staging directory that was
//! removed under the saver cannot receive them (creating a file in a removed directory
//! fails), and the path is compared with the descriptor (device and inode) before the
//! directory is renamed or removed.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// An open directory; see the module documentation.
#[derive(Debug)]
pub struct HeldDir {
    dir: File,
    dev: u64,
    ino: u64,
}

/// What an attempt to lock a held directory found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lock {
    /// We hold the lock now.
    Taken,
    /// Another open file description holds it: a live save.
    Busy,
}

impl HeldDir {
    /// Opens the directory at `path`. A symlink (never followed) or anything else that
    /// is not a directory (a FIFO included: it is never opened) fails with `ENOTDIR` or
    /// `ELOOP`.
    pub fn open(path: &Path) -> io::Result<HeldDir> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let m = dir.metadata()?;
        Ok(HeldDir {
            dev: m.dev(),
            ino: m.ino(),
            dir,
        })
    }

    /// Tries to take the exclusive lock without waiting. An error (`ENOLCK`,
    /// `EOPNOTSUPP`: a filesystem without locks) means nothing can be proven.
    pub fn try_lock(&self) -> io::Result<Lock> {
        loop {
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::flock(self.dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock::Taken);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(Lock::Busy),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Is `path` (not followed if a symlink) still this directory?
    pub fn is_at(&self, path: &Path) -> io::Result<bool> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(m.dev() == self.dev && m.ino() == self.ino),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the new file `name` in this directory for writing (`O_EXCL`, never
    /// through a symlink).
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let c_name = CString::new(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid NUL-terminated name relative to a descriptor we own.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c_name.as_ptr(), flags, 0o644) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Does the directory hold a regular file `name` (a symlink does not count)?
    pub fn has_file(&self, name: &OsStr) -> bool {
        let Ok(c_name) = CString::new(name.as_bytes()) else {
            return false;
        };
        // SAFETY: `stat` is plain old data, filled in by the call before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid name relative to a descriptor we own, and a valid buffer.
        let rc = unsafe {
            libc::fstatat(
                self.dir.as_raw_fd(),
                c_name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    }

    /// fsyncs the directory.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// The open directory (to fsync it alongside files).
    pub fn as_file(&self) -> &File {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_per_open_and_follows_renames() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let saver = HeldDir::open(&a).unwrap();
        assert_eq!(saver.try_lock().unwrap(), Lock::Taken);
        // Another open of the same directory (same process or not) cannot take it.
        let other = HeldDir::open(&a).unwrap();
        assert_eq!(other.try_lock().unwrap(), Lock::Busy);
        let b = root.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        assert!(saver.is_at(&b).unwrap() && !saver.is_at(&a).unwrap());
        assert_eq!(HeldDir::open(&b).unwrap().try_lock().unwrap(), Lock::Busy);
        drop(saver);
        assert_eq!(other.try_lock().unwrap(), Lock::Taken);
    }

    #[test]
    fn refuses_symlinks_and_files_and_creates_relative_to_the_descriptor() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let link = root.path().join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = HeldDir::open(&link).unwrap_err();
        assert!(matches!(
            err.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR)
        ));
        let file = root.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = HeldDir::open(&file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));

        let held = HeldDir::open(&dir).unwrap();
        held.create_file("one").unwrap();
        assert!(held.has_file(OsStr::new("one")));
        assert!(held.create_file("one").is_err()); // O_EXCL
        std::fs::remove_dir_all(&dir).unwrap();
        // The directory is gone: nothing can be created in it any more.
        assert!(held.create_file("two").is_err());
        assert!(!held.is_at(&dir).unwrap());
    }
}
