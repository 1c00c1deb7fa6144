//! The safetensors container: an 8-byte little-endian header length `n`, `n` bytes of
//! JSON header, then the tensor bytes, contiguous, with no holes and no trailing bytes.
//!
//! `plan` lays a file out; `parse` validates a file's header completely before any of
//! its tensor bytes are touched or any allocation sized by the file is made.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dtype::{byte_len, Dtype};
use crate::error::{Error, Result};
use crate::limits::{self, MAX_HEADER_LEN};
/// The data section starts at a multiple of this, so every tensor is aligned to its
/// element size (tensors are ordered by element size, largest first).
const HEADER_ALIGN: usize = 8;
pub(crate) const METADATA_KEY: &str = "__metadata__";

/// Where one tensor lives in a file. Offsets are absolute file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl TensorLayout {
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }
}

/// A planned file: the complete header bytes and where each tensor goes.
#[derive(Debug)]
pub struct FileLayout {
    /// Length prefix + JSON + padding; written verbatim at offset 0.
    pub header: Vec<u8>,
    /// One entry per input tensor, in the order the caller gave them.
    pub tensors: Vec<TensorLayout>,
    pub file_len: u64,
}

/// A validated header.
#[derive(Debug)]
pub struct ParsedHeader {
    /// Bytes before the data section (8 + JSON length).
    pub header_len: u64,
    pub metadata: Vec<(String, String)>,
    /// In header order.
    pub tensors: Vec<TensorLayout>,
}

/// A header entry as read: strings borrowed from the header unless escaped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderEntryIn<'a> {
    #[serde(borrow)]
    dtype: Cow<'a, str>,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Lays out a safetensors file for `tensors` (name, dtype, shape).
pub fn plan(
    tensors: &[(&str, Dtype, &[u64])],
    metadata: &[(String, String)],
) -> Result<FileLayout> {
    // Largest element size first keeps every tensor aligned; the sort is stable, so
    // tensors of one size keep the caller's order.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].1.size()));

    let mut rel = vec![(0u64, 0u64); tensors.len()];
    let mut cursor = 0u64;
    for &i in &order {
        let (name, dtype, shape) = tensors[i];
        let n = byte_len(dtype, shape).ok_or_else(|| {
            Error::InvalidArgument(format!("tensor {name:?}: shape {shape:?} overflows"))
        })?;
        rel[i] = (cursor, cursor + n);
        cursor += n;
    }

    // The JSON is written entry by entry in serde_json's compact form; the reader's
    // fast road (`reader/written.rs`) expects exactly these bytes.
    let mut body = Vec::with_capacity(96 * tensors.len() + 64);
    body.push(b'{');
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        write_key(&mut body, METADATA_KEY);
        serde_json::to_writer(&mut body, &meta).expect("metadata serializes");
    }
    let mut names = HashSet::with_capacity(tensors.len());
    for (i, &(name, dtype, shape)) in tensors.iter().enumerate() {
        if name == METADATA_KEY {
            return Err(Error::InvalidArgument(format!(
                "tensor name {METADATA_KEY:?} is reserved"
            )));
        }
        if !names.insert(name) {
            return Err(Error::InvalidArgument(format!(
                "duplicate tensor name {name:?}"
            )));
        }
        if body.len() > 1 {
            body.push(b',');
        }
        write_entry(&mut body, name, dtype, shape, [rel[i].0, rel[i].1]);
    }
    body.push(b'}');
    while (8 + body.len()) % HEADER_ALIGN != 0 {
        body.push(b' ');
    }
    if body.len() as u64 > MAX_HEADER_LEN {
        return Err(Error::InvalidArgument(format!(
            "its safetensors header would be {} bytes, over the limit of {MAX_HEADER_LEN} \
             (long tensor names or many tensors in one file; max_shard_bytes splits a group)",
            body.len()
        )));
    }
    let data_start = 8 + body.len() as u64;
    let mut header = Vec::with_capacity(8 + body.len());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&body);

    let tensors = tensors
        .iter()
        .zip(&rel)
        .map(|(&(name, dtype, shape), &(b, e))| TensorLayout {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            begin: data_start + b,
            end: data_start + e,
        })
        .collect();
    Ok(FileLayout {
        header,
        tensors,
        file_len: data_start + cursor,
    })
}

/// Appends `"name":` as serde_json writes an object key.
fn write_key(out: &mut Vec<u8>, name: &str) {
    serde_json::to_writer(&mut *out, name).expect("a string serializes");
    out.push(b':');
}

