//! A save, planned before anything is written: the files' layouts and headers, the
//! shard indexes and the manifest (its tensor checksums still placeholders), checked
//! against the reader's limits. What would not open is refused here, before the
//! target is touched.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::value::RawValue;

use crate::checksum;
use crate::commit;
use crate::dtype::{byte_len, Dtype};
use crate::error::{Error, Result};
use crate::format::{self, FileLayout};
use crate::limits::{self, MAX_MANIFEST_LEN, MAX_SIDE_FILE_LEN, MAX_USER_LEN, MAX_USER_NODES};
use crate::manifest::{self, FileRecord, FileRole, Kind, Manifest, TensorRecord, MANIFEST_NAME};
use crate::writer::{GroupSource, SaveOptions, SideFile, TensorSource};

/// A file to write: its layout and, per tensor, where the bytes come from.
pub(crate) struct PlannedFile<'a> {
    pub name: String,
    pub group: &'a str,
    pub layout: FileLayout,
    pub sources: Vec<&'a TensorSource<'a>>,
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
            limits::check_shape(t.dtype, t.shape)
                .map_err(|msg| Error::InvalidArgument(format!("tensor {:?}: {msg}", t.name)))?;
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
        if f.data.len() as u64 > MAX_SIDE_FILE_LEN {
            return Err(Error::InvalidArgument(format!(
                "side file {:?} is {} bytes, over the {MAX_SIDE_FILE_LEN}-byte cap",
                f.name,
                f.data.len(),
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
            let layout = format::plan(&specs, &meta).map_err(|e| match e {
                Error::InvalidArgument(msg) => Error::InvalidArgument(format!("{name}: {msg}")),
                e => e,
            })?;
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

/// The Hugging Face sharded-checkpoint index of one group (None: not sharded).
fn shard_index(group: &str, files: &[PlannedFile]) -> Option<(String, Vec<u8>)> {
    let shards: Vec<&PlannedFile> = files.iter().filter(|f| f.group == group).collect();
    if shards.len() < 2 {
        return None;
    }
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for f in &shards {
        for t in &f.layout.tensors {
            total += t.len();
            weight_map.insert(t.name.clone(), f.name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let mut bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    bytes.push(b'\n');
    Some((format!("{group}.safetensors.index.json"), bytes))
}

/// Checksum written in a planned manifest before the data is hashed: the same width
/// as a real one, so the planned manifest has the final manifest's length and shape.
const PLACEHOLDER_XXH3: &str = "0000000000000000";

/// Everything a save will write but the tensor data, laid out before any of it is.
pub(crate) struct Planned<'a> {
    pub files: Vec<PlannedFile<'a>>,
    /// Shard indexes: (file name, bytes).
    pub indexes: Vec<(String, Vec<u8>)>,
    /// The manifest, its tensor checksums still placeholders.
    pub manifest: Manifest,
    /// Per manifest tensor record: (index into `files`, index into that file's tensors).
    pub locations: Vec<(usize, usize)>,
    /// Length of the encoded manifest (the final one has the same).
    pub manifest_len: usize,
}

/// Plans a save and checks it against every limit the reader enforces.
pub(crate) fn plan<'a>(
    kind: Kind,
    groups: &'a [GroupSource<'a>],
    side_files: &[SideFile],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<Planned<'a>> {
    let checkpoint_id = checksum::to_hex(commit::nonce());
    plan_as(&checkpoint_id, kind, groups, side_files, user, opts)
}

/// [`plan`] for a save whose checkpoint id is already chosen (one part of a checkpoint
/// that several processes write, `dcp.rs`).
pub(crate) fn plan_as<'a>(
    checkpoint_id: &str,
    kind: Kind,
    groups: &'a [GroupSource<'a>],
    side_files: &[SideFile],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<Planned<'a>> {
    validate(groups)?;
    validate_side_files(side_files)?;
    check_user(&user)?;
    let mut planned = lay_out(checkpoint_id, kind, groups, side_files, user, opts)?;
    let encoded = manifest::encode(&planned.manifest);
    check_manifest(&encoded)?;
    planned.manifest_len = encoded.len();
    // An index lists fewer bytes of names than the manifest: checked second, it fails
    // only if the manifest fits.
    for (name, bytes) in &planned.indexes {
        if bytes.len() as u64 > MAX_SIDE_FILE_LEN {
            return Err(Error::InvalidArgument(format!(
                "{name}: the shard index would be {} bytes, over the limit of {MAX_SIDE_FILE_LEN}",
                bytes.len()
            )));
        }
    }
    Ok(planned)
}

fn lay_out<'a>(
    checkpoint_id: &str,
    kind: Kind,
    groups: &'a [GroupSource<'a>],
    side_files: &[SideFile],
    user: Box<RawValue>,
    opts: &SaveOptions,
) -> Result<Planned<'a>> {
    let files = plan_files(groups, opts, checkpoint_id)?;
    let indexes: Vec<(String, Vec<u8>)> = groups
        .iter()
        .filter_map(|g| shard_index(g.name, &files))
        .collect();
    let mut file_records: Vec<FileRecord> = files
        .iter()
        .map(|f| FileRecord {
            name: f.name.clone(),
            role: FileRole::Tensors,
            size: f.layout.file_len,
            xxh3: checksum::to_hex(checksum::hash(&f.layout.header)),
        })
        .collect();
    for (name, bytes) in &indexes {
        file_records.push(FileRecord {
            name: name.clone(),
            role: FileRole::Index,
            size: bytes.len() as u64,
            xxh3: checksum::to_hex(checksum::hash(bytes)),
        });
    }
    for f in side_files {
        file_records.push(FileRecord {
            name: f.name.to_owned(),
            role: FileRole::Side,
            size: f.data.len() as u64,
            xxh3: checksum::to_hex(checksum::hash(f.data)),
        });
    }
    // Tensor records in the caller's order.
    let mut where_is: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        for (ti, t) in f.sources.iter().enumerate() {
            where_is.insert((f.group, t.name), (fi, ti));
        }
    }
    let mut tensors = Vec::with_capacity(where_is.len());
    let mut locations = Vec::with_capacity(where_is.len());
    for g in groups {
        for t in &g.tensors {
            let (fi, ti) = where_is[&(g.name, t.name)];
            let f = &files[fi];
            let layout = &f.layout.tensors[ti];
            tensors.push(TensorRecord {
                group: g.name.to_owned(),
                name: layout.name.clone(),
                file: f.name.clone(),
                dtype: layout.dtype.name().into(),
                shape: layout.shape.clone(),
                byte_range: [layout.begin, layout.end],
                xxh3: PLACEHOLDER_XXH3.into(),
            });
            locations.push((fi, ti));
        }
    }
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: manifest::FORMAT_VERSION,
        kind,
        checkpoint_id: checkpoint_id.to_owned(),
        checksum: checksum::ALGORITHM.into(),
        files: file_records,
        tensors,
        user,
    };
    Ok(Planned {
        files,
        indexes,
        manifest,
        locations,
        manifest_len: 0,
    })
}

