//! Binding of `foreign.rs`: safetensors files read without a ckptio manifest.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::checkpoint::PyCheckpoint;
use super::errors::IntoPyResult;

/// Opens the safetensors files of a directory that has no ckptio manifest; see
/// `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (path, names=None))]
fn open_safetensors(
    py: Python<'_>,
    path: PathBuf,
    names: Option<Vec<String>>,
) -> PyResult<PyCheckpoint> {
    let ckpt = py
        .detach(|| crate::foreign::open_safetensors(&path, names.as_deref()))
        .into_py_result()?;
    Ok(PyCheckpoint::new(ckpt))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(open_safetensors, m)?)
}
