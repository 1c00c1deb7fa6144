//! Saving: plan the files and the manifest (`save_plan`, which checks the limits),
//! hand the tensor files to the storage backend (`storage/`), which streams each tensor
//! from the caller's memory and hashes it as it goes (every byte is read once), then
//! fill in the checksums and commit with the manifest.

use std::path::Path;

use serde_json::value::RawValue;

use crate::checksum;
use crate::dtype::Dtype;
use crate::error::Result;
use crate::manifest::{self, Kind};
use crate::save_plan::{self, Planned};
use crate::storage::{self, Location, StorageOptions};

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

/// How a save runs: one typed object from the Python API through the binding to here.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub overwrite: bool,
    /// fsync files and directories so the checkpoint survives power loss. (Object
    /// stores are durable once a PUT returns; there it changes nothing.)
    pub durable: bool,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Split a group into shards of at most this many data bytes (a larger tensor
    /// gets a shard of its own).
    pub max_shard_bytes: Option<u64>,
    /// Object stores: bytes per multipart part.
    pub part_size: usize,
    /// Object stores: parts (requests) in flight at once.
    pub parts_in_flight: usize,
    /// Object stores: settings that override the `AWS_*` environment variables.
    pub storage: StorageOptions,
}

/// Default multipart part size: large enough for high throughput per request, small
/// enough that the parts in flight stay a modest buffer.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 8;

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            overwrite: false,
            durable: true,
            threads: 0,
            max_shard_bytes: None,
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            storage: StorageOptions::default(),
        }
    }
}

/// Saves a checkpoint directory at `target` (a local path).
///
/// `user` is stored verbatim in the manifest (metadata, step, optimizer skeleton).
/// Everything but the tensor data is planned first and checked against the reader's
/// limits, so a save the reader would refuse fails before it touches the target. On
/// any error nothing is left behind and an existing checkpoint is untouched.
pub fn save(
    target: &Path,
    kind: Kind,
    groups: &[GroupSource],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<()> {
    let location = Location::Local(target.to_path_buf());
    save_with_files(&location, kind, groups, &[], user, opts)
}

/// [`save`] to any location, plus side files written whole and committed with the
/// tensors.
pub fn save_with_files(
    location: &Location,
    kind: Kind,
    groups: &[GroupSource],
    side_files: &[SideFile],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<()> {
    let Planned {
        files,
        indexes,
        mut manifest,
        locations,
        manifest_len,
    } = save_plan::plan(kind, groups, side_files, user, opts)?;
    let sink = storage::stage(location, &manifest.checkpoint_id, opts)?;
    let hashes = sink.write_tensor_files(&files, opts)?;
    for (name, bytes) in &indexes {
        sink.write_small_file(name, bytes, opts.durable)?;
    }
    for f in side_files {
        sink.write_small_file(f.name, f.data, opts.durable)?;
    }
    for (rec, &(fi, ti)) in manifest.tensors.iter_mut().zip(&locations) {
        rec.xxh3 = checksum::to_hex(hashes[fi][ti]);
    }
    let bytes = manifest::encode(&manifest);
    debug_assert_eq!(bytes.len(), manifest_len, "checked manifest length changed");
    sink.commit(&bytes, opts.durable)
}
