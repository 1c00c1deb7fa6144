//! A save's tensors, planned in one call with the GIL held once (`plan_save`): the
//! weights mapping walked (tied weights folded), the optimizer tree flattened
//! (`flatten.rs`), and one row per tensor to store, kept here rather than as Python
//! objects. Python's per-save work is then O(1); only the uncommon arrays (see
//! `arrays.rs`) call back into `ckptio._tensors`, one call each.
//!
//! A row keeps the caller's object, not its memory: the bytes are found, checked and
//! held when the write (or the snapshot of an async save) starts, exactly as for the
//! list form of `save` (`borrowed.rs`), so a storage swapped or resized after planning
//! is refused, never read out of bounds.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use super::arrays::{ArrayTypes, Fast, Hooks, SameViews};
use super::borrowed::{self, GcPaused, Held, Sources};
use super::flatten::{flatten, Flattened};
use super::{HeldTensor, OwnedGroup, TensorName};
use crate::Dtype;

/// (group, name, dtype, shape, nbytes, borrowed), as `rows_info` reports a row.
type RowInfo = (String, String, &'static str, Vec<u64>, usize, bool);
/// (skeleton JSON text, [(tensor name, leaf)]), as `flatten_tree` returns them.
type FlatTree<'py> = (String, Vec<(String, Bound<'py, PyAny>)>);

/// Staging slices start on cache lines (as `_plan._ALIGN`).
const ALIGN: usize = 64;

/// Where a row's bytes are.
enum Data {
    /// The caller's array or tensor (or a private copy Python made of it).
    Object(Py<PyAny>),
    /// This many bytes into the staging buffer of a snapshot.
    Staged(usize),
}

struct Row {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    nbytes: usize,
    data: Data,
    /// Still the caller's memory (a snapshot copies it).
    borrowed: bool,
}

struct Group {
    name: String,
    rows: Vec<Row>,
    header_metadata: Vec<(String, String)>,
}

/// The planned tensors of one save, group by group; see `_core.pyi`.
#[pyclass(module = "ckptio._core", name = "SaveTensors")]
pub struct PySaveTensors {
    groups: Vec<Group>,
    /// The snapshot's staging buffer, once `snapshot` ran.
    staging: Option<Py<PyAny>>,
}

/// The held memory of a planned save: the groups as the core takes them, and the
/// staging buffer that staged rows point into (kept alive as long as they are).
pub(super) struct HeldSave {
    pub(super) groups: Vec<OwnedGroup>,
    _staging: Option<Held>,
}

impl HeldSave {
    /// Groups whose memory is all held by their own rows (the list form of `save`).
    pub(super) fn from_groups(groups: Vec<OwnedGroup>) -> Self {
        HeldSave {
            groups,
            _staging: None,
        }
    }
}

impl PySaveTensors {
    /// Checks and holds every row's memory for the write (the GIL is held; it is
    /// released by the caller only after this returns).
    pub(super) fn hold(&self, py: Python<'_>) -> PyResult<HeldSave> {
        let sources = Sources::new(py)?;
        let staging = match &self.staging {
            Some(s) => Some(sources.hold(s.bind(py), &"the snapshot's staging buffer")?),
            None => None,
        };
        let mut groups = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut tensors = Vec::with_capacity(group.rows.len());
            for row in &group.rows {
                let data = match &row.data {
                    Data::Object(obj) => sources.hold(obj.bind(py), &TensorName(&row.name))?,
                    Data::Staged(offset) => staging
                        .as_ref()
                        .and_then(|s| s.part(*offset, row.nbytes))
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "tensor {:?}: its staged copy lies outside the staging buffer",
                                row.name
                            ))
                        })?,
                };
                tensors.push(HeldTensor {
                    name: row.name.clone(),
                    dtype: row.dtype,
                    shape: row.shape.clone(),
                    data,
                });
            }
            groups.push(OwnedGroup {
                name: group.name.clone(),
                tensors,
                header_metadata: group.header_metadata.clone(),
            });
        }
        Ok(HeldSave {
            groups,
            _staging: staging,
        })
    }

    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.groups.iter().flat_map(|g| g.rows.iter())
    }
}

