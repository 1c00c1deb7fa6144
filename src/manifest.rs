//! `ckptio.json`: the manifest, written last. It indexes every tensor (file, dtype,
//! shape, byte range, checksum), covers every file's header by a checksum, and covers
//! itself: the file is `{"manifest": {...}, "manifest_xxh3": "..."}` where the checksum
//! is over the exact bytes of the `manifest` value.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::checksum;
use crate::error::{Error, Result};
use crate::limits;

pub const MANIFEST_NAME: &str = "ckptio.json";
pub const FORMAT_NAME: &str = "ckptio";
pub const FORMAT_VERSION: u32 = 1;
/// The `__metadata__` key of every tensor file ckptio writes: the checkpoint's id.
pub const CHECKPOINT_ID_KEY: &str = "ckptio.checkpoint_id";

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Weights only (Tinker's `save_weights_for_sampler`).
    Sampler,
    /// Weights and optimizer state (Tinker's `save_state`).
    State,
    /// A `torch.distributed.checkpoint` save: every rank's shards (`dcp.rs`).
    Dcp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sampler => "sampler",
            Kind::State => "state",
            Kind::Dcp => "dcp",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "sampler" => Some(Kind::Sampler),
            "state" => Some(Kind::State),
            "dcp" => Some(Kind::Dcp),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// A safetensors file; `xxh3` covers its header (length prefix + JSON).
    Tensors,
    /// A JSON side file (the Hugging Face shard index); `xxh3` covers all of it.
    Index,
    /// A file the caller saved with the tensors (`config.json`, tokenizer files);
    /// `xxh3` covers all of it.
    Side,
}

impl FileRole {
    /// Small files checked whole (size and checksum of every byte) by `verify`.
    pub fn is_whole_file(self) -> bool {
        matches!(self, FileRole::Index | FileRole::Side)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub name: String,
    pub role: FileRole,
    pub size: u64,
    pub xxh3: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// `"model"` (weights) or `"optimizer"`; names are unique within a group.
    pub group: String,
    pub name: String,
    pub file: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute `[begin, end)` byte offsets in `file`.
    pub byte_range: [u64; 2],
    pub xxh3: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub kind: Kind,
    /// Random per save; also stamped into every safetensors header, so a file swapped
    /// in from another checkpoint fails the header checksum.
    pub checkpoint_id: String,
    pub checksum: String,
    pub files: Vec<FileRecord>,
    /// In the order the caller saved them.
    pub tensors: Vec<TensorRecord>,
    /// Opaque to the core, kept byte for byte: user metadata, step, optimizer skeleton.
    pub user: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    #[serde(borrow)]
    manifest: &'a RawValue,
    manifest_xxh3: String,
}

/// Serializes the manifest with its self-checksum, in the layout
/// [`split_written_envelope`] recognises (serde_json's pretty form of the envelope).
/// The text is made by serde_json field by field, so it is not parsed again here.
pub fn encode(m: &Manifest) -> Vec<u8> {
    let text = manifest_text(m);
    let sum = checksum::to_hex(checksum::hash(text.as_bytes()));
    let mut bytes = Vec::with_capacity(text.len() + 64);
    bytes.extend_from_slice(ENVELOPE_HEAD);
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(ENVELOPE_KEY);
    bytes.extend_from_slice(sum.as_bytes());
    bytes.extend_from_slice(ENVELOPE_END);
    bytes
}

/// The envelope around the manifest text, as `encode` writes it.
const ENVELOPE_HEAD: &[u8] = b"{\n  \"manifest\": ";
const ENVELOPE_KEY: &[u8] = b",\n  \"manifest_xxh3\": \"";
const ENVELOPE_END: &[u8] = b"\"\n}\n";

/// The manifest as JSON with one file or tensor record per line: readable, and about
/// half the bytes of fully indented JSON (open parses it for every tensor).
fn manifest_text(m: &Manifest) -> String {
    use std::fmt::Write;
    fn json<T: Serialize + ?Sized>(v: &T) -> String {
        serde_json::to_string(v).expect("manifest field serializes")
    }
    fn records<T: Serialize>(out: &mut String, name: &str, items: &[T]) {
        let _ = write!(out, "  \"{name}\": [");
        for (i, item) in items.iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            out.push_str(&json(item));
        }
        out.push_str(if items.is_empty() { "],\n" } else { "\n  ],\n" });
    }
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"format\": {},", json(&m.format));
    let _ = writeln!(out, "  \"format_version\": {},", m.format_version);
    let _ = writeln!(out, "  \"kind\": {},", json(&m.kind));
    let _ = writeln!(out, "  \"checkpoint_id\": {},", json(&m.checkpoint_id));
    let _ = writeln!(out, "  \"checksum\": {},", json(&m.checksum));
    records(&mut out, "files", &m.files);
    records(&mut out, "tensors", &m.tensors);
    let _ = write!(out, "  \"user\": {}\n}}", m.user.get());
    out
}

