//! `cleanup` on an object store: removes the data prefixes that no manifest points to
//! (saves killed before their commit, replaced checkpoints whose saver died before it
//! removed their data) once they are older than a grace period.
//!
//! An object store has no locks to prove a save dead, so age stands in for it: a data
//! prefix whose newest object is younger than `older_than` may belong to a save still
//! uploading, and is left alone. A save in progress also checks, before it commits,
//! that its files are all still there. The multipart uploads a dead save left open are
//! aborted first (their ids are in the save's `.multipart/` markers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;

use super::object::{block_on, connect, delete_prefix, store_error, ObjectUrl, DATA_DIR};
use super::object_parts::MARKER_DIR;
use super::StorageOptions;
use crate::cleanup::Cleanup;
use crate::error::Result;
use crate::manifest::{self, MANIFEST_NAME};

/// One save's data: `<checkpoint key>/ckptio-data/<id>/`.
struct DataPrefix {
    checkpoint: String,
    id: String,
    /// Seconds since the epoch of its newest object.
    newest: i64,
}

/// Aborts the multipart uploads of a dead save whose data is under `data` (their ids
/// are in its `.multipart/` markers); an upload already gone is no error.
async fn abort_uploads(store: &Arc<AmazonS3>, data: &ObjPath) {
    let markers = data.clone().join(MARKER_DIR);
    let Ok(listed) = store
        .list(Some(&markers))
        .try_collect::<Vec<ObjectMeta>>()
        .await
    else {
        return;
    };
    for marker in listed {
        let Some(name) = marker.location.filename() else {
            continue;
        };
        let Ok(got) = store.get(&marker.location).await else {
            continue;
        };
        let Ok(id) = got.bytes().await else { continue };
        let id = String::from_utf8_lossy(&id).into_owned();
        let _ = store.abort_multipart(&data.clone().join(name), &id).await;
    }
}

/// Removes orphaned data under `url` (a checkpoint, or a folder of them) older than
/// `older_than`. Committed checkpoints are never touched.
pub fn cleanup(url: &ObjectUrl, options: &StorageOptions, older_than: Duration) -> Result<Cleanup> {
    let store = connect(url, options)?;
    let prefix = (!url.key.is_empty()).then(|| ObjPath::from_iter(url.key.split('/')));
    let objects: Vec<ObjectMeta> = block_on(store.list(prefix.as_ref()).try_collect())?
        .map_err(|e| store_error("list", url.as_path(), e))?;
    let marker = format!("/{DATA_DIR}/");
    let mut manifests: Vec<String> = Vec::new();
    let mut prefixes: HashMap<(String, String), DataPrefix> = HashMap::new();
    for m in &objects {
        let key = m.location.as_ref();
        if let Some(checkpoint) = key.strip_suffix(&format!("/{MANIFEST_NAME}")) {
            if !checkpoint.contains(&marker) {
                manifests.push(checkpoint.to_owned());
            }
        }
        if let Some((checkpoint, rest)) = key.split_once(&marker) {
            let Some((id, _)) = rest.split_once('/') else {
                continue;
            };
            let at = m.last_modified.timestamp();
            let entry = prefixes
                .entry((checkpoint.to_owned(), id.to_owned()))
                .or_insert_with(|| DataPrefix {
                    checkpoint: checkpoint.to_owned(),
                    id: id.to_owned(),
                    newest: at,
                });
            entry.newest = entry.newest.max(at);
        }
    }
    // The save each manifest points to; an unreadable manifest protects all the data
    // of its checkpoint (nothing is removed that might be what it points to).
    let mut live: HashMap<String, Option<String>> = HashMap::new();
    for checkpoint in manifests {
        let path = ObjPath::from_iter(checkpoint.split('/')).join(MANIFEST_NAME);
        let id = match block_on(async { store.get(&path).await?.bytes().await })? {
            Ok(bytes) => manifest::decode(&url.child(MANIFEST_NAME), &bytes)
                .ok()
                .map(|m| m.checkpoint_id),
            Err(_) => None,
        };
        live.insert(checkpoint, id);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let root = url.as_path();
    let shown = |p: &DataPrefix| -> PathBuf {
        let full = format!("{}/{DATA_DIR}/{}", p.checkpoint, p.id);
        let relative = full
            .strip_prefix(&url.key)
            .unwrap_or(&full)
            .trim_start_matches('/');
        root.join(relative)
    };
    let mut report = Cleanup::default();
    let mut orphans: Vec<&DataPrefix> = prefixes.values().collect();
    orphans.sort_by(|a, b| (&a.checkpoint, &a.id).cmp(&(&b.checkpoint, &b.id)));
    for p in orphans {
        match live.get(&p.checkpoint) {
            Some(Some(id)) if *id == p.id => continue,
            Some(None) => {
                report.skipped.push((
                    shown(p),
                    "its checkpoint's manifest could not be read".into(),
                ));
                continue;
            }
            _ => {}
        }
        let age = now.saturating_sub(p.newest).max(0); // a server clock a little ahead
        if age < older_than.as_secs() as i64 {
            let why = format!(
                "written {age} s ago: may be a save in progress (older_than={}s)",
                older_than.as_secs()
            );
            report.skipped.push((shown(p), why));
            continue;
        }
        let path = ObjPath::from_iter(p.checkpoint.split('/'))
            .join(DATA_DIR)
            .join(p.id.as_str());
        block_on(abort_uploads(&store, &path))?;
        block_on(delete_prefix(store.as_ref(), &path))?
            .map_err(|e| store_error("remove", &shown(p), e))?;
        report.done.push(shown(p));
    }
    Ok(report)
}
