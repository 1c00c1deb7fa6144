//! Bindings of a checkpoint written in parts (src/parts.rs): the coordinator's staged
//! [`Assembly`](crate::parts::Assembly) and each process's `write_part`. The GIL is
//! released around every write and the commit.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::errors::{path_object, IntoPyResult};
use super::{take_sources, OwnedGroup, PyGroup, PySaveOptions};
use crate::parts::{self, Assembly, Part};

/// A checkpoint being assembled from parts; see `_core.pyi`.
#[pyclass(frozen, name = "Assembly", module = "ckptio._core")]
pub struct PyAssembly {
    place: Py<PyAny>,
    checkpoint_id: String,
    /// `None` once committed or aborted.
    inner: Mutex<Option<Assembly>>,
}

impl PyAssembly {
    fn take(&self) -> PyResult<Assembly> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("assembly lock poisoned"))?
            .take()
            .ok_or_else(|| {
                PyRuntimeError::new_err("this assembly was already committed or aborted")
            })
    }
}

#[pymethods]
impl PyAssembly {
    #[new]
    fn new(py: Python<'_>, location: PathBuf, options: PyRef<'_, PySaveOptions>) -> PyResult<Self> {
        let location = super::location(location)?;
        let opts = options.inner.clone();
        let asm = py
            .detach(|| Assembly::stage(&location, &opts))
            .into_py_result()?;
        Ok(PyAssembly {
            place: path_object(py, asm.place().to_path_buf())?.unbind(),
            checkpoint_id: asm.checkpoint_id().to_owned(),
            inner: Mutex::new(Some(asm)),
        })
    }

    /// Where the parts go: the staging directory, or the checkpoint's URL.
    #[getter]
    fn place(&self, py: Python<'_>) -> Py<PyAny> {
        self.place.clone_ref(py)
    }

    #[getter]
    fn checkpoint_id(&self) -> &str {
        &self.checkpoint_id
    }

    /// Writes the manifest over the parts and commits; see `_core.pyi`.
    #[pyo3(signature = (parts, user_json, *, durable=true))]
    fn commit(
        &self,
        py: Python<'_>,
        parts: Vec<String>,
        user_json: String,
        durable: bool,
    ) -> PyResult<()> {
        let asm = self.take()?;
        let user = serde_json::value::RawValue::from_string(user_json)
            .map_err(|e| PyValueError::new_err(format!("user_json: {e}")))?;
        py.detach(move || {
            let parts = parts
                .iter()
                .map(|p| Part::from_json(p))
                .collect::<crate::Result<Vec<_>>>()?;
            asm.commit(parts, user, durable)
        })
        .into_py_result()
    }

    /// Removes the staging directory and every part in it; see `_core.pyi`.
    fn abort(&self, py: Python<'_>) {
        let taken = self.inner.lock().ok().and_then(|mut g| g.take());
        py.detach(move || drop(taken));
    }

    /// Whether the assembly still stages a checkpoint (neither committed nor aborted).
    #[getter]
    fn open(&self) -> bool {
        self.inner.lock().is_ok_and(|g| g.is_some())
    }
}

/// Writes one part into a staged directory; returns its record as JSON. See
/// `_core.pyi`.
#[pyfunction]
fn write_part(
    py: Python<'_>,
    place: PathBuf,
    checkpoint_id: &str,
    group: PyGroup<'_>,
    options: PyRef<'_, PySaveOptions>,
) -> PyResult<String> {
    let owned: Vec<OwnedGroup> = take_sources(py, vec![group])?;
    let opts = options.inner.clone();
    py.detach(|| {
        let source = owned[0].source();
        parts::write_part(&place, checkpoint_id, &source, &opts).map(|p| p.to_json())
    })
    .into_py_result()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_part, m)?)?;
    m.add_class::<PyAssembly>()?;
    Ok(())
}