impl Manifest {
    /// The names of every file the manifest lists (the manifest itself aside).
    pub fn file_names(&self) -> HashSet<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }
}

/// Parses and checks a manifest file's bytes: limits first (on the raw bytes, before
/// any parse), then the self-checksum, the format version and the structure. Every
/// check is linear in the size of the file.
///
/// A manifest laid out exactly as [`encode`] writes it takes a shorter road (checksum,
/// one strict parse, the nesting limit on the `user` section only): the envelope is
/// not parsed separately and the whole file is not scanned for its depth. Anything
/// that fails on that road is decoded again on the general one, so errors read the
/// same whichever road a file took.
pub fn decode(file: &Path, bytes: &[u8]) -> Result<Manifest> {
    if let Some((raw, stored)) = split_written_envelope(bytes) {
        if let Ok(m) = decode_signed(file, raw, stored) {
            return Ok(m);
        }
    }
    limits::check_manifest_json(bytes).map_err(|msg| Error::format(file, msg))?;
    let env: EnvelopeIn = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(file, format!("invalid manifest JSON: {e}")))?;
    decode_signed(file, env.manifest.get(), &env.manifest_xxh3)
}

/// The manifest text and stored checksum of a file laid out exactly as [`encode`]
/// writes it (`{"manifest": RAW, "manifest_xxh3": "HEX"}`, pretty-printed), or None.
/// If RAW parses as one JSON value, the file is that envelope and nothing else.
fn split_written_envelope(bytes: &[u8]) -> Option<(&str, &str)> {
    const HEX_LEN: usize = 16;
    let rest = bytes
        .strip_prefix(ENVELOPE_HEAD)?
        .strip_suffix(ENVELOPE_END)?;
    let (raw_and_key, hex) = rest.split_at(rest.len().checked_sub(HEX_LEN)?);
    let raw = raw_and_key.strip_suffix(ENVELOPE_KEY)?;
    if !hex.iter().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        std::str::from_utf8(raw).ok()?,
        std::str::from_utf8(hex).ok()?,
    ))
}

/// Checks the manifest text against its stored checksum, then parses and checks it.
fn decode_signed(file: &Path, raw: &str, stored: &str) -> Result<Manifest> {
    let actual = checksum::to_hex(checksum::hash(raw.as_bytes()));
    if actual != stored {
        return Err(Error::corrupt(
            file,
            None,
            format!("manifest checksum mismatch (stored {stored}, computed {actual})"),
        ));
    }
    // The strict parse; if it fails, a newer format version is the likelier story.
    let m: Manifest = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            #[derive(Deserialize)]
            struct Version {
                format: Option<String>,
                format_version: Option<u32>,
            }
            if let Ok(v) = serde_json::from_str::<Version>(raw) {
                check_version(file, v.format.as_deref(), v.format_version)?;
            }
            return Err(Error::format(file, format!("invalid manifest: {e}")));
        }
    };
    check_version(file, Some(&m.format), Some(m.format_version))?;
    check_structure(file, &m)?;
    limits::check_user_section(m.user.get()).map_err(|msg| Error::format(file, msg))?;
    Ok(m)
}

