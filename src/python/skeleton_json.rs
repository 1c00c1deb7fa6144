//! The text pieces of the optimizer skeleton, written exactly as Python's `json.dumps`
//! (default separators `", "` and `": "`, `ensure_ascii=True`) writes the skeleton
//! `ckptio._tree.flatten` builds: the manifest must not change with the flattener.
//! Pure Rust, no Python: unit-tested here, compared with `json.dumps` in
//! tests/test_flatten.py.

use std::collections::HashSet;
use std::fmt::Write;

/// Appends `s` as a JSON string the way `json.dumps` writes it: `"` and `\` escaped,
/// `\n \r \t \b \f` by name, every other character outside `' '..='~'` as `\uXXXX`
/// (lowercase hex; a UTF-16 surrogate pair above U+FFFF).
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut units = [0u16; 2];
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends a float node: `{"float": "<repr>", "bits": "<16 hex digits>"}`. `repr` is
/// Python's `repr(x)` (ASCII: digits, `.`, `e`, `+`, `-`, `inf`, `nan`).
pub(crate) fn push_float(out: &mut String, repr: &str, bits: u64) {
    out.push_str("{\"float\": ");
    push_str(out, repr);
    let _ = write!(out, ", \"bits\": \"{bits:016x}\"}}");
}

/// Appends an int node: `{"int": "<text>"}`.
pub(crate) fn push_int(out: &mut String, text: &str) {
    out.push_str("{\"int\": ");
    push_str(out, text);
    out.push('}');
}

/// Tensor names of one flattened tree, unique as `_tree._Flattener._name` makes them:
/// the dotted path, else `base#2`, `base#3` ... for the next tensors with that path.
#[derive(Default)]
pub(crate) struct TensorNames {
    taken: HashSet<String>,
}

impl TensorNames {
    /// A name not taken yet, derived from `base`; it is taken from now on.
    pub fn claim(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut n = 1u64;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{base}#{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    /// Gives `name` back (a tied tensor stores no tensor under it).
    pub fn release(&mut self, name: &str) {
        self.taken.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, s);
        out
    }

    #[test]
    fn strings_are_escaped_as_json_dumps_escapes_them() {
        // Expected values printed by Python: json.dumps(s).
        assert_eq!(quoted("plain text"), r#""plain text""#);
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quoted("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(quoted("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(quoted("é€"), r#""\u00e9\u20ac""#);
        assert_eq!(quoted("\u{1F600}"), r#""\ud83d\ude00""#);
        assert_eq!(quoted("~ /"), r#""~ /""#);
        assert_eq!(quoted(""), r#""""#);
    }

    #[test]
    fn number_nodes_have_the_python_layout() {
        let mut out = String::new();
        push_float(&mut out, "0.004", 0x3f70_624d_d2f1_a9fc);
        out.push_str(", ");
        push_int(&mut out, "-0x1f");
        assert_eq!(
            out,
            r#"{"float": "0.004", "bits": "3f70624dd2f1a9fc"}, {"int": "-0x1f"}"#
        );
        let mut small = String::new();
        push_float(&mut small, "0.0", 0);
        assert_eq!(small, r#"{"float": "0.0", "bits": "0000000000000000"}"#);
    }

    #[test]
    fn names_are_made_unique_and_can_be_given_back() {
        let mut names = TensorNames::default();
        assert_eq!(names.claim("a.b".into()), "a.b");
        assert_eq!(names.claim("a.b".into()), "a.b#2");
        assert_eq!(names.claim("a.b".into()), "a.b#3");
        names.release("a.b#2");
        assert_eq!(names.claim("a.b".into()), "a.b#2");
        // A real path that looks like a suffixed name is just another name.
        assert_eq!(names.claim("a.b#4".into()), "a.b#4");
        assert_eq!(names.claim("a.b".into()), "a.b#5");
    }
}
