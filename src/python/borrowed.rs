//! Caller memory the core reads or writes with the GIL released, checked and held here.
//!
//! Nothing takes a raw address from Python. A *source* (bytes to save or copy) is an
//! object exporting a C-contiguous buffer, or a torch tensor that this module checks
//! itself: a real `torch.Tensor` subclass instance (a type check, not duck typing),
//! contiguous, whose bytes lie inside a CPU storage. The storage object is held for
//! the call, so a tensor whose `.data` is replaced meanwhile cannot free the memory
//! being read. A *destination* is a writable, C-contiguous buffer, and destinations
//! never overlap each other or a source.
//!
//! What stays the caller's contract, as for any buffer: no other thread frees,
//! resizes or writes the memory while the call runs (`storage.resize_` included).

use std::fmt::Display;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::errors::IntoPyResult;

/// An address and a length, valid while the `Held` that produced it lives.
pub(crate) type Span = (usize, usize);

/// Memory kept valid for a call: the export or storage that owns it, and its span.
pub(crate) struct Held {
    _owner: Owner,
    pub span: Span,
}

impl Held {
    /// The `len` bytes at `offset` inside this memory, or None if they do not fit. The
    /// part owns nothing: `self` must outlive it.
    pub(crate) fn part(&self, offset: usize, len: usize) -> Option<Held> {
        let end = offset.checked_add(len)?;
        (end <= self.span.1).then(|| Held {
            _owner: Owner::Nothing,
            span: (self.span.0 + offset, len),
        })
    }
}

enum Owner {
    Buffer(#[allow(dead_code)] PyUntypedBuffer),
    TorchStorage(#[allow(dead_code)] Py<PyAny>),
    Nothing,
}

/// What the checks need from torch, looked up once per call in `sys.modules`: torch is
/// never imported here, so a process that has not imported it has no tensors.
struct Torch<'py> {
    tensor: Bound<'py, PyType>,
    storage: Bound<'py, PyType>,
    // Unbound descriptors of the C storage type: a storage subclass cannot override them.
    storage_data_ptr: Bound<'py, PyAny>,
    storage_nbytes: Bound<'py, PyAny>,
    storage_device: Bound<'py, PyAny>,
    // The getter slot of `storage_device`: called directly, it skips a method lookup
    // and a bound-method object per tensor.
    storage_device_get: ffi::descrgetfunc,
    cpu: Bound<'py, PyAny>,
}

impl<'py> Torch<'py> {
    /// The imported torch, if any. Anything unexpected (no torch, one still importing,
    /// a stand-in module under the name) means no tensors are accepted: they are then
    /// refused as objects without a buffer, never read unchecked.
    fn find(py: Python<'py>) -> Option<Self> {
        Self::lookup(py).ok().flatten()
    }

    fn lookup(py: Python<'py>) -> PyResult<Option<Self>> {
        let modules = py
            .import(intern!(py, "sys"))?
            .getattr(intern!(py, "modules"))?;
        let torch = match modules.get_item("torch") {
            Ok(torch) if !torch.is_none() => torch,
            _ => return Ok(None),
        };
        let (Ok(tensor), Ok(storage)) = (
            torch.getattr("Tensor"),
            torch.getattr("_C").and_then(|c| c.getattr("StorageBase")),
        ) else {
            return Ok(None);
        };
        let storage = storage.cast_into::<PyType>()?;
        let slot = |name: &str| -> PyResult<Bound<'py, PyAny>> {
            storage
                .getattr(intern!(py, "__dict__"))?
                .get_item(name)
                .map_err(|_| PyTypeError::new_err(format!("torch._C.StorageBase has no {name}")))
        };
        let storage_device = slot("device")?;
        // SAFETY: a live type object; the slot of a getset descriptor is a descrgetfunc.
        let get =
            unsafe { ffi::PyType_GetSlot(storage_device.get_type_ptr(), ffi::Py_tp_descr_get) };
        if get.is_null() {
            return Err(PyTypeError::new_err(
                "torch._C.StorageBase.device is not a descriptor",
            ));
        }
        Ok(Some(Torch {
            tensor: tensor.cast_into::<PyType>()?,
            storage_data_ptr: slot("data_ptr")?,
            storage_nbytes: slot("nbytes")?,
            // SAFETY: checked non-null above; Py_tp_descr_get holds a descrgetfunc.
            storage_device_get: unsafe {
                std::mem::transmute::<*mut std::ffi::c_void, ffi::descrgetfunc>(get)
            },
            storage_device,
            cpu: torch.getattr("device")?.call1(("cpu",))?,
            storage,
        }))
    }

