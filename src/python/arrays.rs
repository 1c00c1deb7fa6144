//! What a save needs to know about one array, read in Rust for the common cases: a
//! C-contiguous native-endian numpy array of a plain buffer dtype (read from its buffer
//! export), or a contiguous CPU torch tensor (a few attribute reads). Everything else
//! (non-contiguous or big-endian arrays, ml_dtypes bf16/fp8, numpy scalars, CUDA or
//! conj/neg torch tensors, unsupported dtypes) goes to the Python hooks of
//! `ckptio._tensors`, which copy or refuse it with the same messages as before.
//!
//! Nothing here reads tensor memory: addresses only identify views (tied weights), and
//! the bytes are found, checked and held again when the write starts (`borrowed.rs`).

use std::cell::RefCell;
use std::collections::HashMap;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

use super::borrowed::is_instance;
use crate::Dtype;

/// The Python side of the slow cases, from `ckptio._tensors`: `as_saveable(name, value)`,
/// `address(value)`, `storage_key(value)` and `torch_dtype(dtype)`.
pub(crate) struct Hooks<'py> {
    as_saveable: Bound<'py, PyAny>,
    address: Bound<'py, PyAny>,
    storage_key: Bound<'py, PyAny>,
    torch_dtype: Bound<'py, PyAny>,
}

impl<'py> Hooks<'py> {
    pub fn new(hooks: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = hooks.py();
        Ok(Hooks {
            as_saveable: hooks.getattr(intern!(py, "as_saveable"))?,
            address: hooks.getattr(intern!(py, "address"))?,
            storage_key: hooks.getattr(intern!(py, "storage_key"))?,
            torch_dtype: hooks.getattr(intern!(py, "torch_dtype"))?,
        })
    }

    /// `as_saveable(name, value)`: (dtype, shape, data, nbytes, owner, borrowed).
    pub fn as_saveable(
        &self,
        name: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.as_saveable.call1((name, value))
    }
}

/// What kind of leaf a value is, decided by type (true subtype checks, no `__class__`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LeafKind {
    Torch,
    Array,
    Scalar,
}

impl LeafKind {
    /// The skeleton tag of a leaf of this kind.
    pub fn tag(self) -> &'static str {
        match self {
            LeafKind::Torch => "torch",
            LeafKind::Array => "array",
            LeafKind::Scalar => "scalar",
        }
    }
}

/// The dtype, shape and size of an array whose bytes the binding can read in place.
#[derive(Clone, Debug)]
pub(crate) struct Fast {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub nbytes: usize,
}

/// One array, looked at: where it starts (None for empty arrays and non-arrays, as
/// `_tensors._address`) and, in the common cases, its row.
pub(crate) struct Probe {
    pub address: Option<usize>,
    pub fast: Option<Fast>,
}

/// The array types of this call: numpy's, and torch's once the caller imported torch
/// (torch is never imported here, as in `_tensors.is_torch_tensor`).
pub(crate) struct ArrayTypes<'py> {
    ndarray: Bound<'py, PyType>,
    generic: Bound<'py, PyType>,
    tensor: Option<Bound<'py, PyType>>,
    strided: Option<Bound<'py, PyAny>>,
    // torch dtype objects seen, with their safetensors dtype (None: unsupported).
    torch_dtypes: RefCell<Vec<(Bound<'py, PyAny>, Option<Dtype>)>>,
}

