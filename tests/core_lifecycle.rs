//! The core's lifecycle functions (src/lifecycle.rs): describe, list, edit the user
//! section, delete, clean up and verify with progress, through the public API.

use std::fs;
use std::path::Path;

use ckptio::lifecycle::{cleanup, delete, describe, list, update_user, verify};
use ckptio::manifest::MANIFEST_NAME;
use ckptio::{open, save as core_save, Dtype, Error, GroupSource, Kind, SaveOptions, TensorSource};
use serde_json::value::RawValue;

/// The hidden name of a manifest edit in progress (see lifecycle.rs).
const EDIT: &str = ".ckptio.json.ckptio-edit-";

const USER: &str = r#"{"metadata":{"big":123456789012345678901234567890,"x":1.50},"step":7}"#;

fn save(path: &Path, user: &str) {
    let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let groups = [GroupSource {
        name: "model",
        tensors: vec![TensorSource {
            name: "w",
            dtype: Dtype::F32,
            shape: &[2],
            data: &data,
        }],
        header_metadata: vec![],
    }];
    let user = RawValue::from_string(user.to_owned()).unwrap();
    core_save(path, Kind::Sampler, &groups, user, &SaveOptions::default()).unwrap();
}

fn dead_pid_name(prefix: &str) -> String {
    // pid 2147483646 is not alive.
    format!("{prefix}2147483646-0123456789abcdef")
}

#[test]
fn describe_reads_the_manifest_only() {
    let root = tempfile::tempdir().unwrap();
    let ck = root.path().join("ck");
    save(&ck, USER);
    let s = describe(&ck).unwrap();
    assert_eq!((s.kind, s.user_json.as_str()), (Kind::Sampler, USER));
    let on_disk: u64 = fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(s.size_bytes, on_disk);
    assert!(s.modified > 1.0e9);
    // A missing tensor file goes unnoticed: listing never opens tensor files.
    fs::remove_file(ck.join("model.safetensors")).unwrap();
    assert!(describe(&ck).is_ok());
    assert!(open(&ck).is_err());
}

#[test]
fn list_keeps_complete_checkpoints_and_reports_damaged_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    for name in ["b", "a", ".hidden", "damaged"] {
        save(&dir.join(name), "{}");
    }
    fs::create_dir(dir.join("not-a-checkpoint")).unwrap();
    fs::write(dir.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.join("a"), dir.join("link")).unwrap();
    let manifest = dir.join("damaged").join(MANIFEST_NAME);
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replacen("sampler", "sampleR", 1);
    fs::write(&manifest, text).unwrap();
    let listed = list(dir).unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "damaged"]);
    assert!(listed[0].1.is_ok() && listed[1].1.is_ok());
    assert!(
        matches!(listed[2].1, Err(Error::Corrupt { .. })),
        "{:?}",
        listed[2].1
    );
    assert!(matches!(
        list(&dir.join("none")),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn update_user_keeps_every_other_byte() {
    let root = tempfile::tempdir().unwrap();
    let ck = root.path().join("ck");
    save(&ck, USER);
    let before = open(&ck).unwrap().manifest;
    let stale = ck.join(dead_pid_name(EDIT));
    fs::write(&stale, b"half a manifest").unwrap();

    let s = update_user(&ck, "run", r#"{"ttl": 1.0}"#, None, true).unwrap();
    let want = r#"{"metadata":{"big":123456789012345678901234567890,"x":1.50},"step":7,"run":{"ttl": 1.0}}"#;
    assert_eq!(s.user_json, want);
    let s = update_user(&ck, "run", "null", Some(&before.checkpoint_id), false).unwrap();
    assert_eq!(
        s.user_json,
        want.replace(r#"{"ttl": 1.0}"#, "null"),
        "replaced in place"
    );
    let after = open(&ck).unwrap();
    after.verify(1).unwrap();
    assert_eq!(after.manifest.checkpoint_id, before.checkpoint_id);
    assert_eq!(after.manifest.tensors, before.tensors);
    assert!(!stale.exists(), "the stale edit was not removed");
    assert_eq!(
        fs::read_dir(&ck).unwrap().count(),
        2,
        "only the manifest and the tensors"
    );

    let e = update_user(&ck, "run", "{not json", None, true).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(
        update_user(&ck, "run", &deep, None, true),
        Err(Error::Format { .. })
    ));
}

#[test]
fn delete_is_a_rename_then_a_removal() {
    let root = tempfile::tempdir().unwrap();
    let ck = root.path().join("ck");
    save(&ck, "{}");
    let held = open(&ck).unwrap();
    delete(&ck, true).unwrap();
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    // The mapping outlives the files.
    // SAFETY: the mapping is alive for the duration of the read.
    let first = unsafe {
        *held.files[0]
            .as_mut_ptr()
            .add(held.tensors[0].begin as usize)
    };
    assert_eq!(first, 1);
    assert!(matches!(delete(&ck, true), Err(Error::NotFound { .. })));

    fs::create_dir(root.path().join("plain")).unwrap();
    fs::write(root.path().join("plain/notes"), b"x").unwrap();
    assert!(matches!(
        delete(&root.path().join("plain"), true),
        Err(Error::InvalidArgument(_))
    ));
    save(&root.path().join("target"), "{}");
    std::os::unix::fs::symlink(root.path().join("target"), root.path().join("link")).unwrap();
    assert!(matches!(
        delete(&root.path().join("link"), true),
        Err(Error::InvalidArgument(_))
    ));
    assert!(root.path().join("plain/notes").exists() && root.path().join("target").exists());
}

#[test]
fn cleanup_removes_dead_edits_and_deletes() {
    let root = tempfile::tempdir().unwrap();
    save(&root.path().join("ck"), "{}");
    let edit = root.path().join("ck").join(dead_pid_name(EDIT));
    fs::write(&edit, b"x").unwrap();
    let deleting = root.path().join(dead_pid_name(".old.ckptio-tmp-"));
    fs::create_dir(&deleting).unwrap();
    fs::write(deleting.join("model.safetensors"), b"x").unwrap();
    let mut done = cleanup(root.path()).unwrap().done;
    done.sort();
    assert_eq!(done, [deleting, edit]);
    open(&root.path().join("ck")).unwrap().verify(1).unwrap();
}

#[test]
fn verify_reports_progress_and_damage() {
    let root = tempfile::tempdir().unwrap();
    let ck = root.path().join("ck");
    save(&ck, "{}");
    let seen = std::sync::Mutex::new(Vec::new());
    verify(&ck, 1, &|done, total| {
        seen.lock().unwrap().push((done, total))
    })
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), [(0, 8), (8, 8)]);
    let file = ck.join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&file, bytes).unwrap();
    let e = verify(&ck, 1, &|_, _| {}).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { tensor: Some(t), .. } if t == "w"),
        "{e}"
    );
    // A file the manifest does not list is reported, not refused.
    let ck2 = root.path().join("ck2");
    save(&ck2, "{}");
    fs::write(ck2.join("extra"), b"x").unwrap();
    assert_eq!(verify(&ck2, 1, &|_, _| {}).unwrap(), ["extra"]);
}
