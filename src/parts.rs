//! A checkpoint written in parts by several processes and committed by one: the
//! storage layer under `torch.distributed.checkpoint` (manifest kind `dcp`).
//!
//! The coordinator stages the checkpoint directory and holds its lock ([`Assembly`]);
//! each process writes its part, one safetensors file per part named by its group
//! (`rank_00003.safetensors`), into that directory with the same parallel, hashing,
//! fsyncing writer as a single save ([`write_part`]) and hands back the records of
//! what it wrote ([`Part`]). Only when every part is written does the coordinator
//! write one manifest over all of them, open the result with the reader's own checks,
//! and commit it with the protocol of a single save (`commit.rs`): until then the name
//! shows the old checkpoint or nothing, and a dead coordinator leaves a staging
//! directory that `cleanup` removes.
//!
//! On an object store the parts are uploaded under the checkpoint id's data prefix
//! (`storage/object.rs`); the coordinator checks that the prefix holds exactly the
//! parts' files at their sizes, then commits with the conditional manifest PUT.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::checksum;
use crate::commit::{self, Staging};
use crate::error::{Error, IoContext, Result};
use crate::format;
use crate::held_dir::HeldDir;
use crate::manifest::{self, FileRecord, FileRole, Kind, Manifest, TensorRecord, MANIFEST_NAME};
use crate::pool;
use crate::reader;
use crate::save_plan::{self, Planned};
use crate::storage::local::{self, CreateFile};
use crate::storage::object::ObjectSink;
use crate::storage::{Location, Sink};
use crate::writer::{GroupSource, SaveOptions};

/// What one process wrote: its tensor files and tensors, checksums filled in, as they
/// go into the manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub files: Vec<FileRecord>,
    pub tensors: Vec<TensorRecord>,
}

impl Part {
    /// The part as JSON, to travel to the coordinator.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a part serializes")
    }

    /// A part from [`Part::to_json`]'s output.
    pub fn from_json(text: &str) -> Result<Part> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("not the record of a written part: {e}")))
    }
}

/// A directory staged by another process, for this one to add files to. Files are
/// created relative to the descriptor opened here, never through a symlink.
struct PartDir {
    held: HeldDir,
    dir: PathBuf,
}

impl CreateFile for PartDir {
    fn create_file(&self, name: &str) -> Result<(File, PathBuf)> {
        let path = self.dir.join(name);
        let file = self.held.create_file(name).ctx("create", &path)?;
        Ok((file, path))
    }
}

fn check_checkpoint_id(id: &str) -> Result<()> {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "checkpoint id {id:?} is not 16 lowercase hex digits"
    )))
}

/// Writes one part of checkpoint `checkpoint_id` into `place`, what its coordinator
/// staged ([`Assembly::place`]: a staging directory, or the checkpoint's `s3://` URL):
/// the group's tensors go to `GROUP.safetensors`, hashed as they are written straight
/// from the caller's memory (and fsynced when `opts.durable`).
pub fn write_part(
    place: &Path,
    checkpoint_id: &str,
    group: &GroupSource,
    opts: &SaveOptions,
) -> Result<Part> {
    check_checkpoint_id(checkpoint_id)?;
    let one_file = SaveOptions {
        max_shard_bytes: None,
        ..opts.clone()
    };
    let empty = RawValue::from_string("{}".into()).expect("valid JSON");
    let Planned {
        files,
        manifest,
        locations,
        ..
    } = save_plan::plan_as(
        checkpoint_id,
        Kind::Dcp,
        std::slice::from_ref(group),
        &[],
        empty,
        &one_file,
    )?;
    let hashes = match Location::from_path(place.to_path_buf())? {
        Location::Local(dir) => {
            let held = HeldDir::open(&dir).ctx("open staging directory", &dir)?;
            let part_dir = PartDir { held, dir };
            pool::get(opts.threads)?
                .install(|| local::write_files(&part_dir, &files, opts.durable))?
        }
        Location::Object(url) => {
            ObjectSink::stage_part(&url, checkpoint_id, opts)?.write_tensor_files(&files, opts)?
        }
    };
    let mut tensors = manifest.tensors;
    for (rec, &(fi, ti)) in tensors.iter_mut().zip(&locations) {
        rec.xxh3 = checksum::to_hex(hashes[fi][ti]);
    }
    Ok(Part {
        files: manifest.files,
        tensors,
    })
}

