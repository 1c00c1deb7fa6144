//! How a tensor file's bytes are cut into writes: large pieces aligned to FILE offsets,
//! whatever the tensor boundaries.
//!
//! The page cache keeps a written file in folios as large, and as aligned, as the
//! writes that made them, and a mapping faults in about once per folio: 2 MiB folios
//! at 2 MiB file offsets are mapped by one PMD entry each, so touching a just-saved
//! 512 MiB file costs ~2.5 ms, against 8-40 ms after 1 MiB-256 KiB writes (docs/ENGINE.md,
//! `dev/faultin_probe.py`). So every write covers whole pieces `[k * piece, (k + 1) *
//! piece)` (the first also holds the header, the last ends at the end of the file), even
//! where a piece spans many tensors.
//!
//! Checksums stay per tensor (one streaming xxh3 each, fed in order), so the unit of
//! parallel work is a [`Job`]: a run of whole tensors, adjacent in one file, of at least
//! `job_bytes`. A job hashes exactly its own tensors and writes from the piece boundary
//! at or below its first byte to the one at or below the next job's; the bytes of its
//! last tensor past that boundary are written by the next job (read twice: under one
//! piece per job). Each piece is hashed and then written at once, so the copy reads it
//! from cache: a byte is read from the caller's memory once, bar those tails.

use std::io::IoSlice;
use std::ops::Range;

use crate::checksum::Hasher;

/// Bytes per write: the largest folio the page cache made in our measurements (a PMD:
/// 2 MiB with 4 KiB pages); larger pieces measured no faster (docs/ENGINE.md).
pub(crate) const PIECE: u64 = 2 << 20;
/// Least bytes of one job: a few pieces, so the tails read twice stay a small share.
pub(crate) const JOB_BYTES: u64 = 8 << 20;
/// iovecs per `pwritev` (Linux's `IOV_MAX`); a piece of more tensors is gathered into
/// one buffer first, so it is still one write.
const IOV_MAX: usize = 1024;

/// One tensor's bytes and where they go.
#[derive(Clone, Copy)]
pub(crate) struct Segment<'a> {
    /// The tensor's index in the caller's list.
    pub index: usize,
    /// Absolute file offset.
    pub begin: u64,
    pub data: &'a [u8],
}

impl Segment<'_> {
    fn end(&self) -> u64 {
        self.begin + self.data.len() as u64
    }
}

/// A whole file as bytes in file order: the header at 0, then tensors that tile the
/// rest with no hole (what `format::plan` lays out).
pub(crate) struct FileBytes<'a> {
    header: &'a [u8],
    /// Sorted by offset.
    segments: Vec<Segment<'a>>,
    len: u64,
}

impl<'a> FileBytes<'a> {
    /// `segments` in any order; panics if they and the header do not tile the file.
    pub(crate) fn new(header: &'a [u8], mut segments: Vec<Segment<'a>>) -> FileBytes<'a> {
        // An empty tensor may share its offset with the next one: it goes first.
        segments.sort_by_key(|s| (s.begin, s.end()));
        let mut len = header.len() as u64;
        for s in &segments {
            assert_eq!(s.begin, len, "tensor {} is not contiguous", s.index);
            len = s.end();
        }
        FileBytes {
            header,
            segments,
            len,
        }
    }

    /// Every part of the file in `range`, in order (empty tensors left out).
    fn parts(&self, range: Range<u64>) -> impl Iterator<Item = &'a [u8]> + '_ {
        let header = self.header;
        let head = (range.start < header.len() as u64).then(|| {
            let end = range.end.min(header.len() as u64);
            &header[range.start as usize..end as usize]
        });
        let first = self.segments.partition_point(|s| s.end() <= range.start);
        let tail = self.segments[first..]
            .iter()
            .take_while(move |s| s.begin < range.end)
            .filter(|s| !s.data.is_empty())
            .map(move |s| {
                let from = range.start.max(s.begin) - s.begin;
                let to = range.end.min(s.end()) - s.begin;
                &s.data[from as usize..to as usize]
            });
        head.into_iter().chain(tail)
    }
}

/// A unit of parallel work in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// Which of the caller's files.
    pub file: usize,
    /// The tensors it hashes: indices into the file's offset-sorted segments.
    segments: Range<usize>,
    /// The bytes it writes: piece-aligned, except at the end of the file.
    write: Range<u64>,
    /// Bytes it hashes.
    pub bytes: u64,
}

