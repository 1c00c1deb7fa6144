//! The optimizer tree, flattened in one pass with the GIL held: the JSON text of the
//! skeleton `ckptio._tree.flatten` builds (byte for byte what `json.dumps` makes of it,
//! so the manifest is unchanged) and the named array leaves, in the same order, with
//! the same names, the same tied-leaf folding and the same errors. `_tree.py` stays the
//! reference (and the reader); tests/test_flatten.py compares the two on random trees.
//!
//! No user code runs while a container is walked: containers are exact dicts, lists and
//! tuples (a dict is walked over a snapshot of its items), and a leaf is classified by
//! true subtype checks. Depth is capped at `max_depth` (`_tree.MAX_DEPTH`) before any
//! descent, so the recursion is bounded, and a cycle ends at the cap.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use super::arrays::{ArrayTypes, Fast, Hooks, LeafKind, SameViews};
use super::skeleton_json::{push_float, push_int, push_str, TensorNames};

/// One array leaf to store: its tensor name, the caller's object and, when the binding
/// can read it in place, its dtype and shape.
pub(crate) struct Leaf<'py> {
    pub name: String,
    pub value: Bound<'py, PyAny>,
    pub fast: Option<Fast>,
}

/// A flattened tree: the skeleton as JSON text and the leaves to store.
pub(crate) struct Flattened<'py> {
    pub skeleton: String,
    pub leaves: Vec<Leaf<'py>>,
}

/// Flattens `tree` as `_tree.flatten(tree, prefix)` does.
pub(crate) fn flatten<'py>(
    tree: &Bound<'py, PyAny>,
    prefix: &str,
    max_depth: usize,
    types: &ArrayTypes<'py>,
    hooks: &Hooks<'py>,
) -> PyResult<Flattened<'py>> {
    let py = tree.py();
    let mut walker = Walker {
        types,
        hooks,
        odict: py
            .import(intern!(py, "collections"))?
            .getattr(intern!(py, "OrderedDict"))?
            .cast_into()?,
        prefix,
        max_depth,
        names: TensorNames::default(),
        views: SameViews::default(),
        leaves: Vec::new(),
        out: String::new(),
        path: Vec::new(),
    };
    walker.node(tree)?;
    Ok(Flattened {
        skeleton: walker.out,
        leaves: walker.leaves,
    })
}

/// One step of the path from the root: a dict key (an exact str or int) or a list index.
enum Step<'py> {
    Key(Bound<'py, PyAny>),
    Index(usize),
}

struct Walker<'a, 'py> {
    types: &'a ArrayTypes<'py>,
    hooks: &'a Hooks<'py>,
    odict: Bound<'py, PyType>,
    prefix: &'a str,
    max_depth: usize,
    names: TensorNames,
    views: SameViews<'py>,
    leaves: Vec<Leaf<'py>>,
    out: String,
    path: Vec<Step<'py>>,
}

