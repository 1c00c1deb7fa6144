//! The PyO3 binding layer: converts Python objects to core types and back, releases
//! the GIL around every byte-moving call, and maps errors (in `errors.rs` only).

mod arrays;
mod borrowed;
mod checkpoint;
mod errors;
mod flatten;
mod foreign;
mod lifecycle;
mod parts;
mod planned;
mod skeleton_json;

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{writer, Dtype, Kind, Location, StorageOptions};
use borrowed::{Held, Sources};
use checkpoint::{PyCheckpoint, PyMappedFile};
use errors::{path_object, IntoPyResult};
use planned::PySaveTensors;

/// (name, dtype, shape, source) as passed from Python: the source exports a buffer or
/// is a CPU torch tensor (checked in `borrowed.rs`).
type PyTensor<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>);
/// (group name, tensors, header metadata).
type PyGroup<'py> = (String, Vec<PyTensor<'py>>, Vec<(String, String)>);

struct HeldTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    data: Held,
}

struct OwnedGroup {
    name: String,
    tensors: Vec<HeldTensor>,
    header_metadata: Vec<(String, String)>,
}

impl OwnedGroup {
    /// The group as the core takes it, borrowing the held sources.
    fn source(&self) -> writer::GroupSource<'_> {
        writer::GroupSource {
            name: &self.name,
            tensors: self
                .tensors
                .iter()
                .map(|t| writer::TensorSource {
                    name: &t.name,
                    dtype: t.dtype,
                    shape: &t.shape,
                    // SAFETY: the sources are held as long as `self` lives (a staged row's
                    // by the staging buffer of the `HeldSave` that owns `self`).
                    data: unsafe { borrowed::slice(t.data.span) },
                })
                .collect(),
            header_metadata: self.header_metadata.clone(),
        }
    }
}

/// The tensor name as errors show it.
struct TensorName<'a>(&'a str);

impl std::fmt::Display for TensorName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tensor {:?}", self.0)
    }
}

fn take_sources(py: Python<'_>, groups: Vec<PyGroup<'_>>) -> PyResult<Vec<OwnedGroup>> {
    let sources = Sources::new(py)?;
    groups
        .into_iter()
        .map(|(name, tensors, header_metadata)| {
            let tensors = tensors
                .into_iter()
                .map(|(tname, dtype, shape, obj)| {
                    let dt = Dtype::parse(&dtype).ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "tensor {tname:?}: unsupported dtype {dtype:?}"
                        ))
                    })?;
                    let data = sources.hold(&obj, &TensorName(&tname))?;
                    Ok(HeldTensor {
                        name: tname,
                        dtype: dt,
                        shape,
                        data,
                    })
                })
                .collect::<PyResult<_>>()?;
            Ok(OwnedGroup {
                name,
                tensors,
                header_metadata,
            })
        })
        .collect()
}

/// The options of a save, one typed object from the Python API to the core; see
/// `_core.pyi`.
#[pyclass(frozen, name = "SaveOptions", module = "ckptio._core")]
#[derive(Clone)]
pub struct PySaveOptions {
    inner: writer::SaveOptions,
}

