//! The fast road of `open`: headers exactly as ckptio writes them.
//!
//! The manifest and the headers describe the same tensors, so the headers need not be
//! parsed: each file's header is checked to be, byte for byte, what `format::plan`
//! writes for the manifest's records of that file (`format::write_entry`, in manifest
//! order), after the same checks `format::parse` makes (dtype, shape limits, sizes,
//! reserved and duplicate names, data tiling the file). Only the `__metadata__` map is
//! parsed. Anything else (a header another tool rewrote, any disagreement) returns
//! None, and the caller takes the general road, which parses every header and reports
//! what is wrong; so errors read the same whichever road a checkpoint took.

use std::collections::HashMap;
use std::path::Path;

use crate::dtype::{byte_len, Dtype};
use crate::format::{self, UniqueMap, METADATA_KEY};
use crate::limits;
use crate::manifest::{Manifest, TensorRecord};

use super::{parse_hex, TensorInfo};

/// One file's header as the records are matched against it.
struct Cursor<'a> {
    /// Length prefix + JSON + padding.
    head: &'a [u8],
    /// Where the next entry must start.
    at: usize,
    /// No entry (nor metadata) before the next one: it takes no comma.
    first: bool,
    /// The group of the file's records: one file holds one group, so the manifest's
    /// unique (group, name) pairs make the header's keys unique.
    group: Option<&'a str>,
    /// `[begin, end)` of each record, in manifest order.
    ranges: Vec<(u64, u64)>,
}

/// Where each of the manifest's records lies, if every header is exactly as ckptio
/// writes it for the manifest (`heads[i]`: file `i`'s header bytes, `file_lens[i]`:
/// its length), or None. [`into_index`] turns the records into the index.
pub(super) fn check(
    manifest: &Manifest,
    heads: &[&[u8]],
    file_lens: &[u64],
    file_index: &HashMap<&str, usize>,
) -> Option<Vec<Found>> {
    let mut files: Vec<Cursor> = heads
        .iter()
        .map(|h| open_object(h))
        .collect::<Option<_>>()?;
    let mut found = Vec::with_capacity(manifest.tensors.len());
    let mut entry = Vec::with_capacity(256);
    let mut last: Option<(&str, usize)> = None;
    for rec in &manifest.tensors {
        // A file's records are consecutive: look a file up once per run of them.
        let fi = match last {
            Some((name, fi)) if name == rec.file => fi,
            _ => *file_index.get(rec.file.as_str())?,
        };
        last = Some((&rec.file, fi));
        let file = &mut files[fi];
        if *file.group.get_or_insert(&rec.group) != rec.group || rec.name == METADATA_KEY {
            return None;
        }
        let dtype = Dtype::parse(&rec.dtype)?;
        limits::check_shape(dtype, &rec.shape).ok()?;
        let hlen = file.head.len() as u64;
        let [begin, end] = rec.byte_range;
        if begin < hlen || end < begin || byte_len(dtype, &rec.shape)? != end - begin {
            return None;
        }
        entry.clear();
        if !file.first {
            entry.push(b',');
        }
        format::write_entry(
            &mut entry,
            &rec.name,
            dtype,
            &rec.shape,
            [begin - hlen, end - hlen],
        );
        if !file.head[file.at..].starts_with(&entry) {
            return None;
        }
        file.at += entry.len();
        file.first = false;
        file.ranges.push((begin, end));
        let xxh3 = parse_hex(Path::new(""), "", &rec.xxh3).ok()?;
        found.push(Found {
            file: fi,
            dtype,
            xxh3,
        });
    }
    for (file, &len) in files.iter_mut().zip(file_lens) {
        close_object(file, len)?;
    }
    Some(found)
}

/// What [`check`] learned of one record.
pub(super) struct Found {
    file: usize,
    dtype: Dtype,
    xxh3: u64,
}

/// The index made of the manifest's records and what [`check`] found of them: names
/// and shapes move over, nothing is copied.
pub(super) fn into_index(records: Vec<TensorRecord>, found: Vec<Found>) -> Vec<TensorInfo> {
    let infos = records.into_iter().zip(found);
    infos
        .map(|(rec, found)| TensorInfo {
            group: rec.group,
            name: rec.name,
            dtype: found.dtype,
            shape: rec.shape,
            file: found.file,
            begin: rec.byte_range[0],
            end: rec.byte_range[1],
            xxh3: found.xxh3,
        })
        .collect()
}

