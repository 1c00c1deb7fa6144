//! One multipart upload: bytes fed in order are cut into parts of `part_size`, each
//! uploaded as a task (at most `in_flight` at once, so at most that many part buffers
//! plus the one being filled are alive), then completed in part order.
//!
//! Before the first part, the upload id is written beside the data
//! (`<data prefix>/.multipart/<file>`): an object store cannot list the uploads of a
//! killed process through `object_store`, and `cleanup` needs the id to abort them. The
//! marker is removed once the upload completes or is aborted.

use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{MultipartId, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::fault;

/// Where a data prefix keeps the ids of its multipart uploads in progress.
pub const MARKER_DIR: &str = ".multipart";

/// The marker of the upload of file `name` under `data`.
pub fn marker_path(data: &ObjPath, name: &str) -> ObjPath {
    data.clone().join(MARKER_DIR).join(name)
}

type PartResult = (usize, object_store::Result<PartId>);

pub(crate) struct PartUploader {
    store: Arc<AmazonS3>,
    path: ObjPath,
    marker: ObjPath,
    id: MultipartId,
    part_size: usize,
    in_flight: usize,
    buf: Vec<u8>,
    next: usize,
    running: JoinSet<PartResult>,
    done: Vec<Option<PartId>>,
}

impl PartUploader {
    /// Starts the upload of `path` (file `name` of the save whose data is under `data`).
    pub(crate) async fn start(
        store: &Arc<AmazonS3>,
        path: ObjPath,
        data: &ObjPath,
        name: &str,
        part_size: usize,
        in_flight: usize,
    ) -> object_store::Result<PartUploader> {
        let id = store.create_multipart(&path).await?;
        let marker = marker_path(data, name);
        let uploader = PartUploader {
            store: store.clone(),
            path,
            marker,
            id,
            part_size,
            in_flight: in_flight.max(1),
            buf: Vec::new(),
            next: 0,
            running: JoinSet::new(),
            done: Vec::new(),
        };
        if let Err(e) = uploader
            .store
            .put(&uploader.marker, PutPayload::from(uploader.id.clone()))
            .await
        {
            let _ = uploader
                .store
                .abort_multipart(&uploader.path, &uploader.id)
                .await;
            return Err(e);
        }
        Ok(uploader)
    }

    /// Appends `bytes`, uploading each part as it fills.
    pub(crate) async fn write(&mut self, mut bytes: &[u8]) -> object_store::Result<()> {
        while !bytes.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = Vec::with_capacity(self.part_size);
            }
            let take = (self.part_size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> object_store::Result<()> {
        while self.running.len() >= self.in_flight {
            self.reap_one().await?;
        }
        let payload = PutPayload::from(std::mem::take(&mut self.buf));
        let (store, path, id, idx) = (
            self.store.clone(),
            self.path.clone(),
            self.id.clone(),
            self.next,
        );
        self.running
            .spawn(async move { (idx, store.put_part(&path, &id, idx, payload).await) });
        self.next += 1;
        self.done.push(None);
        fault::point("part");
        Ok(())
    }

    async fn reap_one(&mut self) -> object_store::Result<()> {
        if let Some(joined) = self.running.join_next().await {
            let (idx, part) = joined.map_err(|e| object_store::Error::JoinError { source: e })?;
            self.done[idx] = Some(part?);
        }
        Ok(())
    }

    /// Uploads the last part, waits for all, completes the upload.
    pub(crate) async fn finish(mut self) -> object_store::Result<()> {
        if !self.buf.is_empty() || self.next == 0 {
            self.send_part().await?;
        }
        while !self.running.is_empty() {
            self.reap_one().await?;
        }
        let parts: Vec<PartId> = self
            .done
            .drain(..)
            .map(|p| p.expect("every part reaped"))
            .collect();
        self.store
            .complete_multipart(&self.path, &self.id, parts)
            .await?;
        let _ = self.store.delete(&self.marker).await;
        Ok(())
    }

    /// Stops the parts still running and aborts the upload (best effort).
    pub(crate) async fn abort(mut self) {
        self.running.shutdown().await;
        if self
            .store
            .abort_multipart(&self.path, &self.id)
            .await
            .is_ok()
        {
            let _ = self.store.delete(&self.marker).await;
        }
    }
}
