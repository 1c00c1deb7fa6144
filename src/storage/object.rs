//! The object-store backend (S3 and compatibles: MinIO, SeaweedFS, R2, GCS's S3 API),
//! on the `object_store` crate.
//!
//! Layout of the checkpoint `s3://bucket/prefix/name`:
//!
//! - `prefix/name/ckptio.json`: the manifest, written last, the commit point;
//! - `prefix/name/ckptio-data/<checkpoint id>/<file>`: the tensor, index and side files
//!   of the save whose manifest carries that checkpoint id.
//!
//! A save uploads its files under its own data prefix (tensor files as parallel
//! multipart uploads streamed from the caller's memory, every request checksummed with
//! CRC64NVME for the server to check), then PUTs the manifest with `If-None-Match: *`
//! (a fresh name) or `If-Match: <etag of the manifest it replaces>` (`overwrite`).
//! Until that PUT succeeds no reader can see the new files; afterwards a reader that
//! opens the name gets only the new save's files. An overwrite then removes the data
//! prefix of the checkpoint it replaced.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::object_client::is_conflict;
pub(crate) use super::object_client::{
    block_on, connect, data_prefix, delete_prefix, manifest_path, runtime, store_error,
};
pub use super::object_client::{ObjectUrl, DATA_DIR};
use super::object_parts::PartUploader;
use super::{Producer, Sink};
use crate::checksum::Hasher;
use crate::error::{Error, Result};
use crate::fault;
use crate::manifest::{self, MANIFEST_NAME};
use crate::save_plan::PlannedFile;
use crate::writer::SaveOptions;

/// Bytes fed to the upload (and hashed) per step.
const FEED: usize = 1 << 20;
/// Commit attempts when concurrent overwrites of one name keep replacing the manifest.
const COMMIT_ATTEMPTS: usize = 16;

/// A save in progress to an object store: its files go under a data prefix of its own.
pub(crate) struct ObjectSink {
    store: Arc<AmazonS3>,
    url: ObjectUrl,
    key: ObjPath,
    data: ObjPath,
    checkpoint_id: String,
    overwrite: bool,
    committed: bool,
    /// One part of a checkpoint that several processes write (`parts.rs`): its files
    /// stay when it is dropped, for the coordinator's sink to commit or remove.
    part: bool,
    /// Names of the files uploaded so far.
    written: Mutex<Vec<String>>,
}

