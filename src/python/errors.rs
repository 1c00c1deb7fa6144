//! The one place where core errors become Python exceptions. The classes live in
//! `ckptio/errors.py` so they can subclass several built-ins.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;

use crate::error::Error;

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("ckptio.errors")?.getattr(name)
}

/// A path as Python shows it: a URL stays text (pathlib would fold its `//`).
pub(crate) fn path_object(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    match path.to_str() {
        Some(text) if text.contains("://") => Ok(PyString::new(py, text).into_any()),
        _ => Ok(path.into_pyobject(py)?.into_any()),
    }
}

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let fallback = message.clone();
    let built = match e {
        Error::Io { source, path, .. } => class(py, "StorageError").and_then(|cls| {
            // An object store's refusal has no OS errno: take the closest one.
            let errno = source.raw_os_error().unwrap_or(match source.kind() {
                std::io::ErrorKind::PermissionDenied => libc::EACCES,
                std::io::ErrorKind::NotFound => libc::ENOENT,
                std::io::ErrorKind::AlreadyExists => libc::EEXIST,
                std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
                _ => 0,
            });
            cls.call1((errno, message, path_object(py, path)?))
        }),
        Error::NotFound { .. } => {
            class(py, "CheckpointNotFoundError").and_then(|c| c.call1((message,)))
        }
        Error::AlreadyExists { .. } => {
            class(py, "CheckpointExistsError").and_then(|c| c.call1((message,)))
        }
        Error::Format { file, .. } => class(py, "FormatError").and_then(|cls| {
            let kw = PyDict::new(py);
            kw.set_item("file", path_object(py, file)?)?;
            cls.call((message,), Some(&kw))
        }),
        Error::Corrupt { file, tensor, .. } => {
            class(py, "CorruptCheckpointError").and_then(|cls| {
                let kw = PyDict::new(py);
                kw.set_item("file", path_object(py, file)?)?;
                kw.set_item("tensor", tensor)?;
                cls.call((message,), Some(&kw))
            })
        }
        Error::InvalidArgument(msg) => return PyValueError::new_err(msg),
    };
    match built {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_failed) => PyOSError::new_err(format!(
            "{fallback} (ckptio.errors unavailable: {import_failed})"
        )),
    }
}

/// `core::Result<T>` -> `PyResult<T>`; needs the GIL, so call it after `detach`.
pub trait IntoPyResult<T> {
    fn into_py_result(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crate::Result<T> {
    fn into_py_result(self) -> PyResult<T> {
        self.map_err(|e| Python::attach(|py| to_py(py, e)))
    }
}
