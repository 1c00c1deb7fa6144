//! Leftovers of interrupted saves: hidden `.NAME.ckptio-tmp-PID-NONCE` staging
//! directories and `.NAME.ckptio-old-PID-NONCE` old checkpoints moved aside by the
//! two-rename fallback.
//!
//! Cleanup removes only what it can prove dead: it takes the lock that a live save
//! holds on such a directory (see `held_dir.rs`) and removes the leftover while it holds
//! the lock itself. The pid in the name proves nothing: the saver may run in another
//! PID namespace (another container) or on another host sharing the filesystem.
//! Anything else named like a leftover (a file, a symlink, a FIFO, another user's
//! directory, a directory it cannot lock) is skipped with a note, never followed, and
//! never blocks a save. Names are matched as bytes, so non-UTF-8 names are handled.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::commit::{exchange_unsupported, rename_noreplace};
use crate::error::{IoContext, Result};
use crate::held_dir::{HeldDir, Lock};
use crate::manifest::MANIFEST_NAME;

pub(crate) const TMP_TAG: &str = ".ckptio-tmp-";
pub(crate) const OLD_TAG: &str = ".ckptio-old-";

/// What [`cleanup_leftovers`] did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// Leftovers removed, or (old checkpoints moved aside) put back under their name.
    pub done: Vec<PathBuf>,
    /// Entries named like leftovers that were left alone, each with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A parsed `.NAME<TAG>PID-NONCE`.
#[derive(Debug, PartialEq, Eq)]
struct SideName<'a> {
    name: &'a [u8],
    old: bool,
}

fn rfind(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle.as_bytes())
}

fn parse_side_name(file_name: &[u8]) -> Option<SideName<'_>> {
    let rest = file_name.strip_prefix(b".")?;
    let (at, old) = match (rfind(rest, TMP_TAG), rfind(rest, OLD_TAG)) {
        (Some(t), Some(o)) if o > t => (o, true),
        (Some(t), _) => (t, false),
        (None, Some(o)) => (o, true),
        (None, None) => return None,
    };
    let name = &rest[..at];
    let tail = &rest[at + TMP_TAG.len()..];
    let dash = tail.iter().position(|&b| b == b'-')?;
    let (pid, nonce) = (&tail[..dash], &tail[dash + 1..]);
    let pid_ok = !pid.is_empty() && pid.len() <= 10 && pid.iter().all(u8::is_ascii_digit);
    let nonce_ok = nonce.len() == 16 && nonce.iter().all(u8::is_ascii_hexdigit);
    let name_ok = !matches!(name, b"" | b"." | b"..");
    (pid_ok && nonce_ok && name_ok).then_some(SideName { name, old })
}

/// What happened to one leftover.
enum Outcome {
    Done,
    /// It went away meanwhile (its save finished, or another cleanup removed it).
    Gone,
    Skipped(String),
}

fn clean_one(parent: &Path, path: &Path, side: &SideName) -> Outcome {
    let held = match HeldDir::open(path) {
        Ok(held) => held,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Outcome::Gone,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Outcome::Skipped(
                "not a directory, so not left by ckptio (it leaves only directories); left alone"
                    .into(),
            )
        }
        Err(e) => return Outcome::Skipped(format!("cannot open it ({e}); left alone")),
    };
    match held.try_lock() {
        Ok(Lock::Taken) => {}
        Ok(Lock::Busy) => {
            return Outcome::Skipped("in use: a save in progress holds its lock".into())
        }
        Err(e) => {
            return Outcome::Skipped(format!(
                "cannot lock it to prove that its save is over ({e}); left alone"
            ))
        }
    }
    // Its saver may have released the lock by committing it under the real name.
    match held.is_at(path) {
        Ok(true) => {}
        Ok(false) => return Outcome::Gone,
        Err(e) => return Outcome::Skipped(format!("cannot check it ({e}); left alone")),
    }
    if side.old && held.has_file(OsStr::new(MANIFEST_NAME)) {
        let target = parent.join(OsStr::from_bytes(side.name));
        match restore(path, &target) {
            Ok(true) => return Outcome::Done,
            // A newer checkpoint has the name: the old one is removed below.
            Ok(false) => {}
            Err(why) => return Outcome::Skipped(why),
        }
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Outcome::Done,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Gone,
        Err(e) => Outcome::Skipped(format!("cannot remove it ({e})")),
    }
}

/// Puts an old checkpoint moved aside back under its name if that is free. `false`:
/// the name is taken.
fn restore(aside: &Path, target: &Path) -> std::result::Result<bool, String> {
    // Never hand the name to a directory another user planted.
    let owner = fs::symlink_metadata(aside)
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    // SAFETY: geteuid cannot fail.
    if owner != unsafe { libc::geteuid() } {
        return Err("an old checkpoint owned by another user; not put back, left alone".into());
    }
    let renamed = match rename_noreplace(aside, target) {
        Err(e) if exchange_unsupported(&e) => {
            if fs::symlink_metadata(target).is_ok() {
                return Ok(false);
            }
            fs::rename(aside, target)
        }
        other => other,
    };
    match renamed {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => Ok(false),
        Err(e) => Err(format!("cannot put it back as {} ({e})", target.display())),
    }
}