impl ObjectSink {
    pub(crate) fn stage(
        url: &ObjectUrl,
        checkpoint_id: &str,
        opts: &SaveOptions,
    ) -> Result<ObjectSink> {
        if opts.part_size < 5 << 20 {
            return Err(Error::InvalidArgument(format!(
                "part_size must be at least 5 MiB (an S3 rule), got {}",
                opts.part_size
            )));
        }
        if opts.parts_in_flight == 0 {
            return Err(Error::InvalidArgument(
                "parts_in_flight must be positive".into(),
            ));
        }
        let key = url.checkpoint_key()?;
        let store = connect(url, &opts.storage)?;
        // Fails early on wrong credentials or a missing bucket, and on an existing name
        // without `overwrite` (the conditional PUT at commit is what decides, though).
        let manifest = manifest_path(&key);
        match block_on(store.head(&manifest))? {
            Ok(_) if !opts.overwrite => {
                return Err(Error::AlreadyExists {
                    path: url.as_path().to_path_buf(),
                    hint: " (pass overwrite=True to replace it)",
                })
            }
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("check", url.as_path(), e)),
        }
        fault::point("staged");
        Ok(ObjectSink {
            data: data_prefix(&key, checkpoint_id),
            store,
            url: url.clone(),
            key,
            checkpoint_id: checkpoint_id.to_owned(),
            overwrite: opts.overwrite,
            committed: false,
            part: false,
            written: Mutex::new(Vec::new()),
        })
    }

    /// A sink for one part of checkpoint `checkpoint_id`, whose coordinator staged it
    /// (and checked the name): it uploads under the checkpoint's data prefix and never
    /// commits or removes anything itself.
    pub(crate) fn stage_part(
        url: &ObjectUrl,
        checkpoint_id: &str,
        opts: &SaveOptions,
    ) -> Result<ObjectSink> {
        let key = url.checkpoint_key()?;
        Ok(ObjectSink {
            data: data_prefix(&key, checkpoint_id),
            store: connect(url, &opts.storage)?,
            url: url.clone(),
            key,
            checkpoint_id: checkpoint_id.to_owned(),
            overwrite: opts.overwrite,
            committed: false,
            part: true,
            written: Mutex::new(Vec::new()),
        })
    }

    /// Refuses to commit parts unless the data prefix holds exactly `files` (name and
    /// size) and nothing else (multipart markers of finished uploads aside).
    pub(crate) fn check_parts(&self, files: &[(String, u64)]) -> Result<()> {
        let listed: Vec<object_store::ObjectMeta> =
            block_on(self.store.list(Some(&self.data)).try_collect())?
                .map_err(|e| store_error("list", self.url.as_path(), e))?;
        let prefix_len = self.data.as_ref().len() + 1;
        let present: std::collections::HashMap<&str, u64> = listed
            .iter()
            .map(|m| (&m.location.as_ref()[prefix_len..], m.size))
            .filter(|(name, _)| !name.starts_with(super::object_parts::MARKER_DIR))
            .collect();
        for (name, size) in files {
            match present.get(name.as_str()) {
                Some(got) if got == size => {}
                got => {
                    return Err(Error::corrupt(
                        &self.url.child(name),
                        None,
                        format!("the part holds {got:?} bytes, its writer recorded {size}"),
                    ))
                }
            }
        }
        if let Some(extra) = present.keys().find(|n| !files.iter().any(|(f, _)| f == *n)) {
            return Err(Error::InvalidArgument(format!(
                "{}: not written by any part of this save; refusing to commit",
                self.url.child(extra).display()
            )));
        }
        Ok(())
    }

    /// Where file `name` goes (its object, and its URL for errors); recorded as
    /// uploaded, so the commit can check that it is still there.
    fn upload_target(&self, name: &str) -> (ObjPath, PathBuf) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
        (self.data.clone().join(name), self.url.child(name))
    }

    /// Uploads one tensor file, hashing each tensor as it is fed; returns the hashes in
    /// the order of the file's tensors.
    async fn upload_file(
        &self,
        file: &PlannedFile<'_>,
        opts: &SaveOptions,
        in_flight: usize,
    ) -> Result<Vec<u64>> {
        let (object, shown) = self.upload_target(&file.name);
        let mut order: Vec<usize> = (0..file.sources.len()).collect();
        order.sort_by_key(|&ti| file.layout.tensors[ti].begin);
        let mut hashes = vec![0u64; file.sources.len()];
        let hash_into = |hashes: &mut Vec<u64>, ti: usize, feed: &mut dyn FnMut(&[u8])| {
            let mut hasher = Hasher::new();
            for chunk in file.sources[ti].data.chunks(FEED) {
                hasher.update(chunk);
                feed(chunk);
            }
            hashes[ti] = hasher.finish();
        };
        if file.layout.file_len <= opts.part_size as u64 {
            // One request: the whole file in one buffer of at most a part.
            let mut buf = Vec::with_capacity(file.layout.file_len as usize);
            buf.extend_from_slice(&file.layout.header);
            for &ti in &order {
                hash_into(&mut hashes, ti, &mut |c| buf.extend_from_slice(c));
                fault::point("data");
            }
            self.store
                .put_opts(&object, PutPayload::from(buf), PutOptions::default())
                .await
                .map_err(|e| store_error("upload", &shown, e))?;
            return Ok(hashes);
        }
        let mut parts = PartUploader::start(
            &self.store,
            object,
            &self.data,
            &file.name,
            opts.part_size,
            in_flight,
        )
        .await
        .map_err(|e| store_error("start upload", &shown, e))?;
        let mut fed = parts.write(&file.layout.header).await;
        for &ti in &order {
            if fed.is_err() {
                break;
            }
            let mut hasher = Hasher::new();
            for chunk in file.sources[ti].data.chunks(FEED) {
                hasher.update(chunk);
                fed = parts.write(chunk).await;
                if fed.is_err() {
                    break;
                }
            }
            hashes[ti] = hasher.finish();
            fault::point("data");
        }
        match fed {
            Ok(()) => parts.finish().await,
            Err(e) => {
                parts.abort().await;
                Err(e)
            }
        }
        .map_err(|e| store_error("upload", &shown, e))?;
        Ok(hashes)
    }
}

