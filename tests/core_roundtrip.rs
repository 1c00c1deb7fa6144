//! Rust-side round trips through the public core API, with no Python involved.

use std::fs;

use ckptio::{open, save, Dtype, Error, GroupSource, Kind, SaveOptions, TensorSource};
use proptest::prelude::*;
use serde_json::value::RawValue;

fn user() -> Box<RawValue> {
    RawValue::from_string(r#"{"metadata":null}"#.into()).unwrap()
}

fn bytes_of(ckpt: &ckptio::Checkpoint, i: usize) -> Vec<u8> {
    let t = &ckpt.tensors[i];
    let f = &ckpt.files[t.file];
    // SAFETY: the range was validated against the mapped file's length.
    unsafe {
        std::slice::from_raw_parts(
            f.as_mut_ptr().add(t.begin as usize),
            (t.end - t.begin) as usize,
        )
        .to_vec()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_tensors_round_trip(
        tensors in prop::collection::vec((0usize..15, prop::collection::vec(0u64..5, 0..3)), 0..12),
        shard in prop::option::of(1u64..200),
        threads in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..tensors.len()).map(|i| format!("t{i}")).collect();
        let datas: Vec<Vec<u8>> = tensors
            .iter()
            .enumerate()
            .map(|(i, (d, shape))| {
                let n = ckptio::dtype::byte_len(Dtype::ALL[*d], shape).unwrap() as usize;
                (0..n).map(|b| (b * 31 + i) as u8).collect()
            })
            .collect();
        let sources: Vec<TensorSource> = tensors
            .iter()
            .zip(&names)
            .zip(&datas)
            .map(|(((d, shape), name), data)| TensorSource { name, dtype: Dtype::ALL[*d], shape, data })
            .collect();
        let group = GroupSource { name: "model", tensors: sources, header_metadata: vec![] };
        let target = dir.path().join("ck");
        let opts = SaveOptions { durable: false, threads, max_shard_bytes: shard, ..Default::default() };
        save(&target, Kind::Sampler, &[group], user(), &opts).unwrap();
        let ckpt = open(&target).unwrap();
        prop_assert_eq!(ckpt.tensors.len(), datas.len());
        for (i, data) in datas.iter().enumerate() {
            prop_assert_eq!(&ckpt.tensors[i].name, &names[i]);
            prop_assert_eq!(&bytes_of(&ckpt, i), data);
        }
        ckpt.verify(threads).unwrap();
    }
}

#[test]
fn verify_names_the_corrupted_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ck");
    let a = vec![1u8; 64];
    let b = vec![2u8; 64];
    let group = GroupSource {
        name: "model",
        tensors: vec![
            TensorSource {
                name: "a",
                dtype: Dtype::U8,
                shape: &[64],
                data: &a,
            },
            TensorSource {
                name: "b",
                dtype: Dtype::U8,
                shape: &[64],
                data: &b,
            },
        ],
        header_metadata: vec![],
    };
    save(
        &target,
        Kind::Sampler,
        &[group],
        user(),
        &SaveOptions::default(),
    )
    .unwrap();
    let file = target.join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x80; // last byte of "b"
    fs::write(&file, bytes).unwrap();
    match open(&target).unwrap().verify(1) {
        Err(Error::Corrupt {
            tensor: Some(t), ..
        }) => assert_eq!(t, "b"),
        other => panic!("expected corruption of b, got {other:?}"),
    }
}

#[test]
fn invalid_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 3];
    let group = GroupSource {
        name: "model",
        tensors: vec![TensorSource {
            name: "x",
            dtype: Dtype::F32,
            shape: &[1],
            data: &data,
        }],
        header_metadata: vec![],
    };
    let e = save(
        &dir.path().join("ck"),
        Kind::Sampler,
        &[group],
        user(),
        &SaveOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs 4 bytes, got 3"), "{e}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