    /// The device of a storage (already checked to be a `StorageBase`), read through
    /// the C getter.
    fn device_of(&self, storage: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the getter of `storage_device`, called with live objects and the GIL
        // held; it returns a new reference or NULL with an exception set.
        unsafe {
            let device = (self.storage_device_get)(
                self.storage_device.as_ptr(),
                storage.as_ptr(),
                storage.get_type_ptr().cast(),
            );
            Bound::from_owned_ptr_or_err(storage.py(), device)
        }
    }
}

/// Disables the cyclic garbage collector until dropped, then restores its state.
/// Holds the GIL token, so it is dropped on the thread, and under the GIL, that made it.
pub(crate) struct GcPaused<'py> {
    _py: Python<'py>,
    was_enabled: bool,
}

impl<'py> GcPaused<'py> {
    pub fn new(py: Python<'py>) -> Self {
        // SAFETY: the GIL is held (the token proves it).
        let was_enabled = unsafe { ffi::PyGC_Disable() } != 0;
        GcPaused {
            _py: py,
            was_enabled,
        }
    }
}

impl Drop for GcPaused<'_> {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: the GIL is held: `Python<'py>` cannot leave its thread or outlive it.
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

pub(crate) fn is_instance(obj: &Bound<'_, PyAny>, ty: &Bound<'_, PyType>) -> bool {
    // SAFETY: both pointers are live type objects. A true subtype check: unlike
    // isinstance(), a `__class__` property or `__instancecheck__` cannot fake it.
    unsafe { ffi::PyType_IsSubtype(obj.get_type_ptr(), ty.as_type_ptr()) != 0 }
}

/// Checks and holds the sources of one call. Python's cyclic garbage collector is
/// paused while it lives: each torch tensor's storage object is a new tracked object,
/// and thousands of them would trigger collections over every object of the process.
pub(crate) struct Sources<'py> {
    torch: Option<Torch<'py>>,
    _gc: GcPaused<'py>,
}

impl<'py> Sources<'py> {
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        Ok(Sources {
            torch: Torch::find(py),
            _gc: GcPaused::new(py),
        })
    }

    /// A source's bytes: a C-contiguous buffer, or a checked CPU torch tensor.
    pub fn hold(&self, obj: &Bound<'py, PyAny>, what: &dyn Display) -> PyResult<Held> {
        if let Some(torch) = &self.torch {
            if is_instance(obj, &torch.tensor) {
                return tensor_span(torch, obj, what);
            }
        }
        let buf = PyUntypedBuffer::get(obj).map_err(|_| {
            PyTypeError::new_err(format!(
                "{what}: expected an object exporting a buffer or a CPU torch tensor, got {}",
                type_name(obj)
            ))
        })?;
        buffer_span(buf, false, what)
    }
}

/// A destination's bytes: a writable, C-contiguous buffer.
pub(crate) fn hold_destination(obj: &Bound<'_, PyAny>, what: &dyn Display) -> PyResult<Held> {
    let buf = PyUntypedBuffer::get(obj).map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: expected a writable buffer, got {}",
            type_name(obj)
        ))
    })?;
    buffer_span(buf, true, what)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn buffer_span(buf: PyUntypedBuffer, writable: bool, what: &dyn Display) -> PyResult<Held> {
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
    let span = (buf.buf_ptr() as usize, buf.len_bytes());
    Ok(Held {
        _owner: Owner::Buffer(buf),
        span,
    })
}

/// Checks that a torch tensor's bytes are real CPU memory inside its storage, and holds
/// the storage. The tensor's own methods may be overridden by a subclass; whatever they
/// return is only trusted once it lies inside a storage read through the C type.
fn tensor_span<'py>(
    torch: &Torch<'py>,
    obj: &Bound<'py, PyAny>,
    what: &dyn Display,
) -> PyResult<Held> {
    let py = obj.py();
    let refuse = |why: String| PyValueError::new_err(format!("{what}: {why}"));
    let torch_err = |e: PyErr| refuse(format!("cannot read the torch tensor: {e}"));
    let nbytes: usize = obj
        .getattr(intern!(py, "nbytes"))
        .and_then(|n| n.extract())
        .map_err(torch_err)?;
    let contiguous = obj
        .call_method0(intern!(py, "is_contiguous"))
        .and_then(|c| c.is_truthy())
        .map_err(torch_err)?;
    if !contiguous {
        return Err(refuse("torch tensor is not contiguous".into()));
    }
    if nbytes == 0 {
        return Ok(Held {
            _owner: Owner::Nothing,
            span: (0, 0),
        });
    }
    let storage = obj
        .call_method0(intern!(py, "untyped_storage"))
        .map_err(|e| refuse(format!("torch tensor has no storage in memory ({e})")))?;
    if !is_instance(&storage, &torch.storage) {
        return Err(refuse(format!(
            "untyped_storage() returned a {}, not a torch storage",
            type_name(&storage)
        )));
    }
    let device = torch.device_of(&storage).map_err(torch_err)?;
    if !device.eq(&torch.cpu)? && device.getattr(intern!(py, "type"))?.ne("cpu")? {
        return Err(refuse(format!(
            "torch tensor's storage is on {device}, not in CPU memory (meta tensors and \
             FakeTensors hold no data)"
        )));
    }
    let read = |descriptor: &Bound<'py, PyAny>| -> PyResult<usize> {
        descriptor.call1((&storage,))?.extract()
    };
    let base = read(&torch.storage_data_ptr).map_err(torch_err)?;
    let size = read(&torch.storage_nbytes).map_err(torch_err)?;
    let ptr: usize = obj
        .call_method0(intern!(py, "data_ptr"))
        .and_then(|p| p.extract())
        .map_err(torch_err)?;
    if ptr == 0 || base == 0 {
        return Err(refuse(format!(
            "torch tensor of {nbytes} bytes has no memory (data pointer 0: its storage was \
             freed or resized to 0)"
        )));
    }
    let inside = ptr >= base
        && ptr
            .checked_add(nbytes)
            .zip(base.checked_add(size))
            .is_some_and(|(end, storage_end)| end <= storage_end);
    if !inside {
        let offset = ptr as i128 - base as i128;
        return Err(refuse(format!(
            "torch tensor's bytes [{offset}, {}) lie outside its storage of {size} bytes (was \
             the storage resized?)",
            offset + nbytes as i128
        )));
    }
    Ok(Held {
        _owner: Owner::TorchStorage(storage.unbind()),
        span: (ptr, nbytes),
    })
}

/// Refuses destinations that overlap each other or any source: the core writes them in
/// parallel, with the GIL released.
pub(crate) fn check_disjoint(destinations: &[(Span, String)], sources: &[Span]) -> PyResult<()> {
    let mut dest: Vec<(usize, usize, &str)> = destinations
        .iter()
        .filter(|((_, n), _)| *n > 0)
        .map(|((p, n), what)| (*p, p.saturating_add(*n), what.as_str()))
        .collect();
    dest.sort_unstable();
    if let Some(w) = dest.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(PyValueError::new_err(format!(
            "{}: destination overlaps the destination of {}",
            w[1].2, w[0].2
        )));
    }
    for &(p, n) in sources.iter().filter(|(_, n)| *n > 0) {
        let end = p.saturating_add(n);
        // The last destination starting before `end` is the only one that can overlap.
        let i = dest.partition_point(|d| d.0 < end);
        if let Some(d) = i.checked_sub(1).map(|i| dest[i]) {
            if d.1 > p {
                return Err(PyValueError::new_err(format!(
                    "{}: destination overlaps a source",
                    d.2
                )));
            }
        }
    }
    Ok(())
}

/// Copies each held source into its held destination, in parallel with the GIL
/// released, once no destination overlaps another destination or a source
/// (`dest_labels`: each destination's span and the name its error gives). `sources`
/// (which pauses the garbage collector) is dropped first, so collection resumes before
/// the GIL is released. Borrowing every `Held` keeps the memory held until the copy
/// is done.
pub(crate) fn copy_held(
    py: Python<'_>,
    sources: Sources<'_>,
    pairs: &[(&Held, &Held)],
    dest_labels: &[(Span, String)],
    threads: usize,
) -> PyResult<()> {
    let src_spans: Vec<Span> = pairs.iter().map(|(s, _)| s.span).collect();
    check_disjoint(dest_labels, &src_spans)?;
    let spans: Vec<(Span, Span)> = pairs.iter().map(|(s, d)| (s.span, d.span)).collect();
    drop(sources);
    py.detach(|| {
        // SAFETY: every `Held` of `pairs` is borrowed for the whole call, and the
        // destinations overlap nothing (check_disjoint).
        let jobs = spans
            .iter()
            .map(|&(s, d)| unsafe { (slice(s), slice_mut(d)) })
            .collect();
        crate::copy::copy_all(jobs, threads)
    })
    .into_py_result()
}

/// A shared slice over held memory (empty spans may have no valid pointer).
///
/// # Safety
/// The `Held` that produced `span` must outlive `'a`, and nothing may write the memory
/// meanwhile.
pub(crate) unsafe fn slice<'a>((ptr, len): Span) -> &'a [u8] {
    match len {
        0 => &[],
        n => unsafe { std::slice::from_raw_parts(ptr as *const u8, n) },
    }
}

/// A mutable slice over a held destination.
///
/// # Safety
/// As for `slice`, and nothing else may read or write the memory meanwhile
/// (`check_disjoint`).
pub(crate) unsafe fn slice_mut<'a>((ptr, len): Span) -> &'a mut [u8] {
    match len {
        0 => &mut [],
        n => unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, n) },
    }
}