/// Where the parts of an assembly go.
enum Staged {
    /// A staging directory beside the target, locked by this process.
    Local(Staging),
    /// The checkpoint id's data prefix on an object store.
    Object(ObjectSink),
}

/// A checkpoint being assembled from parts. Dropped uncommitted, its staging directory
/// (or data prefix) and every part in it are removed.
pub struct Assembly {
    staged: Staged,
    place: std::path::PathBuf,
    checkpoint_id: String,
}

impl Assembly {
    /// Checks the target as a single save does (`opts.overwrite`) and stages a place
    /// for the parts: a directory beside a local target, a data prefix on a store.
    pub fn stage(location: &Location, opts: &SaveOptions) -> Result<Assembly> {
        let checkpoint_id = checksum::to_hex(commit::nonce());
        let (staged, place) = match location {
            Location::Local(target) => {
                let staging = commit::stage(target, opts.overwrite)?;
                let dir = staging.dir.clone();
                (Staged::Local(staging), dir)
            }
            Location::Object(url) => (
                Staged::Object(ObjectSink::stage(url, &checkpoint_id, opts)?),
                url.as_path().to_path_buf(),
            ),
        };
        Ok(Assembly {
            staged,
            place,
            checkpoint_id,
        })
    }

    /// Where the parts are written: the staging directory, or the checkpoint's URL.
    pub fn place(&self) -> &Path {
        &self.place
    }

    /// The new checkpoint's id, which every part stamps in its headers.
    pub fn checkpoint_id(&self) -> &str {
        &self.checkpoint_id
    }

    /// Writes the manifest over `parts` with the `user` section, checks the result as
    /// a reader would, and moves it into place atomically.
    pub fn commit(self, parts: Vec<Part>, user: Box<RawValue>, durable: bool) -> Result<()> {
        save_plan::check_user(&user)?;
        let mut files = Vec::new();
        let mut tensors = Vec::new();
        let mut groups_seen = HashSet::new();
        for part in parts {
            let groups: HashSet<String> = part.tensors.iter().map(|t| t.group.clone()).collect();
            for g in groups {
                if !groups_seen.insert(g.clone()) {
                    return Err(Error::InvalidArgument(format!(
                        "group {g:?} was written by two parts"
                    )));
                }
            }
            files.extend(part.files);
            tensors.extend(part.tensors);
        }
        let manifest = Manifest {
            format: manifest::FORMAT_NAME.into(),
            format_version: manifest::FORMAT_VERSION,
            kind: Kind::Dcp,
            checkpoint_id: self.checkpoint_id.clone(),
            checksum: checksum::ALGORITHM.into(),
            files,
            tensors,
            user,
        };
        let bytes = manifest::encode(&manifest);
        save_plan::check_manifest(&bytes)?;
        match self.staged {
            Staged::Local(staging) => {
                check_only_listed(&staging.dir, &manifest.files)?;
                check_stamped(&staging.dir, &manifest.files, &self.checkpoint_id)?;
                local::write_small_file(&staging, MANIFEST_NAME, &bytes, durable)?;
                // The reader's checks (every listed file present with its size, headers
                // matching their checksums and the tensor records): what it would
                // refuse is never committed.
                drop(reader::open(&staging.dir)?);
                staging.commit(durable)
            }
            Staged::Object(sink) => {
                let files: Vec<(String, u64)> = manifest
                    .files
                    .iter()
                    .map(|f| (f.name.clone(), f.size))
                    .collect();
                sink.check_parts(&files)?;
                Box::new(sink).commit(&bytes, durable)
            }
        }
    }
}

/// Refuses a staging directory that holds anything the manifest does not list.
fn check_only_listed(dir: &Path, files: &[FileRecord]) -> Result<()> {
    let listed: HashSet<&str> = files
        .iter()
        .filter(|f| f.role == FileRole::Tensors)
        .map(|f| f.name.as_str())
        .collect();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| listed.contains(n)) {
            return Err(Error::InvalidArgument(format!(
                "{}: not written by any part of this save; refusing to commit",
                dir.join(name).display()
            )));
        }
    }
    Ok(())
}

