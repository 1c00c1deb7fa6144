//! Loading tensors from an object store into the caller's buffers: parallel ranged
//! GETs whose bodies are copied, chunk by chunk as they arrive, straight into the
//! destination (no intermediate buffer per request), then every tensor hashed in
//! parallel on the worker pool and checked against its checksum.

use std::collections::HashSet;

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore};
use rayon::prelude::*;

use crate::checksum::Hasher;
use crate::copy::check_jobs;
use crate::error::{Error, Result};
use crate::pool;
use crate::reader::TensorInfo;
use crate::remote::{plan_fetches, vanished, Fetch, RemoteCheckpoint, RANGES_IN_FLIGHT};
use crate::storage::object::store_error;

/// A part of one destination that one ranged GET fills: (tensor slot, file offset of
/// its first byte, the bytes).
type Piece<'a> = (usize, u64, &'a mut [u8]);

impl RemoteCheckpoint {
    /// Reads tensors (by index into `tensors`) into caller buffers, checking each
    /// tensor's checksum when `verify`.
    pub fn read_tensors(&self, mut jobs: Vec<(usize, &mut [u8])>, verify: bool) -> Result<()> {
        check_jobs(&self.tensors, &jobs)?;
        // Pieces are cut per tensor in file order: one tensor twice would overlap.
        let mut seen = HashSet::with_capacity(jobs.len());
        if let Some((i, _)) = jobs.iter().find(|(i, _)| !seen.insert(*i)) {
            let name = &self.tensors[*i].name;
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} asked for twice"
            )));
        }
        jobs.sort_by_key(|(i, _)| (self.tensors[*i].file, self.tensors[*i].begin));
        let infos: Vec<&TensorInfo> = jobs.iter().map(|(i, _)| &self.tensors[*i]).collect();
        let fetches = plan_fetches(&infos);
        let slots: Vec<usize> = jobs.iter().map(|(i, _)| *i).collect();
        let by_fetch = cut(
            &fetches,
            &infos,
            jobs.into_iter().map(|(_, dst)| dst).collect(),
        );
        let filled: Vec<Vec<Piece>> = crate::storage::object::block_on(
            stream::iter(fetches.iter().zip(by_fetch))
                .map(|(f, pieces)| self.fill(f, pieces))
                .buffer_unordered(RANGES_IN_FLIGHT)
                .try_collect(),
        )??;
        if !verify {
            return Ok(());
        }
        // Each tensor's pieces, in order (pieces of one fetch are in order; fetches of
        // one tensor are put back in offset order here).
        let mut per_tensor: Vec<Vec<(u64, &[u8])>> = vec![Vec::new(); slots.len()];
        for (slot, at, bytes) in filled.into_iter().flatten() {
            per_tensor[slot].push((at, bytes));
        }
        let bad = pool::get(0)?.install(|| {
            per_tensor
                .par_iter_mut()
                .for_each(|pieces| pieces.sort_by_key(|(at, _)| *at));
            per_tensor
                .par_iter()
                .enumerate()
                .find_first(|(slot, pieces)| {
                    let mut hasher = Hasher::new();
                    pieces.iter().for_each(|(_, bytes)| hasher.update(bytes));
                    hasher.finish() != self.tensors[slots[*slot]].xxh3
                })
                .map(|(slot, _)| slot)
        });
        match bad {
            Some(slot) => {
                let t = &self.tensors[slots[slot]];
                Err(Error::corrupt(
                    &self.files[t.file].path,
                    Some(&t.name),
                    "data checksum mismatch",
                ))
            }
            None => Ok(()),
        }
    }

    /// Runs one ranged GET, copying its body into `pieces` as it arrives.
    async fn fill<'a>(&self, f: &Fetch, mut pieces: Vec<Piece<'a>>) -> Result<Vec<Piece<'a>>> {
        let file = &self.files[f.file];
        let opts = GetOptions {
            range: Some(GetRange::Bounded(f.range.clone())),
            ..Default::default()
        };
        let got = match self.store.get_opts(&file.object, opts).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(vanished(&self.url)),
            Err(e) => return Err(store_error("read", &file.path, e)),
        };
        let mut body = got.into_stream();
        let (mut pos, mut p) = (f.range.start, 0);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| store_error("read", &file.path, e))?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let Some((_, start, dst)) = pieces.get_mut(p) else {
                    return Err(Error::corrupt(
                        &file.path,
                        None,
                        "object longer than the range asked for",
                    ));
                };
                let offset = (pos - *start) as usize;
                let n = (dst.len() - offset).min(rest.len());
                dst[offset..offset + n].copy_from_slice(&rest[..n]);
                (pos, rest) = (pos + n as u64, &rest[n..]);
                if offset + n == dst.len() {
                    p += 1;
                }
            }
        }
        if pos != f.range.end {
            return Err(Error::corrupt(
                &file.path,
                None,
                "object shorter than the manifest says",
            ));
        }
        Ok(pieces)
    }
}

/// Cuts each destination (in the order of `infos`) into the pieces that each fetch
/// fills; an empty tensor gets an empty piece of its own, in no fetch.
fn cut<'a>(
    fetches: &[Fetch],
    infos: &[&TensorInfo],
    dsts: Vec<&'a mut [u8]>,
) -> Vec<Vec<Piece<'a>>> {
    let mut by_fetch: Vec<Vec<Piece<'a>>> = (0..fetches.len()).map(|_| Vec::new()).collect();
    let mut fi = 0;
    for (slot, (t, dst)) in infos.iter().zip(dsts).enumerate() {
        let mut rest = dst;
        let mut pos = t.begin;
        while pos < t.end {
            while !(fetches[fi].file == t.file && fetches[fi].range.contains(&pos)) {
                fi += 1;
            }
            let end = t.end.min(fetches[fi].range.end);
            let (head, tail) = rest.split_at_mut((end - pos) as usize);
            by_fetch[fi].push((slot, pos, head));
            (rest, pos) = (tail, end);
        }
    }
    by_fetch
}
