//! Reading plain safetensors files that have no ckptio manifest, such as a directory
//! written by Hugging Face's `save_pretrained` (one file, or shards with their index).
//!
//! Read-only and without checksums, since there is nothing to check against, but
//! every file goes through the same gate as ckptio's own: a regular file opened
//! relative to the directory (no symlinks), its header length checked before mapping,
//! and its header validated completely by `format::parse` before any tensor byte is
//! touched.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, IoContext, Result};
use crate::manifest::{
    self, FileRecord, FileRole, Kind, Manifest, TensorRecord, CHECKPOINT_ID_KEY,
};
use crate::reader::{self, Checkpoint, MappedFile, TensorInfo};

/// The `checksum` of a manifest made up for files read without one.
pub const NO_CHECKSUM: &str = "none";
const TENSOR_SUFFIX: &str = ".safetensors";
const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// The part of a Hugging Face shard index that says which file holds each tensor.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: serde_json::Map<String, serde_json::Value>,
}

/// Opens the safetensors files of `dir`: the files named in `only`, or else the shard
/// set of the directory's one `*.safetensors.index.json`, or else every
/// `*.safetensors` file in it. Tensors are in the group `model`, in file order, then
/// header order. The result has no checksums: `verify` refuses it.
pub fn open_safetensors(dir: &Path, only: Option<&[String]>) -> Result<Checkpoint> {
    let dir_fd = reader::open_dir(dir)?;
    let (names, index) = match only {
        Some(names) => (names.to_vec(), None),
        None => discover(dir, &dir_fd)?,
    };
    let mut files: Vec<MappedFile> = Vec::with_capacity(names.len());
    let mut records = Vec::with_capacity(names.len());
    let mut tensors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut first_metadata = None;
    for name in &names {
        if !manifest::is_safe_file_name(name) {
            return Err(Error::format(
                &dir.join(name),
                "is not a plain file name inside the directory",
            ));
        }
        let path = dir.join(name);
        let file = reader::open_regular(&dir_fd, dir, name).map_err(|e| match e {
            // No manifest claims this file, so its absence is not damage.
            Error::Corrupt { .. } => Error::NotFound {
                what: "no such safetensors file",
                path: path.clone(),
            },
            e => e,
        })?;
        let len = file.metadata().ctx("stat", &path)?.len();
        let (mapped, header) = reader::map_safetensors(name, path, file, None)?;
        if header.metadata.iter().any(|(k, _)| k == CHECKPOINT_ID_KEY) {
            // A ckptio checkpoint whose manifest is gone is damaged, not foreign: never
            // read it unverified.
            return Err(Error::NotFound {
                what: "a ckptio checkpoint whose manifest (ckptio.json) is missing; not read without it",
                path: dir.to_path_buf(),
            });
        }
        let fi = files.len();
        first_metadata.get_or_insert(header.metadata);
        for t in header.tensors {
            if let Some(&other) = seen.get(&t.name) {
                return Err(Error::format(
                    &mapped.path,
                    format!("tensor {:?} is also in {}", t.name, names[other]),
                ));
            }
            seen.insert(t.name.clone(), fi);
            tensors.push(TensorInfo {
                group: "model".into(),
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                file: fi,
                begin: t.begin,
                end: t.end,
                xxh3: 0,
            });
        }
        records.push(FileRecord {
            name: name.clone(),
            role: FileRole::Tensors,
            size: len,
            xxh3: String::new(),
        });
        files.push(mapped);
    }
    if let Some((index_path, weight_map)) = index {
        check_index(&index_path, &weight_map, &seen, &names)?;
    }
    let metadata: serde_json::Map<String, serde_json::Value> = first_metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    let user = serde_json::json!({"metadata": metadata, "foreign": "safetensors"});
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: manifest::FORMAT_VERSION,
        kind: Kind::Sampler,
        checkpoint_id: String::new(),
        checksum: NO_CHECKSUM.into(),
        tensors: tensors
            .iter()
            .map(|t| TensorRecord {
                group: t.group.clone(),
                name: t.name.clone(),
                file: records[t.file].name.clone(),
                dtype: t.dtype.name().into(),
                shape: t.shape.clone(),
                byte_range: [t.begin, t.end],
                xxh3: String::new(),
            })
            .collect(),
        files: records,
        user: RawValue::from_string(user.to_string()).expect("valid JSON"),
    };
    Ok(Checkpoint::without_checksums(
        dir.to_path_buf(),
        dir_fd,
        manifest,
        files,
        tensors,
    ))
}

type WeightMap = serde_json::Map<String, serde_json::Value>;
/// The files to open, and the index that named them (its path and weight map).
type Discovered = (Vec<String>, Option<(PathBuf, WeightMap)>);

/// The files to open: the shard set of the one index, or every `*.safetensors` file.
fn discover(dir: &Path, dir_fd: &File) -> Result<Discovered> {
    let mut tensor_files = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("list", dir)? {
        let name = entry.ctx("list", dir)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(name.to_owned());
        } else if name.ends_with(TENSOR_SUFFIX) {
            tensor_files.push(name.to_owned());
        }
    }
    indexes.sort();
    tensor_files.sort();
    match indexes.as_slice() {
        [] if tensor_files.is_empty() => Err(Error::NotFound {
            what: "not a checkpoint (no ckptio.json manifest, no *.safetensors files) at",
            path: dir.to_path_buf(),
        }),
        [] => Ok((tensor_files, None)),
        [index] => {
            let path = dir.join(index);
            let weight_map = read_index(dir_fd, dir, index)?;
            let mut names: Vec<String> = Vec::new();
            let mut listed = HashSet::new();
            for (tensor, file) in &weight_map {
                let Some(file) = file.as_str() else {
                    return Err(Error::format(
                        &path,
                        format!("weight_map[{tensor:?}] is not a file name"),
                    ));
                };
                if listed.insert(file.to_owned()) {
                    names.push(file.to_owned());
                }
            }
            Ok((names, Some((path, weight_map))))
        }
        several => Err(Error::format(
            dir,
            format!(
                "several shard indexes ({}); open one file set at a time",
                several.join(", ")
            ),
        )),
    }
}

