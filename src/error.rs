//! The one error type of the core. The Python binding maps each variant to an
//! exception class in exactly one place (`python/errors.rs`).

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed (`op` says which, `path` on what).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The path names no checkpoint (or its parent directory is missing).
    #[error("{what}: {path}")]
    NotFound { what: &'static str, path: PathBuf },
    /// The target exists and the caller did not ask to replace it.
    #[error("{path} already exists{hint}")]
    AlreadyExists { path: PathBuf, hint: &'static str },
    /// Structurally invalid file: bad header, bad offsets, unknown dtype, hostile paths.
    #[error("{file}: {msg}")]
    Format { file: PathBuf, msg: String },
    /// Well-formed but the bytes are not the ones that were saved (checksum mismatch).
    #[error("{file}: {}{msg}", tensor.as_ref().map(|t| format!("tensor {t:?}: ")).unwrap_or_default())]
    Corrupt {
        file: PathBuf,
        tensor: Option<String>,
        msg: String,
    },
    /// The caller passed something the core cannot save.
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(file: &Path, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn corrupt(file: &Path, tensor: Option<&str>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.to_path_buf(),
            tensor: tensor.map(str::to_owned),
            msg: msg.into(),
        }
    }
}

/// Shorthand for attaching an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