/// Appends one tensor's header entry as [`plan`] writes it, serde_json's compact form:
/// `"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}` (offsets relative to
/// the data section).
pub(crate) fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    dtype: Dtype,
    shape: &[u64],
    data_offsets: [u64; 2],
) {
    let mut digits = itoa::Buffer::new();
    write_key(out, name);
    out.extend_from_slice(b"{\"dtype\":\"");
    out.extend_from_slice(dtype.name().as_bytes());
    out.extend_from_slice(b"\",\"shape\":[");
    for (i, &d) in shape.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(digits.format(d).as_bytes());
    }
    out.extend_from_slice(b"],\"data_offsets\":[");
    out.extend_from_slice(digits.format(data_offsets[0]).as_bytes());
    out.push(b',');
    out.extend_from_slice(digits.format(data_offsets[1]).as_bytes());
    out.extend_from_slice(b"]}");
}

/// Reads the header length prefix. `file_len` is the whole file's length.
pub fn header_len(file: &Path, prefix: &[u8], file_len: u64) -> Result<u64> {
    if file_len < 8 || prefix.len() < 8 {
        return Err(Error::format(
            file,
            format!("file is {file_len} bytes, too short for a safetensors header"),
        ));
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(Error::format(
            file,
            format!("header length {n} exceeds the {MAX_HEADER_LEN}-byte cap"),
        ));
    }
    if n > file_len - 8 {
        return Err(Error::format(
            file,
            format!("header length {n} runs past the end of the {file_len}-byte file"),
        ));
    }
    Ok(8 + n)
}

/// Validates the header of the safetensors file whose bytes are `bytes` (only the
/// header part is read). Every structural rule is checked here.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<ParsedHeader> {
    parse_header(file, bytes, bytes.len() as u64)
}

/// [`parse`] from the header bytes alone (at least the length prefix and the JSON),
/// for a file of `file_len` bytes whose data is elsewhere (an object store).
pub fn parse_header(file: &Path, bytes: &[u8], file_len: u64) -> Result<ParsedHeader> {
    let hlen = header_len(file, bytes, file_len)?;
    if (bytes.len() as u64) < hlen {
        return Err(Error::format(file, "header cut short"));
    }
    let json = &bytes[8..hlen as usize];
    // One pass over the JSON: each value is read as a tensor entry or the metadata
    // map by its key, borrowing from the header (the only allocations per tensor are
    // its name and shape in the result). A header that fails it is parsed again by
    // `header_entries`, which names what is wrong.
    let entries = match serde_json::from_slice::<HeaderIn>(json) {
        Ok(header) => header.0,
        Err(_) => header_entries(file, json)?,
    };

    let mut metadata = Vec::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let entry = match value {
            HeaderValue::Metadata(meta) => {
                metadata = meta;
                continue;
            }
            HeaderValue::Entry(entry) => entry,
        };
        let dtype = Dtype::parse(&entry.dtype).ok_or_else(|| {
            Error::format(
                file,
                format!("tensor {name:?}: unsupported dtype {:?}", entry.dtype),
            )
        })?;
        limits::check_shape(dtype, &entry.shape)
            .map_err(|msg| Error::format(file, format!("tensor {name:?}: {msg}")))?;
        let [b, e] = entry.data_offsets;
        let need = byte_len(dtype, &entry.shape).ok_or_else(|| {
            Error::format(
                file,
                format!("tensor {name:?}: shape {:?} overflows", entry.shape),
            )
        })?;
        if e < b || e - b != need {
            return Err(Error::format(
                file,
                format!("tensor {name:?}: {dtype} {:?} needs {need} bytes but data_offsets are [{b}, {e}]", entry.shape),
            ));
        }
        let (begin, end) = match (hlen.checked_add(b), hlen.checked_add(e)) {
            (Some(begin), Some(end)) => (begin, end),
            _ => {
                return Err(Error::format(
                    file,
                    format!("tensor {name:?}: data_offsets overflow"),
                ))
            }
        };
        tensors.push(TensorLayout {
            name: name.into_owned(),
            dtype,
            shape: entry.shape,
            begin,
            end,
        });
    }
    check_contiguous(file, &tensors, hlen, file_len)?;
    Ok(ParsedHeader {
        header_len: hlen,
        metadata,
        tensors,
    })
}