/// The cursor after `{` and the `__metadata__` entry, if the header has one (a map
/// of strings to strings with no key twice, as `format::parse` requires).
fn open_object(head: &[u8]) -> Option<Cursor<'_>> {
    const META: &[u8] = b"{\"__metadata__\":";
    let json = head.get(8..)?;
    let (at, first) = if json.starts_with(META) {
        let rest = &json[META.len()..];
        let mut values =
            serde_json::Deserializer::from_slice(rest).into_iter::<UniqueMap<String>>();
        values.next()?.ok()?;
        (8 + META.len() + values.byte_offset(), false)
    } else if json.starts_with(b"{") {
        (9, true)
    } else {
        return None;
    };
    Some(Cursor {
        head,
        at,
        first,
        group: None,
        ranges: Vec::new(),
    })
}

/// Checks that the header ends after the last entry (`}`, then spaces), and that the
/// data tiles the rest of the file exactly: no overlap, no hole, no trailing bytes.
fn close_object(file: &mut Cursor, file_len: u64) -> Option<()> {
    let (&brace, padding) = file.head.get(file.at..)?.split_first()?;
    if brace != b'}' || padding.iter().any(|&b| b != b' ') {
        return None;
    }
    // ckptio lays each element size out in save order, so this is mostly sorted.
    if !file.ranges.is_sorted() {
        file.ranges.sort_unstable();
    }
    let mut expected = file.head.len() as u64;
    for &(begin, end) in &file.ranges {
        if begin != expected {
            return None;
        }
        expected = end;
    }
    (expected == file_len).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileRecord, FileRole, Kind, FORMAT_NAME, FORMAT_VERSION};
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    type Spec = (String, Dtype, Vec<u64>);

    /// A manifest and the files ckptio writes for `groups` (one file per group).
    fn written(groups: &[Vec<Spec>]) -> (Manifest, Vec<Vec<u8>>) {
        let mut files = Vec::new();
        let mut records = Vec::new();
        let mut bytes = Vec::new();
        for (g, tensors) in groups.iter().enumerate() {
            let name = format!("g{g}.safetensors");
            let specs: Vec<(&str, Dtype, &[u64])> = tensors
                .iter()
                .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
                .collect();
            let meta = [("ckptio.checkpoint_id".to_string(), "c\"1".to_string())];
            let layout = format::plan(&specs, &meta[..g % 2]).unwrap();
            let mut file = layout.header.clone();
            file.resize(layout.file_len as usize, 7);
            for t in &layout.tensors {
                records.push(TensorRecord {
                    group: format!("g{g}"),
                    name: t.name.clone(),
                    file: name.clone(),
                    dtype: t.dtype.name().into(),
                    shape: t.shape.clone(),
                    byte_range: [t.begin, t.end],
                    xxh3: format!("{:016x}", t.begin * 31 + g as u64),
                });
            }
            files.push(FileRecord {
                name,
                role: FileRole::Tensors,
                size: layout.file_len,
                xxh3: "0".repeat(16),
            });
            bytes.push(file);
        }
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            kind: Kind::State,
            checkpoint_id: "c1".into(),
            checksum: crate::checksum::ALGORITHM.into(),
            files,
            tensors: records,
            user: RawValue::from_string("{}".into()).unwrap(),
        };
        (manifest, bytes)
    }

    /// Both roads: the fast one's index (None if it declined) and the general one's.
    fn both_roads(
        m: &Manifest,
        files: &[Vec<u8>],
    ) -> (Option<Vec<TensorInfo>>, crate::Result<Vec<TensorInfo>>) {
        let names: HashMap<&str, usize> = m
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        let heads: Vec<&[u8]> = files
            .iter()
            .map(|f| {
                let hlen = format::header_len(Path::new("f"), f, f.len() as u64).unwrap();
                &f[..hlen as usize]
            })
            .collect();
        let lens: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
        let fast =
            check(m, &heads, &lens, &names).map(|found| into_index(m.tensors.clone(), found));
        let paths: Vec<&Path> = m.files.iter().map(|f| Path::new(&f.name)).collect();
        let general = files
            .iter()
            .zip(&paths)
            .map(|(f, p)| format::parse(p, f))
            .collect::<crate::Result<Vec<_>>>()
            .and_then(|headers| super::super::index_tensors(m, headers, &paths, &names));
        (fast, general)
    }

    fn same(a: &[TensorInfo], b: &[TensorInfo]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                (
                    &x.group, &x.name, x.dtype, &x.shape, x.file, x.begin, x.end, x.xxh3,
                ) == (
                    &y.group, &y.name, y.dtype, &y.shape, y.file, y.begin, y.end, y.xxh3,
                )
            })
    }

    fn sample() -> (Manifest, Vec<Vec<u8>>) {
        written(&[
            vec![
                ("a\"\\\u{1}é".into(), Dtype::F32, vec![2, 3]),
                ("b".into(), Dtype::F64, vec![4]),
                ("c".into(), Dtype::U8, vec![0, 5]),
                ("d".into(), Dtype::BF16, vec![]),
            ],
            vec![("a\"\\\u{1}é".into(), Dtype::F32, vec![3])],
        ])
    }

    #[test]
    fn what_ckptio_writes_takes_the_fast_road_to_the_same_index() {
        let (m, files) = sample();
        let (fast, general) = both_roads(&m, &files);
        assert!(same(&fast.expect("fast road"), &general.unwrap()));
    }

    type Change = dyn Fn(&mut Manifest, &mut Vec<Vec<u8>>);

    /// Whatever the fast road declines, the general road decides: it accepts a header
    /// another writer laid out differently, and refuses (with its own error) one that
    /// disagrees with the manifest or breaks a rule.
    #[test]
    fn anything_else_takes_the_general_road() {
        let cases: Vec<(&str, Box<Change>, bool)> = vec![
            (
                "a newline in the padding",
                Box::new(|_, f| {
                    let at = f[0].iter().rposition(|&b| b == b'}').unwrap();
                    f[0][at + 1] = b'\n';
                }),
                true,
            ),
            (
                "a record in another order",
                Box::new(|m, _| m.tensors.swap(0, 1)),
                true,
            ),
            (
                "a shape that disagrees",
                Box::new(|m, _| m.tensors[0].shape = vec![3, 2]),
                false,
            ),
            (
                "a dtype that disagrees",
                Box::new(|m, _| m.tensors[1].dtype = "I64".into()),
                false,
            ),
            (
                "an unknown dtype",
                Box::new(|m, _| m.tensors[1].dtype = "Q9".into()),
                false,
            ),
            (
                "a shifted range",
                Box::new(|m, _| {
                    m.tensors[1].byte_range[0] += 8;
                    m.tensors[1].byte_range[1] += 8;
                }),
                false,
            ),
            (
                "a missing record",
                Box::new(|m, _| {
                    m.tensors.remove(2);
                }),
                false,
            ),
            (
                "a record in the wrong file",
                Box::new(|m, _| m.tensors[4].file = "g0.safetensors".into()),
                false,
            ),
            (
                "a bad checksum",
                Box::new(|m, _| m.tensors[0].xxh3 = "xyz".into()),
                false,
            ),
            ("a trailing byte", Box::new(|_, f| f[1].push(0)), false),
            (
                "a duplicate metadata key",
                Box::new(|_, f| {
                    let text = String::from_utf8_lossy(&f[1]).replace(
                        "{\"ckptio.checkpoint_id\":\"c\\\"1\"}",
                        "{\"k\":\"c\",\"k\":\"c\"}              ",
                    );
                    f[1] = text.into_bytes();
                }),
                false,
            ),
        ];
        for (what, change, accepted) in cases {
            let (mut m, mut files) = sample();
            change(&mut m, &mut files);
            let (fast, general) = both_roads(&m, &files);
            assert!(fast.is_none(), "{what}: took the fast road");
            assert_eq!(general.is_ok(), accepted, "{what}: {:?}", general.err());
        }
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let dtypes = prop::sample::select(vec![
            Dtype::U8,
            Dtype::F16,
            Dtype::F32,
            Dtype::F64,
            Dtype::BF16,
        ]);
        (
            "[a-z\"\\\\\u{0}-\u{1f}é]{1,6}",
            dtypes,
            prop::collection::vec(0u64..5, 0..4),
        )
    }

    proptest! {
        /// Any set of tensors ckptio writes, over files with and without metadata.
        #[test]
        fn written_files_take_the_fast_road(
            groups in prop::collection::vec(prop::collection::vec(spec(), 0..12), 1..4),
        ) {
            let groups: Vec<Vec<Spec>> = groups
                .into_iter()
                .map(|g| {
                    let mut seen = std::collections::HashSet::new();
                    g.into_iter().filter(|t| seen.insert(t.0.clone())).collect()
                })
                .collect();
            let (m, files) = written(&groups);
            let (fast, general) = both_roads(&m, &files);
            prop_assert!(same(&fast.expect("fast road"), &general.unwrap()));
        }
    }
}
