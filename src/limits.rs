//! The one set of limits of the format, shared by the writer and the reader.
//!
//! The reader refuses anything beyond them before it allocates memory sized by the
//! file; the writer refuses, before it touches the target, anything the reader would
//! refuse. So whatever ckptio saves, ckptio can open.

use crate::dtype::Dtype;

/// Largest safetensors JSON header, in bytes (the limit safetensors itself uses).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;
/// Most dimensions a tensor may have (numpy's limit).
pub const MAX_RANK: usize = 64;
/// Largest `ckptio.json`, in bytes; a larger one is refused before it is read.
pub const MAX_MANIFEST_LEN: u64 = 256 * 1024 * 1024;
/// Largest side file (shard index) that `verify` reads.
pub const MAX_SIDE_FILE_LEN: u64 = MAX_MANIFEST_LEN;
/// Deepest JSON nesting in a manifest. The optimizer skeleton of the deepest tree the
/// Python layer saves (32 levels, 3 JSON levels each) sits near 100. Readers further
/// down (Python's `json`, the skeleton rebuild) recurse, so this is checked on the raw
/// bytes before anything parses them.
pub const MAX_JSON_DEPTH: usize = 128;
/// Brackets around the `user` section in `ckptio.json`: `{"manifest": {"user": ...}}`.
pub const USER_SECTION_DEPTH: usize = 2;
/// Largest `user` section, in bytes. Loading it costs Python up to about 9 times its
/// size (its text is copied, and a string with one character beyond U+FFFF takes 4
/// bytes per character), so the section gets a cap of its own, below the manifest's.
/// An AdamW skeleton takes about 180 bytes per parameter tensor: this holds about
/// 370,000 of them.
pub const MAX_USER_LEN: u64 = 64 * 1024 * 1024;
/// Most JSON values (object keys included) in the `user` section. Python's `json`
/// spends up to about 80 bytes per value (`[{}, {}, ...]`: a dict per 3 bytes of
/// file, 26 times the file), so this bounds what loading the section can cost
/// (about 0.65 GiB) whatever its size in bytes. An AdamW skeleton takes about 25
/// values per parameter tensor: the budget holds about 330,000 of them.
pub const MAX_USER_NODES: u64 = 8 << 20;
/// Most files the writer, `verify` and copy loads hold open at once (the usual
/// descriptor limit is 1,024 per process).
pub const MAX_OPEN_FILES: usize = 64;

/// How deep a JSON text nests and how many values it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonExtent {
    /// Deepest nesting of objects and arrays (`{}` is 1, a scalar 0).
    pub depth: usize,
    /// Values and object keys: every object, array, string and scalar.
    pub nodes: u64,
}

/// Measures a JSON text in one linear pass that skips strings, without parsing it.
/// Exact for valid JSON; invalid JSON is left for the parser to reject.
pub fn json_extent(bytes: &[u8]) -> JsonExtent {
    let mut out = JsonExtent::default();
    let mut depth = 0usize;
    let mut in_scalar = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            b'"' => {
                in_scalar = false;
                out.nodes += 1;
                // Skip to the closing quote in a tight scan: a manifest is mostly
                // strings (names, checksums), and byte-at-a-time state costs 3x more.
                let mut closed = false;
                while let Some(at) = bytes
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&c| c == b'"' || c == b'\\'))
                {
                    i += at + 1;
                    if bytes[i - 1] == b'"' {
                        closed = true;
                        break;
                    }
                    i += 1; // an escape: skip the escaped byte
                }
                if !closed {
                    break; // unterminated: nothing after it counts
                }
            }
            b'[' | b'{' => {
                depth += 1;
                out.depth = out.depth.max(depth);
                in_scalar = false;
                out.nodes += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                in_scalar = false;
            }
            b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' => in_scalar = false,
            _ if !in_scalar => {
                in_scalar = true;
                out.nodes += 1;
            }
            _ => {}
        }
    }
    out
}

/// Checks a whole manifest file's JSON nesting.
pub fn check_manifest_json(bytes: &[u8]) -> Result<(), String> {
    let depth = json_extent(bytes).depth;
    if depth > MAX_JSON_DEPTH {
        return Err(format!(
            "manifest JSON nests {depth} levels deep, deeper than the limit of {MAX_JSON_DEPTH}"
        ));
    }
    Ok(())
}

