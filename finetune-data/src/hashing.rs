//! Hashing examples: a seeded 64-bit hash of an example's fields, the
//! (hash, row) index that duplicate and overlap detection read, and a
//! hasher for hash sets keyed by those hashes (which are hashed already);
//! and [`sha256_file`], the content hash datasets and model files are known
//! by (upload reuse, provenance, the model cache).

use std::io::Read as _;
use std::path::Path;

use sha2::Digest as _;

/// The SHA-256 of a file (lowercase hex) and its size, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), total))
}

/// The examples of a dataset by content hash (with the record each first
/// appeared at), to find validation rows that are also training rows:
/// sorted, 16 bytes an example.
#[derive(Debug, Clone, Default)]
pub struct ExampleIndex(pub(crate) Vec<(u64, u64)>);

impl ExampleIndex {
    /// The record an example with this hash first appeared at.
    pub(crate) fn get(&self, hash: u64) -> Option<u64> {
        self.0.binary_search_by_key(&hash, |(h, _)| *h).ok().map(|i| self.0[i].1)
    }

    /// How many distinct examples it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The keys of the example index are XXH3 hashes already: hashing them again
/// (SipHash, the map's default) was a quarter of validation time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PrehashedKeys;

impl std::hash::BuildHasher for PrehashedKeys {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

/// Passes a `u64` key through as its own hash.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A 64-bit content hash of an example, the same in every run and on every
/// machine (XXH3: hashing is a large share of validation time, and SipHash
/// was a third of it).
pub(crate) fn example_hash(seed: u64, prompt: &str, completion: &str, system: Option<&str>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    for part in [Some(prompt), Some(completion), system] {
        match part {
            // Lengths keep ("ab", "c") and ("a", "bc") apart.
            Some(text) => {
                h.update(&(text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            None => h.update(&u64::MAX.to_le_bytes()),
        }
    }
    h.digest()
}