/// Refuses a tensor file whose header is not stamped with this save's id: a part
/// written for another save (its header checksum, computed by its writer, would match).
fn check_stamped(dir: &Path, files: &[FileRecord], checkpoint_id: &str) -> Result<()> {
    use std::os::unix::fs::FileExt;
    for rec in files.iter().filter(|f| f.role == FileRole::Tensors) {
        let path = dir.join(&rec.name);
        let file = File::open(&path).ctx("open", &path)?;
        let len = file.metadata().ctx("stat", &path)?.len();
        let mut prefix = [0u8; 8];
        file.read_exact_at(&mut prefix, 0).ctx("read", &path)?;
        let hlen = format::header_len(&path, &prefix, len)?;
        let mut header = vec![0u8; hlen as usize];
        file.read_exact_at(&mut header, 0).ctx("read", &path)?;
        let parsed = format::parse_header(&path, &header, len)?;
        let stamped = parsed
            .metadata
            .iter()
            .any(|(k, v)| k == manifest::CHECKPOINT_ID_KEY && v == checkpoint_id);
        if !stamped {
            return Err(Error::corrupt(
                &path,
                None,
                "written for another save (its checkpoint id differs)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::writer::TensorSource;

    fn user(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn stage_at(target: &Path) -> Assembly {
        Assembly::stage(
            &Location::Local(target.to_path_buf()),
            &SaveOptions::default(),
        )
        .unwrap()
    }

    fn part(asm: &Assembly, group: &str, data: &[u8]) -> Part {
        let shape = [data.len() as u64];
        let group = GroupSource {
            name: group,
            tensors: vec![TensorSource {
                name: "w@0",
                dtype: Dtype::U8,
                shape: &shape,
                data,
            }],
            header_metadata: vec![],
        };
        write_part(
            asm.place(),
            asm.checkpoint_id(),
            &group,
            &SaveOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn parts_commit_as_one_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        let asm = stage_at(&target);
        let parts = [
            part(&asm, "rank_00000", b"abc"),
            part(&asm, "rank_00001", b"de"),
        ];
        let json: Vec<String> = parts.iter().map(Part::to_json).collect();
        let parts: Vec<Part> = json.iter().map(|j| Part::from_json(j).unwrap()).collect();
        asm.commit(parts, user(r#"{"dcp":{}}"#), true).unwrap();
        let ckpt = reader::open(&target).unwrap();
        assert_eq!(ckpt.kind(), Kind::Dcp);
        assert_eq!(ckpt.tensors.len(), 2);
        assert!(ckpt.verify(1).unwrap().is_empty());
    }

    #[test]
    fn uncommitted_assembly_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        let asm = stage_at(&target);
        part(&asm, "rank_00000", b"abc");
        drop(asm);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_part_from_another_checkpoint_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let asm = stage_at(&tmp.path().join("a"));
        let other = stage_at(&tmp.path().join("b"));
        let mine = part(&asm, "rank_00000", b"abc");
        // Written into `asm`'s directory but stamped with `other`'s id.
        let group = GroupSource {
            name: "rank_00001",
            tensors: vec![],
            header_metadata: vec![],
        };
        let stray = write_part(
            asm.place(),
            other.checkpoint_id(),
            &group,
            &SaveOptions::default(),
        )
        .unwrap();
        let err = asm
            .commit(vec![mine, stray], user("{}"), false)
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn files_no_part_listed_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let asm = stage_at(&tmp.path().join("a"));
        let mine = part(&asm, "rank_00000", b"abc");
        fs::write(asm.place().join("planted"), b"x").unwrap();
        let err = asm.commit(vec![mine], user("{}"), false).unwrap_err();
        assert!(err.to_string().contains("planted"), "{err}");
    }

    #[test]
    fn bad_checkpoint_ids_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let group = GroupSource {
            name: "rank_00000",
            tensors: vec![],
            header_metadata: vec![],
        };
        let err = write_part(tmp.path(), "../x", &group, &SaveOptions::default()).unwrap_err();
        assert!(err.to_string().contains("hex"), "{err}");
    }
}