/// The header's entries in order, read value by value: every object once as text by
/// a parser that rejects duplicate keys at both levels (a reader that kept the first
/// of two keys and one that kept the last would see different files) and never
/// recurses, then each value as what its key says. Slower than [`HeaderIn`]; its
/// errors say which entry is wrong and how.
fn header_entries<'a>(file: &Path, json: &'a [u8]) -> Result<Vec<(Cow<'a, str>, HeaderValue<'a>)>> {
    let entries: UniqueEntries<&RawValue> = serde_json::from_slice(json)
        .map_err(|e| Error::format(file, format!("invalid JSON header: {e}")))?;
    let mut out = Vec::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        let value = if name == METADATA_KEY {
            let meta: UniqueMap<String> = serde_json::from_str(value.get()).map_err(|e| {
                Error::format(
                    file,
                    format!("{METADATA_KEY} must map strings to strings: {e}"),
                )
            })?;
            HeaderValue::Metadata(meta.0)
        } else {
            let entry: HeaderEntryIn = serde_json::from_str(value.get()).map_err(|e| {
                Error::format(file, format!("tensor {name:?}: invalid header entry: {e}"))
            })?;
            HeaderValue::Entry(entry)
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Data must tile `[hlen, file_len)` exactly: no overlap, no hole, no trailing bytes.
fn check_contiguous(file: &Path, tensors: &[TensorLayout], hlen: u64, file_len: u64) -> Result<()> {
    let mut by_offset: Vec<&TensorLayout> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.begin, t.end));
    let mut expected = hlen;
    for t in by_offset {
        if t.begin < expected {
            return Err(Error::format(
                file,
                format!("tensor {:?}: data overlaps the previous tensor", t.name),
            ));
        }
        if t.begin > expected {
            return Err(Error::format(
                file,
                format!(
                    "tensor {:?}: hole of {} bytes before its data",
                    t.name,
                    t.begin - expected
                ),
            ));
        }
        if t.end > file_len {
            return Err(Error::format(
                file,
                format!("tensor {:?}: data runs past the end of the file", t.name),
            ));
        }
        expected = t.end;
    }
    if expected != file_len {
        return Err(Error::format(
            file,
            format!(
                "{} trailing bytes after the last tensor",
                file_len - expected
            ),
        ));
    }
    Ok(())
}

/// A JSON object kept in order, rejecting duplicate keys (serde_json would keep the last).
pub(crate) struct UniqueMap<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    out.push((key, map.next_value()?));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

/// A JSON object's entries in order, keys borrowed from the input unless escaped,
/// rejecting duplicate keys like [`UniqueMap`].
struct UniqueEntries<'de, V>(Vec<(Cow<'de, str>, V)>);

/// An object key, borrowed unless it has escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueEntries<'de, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct MapVisitor<'de, V>(std::marker::PhantomData<(&'de (), V)>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<'de, V> {
            type Value = UniqueEntries<'de, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                // A borrowed key's clone is a pointer copy.
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    out.push((key, map.next_value()?));
                }
                Ok(UniqueEntries(out))
            }
        }
        d.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

/// A value of the header: the metadata map or a tensor entry.
enum HeaderValue<'a> {
    Metadata(Vec<(String, String)>),
    Entry(HeaderEntryIn<'a>),
}

/// The header's entries in order, each value read as what its key says in the same
/// pass, rejecting duplicate keys like [`UniqueEntries`]. Typed values cannot nest
/// deeper than a few levels, so this does not recurse on hostile input either.
struct HeaderIn<'de>(Vec<(Cow<'de, str>, HeaderValue<'de>)>);