fn check_version(file: &Path, format: Option<&str>, version: Option<u32>) -> Result<()> {
    if format != Some(FORMAT_NAME) {
        return Err(Error::format(
            file,
            "not a ckptio manifest (\"format\" is not \"ckptio\")",
        ));
    }
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(n) if n > FORMAT_VERSION => Err(Error::format(
            file,
            format!("format_version {n} is newer than this ckptio supports ({FORMAT_VERSION}); upgrade ckptio"),
        )),
        other => Err(Error::format(file, format!("unsupported format_version {other:?}"))),
    }
}

/// A file name the manifest may reference: a plain name inside the checkpoint
/// directory, never `..`, a path, or a hidden file.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Group names become file-name prefixes.
pub fn is_valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_structure(file: &Path, m: &Manifest) -> Result<()> {
    if m.checksum != checksum::ALGORITHM {
        return Err(Error::format(
            file,
            format!("unsupported checksum algorithm {:?}", m.checksum),
        ));
    }
    // Name -> role: one lookup per tensor keeps the check linear on hostile manifests.
    let mut names = HashMap::with_capacity(m.files.len());
    for f in &m.files {
        if !is_safe_file_name(&f.name) || f.name == MANIFEST_NAME {
            return Err(Error::format(
                file,
                format!("file name {:?} is not allowed in a checkpoint", f.name),
            ));
        }
        if names.insert(f.name.as_str(), f.role).is_some() {
            return Err(Error::format(
                file,
                format!("file {:?} is listed twice", f.name),
            ));
        }
    }
    // foldhash: seeded per process like std's SipHash, at a fraction of its cost
    // on names of tens of bytes.
    let mut tensor_names: HashSet<_, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(m.tensors.len(), Default::default());
    // A file's records are consecutive: the file just looked up is mostly the next one.
    let mut last_file = None;
    for t in &m.tensors {
        if !is_valid_group(&t.group) {
            return Err(Error::format(
                file,
                format!("tensor {:?}: invalid group {:?}", t.name, t.group),
            ));
        }
        if !tensor_names.insert((t.group.as_str(), t.name.as_str())) {
            return Err(Error::format(
                file,
                format!("duplicate tensor {:?} in group {:?}", t.name, t.group),
            ));
        }
        if last_file == Some(t.file.as_str()) {
            continue;
        }
        last_file = Some(t.file.as_str());
        if names.get(t.file.as_str()) != Some(&FileRole::Tensors) {
            return Err(Error::format(
                file,
                format!(
                    "tensor {:?}: file {:?} is not a listed tensor file",
                    t.name, t.file
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            kind: Kind::State,
            checkpoint_id: "abc".into(),
            checksum: checksum::ALGORITHM.into(),
            files: vec![FileRecord {
                name: "model.safetensors".into(),
                role: FileRole::Tensors,
                size: 16,
                xxh3: "0".into(),
            }],
            tensors: vec![TensorRecord {
                group: "model".into(),
                name: "w".into(),
                file: "model.safetensors".into(),
                dtype: "F32".into(),
                shape: vec![2],
                byte_range: [8, 16],
                xxh3: "0".into(),
            }],
            user: RawValue::from_string(
                r#"{"metadata": {"lr": 0.1, "big": 123456789012345678901234567890}}"#.into(),
            )
            .unwrap(),
        }
    }

    #[test]
    fn round_trip_and_self_checksum() {
        let m = sample();
        let bytes = encode(&m);
        let back = decode(Path::new("m"), &bytes).unwrap();
        assert_eq!(back.tensors, m.tensors);
        assert_eq!(back.user.get(), m.user.get());
        let text = String::from_utf8(bytes).unwrap().replace("0.1", "0.2");
        let e = decode(Path::new("m"), text.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }

    /// The layout `encode` writes takes the short road; the same envelope in any other
    /// layout takes the general one; both decode alike and fail alike.
    #[test]
    fn written_layout_and_any_other_decode_alike() {
        let m = sample();
        let written = encode(&m);
        let (raw, stored) = split_written_envelope(&written).expect("encode's layout");
        let (raw, stored) = (raw.to_owned(), stored.to_owned());
        // The layout is serde_json's pretty form of the envelope, byte for byte.
        #[derive(Serialize)]
        struct EnvelopeOut<'a> {
            manifest: &'a RawValue,
            manifest_xxh3: &'a str,
        }
        let raw_value = RawValue::from_string(raw.clone()).unwrap();
        let envelope = EnvelopeOut {
            manifest: &raw_value,
            manifest_xxh3: &stored,
        };
        let mut pretty = serde_json::to_vec_pretty(&envelope).unwrap();
        pretty.push(b'\n');
        assert_eq!(pretty, written);
        assert_eq!(stored, checksum::to_hex(checksum::hash(raw.as_bytes())));
        let compact = format!(r#"{{"manifest_xxh3":"{stored}","manifest":{raw}}}"#);
        assert!(split_written_envelope(compact.as_bytes()).is_none());
        for bytes in [written.clone(), compact.into_bytes()] {
            let back = decode(Path::new("m"), &bytes).unwrap();
            assert_eq!(back.tensors, m.tensors);
            assert_eq!(back.user.get(), m.user.get());
        }
        // Not one value between the markers: the general road refuses it too.
        let mut two = written.clone();
        let tail = ",\n  \"manifest_xxh3\": \"".len() + 16 + "\"\n}\n".len();
        let at = two.len() - tail;
        two.splice(at..at, b", 1".iter().copied());
        assert!(split_written_envelope(&two).is_some());
        let e = decode(Path::new("m"), &two).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
        // An escaped checksum is not the written layout, and still decodes.
        let text = String::from_utf8(written).unwrap();
        let escaped = text.replacen(
            &format!("\"{stored}\""),
            &format!("\"\\u00{:x}{}\"", stored.as_bytes()[0], &stored[1..]),
            1,
        );
        assert!(split_written_envelope(escaped.as_bytes()).is_none());
        decode(Path::new("m"), escaped.as_bytes()).unwrap();
        // A wrong checksum in the written layout is reported as corruption.
        let wrong = text.replacen(&format!("\"{stored}\""), "\"0000000000000000\"", 1);
        let e = decode(Path::new("m"), wrong.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }

    #[test]
    fn rejects_escaping_file_names() {
        for bad in ["../x", "/etc/passwd", "a/b", ".hidden", "", "ckptio.json"] {
            let mut m = sample();
            m.files[0].name = bad.into();
            m.tensors[0].file = bad.into();
            let e = decode(Path::new("m"), &encode(&m)).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_newer_version_and_deep_nesting() {
        let mut m = sample();
        m.format_version = 99;
        let e = decode(Path::new("m"), &encode(&m)).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");

        // A complete, correctly signed manifest whose user section nests too deep.
        let signed = |m: &Manifest| {
            let bytes = encode(m);
            decode(Path::new("m"), &bytes)
        };
        for (depth, ok) in [(100, true), (100_000, false)] {
            let mut m = sample();
            let deep = format!(
                r#"{{"optimizer":{}null{}}}"#,
                r#"{"list":["#.repeat(depth / 2),
                "]}".repeat(depth / 2)
            );
            m.user = RawValue::from_string(deep).unwrap();
            let e = signed(&m);
            assert_eq!(e.is_ok(), ok, "depth {depth}");
            if let Err(e) = e {
                assert!(e.to_string().contains("deeper"), "{e}");
            }
        }
    }

    /// Every committed fuzz seed (fuzz/seeds/manifest) decodes or fails without
    /// panicking, in both of the fuzz target's modes.
    #[test]
    fn fuzz_seeds_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/manifest");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let Some((_, rest)) = bytes.split_first() else {
                continue;
            };
            let _ = decode(Path::new("seed"), rest);
            let mut signed = b"{\"manifest\":".to_vec();
            signed.extend_from_slice(rest);
            signed.extend_from_slice(b",\"manifest_xxh3\":\"");
            signed.extend_from_slice(checksum::to_hex(checksum::hash(rest)).as_bytes());
            signed.extend_from_slice(b"\"}");
            let _ = decode(Path::new("seed"), &signed);
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