/// The reader's limits on the user section, with errors that name the top-level key
/// (`metadata`, `optimizer`, ...) at fault. Checked before anything else is planned.
pub(crate) fn check_user(user: &RawValue) -> Result<()> {
    let text = user.get();
    if !text.trim_start().starts_with('{') {
        return Err(Error::InvalidArgument(
            "the user section must be a JSON object".into(),
        ));
    }
    let max_depth = limits::MAX_JSON_DEPTH - limits::USER_SECTION_DEPTH;
    let whole = limits::json_extent(text.as_bytes());
    // (what is over, by how much, the limit, the measure of one value).
    type Measure = fn(&str) -> u64;
    let (what, amount, limit, measure): (&str, u64, u64, Measure) =
        if text.len() as u64 > MAX_USER_LEN {
            ("bytes", text.len() as u64, MAX_USER_LEN, |v| v.len() as u64)
        } else if whole.depth > max_depth {
            ("levels deep", whole.depth as u64, max_depth as u64, |v| {
                limits::json_extent(v.as_bytes()).depth as u64
            })
        } else if whole.nodes > MAX_USER_NODES {
            ("JSON values", whole.nodes, MAX_USER_NODES, |v| {
                limits::json_extent(v.as_bytes()).nodes
            })
        } else {
            return Ok(());
        };
    // Which key? RawValue captures a value of any depth without recursing.
    let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text).unwrap_or_default();
    let culprit = fields
        .iter()
        .map(|(k, v)| (measure(v.get()), k))
        .max()
        .map(|(n, k)| format!(" ({n} in {k:?})"))
        .unwrap_or_default();
    Err(Error::InvalidArgument(format!(
        "the user section (metadata, optimizer state) is {amount} {what}{culprit}, over the \
         limit of {limit}"
    )))
}