#[pymethods]
impl PySaveOptions {
    #[new]
    #[pyo3(signature = (*, overwrite=false, durable=true, threads=0, max_shard_bytes=None,
        part_size=writer::DEFAULT_PART_SIZE, parts_in_flight=writer::DEFAULT_PARTS_IN_FLIGHT,
        storage_options=None))]
    fn new(
        overwrite: bool,
        durable: bool,
        threads: usize,
        max_shard_bytes: Option<u64>,
        part_size: usize,
        parts_in_flight: usize,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        if max_shard_bytes == Some(0) {
            return Err(PyValueError::new_err("max_shard_bytes must be positive"));
        }
        if parts_in_flight == 0 {
            return Err(PyValueError::new_err("parts_in_flight must be positive"));
        }
        Ok(PySaveOptions {
            inner: writer::SaveOptions {
                overwrite,
                durable,
                threads,
                max_shard_bytes,
                part_size,
                parts_in_flight,
                storage: StorageOptions {
                    config: storage_options.unwrap_or_default(),
                },
            },
        })
    }

    #[getter]
    fn overwrite(&self) -> bool {
        self.inner.overwrite
    }

    #[getter]
    fn durable(&self) -> bool {
        self.inner.durable
    }

    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads
    }

    #[getter]
    fn max_shard_bytes(&self) -> Option<u64> {
        self.inner.max_shard_bytes
    }

    #[getter]
    fn part_size(&self) -> usize {
        self.inner.part_size
    }

    #[getter]
    fn parts_in_flight(&self) -> usize {
        self.inner.parts_in_flight
    }

    #[getter]
    fn storage_options(&self) -> Vec<(String, String)> {
        self.inner.storage.config.clone()
    }
}

/// A path (any bytes) or an `s3://` URL.
pub(crate) fn location(path: PathBuf) -> PyResult<Location> {
    Location::from_path(path).into_py_result()
}

/// Per-call object-store settings as the core takes them.
pub(crate) fn storage_options(options: Option<Vec<(String, String)>>) -> StorageOptions {
    StorageOptions {
        config: options.unwrap_or_default(),
    }
}

/// Saves a checkpoint; see `_core.pyi`. `groups` is a `SaveTensors` from `plan_save`,
/// or a list of (group name, [(name, dtype, shape, source)], header metadata).
#[pyfunction]
#[pyo3(signature = (location, kind, groups, user_json, options, side_files=Vec::new()))]
fn save(
    py: Python<'_>,
    location: PathBuf,
    kind: &str,
    groups: &Bound<'_, PyAny>,
    user_json: &str,
    options: PyRef<'_, PySaveOptions>,
    side_files: Vec<(String, Bound<'_, PyBytes>)>,
) -> PyResult<()> {
    let location = self::location(location)?;
    let kind = Kind::parse(kind)
        .ok_or_else(|| PyValueError::new_err(format!("unknown checkpoint kind {kind:?}")))?;
    let user = serde_json::value::RawValue::from_string(user_json.to_owned())
        .map_err(|e| PyValueError::new_err(format!("user_json: {e}")))?;
    let owned = match groups.cast::<PySaveTensors>() {
        Ok(planned) => planned.borrow().hold(py)?,
        Err(_) => planned::HeldSave::from_groups(take_sources(py, groups.extract()?)?),
    };
    // Side files are small: copied, so the write needs no Python object.
    let side_files: Vec<(String, Vec<u8>)> = side_files
        .into_iter()
        .map(|(name, data)| (name, data.as_bytes().to_vec()))
        .collect();
    let opts = options.inner.clone();
    py.detach(|| {
        let groups: Vec<writer::GroupSource> =
            owned.groups.iter().map(OwnedGroup::source).collect();
        let side_files: Vec<writer::SideFile> = side_files
            .iter()
            .map(|(name, data)| writer::SideFile { name, data })
            .collect();
        writer::save_with_files(&location, kind, &groups, &side_files, user, &opts)
    })
    .into_py_result()
}

/// Copies each source into its destination, in parallel, GIL released; see `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (pairs, threads=0, *, names=None))]
fn copy_into(
    py: Python<'_>,
    pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    threads: usize,
    names: Option<Vec<String>>,
) -> PyResult<()> {
    if names.as_ref().is_some_and(|n| n.len() != pairs.len()) {
        return Err(PyValueError::new_err("copy_into: one name per pair"));
    }
    let label = |i: usize| match &names {
        Some(n) => format!("tensor {:?}", n[i]),
        None => format!("pair {i}"),
    };
    let sources = Sources::new(py)?;
    let mut held = Vec::with_capacity(pairs.len());
    let mut dest_spans = Vec::with_capacity(pairs.len());
    for (i, (s, d)) in pairs.iter().enumerate() {
        let src = sources.hold(s, &format_args!("{} (source)", label(i)))?;
        let dst = borrowed::hold_destination(d, &format_args!("{} (destination)", label(i)))?;
        dest_spans.push((dst.span, label(i)));
        held.push((src, dst));
    }
    let pairs: Vec<(&Held, &Held)> = held.iter().map(|(s, d)| (s, d)).collect();
    borrowed::copy_held(py, sources, &pairs, &dest_spans, threads)
}

/// Opens a checkpoint (reads the manifest and headers; maps local files); see
/// `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (location, storage_options=None))]
fn open(
    py: Python<'_>,
    location: PathBuf,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<PyCheckpoint> {
    let location = self::location(location)?;
    let options = self::storage_options(storage_options);
    py.detach(|| match &location {
        Location::Local(path) => crate::open(path).map(PyCheckpoint::new),
        Location::Object(url) => crate::remote::open(url, &options).map(PyCheckpoint::remote),
    })
    .into_py_result()
}

/// Removes leftovers of dead saves at `location`; see `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (location, storage_options=None, older_than=3600.0))]
fn cleanup<'py>(
    py: Python<'py>,
    location: PathBuf,
    storage_options: Option<Vec<(String, String)>>,
    older_than: f64,
) -> PyResult<CleanupOutcome<'py>> {
    let location = self::location(location)?;
    let options = self::storage_options(storage_options);
    let grace = std::time::Duration::try_from_secs_f64(older_than)
        .map_err(|e| PyValueError::new_err(format!("older_than: {e}")))?;
    let report = py
        .detach(|| match &location {
            Location::Local(dir) => crate::lifecycle::cleanup(dir),
            Location::Object(url) => crate::storage::object_cleanup::cleanup(url, &options, grace),
        })
        .into_py_result()?;
    let done = report
        .done
        .into_iter()
        .map(|p| path_object(py, p))
        .collect::<PyResult<_>>()?;
    let skipped = report
        .skipped
        .into_iter()
        .map(|(p, why)| Ok((path_object(py, p)?, why)))
        .collect::<PyResult<_>>()?;
    Ok((done, skipped))
}

