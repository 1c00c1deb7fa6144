//! Per-tensor checksums: xxh3-64, streamed while the bytes are written.

use xxhash_rust::xxh3::Xxh3Default;

/// Name recorded in the manifest.
pub const ALGORITHM: &str = "xxh3-64";

/// Streaming hasher; feed it the same chunks that are written.
#[derive(Default, Clone)]
pub struct Hasher(Xxh3Default);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// One-shot hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Manifest spelling: 16 lowercase hex digits.
pub fn to_hex(h: u64) -> String {
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut h = Hasher::new();
        for chunk in data.chunks(4093) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), hash(&data));
        assert_eq!(to_hex(1), "0000000000000001");
    }
}