/// Removes what dead saves left in `parent` (for one target name, or all), and puts
/// back an old checkpoint that an interrupted replace had moved aside if its name is
/// free. Fails only if `parent` cannot be listed; every entry it cannot handle is
/// reported in [`Cleanup::skipped`].
pub fn cleanup_leftovers(parent: &Path, only: Option<&OsStr>) -> Result<Cleanup> {
    let mut report = Cleanup::default();
    for entry in fs::read_dir(parent).ctx("list", parent)? {
        let entry = entry.ctx("list", parent)?;
        let file_name = entry.file_name();
        let Some(side) = parse_side_name(file_name.as_bytes()) else {
            continue;
        };
        if only.is_some_and(|o| o.as_bytes() != side.name) {
            continue;
        }
        let path = entry.path();
        match clean_one(parent, &path, &side) {
            Outcome::Done => report.done.push(path),
            Outcome::Gone => {}
            Outcome::Skipped(why) => report.skipped.push((path, why)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_side_names_as_bytes() {
        let side = |name: &'static [u8], old| Some(SideName { name, old });
        assert_eq!(
            parse_side_name(b".step-1.ckptio-tmp-42-00000000deadbeef"),
            side(b"step-1", false)
        );
        assert_eq!(
            parse_side_name(b".a.ckptio-old-7-0123456789abcdef"),
            side(b"a", true)
        );
        assert_eq!(
            parse_side_name(b".\xff\xfe.ckptio-tmp-1-0123456789abcdef"),
            side(b"\xff\xfe", false)
        );
        // The last tag counts: a name may contain a tag.
        assert_eq!(
            parse_side_name(b".x.ckptio-tmp-1-0123456789abcdef.ckptio-old-2-0123456789abcdef"),
            side(b"x.ckptio-tmp-1-0123456789abcdef", true)
        );
        for bad in [
            &b"step-1"[..],
            b".x.ckptio-tmp-1-zz",
            b".x.ckptio-tmp--0123456789abcdef",
            b".x.ckptio-tmp-1-0123456789abcdef0",
            b"..ckptio-old-1-0123456789abcdef",
            b"...ckptio-old-1-0123456789abcdef",
            b".ckptio-old-1-0123456789abcdef",
        ] {
            assert_eq!(parse_side_name(bad), None, "{:?}", OsStr::from_bytes(bad));
        }
    }

    #[test]
    fn restores_an_old_checkpoint_moved_aside_and_removes_a_dead_staging_dir() {
        let root = tempfile::tempdir().unwrap();
        let aside = root
            .path()
            .join(".ck.ckptio-old-2147483646-0123456789abcdef");
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join(MANIFEST_NAME), b"{}").unwrap();
        let tmp = root
            .path()
            .join(".ck.ckptio-tmp-2147483646-0123456789abcdee");
        fs::create_dir(&tmp).unwrap();
        let report = cleanup_leftovers(root.path(), None).unwrap();
        assert_eq!(report.done.len(), 2);
        assert!(report.skipped.is_empty());
        assert!(root.path().join("ck").join(MANIFEST_NAME).is_file());
        assert!(!tmp.exists());
    }

    #[test]
    fn skips_what_is_locked_or_not_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let live = root.path().join(".ck.ckptio-tmp-1-0123456789abcdef");
        fs::create_dir(&live).unwrap();
        let saver = HeldDir::open(&live).unwrap();
        assert_eq!(saver.try_lock().unwrap(), Lock::Taken);
        let file = root.path().join(".ck.ckptio-tmp-2-0123456789abcdef");
        fs::write(&file, b"planted").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(elsewhere.path().join(MANIFEST_NAME), b"{}").unwrap();
        let link = root.path().join(".ck.ckptio-old-3-0123456789abcdef");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();

        let report = cleanup_leftovers(root.path(), Some(OsStr::new("ck"))).unwrap();
        assert!(report.done.is_empty());
        let mut skipped: Vec<&Path> = report.skipped.iter().map(|(p, _)| p.as_path()).collect();
        skipped.sort();
        assert_eq!(skipped, [link.as_path(), live.as_path(), file.as_path()]);
        assert!(live.is_dir() && file.is_file() && link.is_symlink());
        assert!(!root.path().join("ck").exists());

        drop(saver); // the save died: its directory is now removed
        let report = cleanup_leftovers(root.path(), None).unwrap();
        assert_eq!(report.done, std::slice::from_ref(&live));
        assert!(!live.exists());
    }
}