impl<'py> Walker<'_, 'py> {
    fn node(&mut self, value: &Bound<'py, PyAny>) -> PyResult<()> {
        if self.path.len() > self.max_depth {
            return Err(PyValueError::new_err(format!(
                "optimizer state at {}: nested deeper than {} levels",
                self.path_str()?,
                self.max_depth
            )));
        }
        if value.is_none() {
            self.out.push_str("null");
        } else if let Ok(b) = value.cast_exact::<PyBool>() {
            self.out
                .push_str(if b.is_true() { "true" } else { "false" });
        } else if let Ok(s) = value.cast_exact::<PyString>() {
            self.text(s)?;
        } else if let Ok(i) = value.cast_exact::<PyInt>() {
            push_int(&mut self.out, &int_text(i)?);
        } else if let Ok(f) = value.cast_exact::<PyFloat>() {
            let repr = f.repr()?;
            push_float(&mut self.out, repr.to_str()?, f.value().to_bits());
        } else if let Ok(d) = value.cast_exact::<PyDict>() {
            self.mapping("dict", d.items().into_any())?;
        } else if value.get_type().is(&self.odict) {
            // An OrderedDict's order is its own, not that of the dict it is built on.
            self.mapping("odict", value.call_method0(intern!(value.py(), "items"))?)?;
        } else if let Ok(l) = value.cast_exact::<PyList>() {
            self.sequence("list", l.iter())?;
        } else if let Ok(t) = value.cast_exact::<PyTuple>() {
            self.sequence("tuple", t.iter())?;
        } else if let Some(kind) = self.types.kind(value) {
            self.leaf(value, kind)?;
        } else {
            let ty = value.get_type();
            return Err(PyTypeError::new_err(format!(
                "optimizer state at {}: unsupported {}.{}; leaves must be arrays, tensors, \
                 int, float, bool, None or str",
                self.path_str()?,
                ty.getattr(intern!(value.py(), "__module__"))?.str()?,
                ty.qualname()?
            )));
        }
        Ok(())
    }

    fn mapping(&mut self, tag: &str, items: Bound<'py, PyAny>) -> PyResult<()> {
        self.out.push_str("{\"");
        self.out.push_str(tag);
        self.out.push_str("\": [");
        for (i, item) in items.try_iter()?.enumerate() {
            let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
            if i > 0 {
                self.out.push_str(", ");
            }
            self.out.push('[');
            self.key(&key)?;
            self.out.push_str(", ");
            self.path.push(Step::Key(key));
            self.node(&value)?;
            self.path.pop();
            self.out.push(']');
        }
        self.out.push_str("]}");
        Ok(())
    }

    fn sequence(
        &mut self,
        tag: &str,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        self.out.push_str("{\"");
        self.out.push_str(tag);
        self.out.push_str("\": [");
        for (i, value) in items.enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.path.push(Step::Index(i));
            self.node(&value)?;
            self.path.pop();
        }
        self.out.push_str("]}");
        Ok(())
    }

    fn key(&mut self, key: &Bound<'py, PyAny>) -> PyResult<()> {
        if let Ok(s) = key.cast_exact::<PyString>() {
            self.text(s)
        } else if let Ok(i) = key.cast_exact::<PyInt>() {
            push_int(&mut self.out, &int_text(i)?);
            Ok(())
        } else {
            Err(PyTypeError::new_err(format!(
                "optimizer state at {}: dict keys must be str or int, got {} {}",
                self.path_str()?,
                key.get_type().name()?,
                key.repr()?
            )))
        }
    }

    /// A str node. Text that is not valid UTF-8 (a lone surrogate) is rare: Python's
    /// own `json.dumps` writes it, as it always did.
    fn text(&mut self, s: &Bound<'py, PyString>) -> PyResult<()> {
        match s.to_str() {
            Ok(text) => push_str(&mut self.out, text),
            Err(_) => {
                let py = s.py();
                let dumps = py
                    .import(intern!(py, "json"))?
                    .getattr(intern!(py, "dumps"))?;
                self.out
                    .push_str(dumps.call1((s,))?.cast::<PyString>()?.to_str()?);
            }
        }
        Ok(())
    }

    fn leaf(&mut self, value: &Bound<'py, PyAny>, kind: LeafKind) -> PyResult<()> {
        let name = self.names.claim(self.name_base()?);
        let probe = self.types.probe(self.hooks, value, Some(kind))?;
        let stored = match self
            .views
            .find_or_add(self.hooks, value, probe.address, &name)?
        {
            Some(same) => {
                // The same view of the same memory again: stored once, under `same`.
                self.names.release(&name);
                same
            }
            None => {
                self.leaves.push(Leaf {
                    name: name.clone(),
                    value: value.clone(),
                    fast: probe.fast,
                });
                name
            }
        };
        self.out.push_str("{\"");
        self.out.push_str(kind.tag());
        self.out.push_str("\": ");
        push_str(&mut self.out, &stored);
        self.out.push('}');
        Ok(())
    }

    /// `".".join(map(str, path)) or prefix` (the prefix also for a path of one key "").
    fn name_base(&self) -> PyResult<String> {
        let mut base = String::new();
        for (i, step) in self.path.iter().enumerate() {
            if i > 0 {
                base.push('.');
            }
            match step {
                Step::Index(n) => base.push_str(&n.to_string()),
                Step::Key(key) => match key.cast::<PyString>() {
                    Ok(s) => base.push_str(s.to_str().map_err(|_| {
                        PyValueError::new_err(format!(
                            "optimizer state at {}: a key on the path to this tensor is not \
                             valid UTF-8 (a lone surrogate), so it cannot name the tensor",
                            self.path_str().unwrap_or_default()
                        ))
                    })?),
                    // str(int): Python's digit limit applies, as in `_tree`.
                    Err(_) => base.push_str(key.str()?.to_str()?),
                },
            }
        }
        if base.is_empty() {
            base.push_str(self.prefix);
        }
        Ok(base)
    }

    /// `_tree._path_str`: `['state'][0]`, or `<root>`.
    fn path_str(&self) -> PyResult<String> {
        if self.path.is_empty() {
            return Ok("<root>".into());
        }
        let mut text = String::new();
        for step in &self.path {
            text.push('[');
            match step {
                Step::Index(n) => text.push_str(&n.to_string()),
                Step::Key(key) => text.push_str(&key.repr()?.to_string_lossy()),
            }
            text.push(']');
        }
        Ok(text)
    }
}

/// `_tree.int_text`: decimal up to 2,000 bits, hex beyond (Python's digit limit never
/// applies to either).
fn int_text(i: &Bound<'_, PyInt>) -> PyResult<String> {
    if let Ok(small) = i.extract::<i64>() {
        return Ok(small.to_string());
    }
    let py = i.py();
    let bits: u64 = i.call_method0(intern!(py, "bit_length"))?.extract()?;
    let text = if bits <= 2000 {
        i.str()?
    } else {
        py.import(intern!(py, "builtins"))?
            .getattr(intern!(py, "hex"))?
            .call1((i,))?
            .cast_into::<PyString>()?
    };
    Ok(text.to_str()?.to_owned())
}
