//! Side files through the public core API: saved whole, checksummed, committed with the
//! tensors; files the manifest does not name are reported by `verify`, not refused.

use std::fs;

use ckptio::TensorSource;
use ckptio::{open, save_with_files, Dtype, Error, GroupSource, Kind, SaveOptions, SideFile};
use serde_json::value::RawValue;

fn save_with(target: &std::path::Path, side: &[SideFile]) -> ckptio::Result<()> {
    let data = [1u8; 16];
    let group = GroupSource {
        name: "model",
        tensors: vec![TensorSource {
            name: "w",
            dtype: Dtype::F32,
            shape: &[4],
            data: &data,
        }],
        header_metadata: vec![],
    };
    let user = RawValue::from_string("{}".into()).unwrap();
    let opts = SaveOptions {
        durable: false,
        ..Default::default()
    };
    save_with_files(
        &ckptio::Location::Local(target.to_path_buf()),
        Kind::Sampler,
        &[group],
        side,
        user,
        &opts,
    )
}

#[test]
fn side_files_are_verified_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ck");
    let config = br#"{"model_type": "gpt2"}"#;
    let side = [SideFile {
        name: "config.json",
        data: config,
    }];
    save_with(&target, &side).unwrap();
    let ckpt = open(&target).unwrap();
    assert_eq!(ckpt.read_side_file("config.json").unwrap(), config);
    assert_eq!(ckpt.verify(1).unwrap(), Vec::<String>::new());

    // Dropped in later: reported, not corruption.
    fs::write(target.join("README.md"), "notes").unwrap();
    assert_eq!(open(&target).unwrap().verify(1).unwrap(), ["README.md"]);

    // Named by the manifest and damaged (same size): corruption.
    fs::write(target.join("config.json"), br#"{"model_type": "gpt3"}"#).unwrap();
    let e = open(&target).unwrap().verify(1).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
    let e = open(&target)
        .unwrap()
        .read_side_file("config.json")
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");

    // Named by the manifest and missing: corruption.
    fs::remove_file(target.join("config.json")).unwrap();
    let e = open(&target).unwrap().verify(1).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn side_file_names_are_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ck");
    for bad in [
        "../config.json",
        "/etc/passwd",
        "a/b.json",
        ".hidden",
        "",
        "ckptio.json",
        "model.safetensors",
        "extra.safetensors",
        "model.safetensors.index.json",
        "sp ace.json",
    ] {
        let side = [SideFile {
            name: bad,
            data: b"{}",
        }];
        let e = save_with(&target, &side).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        assert!(!target.exists(), "{bad:?}");
    }
    let twice = [
        SideFile {
            name: "a.json",
            data: b"1",
        },
        SideFile {
            name: "a.json",
            data: b"2",
        },
    ];
    let e = save_with(&target, &twice).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "left files behind"
    );
}
