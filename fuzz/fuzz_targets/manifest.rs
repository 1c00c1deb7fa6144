//! Manifest decoding. The first byte picks the mode: odd bytes decode the input as a
//! whole `ckptio.json` (mostly stopped by the self-checksum), even bytes take the input
//! as the `manifest` value and sign it first, so the fuzzer reaches the structural
//! checks behind the checksum. Never panics; whatever it accepts names only safe files.
#![no_main]

use std::path::Path;

use ckptio::checksum;
use ckptio::manifest::{self, FileRole};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let decoded = if mode % 2 == 1 {
        manifest::decode(Path::new("ckptio.json"), rest)
    } else {
        let mut file = b"{\"manifest\":".to_vec();
        file.extend_from_slice(rest);
        file.extend_from_slice(b",\"manifest_xxh3\":\"");
        file.extend_from_slice(checksum::to_hex(checksum::hash(rest)).as_bytes());
        file.extend_from_slice(b"\"}");
        manifest::decode(Path::new("ckptio.json"), &file)
    };
    let Ok(m) = decoded else {
        return;
    };
    for f in &m.files {
        assert!(manifest::is_safe_file_name(&f.name), "{:?}", f.name);
        assert_ne!(f.name, manifest::MANIFEST_NAME);
    }
    for t in &m.tensors {
        assert!(m
            .files
            .iter()
            .any(|f| f.name == t.file && f.role == FileRole::Tensors));
    }
});
