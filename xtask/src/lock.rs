//! The lock file (`recipes/<name>.lock`): the resolved versions, paths and hashes a build uses.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{layout, releases::Request};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// What was asked for (recipe channel or command-line flag); a lock answers one request.
    pub request: Request,
    pub kernel: LockedKernel,
    pub busybox: LockedBusybox,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedKernel {
    pub version: String,
    /// Tarball file name, e.g. `linux-6.12.117.tar.xz`.
    pub file: String,
    /// Tarball path relative to the mirror root.
    pub path: String,
    /// Signed checksum file relative to the mirror root; `None` for unsigned -rc snapshots.
    pub sums_path: Option<String>,
    pub sha256: String,
    /// Release time (unix seconds) from releases.json: the build's SOURCE_DATE_EPOCH.
    pub released: i64,
    /// False when the hash was accepted with --insecure-skip-signature; `--locked` then needs
    /// that flag again.
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBusybox {
    pub version: String,
    pub file: String,
    /// Tarball path relative to the mirror root (`busybox/busybox-X.tar.bz2`).
    pub path: String,
    pub sha256: String,
}

pub fn read(path: &Path) -> Result<Option<Lock>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read lock {}", path.display())),
    };
    let lock = serde_json::from_str(&text).with_context(|| {
        format!("parse lock {}: delete it and run again without --locked to regenerate it", path.display())
    })?;
    Ok(Some(lock))
}

pub fn write(path: &Path, lock: &Lock) -> Result<()> {
    let mut text = serde_json::to_string_pretty(lock)?;
    text.push('\n');
    layout::write_atomic(path, text.as_bytes()).with_context(|| format!("write lock {}", path.display()))
}

/// Human-readable differences `old -> new`, empty when equal.
pub fn diff(old: &Lock, new: &Lock) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: {a} -> {b}"));
        }
    };
    cmp("request", old.request.to_string(), new.request.to_string());
    cmp("kernel", old.kernel.version.clone(), new.kernel.version.clone());
    cmp("kernel sha256", old.kernel.sha256.clone(), new.kernel.sha256.clone());
    cmp("kernel path", old.kernel.path.clone(), new.kernel.path.clone());
    cmp("busybox", old.busybox.version.clone(), new.busybox.version.clone());
    cmp("busybox sha256", old.busybox.sha256.clone(), new.busybox.sha256.clone());
    out
}