/// Copies a checkpoint between places, checking every checksum; see `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (src, dst, options, src_storage_options=None, progress=None))]
fn copy(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    options: PyRef<'_, PySaveOptions>,
    src_storage_options: Option<Vec<(String, String)>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<()> {
    let (src, dst) = (location(src)?, location(dst)?);
    let src_options = match src_storage_options {
        Some(items) => storage_options(Some(items)),
        None => options.inner.storage.clone(),
    };
    let opts = options.inner.clone();
    let report = |done: u64, total: u64| {
        if let Some(callback) = &progress {
            // A failing callback must not abort the copy; its error is dropped.
            Python::attach(|py| {
                let _ = callback.call1(py, (done, total));
            });
        }
    };
    py.detach(|| crate::transfer::copy(&src, &dst, &src_options, &opts, &report))
        .into_py_result()
}

/// (paths or URLs removed or put back, (path or URL, reason) of entries left alone).
type CleanupOutcome<'py> = (Vec<Bound<'py, PyAny>>, Vec<(Bound<'py, PyAny>, String)>);

#[pymodule(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(copy_into, m)?)?;
    m.add_function(wrap_pyfunction!(copy, m)?)?;
    m.add_function(wrap_pyfunction!(planned::plan_save, m)?)?;
    m.add_function(wrap_pyfunction!(planned::flatten_tree, m)?)?;
    m.add_class::<PySaveTensors>()?;
    foreign::register(m)?;
    lifecycle::register(m)?;
    parts::register(m)?;
    m.add_class::<PyCheckpoint>()?;
    m.add_class::<PyMappedFile>()?;
    m.add_class::<PySaveOptions>()?;
    m.add("FORMAT_VERSION", crate::manifest::FORMAT_VERSION)?;
    m.add("CHECKSUM_ALGORITHM", crate::checksum::ALGORITHM)?;
    Ok(())
}