#[pymethods]
impl PySaveTensors {
    /// Tensor bytes this save writes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.rows().map(|r| r.nbytes).sum()
    }

    /// Size of the staging buffer `snapshot` needs.
    fn staging_bytes(&self) -> usize {
        self.rows()
            .filter(|r| r.borrowed)
            .map(|r| r.nbytes.next_multiple_of(ALIGN))
            .sum()
    }

    /// Copies every row still in the caller's memory into `staging` (parallel, GIL
    /// released); those rows then read the copy.
    #[pyo3(signature = (staging, threads=0))]
    fn snapshot(
        &mut self,
        py: Python<'_>,
        staging: Bound<'_, PyAny>,
        threads: usize,
    ) -> PyResult<()> {
        let sources = Sources::new(py)?;
        let dst = borrowed::hold_destination(&staging, &"the snapshot's staging buffer")?;
        let mut held = Vec::new();
        let mut dest_spans = Vec::new();
        let mut offset = 0usize;
        for (g, group) in self.groups.iter().enumerate() {
            for (r, row) in group.rows.iter().enumerate() {
                let Data::Object(obj) = &row.data else {
                    continue;
                };
                if !row.borrowed {
                    continue;
                }
                let what = format!("tensor {:?}", row.name);
                let src = sources.hold(obj.bind(py), &format_args!("{what} (source)"))?;
                if src.span.1 != row.nbytes {
                    return Err(PyValueError::new_err(format!(
                        "{what}: it holds {} bytes now, {} when the save was planned (was it \
                         resized?)",
                        src.span.1, row.nbytes
                    )));
                }
                let part = dst.part(offset, row.nbytes).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "the snapshot's staging buffer of {} bytes is too small",
                        dst.span.1
                    ))
                })?;
                dest_spans.push((part.span, what));
                held.push((src, part, g, r, offset));
                offset += row.nbytes.next_multiple_of(ALIGN);
            }
        }
        // The staging buffer (`dst`) is held by `self` throughout.
        let pairs: Vec<(&Held, &Held)> = held.iter().map(|(s, d, ..)| (s, d)).collect();
        borrowed::copy_held(py, sources, &pairs, &dest_spans, threads)?;
        for (_, _, g, r, offset) in held {
            let row = &mut self.groups[g].rows[r];
            row.data = Data::Staged(offset);
            row.borrowed = false;
        }
        self.staging = Some(staging.unbind());
        Ok(())
    }

    /// For a write that runs later without a snapshot: each borrowed torch tensor is
    /// replaced by `tensor.detach()`, a new tensor over the same storage, so a caller who
    /// then rebinds `p.data` neither frees the memory the write reads nor changes what it
    /// saves. (The storage is checked again when the write starts.)
    fn hold_storages(&mut self, py: Python<'_>) -> PyResult<()> {
        let types = ArrayTypes::new(py)?;
        for row in self.groups.iter_mut().flat_map(|g| g.rows.iter_mut()) {
            if let (Data::Object(obj), true) = (&row.data, row.borrowed) {
                let obj = obj.bind(py);
                if types.is_torch(obj) {
                    row.data = Data::Object(obj.call_method0(intern!(py, "detach"))?.unbind());
                }
            }
        }
        Ok(())
    }

    /// (group, name, dtype, shape, nbytes, borrowed) of every row, in write order.
    fn rows_info(&self) -> Vec<RowInfo> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.rows.iter().map(|r| {
                    let info = (r.name.clone(), r.dtype.name(), r.shape.clone(), r.nbytes);
                    (g.name.clone(), info.0, info.1, info.2, info.3, r.borrowed)
                })
            })
            .collect()
    }

    fn __len__(&self) -> usize {
        self.rows().count()
    }
}

/// A row for an array the binding reads as it is.
fn fast_row(name: String, value: &Bound<'_, PyAny>, fast: Fast) -> Row {
    Row {
        name,
        dtype: fast.dtype,
        shape: fast.shape,
        nbytes: fast.nbytes,
        data: Data::Object(value.clone().unbind()),
        borrowed: true,
    }
}

/// A row from `_tensors.as_saveable` (it copies or refuses the uncommon arrays); also
/// says whether its owner is a torch tensor.
fn slow_row<'py>(
    types: &ArrayTypes<'py>,
    hooks: &Hooks<'py>,
    key: &Bound<'py, PyAny>,
    name: String,
    value: &Bound<'py, PyAny>,
) -> PyResult<(Row, bool)> {
    let saveable = hooks.as_saveable(key, value)?;
    let (dtype, shape, data, nbytes, owner, borrowed): (
        String,
        Vec<u64>,
        Bound<'py, PyAny>,
        usize,
        Bound<'py, PyAny>,
        bool,
    ) = saveable.extract()?;
    let dtype = Dtype::parse(&dtype).ok_or_else(|| {
        PyValueError::new_err(format!("tensor {name:?}: unsupported dtype {dtype:?}"))
    })?;
    let row = Row {
        name,
        dtype,
        shape,
        nbytes,
        data: Data::Object(data.unbind()),
        borrowed,
    };
    Ok((row, types.is_torch(&owner)))
}

/// The weights group, walked as `_plan._rows(weights.items(), fold_tied=True)`.
struct Weights {
    rows: Vec<Row>,
    aliases: Vec<(String, String)>,
    order: Vec<String>,
    all_torch: bool,
}