impl<'de> Deserialize<'de> for HeaderIn<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = HeaderIn<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value = if key == METADATA_KEY {
                        HeaderValue::Metadata(map.next_value::<UniqueMap<String>>()?.0)
                    } else {
                        HeaderValue::Entry(map.next_value()?)
                    };
                    out.push((key, value));
                }
                Ok(HeaderIn(out))
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(layout: &FileLayout) -> Vec<u8> {
        let mut bytes = layout.header.clone();
        bytes.resize(layout.file_len as usize, 0xAB);
        bytes
    }

    fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    fn err(bytes: &[u8]) -> String {
        parse(Path::new("f.safetensors"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn plan_then_parse_round_trips_and_aligns() {
        let tensors: Vec<(&str, Dtype, &[u64])> = vec![
            ("a", Dtype::U8, &[3]),
            ("b", Dtype::F64, &[2, 2]),
            ("c", Dtype::F16, &[5]),
            ("d", Dtype::F32, &[]),
        ];
        let layout = plan(&tensors, &[("format".into(), "pt".into())]).unwrap();
        assert_eq!(layout.header.len() % 8, 0);
        for t in &layout.tensors {
            assert_eq!(t.begin % t.dtype.size() as u64, 0, "{} misaligned", t.name);
        }
        let parsed = parse(Path::new("x"), &file_bytes(&layout)).unwrap();
        assert_eq!(
            parsed.metadata,
            vec![("format".to_string(), "pt".to_string())]
        );
        assert_eq!(parsed.tensors, layout.tensors);
    }

    /// `plan` writes the header JSON by hand; it is byte for byte what serde_json
    /// makes of the same object (escapes in names included), so other readers and
    /// earlier ckptio files agree with it.
    #[test]
    fn plan_writes_serde_jsons_compact_form() {
        let tensors: Vec<(&str, Dtype, &[u64])> = vec![
            (
                "w\"q\\\u{1}é\u{2028}",
                Dtype::BF16,
                &[3, 0, 18446744073709551615],
            ),
            ("b", Dtype::F64, &[2, 2]),
            ("s", Dtype::F8E4M3, &[]),
        ];
        for meta in [vec![], vec![("format".to_string(), "pt\n\"".to_string())]] {
            let layout = plan(&tensors[1..], &meta).unwrap();
            let mut expected = serde_json::Map::new();
            if !meta.is_empty() {
                let m: serde_json::Map<String, serde_json::Value> = meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                expected.insert(METADATA_KEY.into(), m.into());
            }
            for t in &tensors[1..] {
                let at = layout.tensors.iter().find(|l| l.name == t.0).unwrap();
                let hlen = layout.header.len() as u64;
                expected.insert(
                    t.0.into(),
                    serde_json::json!({"dtype": t.1.name(), "shape": t.2,
                        "data_offsets": [at.begin - hlen, at.end - hlen]}),
                );
            }
            let json = serde_json::to_vec(&expected).unwrap();
            assert_eq!(&layout.header[8..8 + json.len()], &json[..]);
            assert!(layout.header[8 + json.len()..].iter().all(|&b| b == b' '));
        }
        let mut out = Vec::new();
        write_entry(&mut out, tensors[0].0, tensors[0].1, tensors[0].2, [7, 7]);
        let mut one = serde_json::Map::new();
        one.insert(
            tensors[0].0.into(),
            serde_json::json!({"dtype": "BF16", "shape": tensors[0].2, "data_offsets": [7, 7]}),
        );
        let json = serde_json::to_vec(&one).unwrap();
        assert_eq!(out, json[1..json.len() - 1]);
    }

    #[test]
    fn rejects_structural_damage() {
        assert!(err(b"\x01\x00").contains("too short"));
        assert!(err(&raw_file("{}", 0)[..9]).contains("runs past"));
        let mut huge = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        huge.resize(64, b' ');
        assert!(err(&huge).contains("cap"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            9
        ))
        .contains("trailing"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4
        ))
        .contains("past the end"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            4
        ))
        .contains("needs 8"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#,
            8
        ))
        .contains("unsupported dtype"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6
        ))
        .contains("overlaps"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6
        ))
        .contains("hole"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            2
        ))
        .contains("duplicate"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            8
        ))
        .contains("overflows"));
        assert!(err(&raw_file(r#"{"__metadata__":{"k":1}}"#, 0)).contains("strings"));
        assert!(err(&raw_file(r#"[1,2]"#, 0)).contains("invalid JSON"));
    }

    #[test]
    fn rejects_polyglots_and_unrepresentable_shapes() {
        // Duplicate keys at any level: readers keeping the first or the last would differ.
        assert!(err(&raw_file(r#"{"__metadata__":{"k":"a","k":"b"}}"#, 0)).contains("duplicate"));
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
            1
        ))
        .contains("duplicate"));
        // Empty, but with dimensions no array library can hold.
        assert!(err(&raw_file(
            r#"{"a":{"dtype":"U8","shape":[0,9223372036854775808],"data_offsets":[0,0]}}"#,
            0
        ))
        .contains("overflows"));
        let rank65 = format!(
            r#"{{"a":{{"dtype":"U8","shape":[{}],"data_offsets":[0,1]}}}}"#,
            ["1"; 65].join(",")
        );
        assert!(err(&raw_file(&rank65, 1)).contains("dimensions"));
        let rank64 = rank65.replacen("1,", "", 1);
        assert!(parse(Path::new("f"), &raw_file(&rank64, 1)).is_ok());
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&raw_file(&deep, 0)).contains("invalid header entry"));
    }

    /// Every committed fuzz seed (fuzz/seeds/header) parses or fails without panicking.
    #[test]
    fn fuzz_seeds_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/header");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = parse(Path::new("seed"), &bytes);
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
