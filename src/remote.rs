//! Reading a checkpoint from an object store: the manifest and the headers at open
//! (validated exactly as for a local checkpoint), tensors by ranged GETs straight into
//! the caller's buffers, every tensor's checksum checked as its bytes arrive. There is
//! nothing to map, so every load is a copy.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::checksum::{self, Hasher};
use crate::error::{Error, Result};
use crate::format;
use crate::limits::{MAX_MANIFEST_LEN, MAX_SIDE_FILE_LEN};
use crate::manifest::{self, FileRole, Kind, Manifest, MANIFEST_NAME};
use crate::reader::{check_size, index_tensors, parse_hex, TensorInfo};
use crate::storage::object::{
    block_on, connect, data_prefix, manifest_path, store_error, ObjectUrl,
};
use crate::storage::object_parts::MARKER_DIR;
use crate::storage::StorageOptions;

/// First bytes fetched of each tensor file: most headers fit, so open costs one
/// request per file.
const HEADER_GUESS: u64 = 64 << 10;
/// Bytes per ranged GET, and GETs in flight.
pub(crate) const RANGE_BYTES: u64 = 8 << 20;
pub(crate) const RANGES_IN_FLIGHT: usize = 16;

/// Receives `(tensor index, offset in the tensor, bytes)`, in order per tensor.
type PieceSink<'a> = dyn FnMut(usize, u64, &[u8]) -> Result<()> + 'a;

/// A tensor file of a remote checkpoint.
#[derive(Debug)]
pub struct RemoteFile {
    pub name: String,
    /// The URL of the file, as errors name it.
    pub path: PathBuf,
    pub(crate) object: ObjPath,
}

/// An open checkpoint in an object store.
pub struct RemoteCheckpoint {
    pub url: ObjectUrl,
    pub manifest: Manifest,
    pub files: Vec<RemoteFile>,
    /// In save order.
    pub tensors: Vec<TensorInfo>,
    pub(crate) store: Arc<dyn ObjectStore>,
    data: ObjPath,
}

fn not_found(url: &ObjectUrl) -> Error {
    Error::NotFound {
        what: "not a ckptio checkpoint (no ckptio.json manifest) at",
        path: url.as_path().to_path_buf(),
    }
}

/// A data object gone after the open: the checkpoint was replaced or deleted since.
pub(crate) fn vanished(url: &ObjectUrl) -> Error {
    Error::NotFound {
        what: "the checkpoint was replaced or deleted while it was read (open it again)",
        path: url.as_path().to_path_buf(),
    }
}

async fn get_range(
    store: &Arc<dyn ObjectStore>,
    url: &ObjectUrl,
    object: &ObjPath,
    shown: &Path,
    range: Range<u64>,
) -> Result<(bytes::Bytes, u64)> {
    if range.is_empty() {
        // No byte to fetch (an S3 range cannot be empty): the size is all there is.
        return match store.head(object).await {
            Ok(meta) => Ok((bytes::Bytes::new(), meta.size)),
            Err(object_store::Error::NotFound { .. }) => Err(vanished(url)),
            Err(e) => Err(store_error("read", shown, e)),
        };
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range.clone())),
        ..Default::default()
    };
    let got = match store.get_opts(object, opts).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Err(vanished(url)),
        Err(e) => return Err(store_error("read", shown, e)),
    };
    let size = got.meta.size;
    let bytes = got
        .bytes()
        .await
        .map_err(|e| store_error("read", shown, e))?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(Error::corrupt(
            shown,
            None,
            "object shorter than the manifest says",
        ));
    }
    Ok((bytes, size))
}

/// Opens the checkpoint at `url`: the manifest, then every tensor file's header.
///
/// If the checkpoint is replaced while it is opened (the old save's files vanish as its
/// replacer removes them), the open starts over on the new one instead of reporting
/// damage that is not there.
pub fn open(url: &ObjectUrl, options: &StorageOptions) -> Result<RemoteCheckpoint> {
    let key = url.checkpoint_key()?;
    let store = connect(url, options)?;
    let manifest = manifest_path(&key);
    let mut attempt = 0;
    loop {
        let (result, version) = block_on(open_async(url, key.clone(), store.clone()))?;
        attempt += 1;
        match result {
            Err(Error::Corrupt { .. }) if attempt < OPEN_ATTEMPTS => {
                let now = block_on(store.head(&manifest))?.ok().and_then(|m| m.e_tag);
                if now.is_none() || now != version {
                    continue;
                }
                return result;
            }
            result => return result,
        }
    }
}

