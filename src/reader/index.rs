//! The general road of `open`: every header parsed, then matched to the manifest's
//! records (`written.rs` is the fast road, for headers exactly as ckptio writes them).

use std::collections::HashMap;
use std::path::Path;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::format;
use crate::manifest::Manifest;

use super::{parse_hex, TensorInfo};

/// Checks that the manifest and the file headers describe exactly the same tensors and
/// builds the index. `paths[i]` names file `i` in errors; `file_index` maps a manifest
/// file name to its index.
///
/// ckptio writes each header in the order the manifest lists the file's tensors, so
/// each record is first looked for at its file's cursor (a comparison, no hashing);
/// a header in any other order falls back to a lookup by name. Either way every
/// record must match a distinct header entry and every entry must be matched.
pub(crate) fn index_tensors(
    manifest: &Manifest,
    headers: Vec<format::ParsedHeader>,
    paths: &[&Path],
    file_index: &HashMap<&str, usize>,
) -> Result<Vec<TensorInfo>> {
    let mut slots: Vec<Vec<Option<format::TensorLayout>>> = headers
        .into_iter()
        .map(|h| h.tensors.into_iter().map(Some).collect())
        .collect();
    let mut cursor = vec![0usize; slots.len()];
    // Built for a file only once its header is found out of order.
    let mut by_name: Vec<Option<HashMap<String, usize>>> = vec![None; slots.len()];
    let mut tensors = Vec::with_capacity(manifest.tensors.len());
    for rec in &manifest.tensors {
        let fi = file_index[rec.file.as_str()];
        let path = paths[fi];
        let file = &mut slots[fi];
        let at = cursor[fi];
        let in_order = file
            .get(at)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.name == rec.name);
        let found = if in_order {
            cursor[fi] += 1;
            Some(at)
        } else {
            let names = by_name[fi].get_or_insert_with(|| {
                let entries = file.iter().enumerate();
                entries
                    .filter_map(|(i, t)| t.as_ref().map(|t| (t.name.clone(), i)))
                    .collect()
            });
            names.remove(rec.name.as_str())
        };
        // Both checksums passed, so a disagreement is no accident of storage: the files
        // were made inconsistent on purpose or by a broken writer. Hence format errors.
        let layout = found.and_then(|i| file[i].take()).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "tensor {:?}: listed in the manifest but missing from the file header",
                    rec.name
                ),
            )
        })?;
        if let Some(names) = by_name[fi].as_mut() {
            names.remove(rec.name.as_str()); // matched in order after a fallback
        }
        let dtype = Dtype::parse(&rec.dtype);
        if dtype != Some(layout.dtype)
            || rec.shape != layout.shape
            || rec.byte_range != [layout.begin, layout.end]
        {
            return Err(Error::format(
                path,
                format!(
                    "tensor {:?}: manifest entry disagrees with the file header",
                    rec.name
                ),
            ));
        }
        tensors.push(TensorInfo {
            group: rec.group.clone(),
            xxh3: parse_hex(path, &rec.name, &rec.xxh3)?,
            name: layout.name,
            dtype: layout.dtype,
            shape: layout.shape,
            file: fi,
            begin: layout.begin,
            end: layout.end,
        });
    }
    for (fi, rest) in slots.iter().enumerate() {
        if let Some(t) = rest.iter().flatten().next() {
            return Err(Error::format(
                paths[fi],
                format!(
                    "tensor {:?}: in the file header but not in the manifest",
                    t.name
                ),
            ));
        }
    }
    Ok(tensors)
}