fn weight_rows<'py>(
    weights: &Bound<'py, PyAny>,
    types: &ArrayTypes<'py>,
    hooks: &Hooks<'py>,
) -> PyResult<Weights> {
    let py = weights.py();
    // A snapshot of an exact dict's items; any other mapping is asked for its items.
    let items = match weights.cast_exact::<PyDict>() {
        Ok(d) => d.items().into_any(),
        Err(_) => weights.call_method0(intern!(py, "items"))?,
    };
    let mut out = Weights {
        rows: Vec::new(),
        aliases: Vec::new(),
        order: Vec::new(),
        all_torch: true,
    };
    let mut views = SameViews::default();
    for item in items.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>()?;
        if pair.len() != 2 {
            return Err(PyValueError::new_err(format!(
                "weights.items() gave {} values, expected (name, array)",
                pair.len()
            )));
        }
        let (key, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let Ok(key_str) = key.cast::<PyString>() else {
            hooks.as_saveable(&key, &value)?; // raises: names must be str
            return Err(PyTypeError::new_err("tensor names must be str"));
        };
        let name = key_str
            .to_str()
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "tensor {}: the name is not valid UTF-8 (a lone surrogate)",
                    key.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?
            .to_owned();
        let kind = types.kind(&value);
        let probe = types.probe(hooks, &value, kind)?;
        match views.find_or_add(hooks, &value, probe.address, &name)? {
            // Tied weights: the same view of the same memory, stored once.
            Some(tied) => out.aliases.push((name.clone(), tied)),
            None => {
                let (row, torch) = match probe.fast {
                    Some(fast) => (fast_row(name.clone(), &value, fast), types.is_torch(&value)),
                    None => slow_row(types, hooks, &key, name.clone(), &value)?,
                };
                out.all_torch &= torch;
                out.rows.push(row);
            }
        }
        out.order.push(name);
    }
    out.all_torch &= !out.rows.is_empty();
    Ok(out)
}

/// What `plan_save` returns: the tensors, the optimizer skeleton's JSON text (None
/// without an optimizer group), tied-weight aliases, the weights' order (only when
/// there are aliases) and whether every stored weight is a torch tensor.
type Plan = (
    PySaveTensors,
    Option<String>,
    Vec<(String, String)>,
    Vec<String>,
    bool,
);

/// Plans a save's tensors; see `_core.pyi`.
#[pyfunction]
#[pyo3(signature = (weights, optimizer_state, *, weights_group, weights_metadata,
    optimizer_group=None, max_depth, hooks))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_save<'py>(
    py: Python<'py>,
    weights: &Bound<'py, PyAny>,
    optimizer_state: &Bound<'py, PyAny>,
    weights_group: String,
    weights_metadata: Vec<(String, String)>,
    optimizer_group: Option<String>,
    max_depth: usize,
    hooks: &Bound<'py, PyAny>,
) -> PyResult<Plan> {
    let _gc = GcPaused::new(py); // the walk makes few objects; collections would scan all
    let types = ArrayTypes::new(py)?;
    let hooks = Hooks::new(hooks)?;
    let weights = weight_rows(weights, &types, &hooks)?;
    let mut groups = vec![Group {
        name: weights_group,
        rows: weights.rows,
        header_metadata: weights_metadata,
    }];
    let mut skeleton = None;
    if let Some(group) = optimizer_group {
        let Flattened {
            skeleton: text,
            leaves,
        } = flatten(optimizer_state, "state", max_depth, &types, &hooks)?;
        let mut rows = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            rows.push(match leaf.fast {
                Some(fast) => fast_row(leaf.name, &leaf.value, fast),
                None => {
                    let key = PyString::new(py, &leaf.name).into_any();
                    slow_row(&types, &hooks, &key, leaf.name, &leaf.value)?.0
                }
            });
        }
        groups.push(Group {
            name: group,
            rows,
            header_metadata: Vec::new(),
        });
        skeleton = Some(text);
    }
    let order = match weights.aliases.is_empty() {
        true => Vec::new(),
        false => weights.order,
    };
    let tensors = PySaveTensors {
        groups,
        staging: None,
    };
    Ok((tensors, skeleton, weights.aliases, order, weights.all_torch))
}

/// `_tree.flatten` in Rust, for tests: (skeleton JSON text, [(name, leaf), ...]).
#[pyfunction]
#[pyo3(signature = (tree, prefix, *, max_depth, hooks))]
pub(crate) fn flatten_tree<'py>(
    tree: &Bound<'py, PyAny>,
    prefix: &str,
    max_depth: usize,
    hooks: &Bound<'py, PyAny>,
) -> PyResult<FlatTree<'py>> {
    let types = ArrayTypes::new(tree.py())?;
    let hooks = Hooks::new(hooks)?;
    let flat = flatten(tree, prefix, max_depth, &types, &hooks)?;
    let leaves = flat.leaves.into_iter().map(|l| (l.name, l.value)).collect();
    Ok((flat.skeleton, leaves))
}