/// Runs the reader's checks on the planned manifest's bytes (its length is final: the
/// placeholder checksums have the width of real ones).
pub(crate) fn check_manifest(bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > MAX_MANIFEST_LEN {
        return Err(Error::InvalidArgument(format!(
            "{MANIFEST_NAME} would be {} bytes, over the limit of {MAX_MANIFEST_LEN} (too many \
             tensors, long names, or large metadata)",
            bytes.len()
        )));
    }
    limits::check_manifest_json(bytes).map_err(Error::InvalidArgument)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::limits::MAX_OPEN_FILES;
    use crate::writer::save;

    fn user(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    /// Saves one tensor at `target`, then opens it.
    fn one(target: &Path, shape: &[u64], dtype: Dtype, data: &[u8]) -> Result<()> {
        one_with_user(target, shape, dtype, data, r#"{"metadata":null}"#)
    }

    fn one_with_user(
        target: &Path,
        shape: &[u64],
        dtype: Dtype,
        data: &[u8],
        u: &str,
    ) -> Result<()> {
        let group = GroupSource {
            name: "model",
            tensors: vec![TensorSource {
                name: "t",
                dtype,
                shape,
                data,
            }],
            header_metadata: vec![],
        };
        save(
            target,
            Kind::Sampler,
            &[group],
            user(u),
            &SaveOptions::default(),
        )?;
        crate::open(target).map(drop)
    }

    /// Limits are checked before the target is touched: under a missing parent the
    /// error is the limit, not the missing directory.
    #[test]
    fn what_the_reader_refuses_is_refused_before_the_target_is_touched() {
        let missing = &Path::new("/nonexistent-ckptio-parent").join("ck");
        let deep = |n: usize| format!(r#"{{"metadata":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        let cases: Vec<(Result<()>, &str)> = vec![
            (one(missing, &[1; 65], Dtype::U8, &[0]), "65 dimensions"),
            (one(missing, &[0, 1 << 62], Dtype::F64, &[]), "overflows"),
            (
                one_with_user(missing, &[1], Dtype::U8, &[0], &deep(126)),
                "is 127 levels deep (126 in \"metadata\"), over the limit of 126",
            ),
            (
                one_with_user(missing, &[1], Dtype::U8, &[0], "[1]"),
                "must be a JSON object",
            ),
        ];
        for (result, words) in cases {
            match result {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(words), "{msg}"),
                other => panic!("expected {words:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn what_is_just_within_the_limits_saves_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        one(&dir.path().join("a"), &[1; 64], Dtype::U8, &[7]).unwrap();
        one(&dir.path().join("b"), &[0, (1 << 63) - 1], Dtype::U8, &[]).unwrap();
        let depth = limits::MAX_JSON_DEPTH - limits::USER_SECTION_DEPTH - 1;
        let deep = format!(
            r#"{{"metadata":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        one_with_user(&dir.path().join("c"), &[1], Dtype::U8, &[0], &deep).unwrap();
    }

    /// More shards than files held open at once: written window by window, and read
    /// back (mapped, verified, copied) the same way.
    #[test]
    fn many_shards_round_trip() {
        let n = MAX_OPEN_FILES * 2 + 5;
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let datas: Vec<[u8; 2]> = (0..n).map(|i| [i as u8, (i >> 8) as u8]).collect();
        let group = GroupSource {
            name: "model",
            tensors: names
                .iter()
                .zip(&datas)
                .map(|(name, data)| TensorSource {
                    name,
                    dtype: Dtype::U8,
                    shape: &[2],
                    data,
                })
                .collect(),
            header_metadata: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ck");
        let opts = SaveOptions {
            max_shard_bytes: Some(2),
            durable: false,
            ..Default::default()
        };
        save(&target, Kind::Sampler, &[group], user("{}"), &opts).unwrap();
        let ckpt = crate::open(&target).unwrap();
        assert_eq!(ckpt.files.len(), n);
        ckpt.verify(2).unwrap();
        let mut out = vec![[0u8; 2]; n];
        let jobs = out
            .iter_mut()
            .enumerate()
            .map(|(i, d)| (i, &mut d[..]))
            .collect();
        crate::copy::read_tensors(&ckpt, jobs, true, 2).unwrap();
        assert_eq!(out, datas);
    }
}
