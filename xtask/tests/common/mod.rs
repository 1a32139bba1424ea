//! Helpers shared by the integration tests: a fresh, empty scratch directory per call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A new empty directory under the system temp dir, unique per process and per call, so tests
/// running in parallel (even with the same `tag`) never share one. The caller removes it.
pub fn scratch(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("kernel-lab-it-{tag}-{}-{n}", std::process::id()));
    // A directory left by an earlier process with the same pid would otherwise leak into this test.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create scratch dir {}: {e}", dir.display()));
    dir
}