/// Opens tried when the checkpoint keeps being replaced while it is opened.
const OPEN_ATTEMPTS: usize = 8;

/// The opened checkpoint, and the ETag of the manifest it was opened from.
async fn open_async(
    url: &ObjectUrl,
    key: ObjPath,
    store: Arc<dyn ObjectStore>,
) -> (Result<RemoteCheckpoint>, Option<String>) {
    let shown = url.child(MANIFEST_NAME);
    let got = match store
        .get_opts(&manifest_path(&key), GetOptions::default())
        .await
    {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return (Err(not_found(url)), None),
        Err(e) => return (Err(store_error("read", &shown, e)), None),
    };
    let version = got.meta.e_tag.clone();
    (open_manifest(url, key, store, got).await, version)
}

async fn open_manifest(
    url: &ObjectUrl,
    key: ObjPath,
    store: Arc<dyn ObjectStore>,
    got: object_store::GetResult,
) -> Result<RemoteCheckpoint> {
    let shown = url.child(MANIFEST_NAME);
    if got.meta.size > MAX_MANIFEST_LEN {
        return Err(Error::format(
            &shown,
            format!(
                "manifest is {} bytes, over the {MAX_MANIFEST_LEN}-byte cap",
                got.meta.size
            ),
        ));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| store_error("read", &shown, e))?;
    let manifest = manifest::decode(&shown, &bytes)?;
    let data = data_prefix(&key, &manifest.checkpoint_id);
    let records: Vec<&manifest::FileRecord> = manifest
        .files
        .iter()
        .filter(|f| f.role == FileRole::Tensors)
        .collect();
    let files: Vec<RemoteFile> = records
        .iter()
        .map(|r| RemoteFile {
            name: r.name.clone(),
            path: url.child(&r.name),
            object: data.clone().join(r.name.as_str()),
        })
        .collect();
    let headers: Vec<format::ParsedHeader> = stream::iter(records.iter().zip(&files))
        .map(|(rec, file)| read_header(&store, url, rec, file))
        .buffered(RANGES_IN_FLIGHT)
        .try_collect()
        .await?;
    let file_index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    let tensors = index_tensors(&manifest, headers, &paths, &file_index)?;
    Ok(RemoteCheckpoint {
        url: url.clone(),
        manifest,
        files,
        tensors,
        store,
        data,
    })
}

/// Fetches and validates one file's header: its size against the manifest, the length
/// prefix before the rest is fetched, the header checksum, then every structural rule.
async fn read_header(
    store: &Arc<dyn ObjectStore>,
    url: &ObjectUrl,
    rec: &manifest::FileRecord,
    file: &RemoteFile,
) -> Result<format::ParsedHeader> {
    let missing = |e: Error| match e {
        Error::NotFound { .. } => Error::corrupt(&file.path, None, "file missing"),
        e => e,
    };
    let first = HEADER_GUESS.min(rec.size);
    let (mut head, size) = get_range(store, url, &file.object, &file.path, 0..first)
        .await
        .map_err(missing)?;
    check_size(&file.path, size, rec)?;
    let hlen = format::header_len(&file.path, &head, size)?;
    if hlen > head.len() as u64 {
        let (rest, _) = get_range(
            store,
            url,
            &file.object,
            &file.path,
            head.len() as u64..hlen,
        )
        .await
        .map_err(missing)?;
        head = [head.as_ref(), rest.as_ref()].concat().into();
    }
    let stored = parse_hex(&file.path, "header", &rec.xxh3)?;
    if checksum::hash(&head[..hlen as usize]) != stored {
        return Err(Error::corrupt(&file.path, None, "header checksum mismatch"));
    }
    format::parse_header(&file.path, &head[..hlen as usize], size)
}