/// Cuts `file` (the `index`-th of the caller's) into jobs of at least `job_bytes`
/// (all but the last) whose write ranges tile the file exactly.
pub(crate) fn plan_jobs(index: usize, file: &FileBytes, piece: u64, job_bytes: u64) -> Vec<Job> {
    assert!(
        piece > 0 && job_bytes >= piece,
        "a job must span a piece boundary"
    );
    let mut runs: Vec<(Range<usize>, u64)> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, s) in file.segments.iter().enumerate() {
        bytes += s.data.len() as u64;
        if bytes >= job_bytes {
            runs.push((start..i + 1, bytes));
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < file.segments.len() || runs.is_empty() {
        // The rest; for a file without tensors, a job that writes the header.
        runs.push((start..file.segments.len(), bytes));
    }
    // Job j writes from the piece boundary at or below its first byte (the first job
    // from 0) to where job j + 1 starts writing (the last to the end of the file).
    let starts: Vec<u64> = runs
        .iter()
        .enumerate()
        .map(|(j, (r, _))| match j {
            0 => 0,
            _ => file.segments[r.start].begin / piece * piece,
        })
        .collect();
    runs.into_iter()
        .enumerate()
        .map(|(j, (segments, bytes))| Job {
            file: index,
            segments,
            write: starts[j]..starts.get(j + 1).copied().unwrap_or(file.len),
            bytes,
        })
        .collect()
}

/// Runs `job`: hashes its tensors and writes its pieces with `write(slices, offset)`,
/// one call per piece. Returns each of its tensors' (caller's index, checksum).
pub(crate) fn run_job<W>(
    file: &FileBytes,
    job: &Job,
    piece: u64,
    mut write: W,
) -> std::io::Result<Vec<(usize, u64)>>
where
    W: FnMut(&mut [IoSlice<'_>], u64) -> std::io::Result<()>,
{
    let own = &file.segments[job.segments.clone()];
    let mut hashing = Hashing {
        own,
        next: 0,
        done: 0,
        hasher: Hasher::new(),
        out: Vec::with_capacity(own.len()),
    };
    let mut gathered = Vec::new();
    let mut at = job.write.start;
    while at < job.write.end {
        let end = ((at / piece + 1) * piece).min(job.write.end);
        // Hash what this piece holds of our tensors, then write it while it is in cache.
        hashing.until(end);
        let mut slices: Vec<IoSlice> = file.parts(at..end).map(IoSlice::new).collect();
        if slices.len() > IOV_MAX {
            gathered.clear();
            for s in &slices {
                gathered.extend_from_slice(s);
            }
            slices = vec![IoSlice::new(&gathered)];
        }
        write(&mut slices, at)?;
        at = end;
    }
    // Our last tensor's bytes past the last piece we write (the next job writes them).
    hashing.until(u64::MAX);
    Ok(hashing.out)
}

/// The streaming hashes of a job's tensors, fed in file order.
struct Hashing<'a, 'b> {
    own: &'b [Segment<'a>],
    /// The tensor being hashed, and how many of its bytes are done.
    next: usize,
    done: usize,
    hasher: Hasher,
    out: Vec<(usize, u64)>,
}

impl Hashing<'_, '_> {
    /// Hashes every byte of our tensors below file offset `to`.
    fn until(&mut self, to: u64) {
        while let Some(s) = self.own.get(self.next) {
            let from = s.begin + self.done as u64;
            let upto = to.min(s.end());
            if upto < from {
                break;
            }
            let upto = (upto - s.begin) as usize;
            self.hasher.update(&s.data[self.done..upto]);
            self.done = upto;
            if upto < s.data.len() {
                break;
            }
            self.out.push((s.index, self.hasher.finish()));
            (self.hasher, self.done) = (Hasher::new(), 0);
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use proptest::prelude::*;

    /// Deterministic, position-dependent bytes, so a misplaced byte shows.
    fn bytes(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
            .collect()
    }

    /// Plans and runs every job of a file (last job first, as a parallel run may),
    /// into an image; checks each write is one whole piece (the last may be cut by the
    /// end of the file), that the writes tile the file once, that the image is the
    /// header then the tensors, and that each tensor's checksum is that of its bytes.
    fn check(header_len: usize, sizes: &[usize], piece: u64, job_bytes: u64) {
        let header = bytes(usize::MAX, header_len);
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| bytes(i, n))
            .collect();
        let mut begin = header_len as u64;
        let mut segments = Vec::new();
        for (index, d) in datas.iter().enumerate() {
            segments.push(Segment {
                index,
                begin,
                data: d,
            });
            begin += d.len() as u64;
        }
        // The caller's order is not the file's.
        segments.reverse();
        let file = FileBytes::new(&header, segments);
        let len = file.len;
        let jobs = plan_jobs(7, &file, piece, job_bytes);
        let (last, full) = jobs.split_last().unwrap();
        assert!(full.iter().all(|j| j.bytes >= job_bytes && j.file == 7));
        assert!(last.bytes < job_bytes || last.segments.end == sizes.len());

        let mut image = vec![0u8; len as usize];
        let mut written = vec![false; len as usize];
        let mut hashes = vec![None; sizes.len()];
        for job in jobs.iter().rev() {
            let out = run_job(&file, job, piece, |slices, at| {
                let n: usize = slices.iter().map(|s| s.len()).sum();
                assert!(slices.len() <= IOV_MAX);
                assert_eq!(at % piece, 0, "write at {at} is not piece-aligned");
                assert_eq!(
                    n as u64,
                    piece.min(len - at),
                    "write at {at} is not one piece"
                );
                let mut pos = at as usize;
                for s in slices.iter() {
                    image[pos..pos + s.len()].copy_from_slice(s);
                    for w in &mut written[pos..pos + s.len()] {
                        assert!(!*w, "byte {pos} written twice");
                        *w = true;
                    }
                    pos += s.len();
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(out.len(), job.segments.len());
            for (index, h) in out {
                assert!(
                    hashes[index].replace(h).is_none(),
                    "tensor {index} hashed twice"
                );
            }
        }
        assert!(written.iter().all(|&w| w), "a byte was never written");
        let mut expected = header.clone();
        for d in &datas {
            expected.extend_from_slice(d);
        }
        assert!(
            image == expected,
            "the file is not the header then the tensors"
        );
        for (i, d) in datas.iter().enumerate() {
            assert_eq!(hashes[i], Some(checksum::hash(d)), "checksum of tensor {i}");
        }
    }

    #[test]
    fn tensors_smaller_than_a_piece_share_pieces() {
        check(48, &[100, 300, 7, 4000, 1, 999, 2048, 5000], 1024, 2048);
    }

    #[test]
    fn tensors_span_several_pieces() {
        check(48, &[10_000, 3, 5000, 4096, 8192], 1024, 2048);
        // A piece boundary exactly at a tensor boundary, and at the data start.
        check(1024, &[1024, 2048, 1024], 1024, 1024);
    }

    #[test]
    fn empty_tensors_are_hashed_anywhere() {
        check(16, &[0, 1008, 0, 0, 1024, 0, 5, 0], 1024, 1024);
        check(16, &[0, 0], 1024, 1024);
        check(16, &[], 1024, 1024);
    }

    #[test]
    fn data_start_unaligned_or_past_a_piece() {
        check(8 + 37 * 8, &[3000, 64, 9000], 4096, 8192);
        check(5000, &[100, 10_000, 1], 1024, 2048);
    }

    #[test]
    fn many_tiny_tensors_in_one_piece_are_still_one_write() {
        let sizes = vec![4; 3 * IOV_MAX];
        check(64, &sizes, 16 << 10, 16 << 10);
    }

    #[test]
    fn production_sizes() {
        let mib = 1 << 20;
        let sizes = [3 * mib + 5, 1000, 0, 9 * mib, mib, 64 << 10, 2 * mib, 17];
        check(8 + 200, &sizes, PIECE, JOB_BYTES);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn any_layout(
            header in 8usize..300,
            sizes in prop::collection::vec(prop_oneof![Just(0usize), 0usize..40, 0usize..300], 0..40),
            piece in prop::sample::select(vec![8u64, 64, 128]),
            pieces_per_job in 1u64..4,
        ) {
            check(header, &sizes, piece, piece * pieces_per_job);
        }
    }
}