fn read_index(dir_fd: &File, dir: &Path, name: &str) -> Result<WeightMap> {
    let path = dir.join(name);
    let mut file = reader::open_regular(dir_fd, dir, name)?;
    let len = file.metadata().ctx("stat", &path)?.len();
    if len > crate::limits::MAX_SIDE_FILE_LEN {
        return Err(Error::format(
            &path,
            format!(
                "index is {len} bytes, over the {}-byte cap",
                crate::limits::MAX_SIDE_FILE_LEN
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).ctx("read", &path)?;
    let index: ShardIndex = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(&path, format!("invalid shard index: {e}")))?;
    Ok(index.weight_map)
}

/// The index and the headers must describe the same tensors in the same files.
fn check_index(
    path: &Path,
    weight_map: &WeightMap,
    found: &HashMap<String, usize>,
    names: &[String],
) -> Result<()> {
    for (tensor, file) in weight_map {
        match found.get(tensor) {
            Some(&fi) if file.as_str() == Some(names[fi].as_str()) => {}
            Some(&fi) => {
                return Err(Error::format(
                    path,
                    format!("tensor {tensor:?} is in {}, not in {file}", names[fi]),
                ))
            }
            None => {
                return Err(Error::format(
                    path,
                    format!("tensor {tensor:?} is in no header of its file {file}"),
                ))
            }
        }
    }
    if let Some(extra) = found.keys().find(|t| !weight_map.contains_key(t.as_str())) {
        return Err(Error::format(
            path,
            format!("tensor {extra:?} is in a shard but not in the index"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::format;

    fn err(opened: Result<Checkpoint>) -> Error {
        match opened {
            Ok(_) => panic!("opened a directory that should be refused"),
            Err(e) => e,
        }
    }

    fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, &[u64])]) {
        let layout = format::plan(tensors, &[("format".into(), "pt".into())]).unwrap();
        let mut bytes = layout.header.clone();
        bytes.resize(layout.file_len as usize, 7);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn opens_one_file_and_shards_by_index() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[("a", Dtype::F32, &[2]), ("b", Dtype::U8, &[3])],
        );
        let ckpt = open_safetensors(dir.path(), None).unwrap();
        assert!(!ckpt.has_checksums());
        let names: Vec<&str> = ckpt.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(ckpt
            .verify(0)
            .unwrap_err()
            .to_string()
            .contains("no checksums"));

        let sharded = tempfile::tempdir().unwrap();
        let p = sharded.path();
        write_safetensors(&p.join("m-1.safetensors"), &[("x", Dtype::F16, &[4])]);
        write_safetensors(&p.join("m-2.safetensors"), &[("y", Dtype::I64, &[1])]);
        let index = r#"{"metadata":{},"weight_map":{"y":"m-2.safetensors","x":"m-1.safetensors"}}"#;
        std::fs::write(p.join("m.safetensors.index.json"), index).unwrap();
        let ckpt = open_safetensors(p, None).unwrap();
        assert_eq!(ckpt.files[0].name, "m-2.safetensors");
        assert_eq!(ckpt.tensors.len(), 2);
    }

    #[test]
    fn refuses_hostile_indexes_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write_safetensors(&p.join("a.safetensors"), &[("x", Dtype::F32, &[1])]);
        write_safetensors(&p.join("b.safetensors"), &[("x", Dtype::F32, &[1])]);
        let e = err(open_safetensors(p, None));
        assert!(e.to_string().contains("also in"), "{e}");

        for (index, expect) in [
            (
                r#"{"weight_map":{"x":"../a.safetensors"}}"#,
                "plain file name",
            ),
            (
                r#"{"weight_map":{"x":"b.safetensors","z":"b.safetensors"}}"#,
                "no header",
            ),
            (r#"{"weight_map":{"x":7}}"#, "not a file name"),
            (r#"{"weight_map":[]}"#, "invalid shard index"),
        ] {
            std::fs::write(p.join("m.safetensors.index.json"), index).unwrap();
            let e = err(open_safetensors(p, None));
            assert!(e.to_string().contains(expect), "{index}: {e}");
        }
        std::fs::write(
            p.join("model.safetensors"),
            b"\x08\0\0\0\0\0\0\0{}      junk",
        )
        .unwrap();
        let only = ["model.safetensors".to_string()];
        let e = err(open_safetensors(p, Some(&only)));
        assert!(matches!(e, Error::Format { .. }), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = err(open_safetensors(empty.path(), None));
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
    }

    #[test]
    fn refuses_a_ckptio_checkpoint_without_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = [(
            CHECKPOINT_ID_KEY.to_string(),
            "0123456789abcdef".to_string(),
        )];
        let layout = format::plan(&[("x", Dtype::U8, &[1])], &meta).unwrap();
        let mut bytes = layout.header.clone();
        bytes.resize(layout.file_len as usize, 0);
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let e = err(open_safetensors(dir.path(), None));
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(
            e.to_string().contains("manifest (ckptio.json) is missing"),
            "{e}"
        );
    }

    #[test]
    fn refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("model.safetensors");
        write_safetensors(&target, &[("x", Dtype::F32, &[1])]);
        std::os::unix::fs::symlink(&target, dir.path().join("model.safetensors")).unwrap();
        let e = err(open_safetensors(dir.path(), None));
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
