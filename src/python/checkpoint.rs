//! Python views of an open checkpoint: its index and its mapped files, which export
//! the buffer protocol so numpy and torch wrap the mapping without a copy.

use std::os::raw::c_int;
use std::sync::{Arc, OnceLock};

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::borrowed;
use super::errors::IntoPyResult;
use crate::manifest::{FileRole, Manifest};
use crate::reader::{Checkpoint, TensorInfo};
use crate::remote::RemoteCheckpoint;

#[pyclass(frozen, name = "Checkpoint", module = "ckptio._core")]
pub struct PyCheckpoint {
    inner: Opened,
    /// Tensor indices sorted by (group, name), for `lookup`: built on the first lookup,
    /// so opening and listing names never pay for it.
    by_name: OnceLock<Vec<u32>>,
    /// The user section's top-level keys and the byte range of each value's JSON text
    /// (the last of a repeated key, as Python's `json` keeps); parsed on first access.
    user_fields: OnceLock<std::result::Result<UserFields, String>>,
}

/// A local checkpoint (mapped files) or one in an object store (read by ranges).
enum Opened {
    Local(Arc<Checkpoint>),
    Remote(Arc<RemoteCheckpoint>),
}

impl PyCheckpoint {
    pub fn new(inner: Checkpoint) -> Self {
        Self::of(Opened::Local(Arc::new(inner)))
    }

    pub fn remote(inner: RemoteCheckpoint) -> Self {
        Self::of(Opened::Remote(Arc::new(inner)))
    }

    fn of(inner: Opened) -> Self {
        PyCheckpoint {
            inner,
            by_name: OnceLock::new(),
            user_fields: OnceLock::new(),
        }
    }

    fn by_name(&self) -> &[u32] {
        self.by_name.get_or_init(|| {
            let infos = self.tensor_infos();
            let mut order: Vec<u32> = (0..infos.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                let (a, b) = (&infos[a as usize], &infos[b as usize]);
                (a.group.as_str(), a.name.as_str()).cmp(&(b.group.as_str(), b.name.as_str()))
            });
            order
        })
    }

    fn manifest(&self) -> &Manifest {
        match &self.inner {
            Opened::Local(c) => &c.manifest,
            Opened::Remote(c) => &c.manifest,
        }
    }

    fn tensor_infos(&self) -> &[TensorInfo] {
        match &self.inner {
            Opened::Local(c) => &c.tensors,
            Opened::Remote(c) => &c.tensors,
        }
    }

    fn local(&self) -> PyResult<&Arc<Checkpoint>> {
        match &self.inner {
            Opened::Local(c) => Ok(c),
            Opened::Remote(c) => Err(PyValueError::new_err(format!(
                "{}: a checkpoint in an object store is not mapped; its tensors load as copies",
                c.url.as_path().display()
            ))),
        }
    }
}

/// Top-level keys of a JSON object, with the byte range of each value's text.
type UserFields = Vec<(String, (usize, usize))>;

type TensorHit<'py> = (usize, &'static str, Bound<'py, PyTuple>, usize, u64, u64);

/// The top-level entries of a JSON object (`text`), as (key, byte range of the value's
/// text in `text`). The values are borrowed raw JSON: scanned, never built.
fn top_level_fields(text: &str) -> std::result::Result<UserFields, String> {
    struct Fields<'a>(&'a str);
    impl<'de> Visitor<'de> for Fields<'de> {
        type Value = UserFields;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let base = self.0.as_ptr() as usize;
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: &'de RawValue = map.next_value()?;
                let begin = value.get().as_ptr() as usize - base;
                out.push((key, (begin, begin + value.get().len())));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Fields(text))
        .map_err(|e| format!("not a JSON object: {e}"))
}