/// A ranged GET of one tensor file.
pub(crate) struct Fetch {
    pub(crate) file: usize,
    pub(crate) range: Range<u64>,
}

/// Splits the wanted tensors (sorted by file, then offset) into ranged GETs: adjacent
/// small tensors share one, large ones are cut into `RANGE_BYTES` pieces.
pub(crate) fn plan_fetches(tensors: &[&TensorInfo]) -> Vec<Fetch> {
    let mut out: Vec<Fetch> = Vec::new();
    for t in tensors {
        let mut pos = t.begin;
        while pos < t.end {
            match out.last_mut() {
                // Adjacent to the last fetch, which has room: extend it.
                Some(f)
                    if f.file == t.file
                        && f.range.end == pos
                        && f.range.end - f.range.start < RANGE_BYTES =>
                {
                    pos = t.end.min(f.range.start + RANGE_BYTES);
                    f.range.end = pos;
                }
                _ => {
                    let end = t.end.min(pos + RANGE_BYTES);
                    out.push(Fetch {
                        file: t.file,
                        range: pos..end,
                    });
                    pos = end;
                }
            }
        }
    }
    out
}

impl RemoteCheckpoint {
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }

    /// Streams the bytes of `wanted` tensors (indexes into `tensors`) in file order;
    /// `sink(tensor, offset, bytes)` gets each piece in order, so a tensor's pieces can
    /// be hashed as they arrive.
    fn stream_tensors(&self, wanted: &[usize], sink: &mut PieceSink<'_>) -> Result<()> {
        let mut order: Vec<usize> = wanted.to_vec();
        order.sort_by_key(|&i| (self.tensors[i].file, self.tensors[i].begin));
        let infos: Vec<&TensorInfo> = order.iter().map(|&i| &self.tensors[i]).collect();
        let fetches = plan_fetches(&infos);
        block_on(async {
            let mut next = 0; // first tensor of `order` not yet complete
            let mut results = stream::iter(fetches)
                .map(|f| async move {
                    let file = &self.files[f.file];
                    let (bytes, _) = get_range(
                        &self.store,
                        &self.url,
                        &file.object,
                        &file.path,
                        f.range.clone(),
                    )
                    .await?;
                    Ok::<_, Error>((f, bytes))
                })
                .buffered(RANGES_IN_FLIGHT);
            while let Some(item) = results.next().await {
                let (f, bytes) = item?;
                let mut pos = f.range.start;
                while pos < f.range.end {
                    // Skip tensors that end before `pos` (zero-length ones included).
                    while next < order.len() && {
                        let t = &self.tensors[order[next]];
                        t.file != f.file || t.end <= pos
                    } {
                        if self.tensors[order[next]].begin == self.tensors[order[next]].end {
                            sink(order[next], 0, &[])?;
                        }
                        next += 1;
                    }
                    let t = &self.tensors[order[next]];
                    let end = t.end.min(f.range.end);
                    let piece =
                        &bytes[(pos - f.range.start) as usize..(end - f.range.start) as usize];
                    sink(order[next], pos - t.begin, piece)?;
                    pos = end;
                }
            }
            for &i in &order[next..] {
                if self.tensors[i].begin == self.tensors[i].end {
                    sink(i, 0, &[])?;
                }
            }
            Ok::<_, Error>(())
        })?
    }

    /// Fetches byte ranges of tensor file `file`, in parallel, in order.
    pub(crate) fn read_ranges(
        &self,
        file: usize,
        ranges: Vec<Range<u64>>,
    ) -> Result<Vec<bytes::Bytes>> {
        let f = &self.files[file];
        block_on(
            stream::iter(ranges)
                .map(|r| async move {
                    Ok::<_, Error>(
                        get_range(&self.store, &self.url, &f.object, &f.path, r)
                            .await?
                            .0,
                    )
                })
                .buffered(RANGES_IN_FLIGHT)
                .try_collect(),
        )?
    }

    /// Checks every byte: tensors, headers (at open), side files; reports every bad
    /// tensor, naming the first. Returns the objects under the save's data prefix that
    /// the manifest does not list.
    pub fn verify(&self) -> Result<Vec<String>> {
        let all: Vec<usize> = (0..self.tensors.len()).collect();
        let mut hashers: HashMap<usize, Hasher> = HashMap::new();
        let mut bad: Vec<usize> = Vec::new();
        self.stream_tensors(&all, &mut |i, offset, piece| {
            let t = &self.tensors[i];
            let hasher = hashers.entry(i).or_default();
            hasher.update(piece);
            if offset + piece.len() as u64 == t.end - t.begin && hasher.finish() != t.xxh3 {
                bad.push(i);
            }
            Ok(())
        })?;
        if let Some(&first) = bad.first() {
            let t = &self.tensors[first];
            let names: Vec<&str> = bad.iter().map(|&i| self.tensors[i].name.as_str()).collect();
            return Err(Error::corrupt(
                &self.files[t.file].path,
                Some(&t.name),
                format!(
                    "data checksum mismatch ({} bad tensors: {names:?})",
                    bad.len()
                ),
            ));
        }
        for rec in self
            .manifest
            .files
            .iter()
            .filter(|r| r.role.is_whole_file())
        {
            self.read_side_file(&rec.name)?;
        }
        let listed = self.manifest.file_names();
        let objects: Vec<object_store::ObjectMeta> =
            block_on(self.store.list(Some(&self.data)).try_collect())?
                .map_err(|e| store_error("list", self.url.as_path(), e))?;
        let prefix_len = self.data.as_ref().len() + 1;
        Ok(objects
            .iter()
            .map(|m| m.location.as_ref()[prefix_len..].to_owned())
            .filter(|name| !listed.contains(name.as_str()) && !name.starts_with(MARKER_DIR))
            .collect())
    }

    /// The bytes of a whole file of the checkpoint (index or side file), checked
    /// against the manifest's size and checksum.
    pub fn read_side_file(&self, name: &str) -> Result<Vec<u8>> {
        let shown = self.url.child(name);
        let rec = self
            .manifest
            .files
            .iter()
            .find(|r| r.name == name && r.role.is_whole_file())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: no side file {name:?}",
                    self.url.as_path().display()
                ))
            })?;
        if rec.size > MAX_SIDE_FILE_LEN {
            return Err(Error::format(&shown, "side file over the size cap"));
        }
        let object = self.data.clone().join(name);
        let (bytes, size) = block_on(get_range(
            &self.store,
            &self.url,
            &object,
            &shown,
            0..rec.size,
        ))?
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::corrupt(&shown, None, "file missing"),
            e => e,
        })?;
        check_size(&shown, size, rec)?;
        let stored = parse_hex(&shown, "file", &rec.xxh3)?;
        if checksum::hash(&bytes) != stored {
            return Err(Error::corrupt(&shown, None, "file checksum mismatch"));
        }
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;

    fn tensor(file: usize, begin: u64, end: u64) -> TensorInfo {
        TensorInfo {
            group: "model".into(),
            name: format!("t{begin}"),
            dtype: Dtype::U8,
            shape: vec![end - begin],
            file,
            begin,
            end,
            xxh3: 0,
        }
    }

    #[test]
    fn fetches_merge_small_neighbours_and_split_large_tensors() {
        let ts = [
            tensor(0, 100, 200),
            tensor(0, 200, 200), // empty
            tensor(0, 200, 300),
            tensor(0, 300, 300 + 2 * RANGE_BYTES + 5),
            tensor(1, 50, 60),
        ];
        let refs: Vec<&TensorInfo> = ts.iter().collect();
        let got: Vec<(usize, Range<u64>)> = plan_fetches(&refs)
            .into_iter()
            .map(|f| (f.file, f.range))
            .collect();
        let big_end = 300 + 2 * RANGE_BYTES + 5;
        assert_eq!(
            got,
            vec![
                (0, 100..RANGE_BYTES + 100),
                (0, RANGE_BYTES + 100..2 * RANGE_BYTES + 100),
                (0, 2 * RANGE_BYTES + 100..big_end),
                (1, 50..60),
            ]
        );
    }
}
