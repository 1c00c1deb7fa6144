//! Criterion micro-benchmarks of the core's hot paths, with no Python involved, so a
//! regression in the engine shows on its own: hashing, planning and validating a
//! safetensors header, writing a checkpoint, opening one, and verifying one.
//!
//! Run: `cargo bench --bench core` (or `cargo bench --bench core -- header` for one
//! group). Sizes are small enough for a 2-core machine; IO figures are page-cache
//! figures (`durable: false`), the device is measured by `ckptio bench`.

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use ckptio::{format, open, save, Dtype, GroupSource, Kind, SaveOptions, TensorSource};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::value::RawValue;

/// Bytes of the "large" checkpoint: a few LLM-like tensors.
const LARGE_BYTES: usize = 64 << 20;
const LARGE_TENSORS: usize = 16;
/// The "many small tensors" checkpoint: LoRA-like, where per-tensor costs dominate.
const SMALL_TENSORS: usize = 2000;
const SMALL_TENSOR_BYTES: usize = 16 << 10;

/// Owned tensors that `TensorSource`s borrow from.
struct Tensors {
    names: Vec<String>,
    shapes: Vec<Vec<u64>>,
    data: Vec<Vec<u8>>,
}

impl Tensors {
    fn new(count: usize, bytes_each: usize) -> Tensors {
        let floats = (bytes_each / 4) as u64;
        Tensors {
            names: (0..count).map(|i| format!("layers.{i}.weight")).collect(),
            shapes: (0..count).map(|_| vec![floats]).collect(),
            data: (0..count)
                .map(|i| (0..bytes_each).map(|b| (b * 131 + i * 7) as u8).collect())
                .collect(),
        }
    }

    fn total_bytes(&self) -> u64 {
        self.data.iter().map(|d| d.len() as u64).sum()
    }

    fn group(&self) -> GroupSource<'_> {
        let tensors = (0..self.names.len())
            .map(|i| TensorSource {
                name: &self.names[i],
                dtype: Dtype::F32,
                shape: &self.shapes[i],
                data: &self.data[i],
            })
            .collect();
        GroupSource {
            name: "model",
            tensors,
            header_metadata: vec![],
        }
    }

    fn layout_input(&self) -> Vec<(&str, Dtype, &[u64])> {
        (0..self.names.len())
            .map(|i| {
                (
                    self.names[i].as_str(),
                    Dtype::F32,
                    self.shapes[i].as_slice(),
                )
            })
            .collect()
    }

    fn save_to(&self, target: &Path) {
        let user = RawValue::from_string(r#"{"metadata":null}"#.into()).expect("valid JSON");
        let opts = SaveOptions {
            durable: false,
            ..Default::default()
        };
        save(target, Kind::Sampler, &[self.group()], user, &opts).expect("save");
    }
}

/// A fresh, not yet existing path per iteration; the previous one is removed untimed.
fn fresh_target(dir: &Path, counter: &mut u64) -> PathBuf {
    let previous = dir.join(format!("ck-{counter}"));
    if previous.exists() {
        fs::remove_dir_all(&previous).expect("remove");
    }
    *counter += 1;
    dir.join(format!("ck-{counter}"))
}

fn checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for (label, len) in [("xxh3 16 KiB", 16usize << 10), ("xxh3 64 MiB", 64 << 20)] {
        let bytes: Vec<u8> = (0..len).map(|b| (b * 31) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(label, |b| {
            b.iter(|| ckptio::checksum::hash(black_box(&bytes)))
        });
    }
    group.finish();
}

fn header(c: &mut Criterion) {
    let tensors = Tensors::new(SMALL_TENSORS, 4);
    let input = tensors.layout_input();
    let mut group = c.benchmark_group("header");
    group.throughput(Throughput::Elements(SMALL_TENSORS as u64));
    group.bench_function("plan 2000 tensors", |b| {
        b.iter(|| format::plan(black_box(&input), &[]).expect("plan"))
    });
    let layout = format::plan(&input, &[]).expect("plan");
    let mut file = layout.header.clone();
    file.resize(layout.file_len as usize, 0);
    let path = Path::new("bench.safetensors");
    group.bench_function("parse + validate 2000 tensors", |b| {
        b.iter(|| format::parse(path, black_box(&file)).expect("valid header"))
    });
    group.finish();
}

fn write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut counter = 0;
    let mut group = c.benchmark_group("save (page cache)");
    group.sample_size(10);
    for (label, tensors) in [
        (
            "64 MiB in 16 tensors",
            Tensors::new(LARGE_TENSORS, LARGE_BYTES / LARGE_TENSORS),
        ),
        (
            "2000 tensors of 16 KiB",
            Tensors::new(SMALL_TENSORS, SMALL_TENSOR_BYTES),
        ),
    ] {
        group.throughput(Throughput::Bytes(tensors.total_bytes()));
        group.bench_function(label, |b| {
            b.iter_batched(
                || fresh_target(dir.path(), &mut counter),
                |target| tensors.save_to(&target),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    Tensors::new(SMALL_TENSORS, SMALL_TENSOR_BYTES).save_to(&small);
    let large_tensors = Tensors::new(LARGE_TENSORS, LARGE_BYTES / LARGE_TENSORS);
    let large = dir.path().join("large");
    large_tensors.save_to(&large);

    let mut group = c.benchmark_group("read");
    group.bench_function("open + validate 2000 tensors", |b| {
        b.iter(|| open(black_box(&small)).expect("open"))
    });
    let ckpt = open(&large).expect("open");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(large_tensors.total_bytes()));
    group.bench_function("verify 64 MiB (hot)", |b| {
        b.iter(|| ckpt.verify(0).expect("intact"))
    });
    group.finish();
}

criterion_group!(benches, checksum, header, write, read);
criterion_main!(benches);
