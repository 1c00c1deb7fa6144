//! Copying a checkpoint between places (local → S3, S3 → local, S3 → S3, local →
//! local): every file is streamed byte for byte, every tensor and header checked
//! against its checksum on the way, and the destination commits atomically, as a save
//! does. A copy keeps the checkpoint id, so it is the same checkpoint, elsewhere.

use std::borrow::Cow;
use std::ops::Range;

use crate::checksum::Hasher;
use crate::error::{Error, Result};
use crate::manifest::{self, FileRole, Manifest};
use crate::reader::{self, parse_hex, Checkpoint, TensorInfo};
use crate::remote::{self, RemoteCheckpoint, RANGES_IN_FLIGHT, RANGE_BYTES};
use crate::storage::{self, Location, Push, StorageOptions};
use crate::writer::SaveOptions;

/// An open source checkpoint.
enum Source {
    Local(Checkpoint),
    Remote(RemoteCheckpoint),
}

impl Source {
    fn open(location: &Location, options: &StorageOptions) -> Result<Source> {
        match location {
            Location::Local(path) => {
                let ckpt = reader::open(path)?;
                ckpt.require_checksums()?;
                Ok(Source::Local(ckpt))
            }
            Location::Object(url) => Ok(Source::Remote(remote::open(url, options)?)),
        }
    }

    /// The source's manifest, tensor records included.
    fn manifest(&self) -> Cow<'_, Manifest> {
        match self {
            Source::Local(c) => Cow::Owned(c.manifest_with_tensors()),
            Source::Remote(c) => Cow::Borrowed(&c.manifest),
        }
    }

    fn tensors(&self) -> &[TensorInfo] {
        match self {
            Source::Local(c) => &c.tensors,
            Source::Remote(c) => &c.tensors,
        }
    }

    fn read_side_file(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            Source::Local(c) => c.read_side_file(name),
            Source::Remote(c) => c.read_side_file(name),
        }
    }

    /// Pushes tensor file `file` (`len` bytes) through `push`, in order.
    fn stream_file(&self, file: usize, len: u64, push: &mut Push<'_>) -> Result<()> {
        match self {
            Source::Local(c) => {
                for chunk in c.files[file].pristine()[..len as usize].chunks(RANGE_BYTES as usize) {
                    push(chunk)?;
                }
            }
            Source::Remote(c) => {
                let ranges: Vec<Range<u64>> = (0..len)
                    .step_by(RANGE_BYTES as usize)
                    .map(|at| at..len.min(at + RANGE_BYTES))
                    .collect();
                for batch in ranges.chunks(RANGES_IN_FLIGHT) {
                    for bytes in c.read_ranges(file, batch.to_vec())? {
                        push(&bytes)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a tensor file's bytes as they stream past: the header, then each tensor.
struct FileCheck<'a> {
    file: &'a std::path::Path,
    /// (begin, end, expected xxh3, name): the header first, then the tensors by offset.
    spans: Vec<(u64, u64, u64, Option<&'a str>)>,
    next: usize,
    hasher: Hasher,
    pos: u64,
}

impl<'a> FileCheck<'a> {
    fn new(
        file: &'a std::path::Path,
        header_xxh3: u64,
        len: u64,
        tensors: &[&'a TensorInfo],
    ) -> Self {
        let data_start = tensors.iter().map(|t| t.begin).min().unwrap_or(len);
        let mut spans = vec![(0, data_start, header_xxh3, None)];
        spans.extend(
            tensors
                .iter()
                .map(|t| (t.begin, t.end, t.xxh3, Some(t.name.as_str()))),
        );
        spans.sort_by_key(|s| (s.0, s.1));
        FileCheck {
            file,
            spans,
            next: 0,
            hasher: Hasher::new(),
            pos: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<()> {
        while self.next < self.spans.len() {
            let (_, end, expected, name) = self.spans[self.next];
            let take = ((end - self.pos) as usize).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.pos += take as u64;
            bytes = &bytes[take..];
            if self.pos < end {
                return Ok(());
            }
            if self.hasher.finish() != expected {
                let what = if name.is_some() {
                    "data checksum mismatch"
                } else {
                    "header checksum mismatch"
                };
                return Err(Error::corrupt(self.file, name, what));
            }
            self.hasher = Hasher::new();
            self.next += 1;
        }
        Ok(())
    }
}

/// Copies the checkpoint at `src` to `dst`; `progress(done, total)` counts tensor-file
/// bytes. Refuses an existing `dst` unless `opts.overwrite`.
pub fn copy(
    src: &Location,
    dst: &Location,
    src_options: &StorageOptions,
    opts: &SaveOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let source = Source::open(src, src_options)?;
    let manifest = source.manifest();
    if let Location::Object(url) = dst {
        // The same save already there: its data lives under the same prefix, which a
        // copy must neither rewrite under readers nor remove on failure.
        if let Ok(existing) = remote::open(url, &opts.storage) {
            if existing.manifest.checkpoint_id == manifest.checkpoint_id && opts.overwrite {
                return Ok(());
            }
        }
    }
    let sink = storage::stage(dst, &manifest.checkpoint_id, opts)?;
    let records: Vec<&manifest::FileRecord> = manifest
        .files
        .iter()
        .filter(|r| r.role == FileRole::Tensors)
        .collect();
    let total: u64 = records.iter().map(|r| r.size).sum();
    let mut done = 0u64;
    progress(0, total);
    for (fi, rec) in records.iter().enumerate() {
        let shown = src.display_path().join(&rec.name);
        let tensors: Vec<&TensorInfo> = source.tensors().iter().filter(|t| t.file == fi).collect();
        let mut check = FileCheck::new(
            &shown,
            parse_hex(&shown, "header", &rec.xxh3)?,
            rec.size,
            &tensors,
        );
        sink.write_streamed(&rec.name, rec.size, opts, &mut |push: &mut Push<'_>| {
            source.stream_file(fi, rec.size, &mut |bytes: &[u8]| {
                check.feed(bytes)?;
                push(bytes)?;
                done += bytes.len() as u64;
                progress(done, total);
                Ok(())
            })
        })?;
        if check.next != check.spans.len() {
            return Err(Error::corrupt(
                &shown,
                None,
                "file shorter than its header says",
            ));
        }
    }
    for rec in manifest.files.iter().filter(|r| r.role.is_whole_file()) {
        let bytes = source.read_side_file(&rec.name)?;
        sink.write_small_file(&rec.name, &bytes, opts.durable)?;
    }
    sink.commit(&manifest::encode(&manifest), opts.durable)
}
