//! Python views of an open checkpoint: its index and its mapped files, which export
//! the buffer protocol so numpy and torch wrap the mapping without a copy.

use std::os::raw::c_int;
use std::sync::Arc;

use pyo3::exceptions::PyIndexError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::borrowed;
use super::errors::IntoPyResult;
use crate::manifest::FileRole;
use crate::reader::Checkpoint;

#[pyclass(frozen, name = "Checkpoint", module = "ckptio._core")]
pub struct PyCheckpoint {
    inner: Arc<Checkpoint>,
}

impl PyCheckpoint {
    pub fn new(inner: Checkpoint) -> Self {
        PyCheckpoint {
            inner: Arc::new(inner),
        }
    }
}

type TensorRow<'py> = (
    String,
    String,
    &'static str,
    Bound<'py, PyTuple>,
    usize,
    u64,
    u64,
);

#[pymethods]
impl PyCheckpoint {
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().as_str()
    }

    #[getter]
    fn checkpoint_id(&self) -> &str {
        &self.inner.manifest.checkpoint_id
    }

    /// The manifest's opaque `user` section, as JSON text.
    #[getter]
    fn user_json(&self) -> String {
        self.inner.manifest.user.get().to_owned()
    }

    #[getter]
    fn file_names(&self) -> Vec<String> {
        self.inner.files.iter().map(|f| f.name.clone()).collect()
    }

    /// False for safetensors files read without a ckptio manifest.
    #[getter]
    fn has_checksums(&self) -> bool {
        self.inner.has_checksums()
    }

    /// The side files saved with the checkpoint (`config.json` ...), in manifest order.
    #[getter]
    fn side_file_names(&self) -> Vec<String> {
        let records = self.inner.manifest.files.iter();
        records
            .filter(|r| r.role == FileRole::Side)
            .map(|r| r.name.clone())
            .collect()
    }

    /// The bytes of a side file, checked against its size and checksum.
    fn read_side_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner.clone();
        let bytes = py
            .detach(move || inner.read_side_file(name))
            .into_py_result()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// (group, name, dtype, shape, file index, begin, end) per tensor, in save order.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Vec<TensorRow<'py>>> {
        // Shapes as tuples: immutable, so the garbage collector soon stops tracking them.
        self.inner
            .tensors
            .iter()
            .map(|t| {
                Ok((
                    t.group.clone(),
                    t.name.clone(),
                    t.dtype.name(),
                    PyTuple::new(py, &t.shape)?,
                    t.file,
                    t.begin,
                    t.end,
                ))
            })
            .collect()
    }

    /// The mapped file `index`, as a writable buffer over the whole file.
    fn file(&self, index: usize) -> PyResult<PyMappedFile> {
        if index >= self.inner.files.len() {
            return Err(PyIndexError::new_err(format!(
                "file index {index} out of range"
            )));
        }
        Ok(PyMappedFile {
            ckpt: self.inner.clone(),
            index,
        })
    }

    /// Checks every byte; returns the directory entries the manifest does not cover.
    #[pyo3(signature = (threads=0))]
    fn verify(&self, py: Python<'_>, threads: usize) -> PyResult<Vec<String>> {
        let inner = self.inner.clone();
        py.detach(move || inner.verify(threads)).into_py_result()
    }

    /// Reads tensors (by index in `tensors()`) into writable buffers with parallel
    /// positional reads, checking checksums when `verify`.
    #[pyo3(signature = (jobs, verify=true, threads=0))]
    fn read_into(
        &self,
        py: Python<'_>,
        jobs: Vec<(usize, Bound<'_, PyAny>)>,
        verify: bool,
        threads: usize,
    ) -> PyResult<()> {
        let label = |i: usize| match self.inner.tensors.get(i) {
            Some(t) => format!("tensor {:?}", t.name),
            None => format!("tensor index {i}"),
        };
        let held = jobs
            .iter()
            .map(|(i, b)| {
                let dst =
                    borrowed::hold_destination(b, &format_args!("{} (destination)", label(*i)))?;
                Ok((*i, dst))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let dest_spans: Vec<_> = held.iter().map(|(i, d)| (d.span, label(*i))).collect();
        borrowed::check_disjoint(&dest_spans, &[])?;
        let spans: Vec<_> = held.iter().map(|(i, d)| (*i, d.span)).collect();
        let inner = self.inner.clone();
        py.detach(move || {
            // SAFETY: destinations are held until return and overlap nothing.
            let jobs = spans
                .into_iter()
                .map(|(i, s)| (i, unsafe { borrowed::slice_mut(s) }))
                .collect();
            crate::copy::read_tensors(&inner, jobs, verify, threads)
        })
        .into_py_result()
    }

    /// Starts read-ahead of every tensor file (`madvise(WILLNEED)`).
    fn prefetch(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.detach(move || {
            for f in &inner.files {
                f.prefetch(0, f.len());
            }
        })
    }
}

/// One mapped tensor file. Keeps the whole checkpoint mapped while any view lives.
#[pyclass(frozen, name = "MappedFile", module = "ckptio._core")]
pub struct PyMappedFile {
    ckpt: Arc<Checkpoint>,
    index: usize,
}

#[pymethods]
impl PyMappedFile {
    #[getter]
    fn name(&self) -> &str {
        &self.ckpt.files[self.index].name
    }

    fn __len__(&self) -> usize {
        self.ckpt.files[self.index].len()
    }

    /// Exports the mapping as a writable 1-D byte buffer (`MAP_PRIVATE`: writes stay
    /// in this process).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let file = &slf.get().ckpt.files[slf.get().index];
        // SAFETY: the mapping outlives the export because the view holds a reference to
        // `slf`, which holds the checkpoint. FillInfo sets an exception on failure.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                file.as_mut_ptr().cast(),
                file.len() as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}