impl Sink for ObjectSink {
    fn write_tensor_files(
        &self,
        files: &[PlannedFile],
        opts: &SaveOptions,
    ) -> Result<Vec<Vec<u64>>> {
        // Small files go several at a time; large ones two at a time (so one's round
        // trips overlap the other's parts), sharing `parts_in_flight`. Either way at
        // most `parts_in_flight` part buffers upload, plus one being filled per file.
        let (large, small): (Vec<usize>, Vec<usize>) =
            (0..files.len()).partition(|&i| files[i].layout.file_len > opts.part_size as u64);
        let together = large.len().clamp(1, 2);
        let each = (opts.parts_in_flight / together).max(1);
        let mut hashes: Vec<Vec<u64>> = vec![Vec::new(); files.len()];
        block_on(async {
            let upload = |i: usize, in_flight: usize| async move {
                let hashes = self.upload_file(&files[i], opts, in_flight).await?;
                fault::point("file");
                Ok::<_, Error>((i, hashes))
            };
            let small: Vec<(usize, Vec<u64>)> = stream::iter(small)
                .map(|i| upload(i, 1))
                .buffer_unordered(opts.parts_in_flight)
                .try_collect()
                .await?;
            let large: Vec<(usize, Vec<u64>)> = stream::iter(large)
                .map(|i| upload(i, each))
                .buffer_unordered(together)
                .try_collect()
                .await?;
            for (i, h) in small.into_iter().chain(large) {
                hashes[i] = h;
            }
            Ok::<_, Error>(())
        })??;
        fault::point("data_written");
        Ok(hashes)
    }

    fn write_small_file(&self, name: &str, bytes: &[u8], _durable: bool) -> Result<()> {
        let (object, shown) = self.upload_target(name);
        let payload = PutPayload::from(bytes.to_vec());
        block_on(self.store.put_opts(&object, payload, PutOptions::default()))?
            .map_err(|e| store_error("upload", &shown, e))?;
        Ok(())
    }

    fn write_streamed(
        &self,
        name: &str,
        len: u64,
        opts: &SaveOptions,
        produce: &mut Producer<'_>,
    ) -> Result<()> {
        let (object, shown) = self.upload_target(name);
        let rt = runtime()?;
        if len <= opts.part_size as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            produce(&mut |bytes: &[u8]| {
                buf.extend_from_slice(bytes);
                Ok(())
            })?;
            rt.block_on(
                self.store
                    .put_opts(&object, PutPayload::from(buf), PutOptions::default()),
            )
            .map_err(|e| store_error("upload", &shown, e))?;
            return Ok(());
        }
        let start = PartUploader::start(
            &self.store,
            object,
            &self.data,
            name,
            opts.part_size,
            opts.parts_in_flight,
        );
        let mut parts = rt
            .block_on(start)
            .map_err(|e| store_error("start upload", &shown, e))?;
        // The producer may block on reads of its own, so each piece is handed over in a
        // `block_on` of its own; the part uploads run as tasks meanwhile.
        let fed = produce(&mut |bytes: &[u8]| {
            rt.block_on(parts.write(bytes))
                .map_err(|e| store_error("upload", &shown, e))
        });
        match fed {
            Ok(()) => rt
                .block_on(parts.finish())
                .map_err(|e| store_error("upload", &shown, e)),
            Err(e) => {
                rt.block_on(parts.abort());
                Err(e)
            }
        }
    }

    fn commit(mut self: Box<Self>, manifest_bytes: &[u8], _durable: bool) -> Result<()> {
        fault::point("files_synced");
        let manifest = manifest_path(&self.key);
        let shown = self.url.child(MANIFEST_NAME);
        block_on(self.check_uploaded())??;
        let replaced = block_on(self.put_manifest(&manifest, manifest_bytes))??;
        self.committed = true;
        fault::point("manifest_written");
        // The replaced checkpoint's data: no manifest points to it any more. A reader
        // still loading it sees its objects vanish and starts over (never a mix).
        if let Some(old_id) = replaced.filter(|id| *id != self.checkpoint_id) {
            let prefix = data_prefix(&self.key, &old_id);
            if let Err(e) = block_on(delete_prefix(self.store.as_ref(), &prefix))? {
                // The new checkpoint is committed; `cleanup` removes the rest later.
                let _ = store_error("remove replaced data of", &shown, e);
            }
        }
        Ok(())
    }
}

