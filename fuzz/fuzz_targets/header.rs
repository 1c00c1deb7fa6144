//! Safetensors header parsing on arbitrary bytes: never panics, and whatever it
//! accepts tiles the data section exactly with tensors of the size their shape needs.
#![no_main]

use std::path::Path;

use ckptio::dtype::byte_len;
use ckptio::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = format::parse(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    assert!(parsed.header_len >= 8 && parsed.header_len <= data.len() as u64);
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for t in &parsed.tensors {
        assert!(t.begin >= parsed.header_len && t.begin <= t.end);
        assert!(t.end <= data.len() as u64);
        assert_eq!(Some(t.end - t.begin), byte_len(t.dtype, &t.shape));
        spans.push((t.begin, t.end));
    }
    spans.sort_unstable();
    let mut cursor = parsed.header_len;
    for (b, e) in spans {
        assert_eq!(b, cursor, "hole or overlap accepted");
        cursor = e;
    }
    assert_eq!(cursor, data.len() as u64, "trailing bytes accepted");
});
