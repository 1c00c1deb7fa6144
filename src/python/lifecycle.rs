//! Bindings of the checkpoint lifecycle (src/lifecycle.rs): describe, list, edit the
//! user section, delete, clean up, verify with progress. The GIL is released around
//! every call that touches the filesystem.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;

use super::errors::IntoPyResult;
use crate::lifecycle::{self, Summary};

/// (kind, checkpoint_id, user_json, size_bytes, modified) as Python sees a summary.
type PySummary = (&'static str, String, String, u64, f64);

fn to_py(s: Summary) -> PySummary {
    (
        s.kind.as_str(),
        s.checkpoint_id,
        s.user_json,
        s.size_bytes,
        s.modified,
    )
}

/// Reads and checks a checkpoint's manifest; maps no tensor file. See `_core.pyi`.
#[pyfunction]
fn describe_checkpoint(py: Python<'_>, path: PathBuf) -> PyResult<PySummary> {
    py.detach(|| lifecycle::describe(&path))
        .into_py_result()
        .map(to_py)
}

/// The checkpoints of a directory and the entries that could not be read (name,
/// message). See `_core.pyi`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn list_checkpoints(
    py: Python<'_>,
    directory: PathBuf,
) -> PyResult<(Vec<(String, PySummary)>, Vec<(String, String)>)> {
    let listed = py.detach(|| lifecycle::list(&directory)).into_py_result()?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (name, r) in listed {
        match r {
            Ok(s) => good.push((name, to_py(s))),
            Err(e) => bad.push((name, e.to_string())),
        }
    }
    Ok((good, bad))
}

/// Sets one top-level key of the manifest's user section, atomically. See `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (path, key, value_json, *, expect_id=None, durable=true))]
fn update_user_section(
    py: Python<'_>,
    path: PathBuf,
    key: &str,
    value_json: &str,
    expect_id: Option<&str>,
    durable: bool,
) -> PyResult<PySummary> {
    py.detach(|| lifecycle::update_user(&path, key, value_json, expect_id, durable))
        .into_py_result()
        .map(to_py)
}

/// Deletes a checkpoint atomically. See `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (path, *, durable=true))]
fn delete_checkpoint(py: Python<'_>, path: PathBuf, durable: bool) -> PyResult<()> {
    py.detach(|| lifecycle::delete(&path, durable))
        .into_py_result()
}

/// Verifies every byte, calling `progress(done, total)` (at most about 200 times) as
/// tensor bytes are hashed. See `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (path, progress, threads=0))]
fn verify_with_progress(
    py: Python<'_>,
    path: PathBuf,
    progress: Py<PyAny>,
    threads: usize,
) -> PyResult<Vec<String>> {
    // Reports come from worker threads in any order: under the lock, only a larger
    // count that is another 0.5% on (or the total) is passed on, so Python sees a
    // rising count ending at the total. Each call takes the GIL.
    let reported: Mutex<Option<u64>> = Mutex::new(None);
    let report = |done: u64, total: u64| {
        let mut last = reported.lock().unwrap_or_else(|e| e.into_inner());
        let due = match *last {
            None => true,
            Some(l) => done > l && (done == total || done >= l + (total / 200).max(1)),
        };
        if due {
            *last = Some(done);
            Python::attach(|py| {
                // A failing callback must not fail the verify; its error is dropped.
                let _ = progress.call1(py, (done, total));
            });
        }
    };
    py.detach(|| lifecycle::verify(&path, threads, &report))
        .into_py_result()
}

/// Adds this module's functions to `ckptio._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(describe_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(list_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(update_user_section, m)?)?;
    m.add_function(wrap_pyfunction!(delete_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(verify_with_progress, m)?)?;
    Ok(())
}
