//! Verifying an open checkpoint: every header, tensor and side file against the
//! manifest's checksums, over read-only mappings of the files that were opened.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{open_regular, parse_hex, Checkpoint, SideFile, TensorInfo, PROGRESS_CHUNK};
use crate::checksum;
use crate::error::{Error, IoContext, Result};
use crate::format;
use crate::limits::MAX_SIDE_FILE_LEN;
use crate::manifest::{self, FileRole, MANIFEST_NAME};
use crate::pool;

impl Checkpoint {
    /// Checks every byte: headers, tensor data and side files against their checksums,
    /// over read-only mappings of the files that were opened (so writes the caller made
    /// to loaded arrays are not mistaken for corruption). Reports every bad tensor,
    /// naming the first. Returns the names of entries in the directory that the
    /// manifest does not list (files added after the save): not corruption, but
    /// nothing covers them.
    pub fn verify(&self, threads: usize) -> Result<Vec<String>> {
        self.verify_with_progress(threads, &|_, _| {})
    }

    /// [`Checkpoint::verify`], calling `progress(done, total)` (tensor bytes hashed so
    /// far, of all) from the worker threads as it goes.
    pub fn verify_with_progress(
        &self,
        threads: usize,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Vec<String>> {
        self.require_checksums()?;
        for f in &self.files {
            // Same file, same size (a truncated mapping would fault); closed at once.
            self.reopen(&f.name, f.id)?;
        }
        let tensor_records = self
            .manifest
            .files
            .iter()
            .filter(|r| r.role == FileRole::Tensors);
        for (f, rec) in self.files.iter().zip(tensor_records) {
            let map = f.pristine();
            let hlen = format::header_len(&f.path, map, map.len() as u64)?;
            if checksum::hash(&map[..hlen as usize]) != parse_hex(&f.path, "header", &rec.xxh3)? {
                return Err(Error::corrupt(&f.path, None, "header checksum mismatch"));
            }
        }
        let total: u64 = self.tensors.iter().map(|t| t.end - t.begin).sum();
        let done = AtomicU64::new(0);
        progress(0, total);
        let bad: Vec<&TensorInfo> = pool::get(threads)?.install(|| {
            self.tensors
                .par_iter()
                .filter(|t| {
                    let map = self.files[t.file].pristine();
                    let mut h = checksum::Hasher::new();
                    for chunk in map[t.begin as usize..t.end as usize].chunks(PROGRESS_CHUNK) {
                        h.update(chunk);
                        let n = chunk.len() as u64;
                        progress(done.fetch_add(n, Ordering::Relaxed) + n, total);
                    }
                    h.finish() != t.xxh3
                })
                .collect()
        });
        for f in &self.files {
            f.release_pristine();
        }
        if let Some(first) = bad.first() {
            let names: Vec<String> = bad
                .iter()
                .map(|t| format!("{}/{}", t.group, t.name))
                .collect();
            return Err(Error::corrupt(
                &self.files[first.file].path,
                Some(&first.name),
                format!(
                    "data checksum mismatch ({} bad tensor(s): {})",
                    bad.len(),
                    names.join(", ")
                ),
            ));
        }
        self.verify_side_files()
    }

    fn verify_side_files(&self) -> Result<Vec<String>> {
        let records = self
            .manifest
            .files
            .iter()
            .filter(|r| r.role.is_whole_file());
        for (rec, side) in records.zip(&self.side_files) {
            self.read_whole_file(rec, side.as_ref())?;
        }
        let listed = self.manifest.file_names();
        let mut uncovered = Vec::new();
        for entry in self.list_dir()? {
            let name = entry.ctx("list", &self.dir)?.file_name();
            let name = name.to_string_lossy();
            if name != MANIFEST_NAME && !listed.contains(&*name) {
                uncovered.push(name.into_owned());
            }
        }
        uncovered.sort();
        Ok(uncovered)
    }

    /// The bytes of a side file (role `side` or `index`), checked against the
    /// manifest's size and checksum.
    pub fn read_side_file(&self, name: &str) -> Result<Vec<u8>> {
        let mut whole = self
            .manifest
            .files
            .iter()
            .filter(|r| r.role.is_whole_file())
            .zip(&self.side_files);
        match whole.find(|(r, _)| r.name == name) {
            Some((rec, side)) => self.read_whole_file(rec, side.as_ref()),
            None => Err(Error::InvalidArgument(format!(
                "{}: no side file {name:?} in the manifest",
                self.dir.display()
            ))),
        }
    }

    /// The bytes of a file checked whole (`side`: the file as found at open), checked
    /// against the manifest's size and checksum.
    fn read_whole_file(
        &self,
        rec: &manifest::FileRecord,
        side: Option<&SideFile>,
    ) -> Result<Vec<u8>> {
        let path = self.dir.join(&rec.name);
        let (len, bytes): (u64, Vec<u8>) = match side {
            Some(side) => {
                self.reopen(&rec.name, side.id)?;
                (
                    side.id.len,
                    side.map.as_deref().unwrap_or_default().to_vec(),
                )
            }
            None => {
                // Not there at open: open it again for the error (or the file).
                let file = open_regular(&self.dir_fd, &self.dir, &rec.name)?;
                let len = file.metadata().ctx("stat", &path)?.len();
                let bytes = if len == rec.size && len <= MAX_SIDE_FILE_LEN {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, 0).ctx("read", &path)?;
                    buf
                } else {
                    Vec::new()
                };
                (len, bytes)
            }
        };
        if len != rec.size {
            return Err(Error::corrupt(
                &path,
                None,
                "file size differs from the manifest",
            ));
        }
        // Side files are small; the cap bounds what a hostile one makes us read.
        if len > MAX_SIDE_FILE_LEN {
            return Err(Error::format(
                &path,
                format!("side file is {len} bytes, over the {MAX_SIDE_FILE_LEN}-byte cap"),
            ));
        }
        if checksum::to_hex(checksum::hash(&bytes)) != rec.xxh3 {
            return Err(Error::corrupt(&path, None, "checksum mismatch"));
        }
        Ok(bytes)
    }

    /// Lists the directory that was opened (through `/proc/self/fd` on Linux), not
    /// whatever the name leads to now.
    fn list_dir(&self) -> Result<fs::ReadDir> {
        use std::os::fd::AsRawFd;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", self.dir_fd.as_raw_fd()));
        fs::read_dir(by_fd).or_else(|_| fs::read_dir(&self.dir).ctx("list", &self.dir))
    }
}
