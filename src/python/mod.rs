//! The PyO3 binding layer: converts Python objects to core types and back, releases
//! the GIL around every byte-moving call, and maps errors (in `errors.rs` only).

mod checkpoint;
mod errors;
mod lifecycle;

use std::path::PathBuf;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::{commit, writer, Dtype, Kind};
use checkpoint::{PyCheckpoint, PyMappedFile};
use errors::IntoPyResult;

/// (name, dtype, shape, buffer) as passed from Python.
type PyTensor<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>);
/// (group name, tensors, header metadata).
type PyGroup<'py> = (String, Vec<PyTensor<'py>>, Vec<(String, String)>);

/// A buffer's address and length, valid while its `PyUntypedBuffer` is held.
pub(crate) type Span = (usize, usize);
/// A span and the buffer export (if any) that keeps it valid.
pub(crate) type Held = (Option<PyUntypedBuffer>, Span);

struct HeldTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    _held: Option<PyUntypedBuffer>,
    span: Span,
}

struct OwnedGroup {
    name: String,
    tensors: Vec<HeldTensor>,
    header_metadata: Vec<(String, String)>,
}

fn take_buffers(groups: Vec<PyGroup<'_>>) -> PyResult<Vec<OwnedGroup>> {
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
                    let (held, span) = held_span(&obj, false, &tname)?;
                    Ok(HeldTensor {
                        name: tname,
                        dtype: dt,
                        shape,
                        _held: held,
                        span,
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
#[pyo3(signature = (path, kind, groups, user_json, *, overwrite=false, durable=true, threads=0, max_shard_bytes=None))]
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
) -> PyResult<()> {
    let kind = Kind::parse(kind)
        .ok_or_else(|| PyValueError::new_err(format!("unknown checkpoint kind {kind:?}")))?;
    let user = serde_json::value::RawValue::from_string(user_json.to_owned())
        .map_err(|e| PyValueError::new_err(format!("user_json: {e}")))?;
    if max_shard_bytes == Some(0) {
        return Err(PyValueError::new_err("max_shard_bytes must be positive"));
    }
    let owned = take_buffers(groups)?;
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
                        // SAFETY: the buffer is held until this call returns.
                        data: unsafe { &*slice_mut(t.span) },
                    })
                    .collect(),
                header_metadata: g.header_metadata.clone(),
            })
            .collect();
        writer::save(&path, kind, &groups, user, &opts)
    })
    .into_py_result()
}

/// Borrows a buffer's bytes for the duration of a call.
pub(crate) fn buffer_bytes(
    buf: &PyUntypedBuffer,
    writable: bool,
    what: &str,
) -> PyResult<(usize, usize)> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what}: buffer is not C-contiguous"
        )));
    }
    if writable && buf.readonly() {
        return Err(PyValueError::new_err(format!(
            "{what}: buffer is read-only"
        )));
    }
    Ok((buf.buf_ptr() as usize, buf.len_bytes()))
}

/// A tensor's bytes as Python passes them: an object exporting a buffer (held here),
/// or an `(address, nbytes)` pair for memory the Python layer keeps alive for the call
/// (CPU torch tensors: cheaper than a buffer export).
pub(crate) fn held_span(
    obj: &Bound<'_, PyAny>,
    writable: bool,
    what: &str,
) -> PyResult<(Option<PyUntypedBuffer>, Span)> {
    if let Ok(pair) = obj.cast::<PyTuple>() {
        return Ok((None, pair.extract()?));
    }
    let buf = PyUntypedBuffer::get(obj)?;
    let span = buffer_bytes(&buf, writable, what)?;
    Ok((Some(buf), span))
}

/// Slice from an address and length taken by `buffer_bytes` (empty buffers may have
/// no valid pointer).
///
/// # Safety
/// The buffer must be held for `'a` and, for `_mut`, nothing else may access it.
pub(crate) unsafe fn slice_mut<'a>((ptr, len): Span) -> &'a mut [u8] {
    match len {
        0 => &mut [],
        n => unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, n) },
    }
}

/// Copies each source buffer into its destination, in parallel, GIL released.
#[pyfunction]
#[pyo3(signature = (pairs, threads=0))]
fn copy_into(
    py: Python<'_>,
    pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    threads: usize,
) -> PyResult<()> {
    let held: Vec<(Held, Held)> = pairs
        .iter()
        .map(|(s, d)| {
            Ok((
                held_span(s, false, "source")?,
                held_span(d, true, "destination")?,
            ))
        })
        .collect::<PyResult<_>>()?;
    let spans: Vec<(Span, Span)> = held.iter().map(|((_, s), (_, d))| (*s, *d)).collect();
    py.detach(|| {
        // SAFETY: all buffers are held until return; destinations are distinct objects
        // the caller allocated for this copy.
        let jobs = spans
            .iter()
            .map(|&(s, d)| unsafe { (&*slice_mut(s), slice_mut(d)) })
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
fn cleanup(py: Python<'_>, directory: PathBuf) -> PyResult<Vec<PathBuf>> {
    py.detach(|| commit::cleanup_leftovers(&directory, None))
        .into_py_result()
}

#[pymodule(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(copy_into, m)?)?;
    lifecycle::register(m)?;
    m.add_class::<PyCheckpoint>()?;
    m.add_class::<PyMappedFile>()?;
    m.add("FORMAT_VERSION", crate::manifest::FORMAT_VERSION)?;
    m.add("CHECKSUM_ALGORITHM", crate::checksum::ALGORITHM)?;
    Ok(())
}
