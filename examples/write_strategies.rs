//! Measures the three ways the writer could move bytes into a file, each hashing every
//! chunk as it goes, with the same threads: `pwrite`, `posix_fallocate` + `pwrite`, and
//! stores through a shared writable mapping; and `pwrite` without hashing, to show what
//! the checksums cost. Alternates the order across rounds and
//! prints medians. `cargo run --release --example write_strategies -- [MiB] [rounds]`.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use memmap2::MmapMut;
use rayon::prelude::*;

const CHUNK: usize = 1 << 20;
const TENSORS: usize = 16;

fn hash_and_pwrite(file: &File, tensors: &[Vec<u8>], hash: bool) {
    tensors.par_iter().enumerate().for_each(|(i, t)| {
        let mut h = ckptio::checksum::Hasher::new();
        let base = (i * t.len()) as u64;
        for (k, chunk) in t.chunks(CHUNK).enumerate() {
            if hash {
                h.update(chunk);
            }
            file.write_all_at(chunk, base + (k * CHUNK) as u64).unwrap();
        }
        std::hint::black_box(h.finish());
    });
}

fn run(strategy: &str, path: &Path, tensors: &[Vec<u8>]) -> f64 {
    let total: u64 = tensors.iter().map(|t| t.len() as u64).sum();
    let start = Instant::now();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    match strategy {
        "pwrite" => hash_and_pwrite(&file, tensors, true),
        "pwrite, no hash" => hash_and_pwrite(&file, tensors, false),
        "fallocate+pwrite" => {
            // SAFETY: plain syscall on an open descriptor.
            assert_eq!(
                unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, total as libc::off_t) },
                0
            );
            hash_and_pwrite(&file, tensors, true);
        }
        "mmap" => {
            file.set_len(total).unwrap();
            // SAFETY: the file is ours, sized above, and not shared.
            let mut map = unsafe { MmapMut::map_mut(&file).unwrap() };
            let len = tensors[0].len();
            map.par_chunks_mut(len)
                .zip(tensors.par_iter())
                .for_each(|(dst, t)| {
                    let mut h = ckptio::checksum::Hasher::new();
                    for (d, s) in dst.chunks_mut(CHUNK).zip(t.chunks(CHUNK)) {
                        h.update(s);
                        d.copy_from_slice(s);
                    }
                    std::hint::black_box(h.finish());
                });
            drop(map);
        }
        _ => unreachable!(),
    }
    let secs = start.elapsed().as_secs_f64();
    fs::remove_file(path).unwrap();
    total as f64 / secs / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map_or(1024, |s| s.parse().unwrap());
    let rounds: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let per = (mib << 20) / TENSORS;
    let tensors: Vec<Vec<u8>> = (0..TENSORS).map(|i| vec![i as u8 + 1; per]).collect();
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut strategies = vec!["pwrite", "fallocate+pwrite", "mmap", "pwrite, no hash"];
    let mut results: Vec<(&str, Vec<f64>)> = strategies.iter().map(|s| (*s, Vec::new())).collect();
    for round in 0..rounds {
        for s in &strategies {
            let gbs = run(s, &dir.path().join("f"), &tensors);
            results
                .iter_mut()
                .find(|(n, _)| n == s)
                .unwrap()
                .1
                .push(gbs);
        }
        strategies.reverse();
        let _ = round;
    }
    println!(
        "{mib} MiB in {TENSORS} tensors, {} threads, page cache, median of {rounds}:",
        rayon::current_num_threads()
    );
    for (name, mut v) in results {
        v.sort_by(f64::total_cmp);
        println!("  {name:<18} {:>6.2} GB/s", v[v.len() / 2]);
    }
}
