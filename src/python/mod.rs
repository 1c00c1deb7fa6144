//! The PyO3 binding layer: converts Python objects to core types and back, releases
//! the GIL around every byte-moving call, and maps errors (in `errors.rs` only).

mod borrowed;
mod checkpoint;
mod errors;
mod foreign;
mod lifecycle;

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{writer, Dtype, Kind};
use borrowed::{Held, Sources};
use checkpoint::{PyCheckpoint, PyMappedFile};
use errors::IntoPyResult;

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

/// Saves a checkpoint; see `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (path, kind, groups, user_json, *, overwrite=false, durable=true, threads=0, max_shard_bytes=None, side_files=Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn save(
    py: Python<'_>,
    path: PathBuf,
    kind: &str,
    groups: Vec<PyGroup<'_>>,
    user_json: &str,
    overwrite: bool,
    durable: bool,
    threads: usize,
    max_shard_bytes: Option<u64>,
    side_files: Vec<(String, Bound<'_, PyBytes>)>,
) -> PyResult<()> {
    let kind = Kind::parse(kind)
        .ok_or_else(|| PyValueError::new_err(format!("unknown checkpoint kind {kind:?}")))?;
    let user = serde_json::value::RawValue::from_string(user_json.to_owned())
        .map_err(|e| PyValueError::new_err(format!("user_json: {e}")))?;
    if max_shard_bytes == Some(0) {
        return Err(PyValueError::new_err("max_shard_bytes must be positive"));
    }
    let owned = take_sources(py, groups)?;
    // Side files are small: copied, so the write needs no Python object.
    let side_files: Vec<(String, Vec<u8>)> = side_files
        .into_iter()
        .map(|(name, data)| (name, data.as_bytes().to_vec()))
        .collect();
    let opts = writer::SaveOptions {
        overwrite,
        durable,
        threads,
        max_shard_bytes,
    };
    py.detach(|| {
        let groups: Vec<writer::GroupSource> = owned
            .iter()
            .map(|g| writer::GroupSource {
                name: &g.name,
                tensors: g
                    .tensors
                    .iter()
                    .map(|t| writer::TensorSource {
                        name: &t.name,
                        dtype: t.dtype,
                        shape: &t.shape,
                        // SAFETY: the source is held until this call returns.
                        data: unsafe { borrowed::slice(t.data.span) },
                    })
                    .collect(),
                header_metadata: g.header_metadata.clone(),
            })
            .collect();
        let side_files: Vec<writer::SideFile> = side_files
            .iter()
            .map(|(name, data)| writer::SideFile { name, data })
            .collect();
        writer::save_with_files(&path, kind, &groups, &side_files, user, &opts)
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
    let src_spans: Vec<_> = held.iter().map(|(s, _)| s.span).collect();
    borrowed::check_disjoint(&dest_spans, &src_spans)?;
    let spans: Vec<_> = held.iter().map(|(s, d)| (s.span, d.span)).collect();
    drop(sources); // resumes the garbage collector before the GIL is released
    py.detach(|| {
        // SAFETY: all memory is held until return; destinations overlap nothing.
        let jobs = spans
            .iter()
            .map(|&(s, d)| unsafe { (borrowed::slice(s), borrowed::slice_mut(d)) })
            .collect();
        crate::copy::copy_all(jobs, threads)
    })
    .into_py_result()
}

/// Opens a checkpoint (reads the manifest and headers, maps the files); see `_core.pyi`.
#[pyfunction]
fn open(py: Python<'_>, path: PathBuf) -> PyResult<PyCheckpoint> {
    let ckpt = py.detach(|| crate::open(&path)).into_py_result()?;
    Ok(PyCheckpoint::new(ckpt))
}

/// Removes leftovers of dead saves in `directory`; see `_core.pyi`.
#[pyfunction]
fn cleanup(py: Python<'_>, directory: PathBuf) -> PyResult<CleanupOutcome> {
    let report = py
        .detach(|| crate::lifecycle::cleanup(&directory))
        .into_py_result()?;
    Ok((report.done, report.skipped))
}

/// (paths removed or put back, (path, reason) of entries left alone).
type CleanupOutcome = (Vec<PathBuf>, Vec<(PathBuf, String)>);

#[pymodule(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(copy_into, m)?)?;
    foreign::register(m)?;
    lifecycle::register(m)?;
    m.add_class::<PyCheckpoint>()?;
    m.add_class::<PyMappedFile>()?;
    m.add("FORMAT_VERSION", crate::manifest::FORMAT_VERSION)?;
    m.add("CHECKSUM_ALGORITHM", crate::checksum::ALGORITHM)?;
    Ok(())
}