impl<'py> ArrayTypes<'py> {
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        let numpy = py.import(intern!(py, "numpy"))?;
        let modules = py
            .import(intern!(py, "sys"))?
            .getattr(intern!(py, "modules"))?;
        let torch = modules.get_item("torch").ok().filter(|t| !t.is_none());
        let tensor = torch
            .as_ref()
            .and_then(|t| t.getattr("Tensor").ok())
            .and_then(|t| t.cast_into::<PyType>().ok());
        let strided = torch.as_ref().and_then(|t| t.getattr("strided").ok());
        Ok(ArrayTypes {
            ndarray: numpy.getattr("ndarray")?.cast_into()?,
            generic: numpy.getattr("generic")?.cast_into()?,
            tensor,
            strided,
            torch_dtypes: RefCell::new(Vec::new()),
        })
    }

    /// Is `value` a torch tensor (an instance of `torch.Tensor` or a subclass)?
    pub fn is_torch(&self, value: &Bound<'py, PyAny>) -> bool {
        self.tensor.as_ref().is_some_and(|t| is_instance(value, t))
    }

    /// The leaf kind of `value`, in `_tree`'s order: torch, numpy array, numpy scalar.
    pub fn kind(&self, value: &Bound<'py, PyAny>) -> Option<LeafKind> {
        if self.is_torch(value) {
            Some(LeafKind::Torch)
        } else if is_instance(value, &self.ndarray) {
            Some(LeafKind::Array)
        } else if is_instance(value, &self.generic) {
            Some(LeafKind::Scalar)
        } else {
            None
        }
    }

    /// Where `value` starts and, when the binding can read it as it is, its row.
    pub fn probe(
        &self,
        hooks: &Hooks<'py>,
        value: &Bound<'py, PyAny>,
        kind: Option<LeafKind>,
    ) -> PyResult<Probe> {
        match kind {
            Some(LeafKind::Array) if value.get_type().is(&self.ndarray) => {
                match PyUntypedBuffer::get(value) {
                    // numpy exports its own data pointer: __array_interface__'s address.
                    Ok(buf) => Ok(Probe {
                        address: (buf.item_count() > 0).then(|| buf.buf_ptr() as usize),
                        fast: numpy_fast(&buf),
                    }),
                    // No buffer (ml_dtypes bf16, datetimes ...): Python decides.
                    Err(_) => self.slow_probe(hooks, value),
                }
            }
            Some(LeafKind::Array) => self.slow_probe(hooks, value), // ndarray subclasses
            Some(LeafKind::Torch) => self.torch_probe(hooks, value),
            Some(LeafKind::Scalar) | None => Ok(Probe {
                address: None,
                fast: None,
            }),
        }
    }

    fn slow_probe(&self, hooks: &Hooks<'py>, value: &Bound<'py, PyAny>) -> PyResult<Probe> {
        Ok(Probe {
            address: hooks.address.call1((value,))?.extract()?,
            fast: None,
        })
    }

    /// `_tensors._torch`'s fast case: a CPU, strided, contiguous tensor of a supported
    /// dtype without the conj or neg bit. The storage itself is checked at write time.
    fn torch_probe(&self, hooks: &Hooks<'py>, t: &Bound<'py, PyAny>) -> PyResult<Probe> {
        let py = t.py();
        let nbytes: usize = t.getattr(intern!(py, "nbytes"))?.extract()?;
        let address = match nbytes {
            0 => None, // empty: the data pointer means nothing
            _ => Some(t.call_method0(intern!(py, "data_ptr"))?.extract()?),
        };
        let fast =
            match self.torch_dtype(hooks, &t.getattr(intern!(py, "dtype"))?)? {
                Some(dtype)
                    if self.strided.as_ref().is_some_and(|s| {
                        t.getattr(intern!(py, "layout")).is_ok_and(|l| l.is(s))
                    }) && t.getattr(intern!(py, "is_cpu"))?.is_truthy()?
                        && t.call_method0(intern!(py, "is_contiguous"))?.is_truthy()?
                        && !t.call_method0(intern!(py, "is_conj"))?.is_truthy()?
                        && !t.call_method0(intern!(py, "is_neg"))?.is_truthy()? =>
                {
                    Some(Fast {
                        dtype,
                        shape: t.getattr(intern!(py, "shape"))?.extract()?,
                        nbytes,
                    })
                }
                _ => None,
            };
        Ok(Probe { address, fast })
    }

    fn torch_dtype(
        &self,
        hooks: &Hooks<'py>,
        dtype: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Dtype>> {
        if let Some((_, known)) = self.torch_dtypes.borrow().iter().find(|(d, _)| d.is(dtype)) {
            return Ok(*known);
        }
        let name = hooks.torch_dtype.call1((dtype,))?;
        let known = match name.cast::<PyString>() {
            Ok(name) => Dtype::parse(name.to_str()?),
            Err(_) => None,
        };
        self.torch_dtypes.borrow_mut().push((dtype.clone(), known));
        Ok(known)
    }
}

/// `_tensors._numpy`'s fast case, from the buffer numpy exports: at least one
/// dimension, C-contiguous, a one-character (so native-endian) format of a plain type.
fn numpy_fast(buf: &PyUntypedBuffer) -> Option<Fast> {
    if buf.dimensions() == 0 || !buf.is_c_contiguous() {
        return None;
    }
    let &[code] = buf.format().to_bytes() else {
        return None; // "<f", ">f", "T{...}", "Zf", "1s" ...: not the fast case
    };
    let dtype = match (code, buf.item_size()) {
        (b'?', 1) => Dtype::Bool,
        (b'b' | b'h' | b'i' | b'l' | b'q', 1) => Dtype::I8,
        (b'b' | b'h' | b'i' | b'l' | b'q', 2) => Dtype::I16,
        (b'b' | b'h' | b'i' | b'l' | b'q', 4) => Dtype::I32,
        (b'b' | b'h' | b'i' | b'l' | b'q', 8) => Dtype::I64,
        (b'B' | b'H' | b'I' | b'L' | b'Q', 1) => Dtype::U8,
        (b'B' | b'H' | b'I' | b'L' | b'Q', 2) => Dtype::U16,
        (b'B' | b'H' | b'I' | b'L' | b'Q', 4) => Dtype::U32,
        (b'B' | b'H' | b'I' | b'L' | b'Q', 8) => Dtype::U64,
        (b'e', 2) => Dtype::F16,
        (b'f', 4) => Dtype::F32,
        (b'd', 8) => Dtype::F64,
        _ => return None,
    };
    Some(Fast {
        dtype,
        shape: buf.shape().iter().map(|&n| n as u64).collect(),
        nbytes: buf.len_bytes(),
    })
}

/// `_tensors.SameViews`: finds an earlier array that is the exact same view of the same
/// memory. Only addresses are compared here; arrays that start at the same address are
/// compared by `storage_key` in Python, so the rule stays the one `_tensors` defines.
#[derive(Default)]
pub(crate) struct SameViews<'py> {
    at: HashMap<usize, Vec<(Bound<'py, PyAny>, String)>>,
}

impl<'py> SameViews<'py> {
    /// The name of an earlier array that is the same view as `value` (starting at
    /// `address`); else remembers `value` under `name` and returns None.
    pub fn find_or_add(
        &mut self,
        hooks: &Hooks<'py>,
        value: &Bound<'py, PyAny>,
        address: Option<usize>,
        name: &str,
    ) -> PyResult<Option<String>> {
        let Some(address) = address else {
            return Ok(None);
        };
        let seen = self.at.entry(address).or_default();
        if !seen.is_empty() {
            let key = hooks.storage_key.call1((value,))?;
            for (other, other_name) in seen.iter() {
                if hooks.storage_key.call1((other,))?.eq(&key)? {
                    return Ok(Some(other_name.clone()));
                }
            }
        }
        seen.push((value.clone(), name.to_owned()));
        Ok(None)
    }
}