impl ObjectSink {
    /// Refuses to commit if any uploaded file is gone (a `cleanup` with too short a
    /// grace period took this save for a dead one): better no checkpoint than one
    /// whose manifest points to missing data.
    async fn check_uploaded(&self) -> Result<()> {
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.data))
            .try_collect()
            .await
            .map_err(|e| store_error("list", self.url.as_path(), e))?;
        let prefix_len = self.data.as_ref().len() + 1;
        let present: std::collections::HashSet<&str> = listed
            .iter()
            .map(|m| &m.location.as_ref()[prefix_len..])
            .collect();
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(missing) = written.iter().find(|n| !present.contains(n.as_str())) {
            return Err(Error::io(
                "commit",
                &self.url.child(missing),
                std::io::Error::other("uploaded file removed before the commit (by a cleanup?)"),
            ));
        }
        Ok(())
    }

    /// The conditional PUT that commits; returns the checkpoint id it replaced.
    async fn put_manifest(&self, manifest: &ObjPath, bytes: &[u8]) -> Result<Option<String>> {
        let shown = self.url.as_path();
        for _ in 0..COMMIT_ATTEMPTS {
            let (mode, old_id) = if self.overwrite {
                match self.store.get_opts(manifest, GetOptions::default()).await {
                    Ok(got) => {
                        let version = UpdateVersion {
                            e_tag: got.meta.e_tag.clone(),
                            version: got.meta.version.clone(),
                        };
                        let old = got.bytes().await.ok();
                        let old_id = old
                            .and_then(|b| manifest::decode(shown, &b).ok())
                            .map(|m| m.checkpoint_id);
                        (PutMode::Update(version), old_id)
                    }
                    Err(object_store::Error::NotFound { .. }) => (PutMode::Create, None),
                    Err(e) => return Err(store_error("read", shown, e)),
                }
            } else {
                (PutMode::Create, None)
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .store
                .put_opts(manifest, PutPayload::from(bytes.to_vec()), opts)
                .await
            {
                Ok(_) => return Ok(old_id),
                // Another save committed first: a fresh save loses; an overwrite
                // replaces what is there now (the later commit wins).
                Err(e) if is_conflict(&e) && self.overwrite => continue,
                Err(e) if is_conflict(&e) => {
                    return Err(Error::AlreadyExists {
                        path: shown.to_path_buf(),
                        hint: " (another save created it first)",
                    })
                }
                Err(e) => return Err(store_error("commit", shown, e)),
            }
        }
        Err(Error::io(
            "commit",
            shown,
            std::io::Error::other(format!(
                "manifest replaced by other saves {COMMIT_ATTEMPTS} times in a row"
            )),
        ))
    }
}

impl Drop for ObjectSink {
    /// An uncommitted save removes the files it uploaded (best effort: `cleanup`
    /// removes what a killed process leaves).
    fn drop(&mut self) {
        if !self.committed && !self.part {
            if let Ok(rt) = runtime() {
                let _ = rt.block_on(delete_prefix(self.store.as_ref(), &self.data));
            }
        }
    }
}
