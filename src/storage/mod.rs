//! The storage seam: where a checkpoint's bytes go and how they are committed.
//!
//! The writer plans files and the manifest and the reader validates and verifies; the
//! backends move bytes. A save goes through a [`Sink`]: tensor files, then small files
//! (shard indexes, side files), then `commit` with the manifest, which is the one step
//! that makes the checkpoint visible. Two backends:
//!
//! - [`local`]: a directory; staging directory + fsync + `renameat2` (the fast path).
//! - [`object`]: S3-compatible object storage; data under a prefix unique to the save,
//!   the manifest PUT last with a condition (`If-None-Match` / `If-Match`) as commit.

pub mod local;
pub mod object;
pub mod object_cleanup;
pub mod object_client;
pub mod object_parts;
mod pieces;
mod schedule;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::save_plan::PlannedFile;
use crate::writer::SaveOptions;

/// Per-call settings of an object store that override the `AWS_*` environment
/// variables: `("endpoint", "http://...")`, `("region", ...)`, `("access_key_id", ...)`
/// and the other keys of the `object_store` crate's S3 configuration, plus
/// `max_retries` and `retry_timeout` (seconds).
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    pub config: Vec<(String, String)>,
}

/// Where a checkpoint lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on a local (or mounted) filesystem.
    Local(PathBuf),
    /// `s3://bucket/prefix/name`.
    Object(object::ObjectUrl),
}

impl Location {
    /// A path, or an `s3://bucket/key` URL. Other URL schemes are refused rather than
    /// taken for relative paths.
    pub fn parse(text: &str) -> Result<Location> {
        if let Some(rest) = text.strip_prefix("s3://") {
            return Ok(Location::Object(object::ObjectUrl::parse(text, rest)?));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                return Err(Error::InvalidArgument(format!(
                    "{text}: unsupported URL scheme {scheme:?} (ckptio reads local paths and s3:// URLs)"
                )));
            }
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// [`Location::parse`] for what may be a path that is not UTF-8 (a local path then).
    pub fn from_path(path: PathBuf) -> Result<Location> {
        match path.to_str() {
            Some(text) if text.contains("://") => Location::parse(text),
            _ => Ok(Location::Local(path)),
        }
    }

    /// The path or URL, as errors name it.
    pub fn display_path(&self) -> &Path {
        match self {
            Location::Local(p) => p,
            Location::Object(u) => u.as_path(),
        }
    }
}

/// Appends the next bytes of a streamed file.
pub(crate) type Push<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;
/// Pushes a whole file's bytes, in order, through the given [`Push`].
pub(crate) type Producer<'a> = dyn FnMut(&mut Push<'_>) -> Result<()> + 'a;

/// A save in progress: its files are written, none is visible, until `commit`.
/// Dropping a sink without committing removes what it wrote (best effort).
pub(crate) trait Sink: Send + Sync {
    /// Writes every tensor file of the plan from the caller's memory; returns each
    /// tensor's xxh3, per file, in the order of the file's tensors.
    fn write_tensor_files(
        &self,
        files: &[PlannedFile],
        opts: &SaveOptions,
    ) -> Result<Vec<Vec<u64>>>;
    /// Writes a small file whole (shard index, side file).
    fn write_small_file(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()>;
    /// Writes a file of `len` bytes that `produce` pushes, in order, through the
    /// writer it is given (a copy from another checkpoint).
    fn write_streamed(
        &self,
        name: &str,
        len: u64,
        opts: &SaveOptions,
        produce: &mut Producer<'_>,
    ) -> Result<()>;
    /// Writes the manifest and makes the checkpoint visible under its name, atomically.
    fn commit(self: Box<Self>, manifest: &[u8], durable: bool) -> Result<()>;
}

/// Starts a save of checkpoint `checkpoint_id` at `location`.
pub(crate) fn stage(
    location: &Location,
    checkpoint_id: &str,
    opts: &SaveOptions,
) -> Result<Box<dyn Sink>> {
    match location {
        Location::Local(target) => Ok(Box::new(local::LocalSink::stage(target, opts.overwrite)?)),
        Location::Object(url) => Ok(Box::new(object::ObjectSink::stage(
            url,
            checkpoint_id,
            opts,
        )?)),
    }
}