type GroupRow<'a, 'py> = (&'a str, &'static str, Bound<'py, PyTuple>, usize, u64, u64);

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
        self.manifest().kind.as_str()
    }

    #[getter]
    fn checkpoint_id(&self) -> &str {
        &self.manifest().checkpoint_id
    }

    /// The manifest's opaque `user` section, as JSON text.
    #[getter]
    fn user_json(&self) -> String {
        self.manifest().user.get().to_owned()
    }

    #[getter]
    fn file_names(&self) -> Vec<String> {
        match &self.inner {
            Opened::Local(c) => c.files.iter().map(|f| f.name.clone()).collect(),
            Opened::Remote(c) => c.files.iter().map(|f| f.name.clone()).collect(),
        }
    }

    /// False for safetensors files read without a ckptio manifest.
    #[getter]
    fn has_checksums(&self) -> bool {
        match &self.inner {
            Opened::Local(c) => c.has_checksums(),
            Opened::Remote(_) => true,
        }
    }

    /// True when tensor files are mapped (local); False for an object store, whose
    /// tensors are read with `read_into`.
    #[getter]
    fn mapped(&self) -> bool {
        matches!(self.inner, Opened::Local(_))
    }

    /// The side files saved with the checkpoint (`config.json` ...), in manifest order.
    #[getter]
    fn side_file_names(&self) -> Vec<String> {
        let records = self.manifest().files.iter();
        records
            .filter(|r| r.role == FileRole::Side)
            .map(|r| r.name.clone())
            .collect()
    }

    /// The bytes of a side file, checked against its size and checksum.
    fn read_side_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| match &self.inner {
                Opened::Local(c) => c.read_side_file(name),
                Opened::Remote(c) => c.read_side_file(name),
            })
            .into_py_result()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// (index, dtype, shape, file index, begin, end) of the tensor `name` of `group`
    /// (index in `tensors()`), or None. A binary search: no per-tensor Python objects.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        group: &str,
        name: &str,
    ) -> PyResult<Option<TensorHit<'py>>> {
        let infos = self.tensor_infos();
        let order = self.by_name();
        let found = order.binary_search_by(|&i| {
            let t = &infos[i as usize];
            (t.group.as_str(), t.name.as_str()).cmp(&(group, name))
        });
        let Ok(at) = found else {
            return Ok(None);
        };
        let index = order[at] as usize;
        let t = &infos[index];
        let shape = PyTuple::new(py, &t.shape)?;
        Ok(Some((index, t.dtype.name(), shape, t.file, t.begin, t.end)))
    }

    /// (name, dtype, shape, file index, begin, end) of every tensor of `group`, in save
    /// order: what a whole-group load needs, in one call instead of a lookup per tensor.
    fn rows<'a, 'py>(&'a self, py: Python<'py>, group: &str) -> PyResult<Vec<GroupRow<'a, 'py>>> {
        let infos = self.tensor_infos().iter().filter(|t| t.group == group);
        infos
            .map(|t| {
                let shape = PyTuple::new(py, &t.shape)?;
                Ok((
                    t.name.as_str(),
                    t.dtype.name(),
                    shape,
                    t.file,
                    t.begin,
                    t.end,
                ))
            })
            .collect()
    }

    /// The names of the tensors of `group`, in save order.
    fn names(&self, group: &str) -> Vec<&str> {
        let infos = self.tensor_infos().iter();
        infos
            .filter(|t| t.group == group)
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The groups that hold tensors, in order of first appearance.
    fn groups(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self.tensor_infos() {
            if out.last() != Some(&t.group.as_str()) && !out.contains(&t.group.as_str()) {
                out.push(&t.group);
            }
        }
        out
    }

    /// How many tensors the checkpoint holds.
    #[getter]
    fn tensor_count(&self) -> usize {
        self.tensor_infos().len()
    }

    /// The JSON text of the user section's top-level `key`, or None. ValueError if the
    /// section is not a JSON object. Only the values asked for become Python objects:
    /// the optimizer skeleton, the bulk of the section, is parsed only when loaded.
    fn user_field(&self, key: &str) -> PyResult<Option<&str>> {
        let user = self.manifest().user.get();
        let fields = self
            .user_fields
            .get_or_init(|| top_level_fields(user))
            .as_ref()
            .map_err(|e| PyValueError::new_err(e.clone()))?;
        let found = fields.iter().rev().find(|(k, _)| k == key);
        Ok(found.map(|(_, (b, e))| &user[*b..*e]))
    }

    /// (group, name, dtype, shape, file index, begin, end) per tensor, in save order.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Vec<TensorRow<'py>>> {
        // Shapes as tuples: immutable, so the garbage collector soon stops tracking them.
        self.tensor_infos()
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
        let ckpt = self.local()?;
        if index >= ckpt.files.len() {
            return Err(PyIndexError::new_err(format!(
                "file index {index} out of range"
            )));
        }
        Ok(PyMappedFile {
            ckpt: ckpt.clone(),
            index,
        })
    }

    /// Checks every byte; returns the directory entries the manifest does not cover.
    #[pyo3(signature = (threads=0))]
    fn verify(&self, py: Python<'_>, threads: usize) -> PyResult<Vec<String>> {
        py.detach(|| match &self.inner {
            Opened::Local(c) => c.verify(threads),
            Opened::Remote(c) => c.verify(),
        })
        .into_py_result()
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
        let label = |i: usize| match self.tensor_infos().get(i) {
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
        py.detach(move || {
            // SAFETY: destinations are held until return and overlap nothing.
            let jobs = spans
                .into_iter()
                .map(|(i, s)| (i, unsafe { borrowed::slice_mut(s) }))
                .collect();
            match &self.inner {
                Opened::Local(c) => crate::copy::read_tensors(c, jobs, verify, threads),
                Opened::Remote(c) => c.read_tensors(jobs, verify),
            }
        })
        .into_py_result()
    }

    /// Starts reading the tensor files into the page cache on a background thread
    /// (see `warm.rs`) and returns at once: every file that holds a tensor of a group
    /// not in `skip_groups`. Nothing for an object store: its tensors are not mapped.
    #[pyo3(signature = (skip_groups=Vec::new()))]
    fn prefetch(&self, skip_groups: Vec<String>) {
        let Opened::Local(inner) = &self.inner else {
            return;
        };
        let files = crate::warm::files_except(inner, &skip_groups);
        crate::warm::start(inner.clone(), files);
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
