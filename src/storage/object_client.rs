//! The object-store client side: `s3://` URLs, the connection (environment +
//! per-call options), the I/O runtime, and errors that name the URL.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, RetryConfig};
use tokio::runtime::Runtime;

use super::StorageOptions;
use crate::error::{Error, Result};
use crate::manifest::MANIFEST_NAME;

/// The folder, under a checkpoint's key, that holds the data of its saves.
pub const DATA_DIR: &str = "ckptio-data";

/// A parsed `s3://bucket/key` URL.
#[derive(Debug, Clone)]
pub struct ObjectUrl {
    /// As given, without a trailing slash: what errors name.
    text: PathBuf,
    pub bucket: String,
    /// The key prefix of the checkpoint (or of a folder, for `cleanup`); may be empty.
    pub key: String,
}

impl ObjectUrl {
    pub(crate) fn parse(text: &str, rest: &str) -> Result<ObjectUrl> {
        let bad = |why: &str| Error::InvalidArgument(format!("{text}: invalid s3:// URL: {why}"));
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        let key = key.trim_end_matches('/');
        if !key.is_empty() && ObjPath::parse(key).is_err() {
            return Err(bad(
                "empty, '.' or '..' path segments, or unsupported characters",
            ));
        }
        Ok(ObjectUrl {
            text: PathBuf::from(text.trim_end_matches('/')),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    pub fn as_path(&self) -> &Path {
        &self.text
    }

    /// The key as an object path; refuses the bucket root (no checkpoint name).
    pub(crate) fn checkpoint_key(&self) -> Result<ObjPath> {
        if self.key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no checkpoint name after the bucket (s3://bucket/prefix/name)",
                self.text.display()
            )));
        }
        Ok(ObjPath::from_iter(self.key.split('/')))
    }

    /// `bucket/key/<relative>`, as errors name an object.
    pub(crate) fn child(&self, relative: &str) -> PathBuf {
        self.text.join(relative)
    }
}

/// The object path of the manifest of the checkpoint at `key`.
pub(crate) fn manifest_path(key: &ObjPath) -> ObjPath {
    key.clone().join(MANIFEST_NAME)
}

/// The data prefix of save `checkpoint_id` of the checkpoint at `key`.
pub(crate) fn data_prefix(key: &ObjPath, checkpoint_id: &str) -> ObjPath {
    key.clone().join(DATA_DIR).join(checkpoint_id)
}

/// The process's runtime for object-store requests. Per process id: a child made by
/// `fork` has none of the parent's threads, so it builds its own (and leaks the
/// parent's, whose threads do not exist here).
pub(crate) fn runtime() -> Result<Arc<Runtime>> {
    static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    if let Some((_, inherited)) = slot.take() {
        std::mem::forget(inherited);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ckptio-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the I/O runtime", Path::new("<runtime>"), e))?;
    let rt = Arc::new(rt);
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// Runs `future` to completion on the I/O runtime, blocking this thread.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(runtime()?.block_on(future))
}

/// A client for `url`'s bucket: the `AWS_*` environment variables, then `options`.
pub(crate) fn connect(url: &ObjectUrl, options: &StorageOptions) -> Result<Arc<AmazonS3>> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&url.bucket)
        .with_checksum_algorithm(Checksum::CRC64NVME);
    let mut retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let bad = |key: &str, why: String| {
        Error::InvalidArgument(format!(
            "{}: storage option {key:?}: {why}",
            url.as_path().display()
        ))
    };
    for (key, value) in &options.config {
        match key.to_ascii_lowercase().as_str() {
            "max_retries" => {
                retry.max_retries = value.parse().map_err(|_| bad(key, "not a count".into()))?
            }
            "retry_timeout" => {
                let secs: f64 = value
                    .parse()
                    .map_err(|_| bad(key, "not a number of seconds".into()))?;
                retry.retry_timeout =
                    Duration::try_from_secs_f64(secs).map_err(|e| bad(key, e.to_string()))?;
            }
            lower => {
                let config: AmazonS3ConfigKey = lower
                    .parse()
                    .map_err(|_| bad(key, "not an S3 storage option".into()))?;
                builder = builder.with_config(config, value);
            }
        }
    }
    let store = builder
        .with_retry(retry)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", url.as_path().display())))?;
    Ok(Arc::new(store))
}

/// An object-store error as a core error naming `path` (a URL).
pub(crate) fn store_error(op: &'static str, path: &Path, e: object_store::Error) -> Error {
    use std::io::{Error as IoError, ErrorKind};
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            ErrorKind::AlreadyExists
        }
        _ => ErrorKind::Other,
    };
    Error::io(op, path, IoError::new(kind, e.to_string()))
}

pub(crate) fn is_conflict(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// Removes every object under `prefix` (best effort for the caller to ignore or not).
pub(crate) async fn delete_prefix(
    store: &dyn ObjectStore,
    prefix: &ObjPath,
) -> object_store::Result<()> {
    let listed = store.list(Some(prefix)).map_ok(|m| m.location).boxed();
    store.delete_stream(listed).try_collect::<Vec<_>>().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    fn url(text: &str) -> Result<ObjectUrl> {
        match Location::parse(text)? {
            Location::Object(u) => Ok(u),
            Location::Local(p) => panic!("{} parsed as a local path", p.display()),
        }
    }

    #[test]
    fn urls() {
        let u = url("s3://bucket/run/step-1/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("bucket", "run/step-1")
        );
        assert_eq!(u.as_path(), Path::new("s3://bucket/run/step-1"));
        assert_eq!(u.checkpoint_key().unwrap().as_ref(), "run/step-1");
        assert!(url("s3://bucket").unwrap().checkpoint_key().is_err());
        for bad in ["s3:///key", "s3://b/a//c", "s3://b/a/../c", "s3://b/./c"] {
            assert!(matches!(url(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
        assert!(matches!(
            Location::parse("gs://b/k"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Location::parse("ckpts/a:b"),
            Ok(Location::Local(_))
        ));
    }

    #[test]
    fn layout() {
        let key = url("s3://b/run/ck").unwrap().checkpoint_key().unwrap();
        assert_eq!(manifest_path(&key).as_ref(), "run/ck/ckptio.json");
        assert_eq!(
            data_prefix(&key, "00ff").as_ref(),
            "run/ck/ckptio-data/00ff"
        );
    }

    #[test]
    fn storage_options_are_checked() {
        let u = url("s3://b/k").unwrap();
        let opts = |k: &str, v: &str| StorageOptions {
            config: vec![(k.into(), v.into())],
        };
        assert!(connect(&u, &opts("endpoint", "http://127.0.0.1:1")).is_ok());
        assert!(connect(&u, &opts("max_retries", "2")).is_ok());
        for (k, v) in [
            ("colour", "blue"),
            ("max_retries", "-1"),
            ("retry_timeout", "soon"),
        ] {
            assert!(
                matches!(connect(&u, &opts(k, v)), Err(Error::InvalidArgument(_))),
                "{k}"
            );
        }
    }
}