/// Checks the `user` section's size in bytes, its nesting (as part of the whole
/// file: the section sits [`USER_SECTION_DEPTH`] levels down) and its count of values,
/// in one pass.
pub fn check_user_section(user: &str) -> Result<(), String> {
    if user.len() as u64 > MAX_USER_LEN {
        return Err(format!(
            "the user section is {} bytes, more than the limit of {MAX_USER_LEN}",
            user.len()
        ));
    }
    let extent = json_extent(user.as_bytes());
    let depth = extent.depth + USER_SECTION_DEPTH;
    if depth > MAX_JSON_DEPTH {
        return Err(format!(
            "manifest JSON nests {depth} levels deep, deeper than the limit of {MAX_JSON_DEPTH}"
        ));
    }
    if extent.nodes > MAX_USER_NODES {
        return Err(format!(
            "the user section holds {} JSON values, more than the limit of {MAX_USER_NODES}",
            extent.nodes
        ));
    }
    Ok(())
}

/// Shapes every array library can represent: at most [`MAX_RANK`] dimensions, and the
/// product of the non-zero dimensions, in bytes, within `i64` (numpy's rule, which it
/// applies to empty arrays too), so a zero-size tensor cannot carry absurd dimensions.
pub fn check_shape(dtype: Dtype, shape: &[u64]) -> Result<(), String> {
    if shape.len() > MAX_RANK {
        return Err(format!(
            "{} dimensions, more than the limit of {MAX_RANK}",
            shape.len()
        ));
    }
    let nonzero_bytes = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d));
    match nonzero_bytes {
        Some(n) if n <= i64::MAX as u64 => Ok(()),
        _ => Err(format!("shape {shape:?} overflows (dimensions too large)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte-at-a-time scanner `json_extent` replaced: the fast string skip must
    /// agree with it on any input, valid JSON or not.
    fn reference_extent(bytes: &[u8]) -> JsonExtent {
        let mut out = JsonExtent::default();
        let (mut depth, mut in_string, mut escaped, mut in_scalar) = (0usize, false, false, false);
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => {
                    in_string = true;
                    in_scalar = false;
                    out.nodes += 1;
                }
                b'[' | b'{' => {
                    depth += 1;
                    out.depth = out.depth.max(depth);
                    in_scalar = false;
                    out.nodes += 1;
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    in_scalar = false;
                }
                b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' => in_scalar = false,
                _ if !in_scalar => {
                    in_scalar = true;
                    out.nodes += 1;
                }
                _ => {}
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn extent_matches_the_reference(text in proptest::collection::vec(
            prop::sample::select(b"\"\\{}[],: 1a\n".to_vec()), 0..64)) {
            prop_assert_eq!(json_extent(&text), reference_extent(&text));
        }
    }

    fn extent(s: &str) -> (usize, u64) {
        let e = json_extent(s.as_bytes());
        (e.depth, e.nodes)
    }

    #[test]
    fn counts_values_and_keys_and_skips_strings() {
        assert_eq!(extent("1"), (0, 1));
        assert_eq!(extent("[]"), (1, 1));
        assert_eq!(extent("[{}, {},{}]"), (2, 4));
        assert_eq!(
            extent(r#"{"a": [1, -2.5e3, true, null], "b": "x"}"#),
            (2, 9)
        );
        assert_eq!(extent(r#"{"a\"[[[": "]]\\", "{": 0}"#), (1, 5));
        assert_eq!(extent(" [ [ 12 , 3 ] ] "), (2, 4));
    }

    #[test]
    fn depth_of_the_manifest_is_checked() {
        assert!(check_manifest_json(br#"{"a":"[[[[[[[[[[[\"[[[["}"#).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_JSON_DEPTH + 1), "]".repeat(129));
        assert!(check_manifest_json(deep.as_bytes())
            .unwrap_err()
            .contains("129 levels"));
        let ok = format!("{}{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(128));
        assert!(check_manifest_json(ok.as_bytes()).is_ok());
    }

    #[test]
    fn user_value_budget() {
        let values = |n: u64| format!("[{}0]", "0,".repeat(n as usize - 2));
        assert!(check_user_section(&values(MAX_USER_NODES)).is_ok());
        let e = check_user_section(&values(MAX_USER_NODES + 1)).unwrap_err();
        assert!(
            e.contains(&format!("{} JSON values", MAX_USER_NODES + 1)),
            "{e}"
        );
    }

    #[test]
    fn shapes_within_limits() {
        assert!(check_shape(Dtype::U8, &[1; 64]).is_ok());
        assert!(check_shape(Dtype::U8, &[1; 65])
            .unwrap_err()
            .contains("65 dimensions"));
        assert!(check_shape(Dtype::F64, &[0, 1 << 62]).is_err());
        assert!(check_shape(Dtype::U8, &[0, (1 << 63) - 1]).is_ok());
    }
}
