//! sha256 of files and bytes as lowercase hex: the one hashing vocabulary of downloads, trust checks and stamps.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::Digest as _;

/// Lowercase hex sha256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {} to hash it", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {} to hash it", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Exactly 64 lowercase hex digits: the form every sha256 in a lock, manifest or index must have
/// (it names cache files, so it is never a path).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Lowercase hex sha256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Lowercase hex of a digest (or any bytes).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_known_values() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = crate::testutil::scratch("hash");
        let file = dir.join("f");
        // Bigger than the 1 MiB read buffer and not a multiple of it, so every block boundary counts.
        let big = vec![7u8; 3 * 1024 * 1024 + 5];
        std::fs::write(&file, &big).unwrap();
        assert_eq!(sha256_file(&file).unwrap(), sha256_bytes(&big));
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = crate::testutil::scratch("hash-missing");
        let err = format!("{:#}", sha256_file(&dir.join("nope")).unwrap_err());
        assert!(err.contains("nope to hash it"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
