//! Test helpers shared by the unit tests: a fresh, empty scratch directory per call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A new empty directory under the system temp dir, unique per process and per call, so tests
/// running in parallel (even with the same `tag`) never share one. The caller removes it.
pub fn scratch(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("kernel-lab-{tag}-{}-{n}", std::process::id()));
    // A directory left by an earlier process with the same pid would otherwise leak into this test.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create scratch dir {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_dirs_are_fresh_empty_and_distinct() {
        let a = super::scratch("same");
        let b = super::scratch("same");
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 0);
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }
}
