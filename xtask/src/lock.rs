//! The lock file (`recipes/<name>.lock`): the resolved versions, paths and hashes a build uses.
//!
//! A lock arrives in pull requests like any other file, so it is an input, not a trust root:
//! `read` checks every field against the form the code itself would write, and `fetch` checks
//! its hashes against signed sums again on every `--locked` run.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{layout, releases, releases::Request};

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
    /// False when busybox was accepted with --insecure-skip-signature; `--locked` then needs
    /// that flag again.
    pub verified: bool,
    /// How the tarball was verified; `--locked` checks it the same way again.
    pub check: BusyboxCheck,
    /// Primary-key fingerprint of the key that signed (the `.sig` or the sums); `None` when unverified.
    pub signer: Option<String>,
}

/// The ways a busybox tarball can be trusted, in the order `fetch` tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusyboxCheck {
    /// Detached `.sig` checked with the user's `--busybox-keyring`.
    KeyringSig,
    /// Hash listed in the mirror's clearsigned `busybox/sha256sums.asc`, signed by the key that
    /// signs the kernel sums (`--keyring`, or the pinned WKD signer).
    MirrorSums,
    /// Detached `.sig` checked with busybox's upstream key, pinned in the binary.
    UpstreamSig,
    /// Not verified (`--insecure-skip-signature`).
    None,
}

impl std::fmt::Display for BusyboxCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BusyboxCheck::KeyringSig => "detached .sig with --busybox-keyring",
            BusyboxCheck::MirrorSums => "mirror-signed busybox/sha256sums.asc",
            BusyboxCheck::UpstreamSig => "detached .sig with busybox's pinned upstream key",
            BusyboxCheck::None => "not verified",
        })
    }
}

/// A lock in the format before busybox verification was recorded: `--locked` refuses it, a
/// fresh resolve reads its kernel version (for the downgrade check) and rewrites it.
#[derive(Debug)]
pub struct Legacy {
    pub path: std::path::PathBuf,
    pub kernel_version: String,
}

impl std::fmt::Display for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lock {} has no busybox.verified/check/signer (it predates busybox signature checks): \
             run `cargo xtask fetch` without --locked to re-resolve it",
            self.path.display()
        )
    }
}

impl std::error::Error for Legacy {}

/// The lock's fields before busybox verification was recorded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyLock {
    #[allow(dead_code)]
    request: Request,
    kernel: LockedKernel,
    #[allow(dead_code)]
    busybox: LegacyBusybox,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LegacyBusybox {
    version: String,
    file: String,
    path: String,
    sha256: String,
}

/// Reads and checks the lock at `path`; `Ok(None)` when there is none. An old-format lock is a
/// [`Legacy`] error.
pub fn read(path: &Path) -> Result<Option<Lock>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read lock {}", path.display())),
    };
    let lock: Lock = match serde_json::from_str(&text) {
        Ok(lock) => lock,
        Err(e) => {
            if let Ok(old) = serde_json::from_str::<LegacyLock>(&text) {
                check_kernel(path, &old.kernel)?;
                return Err(Legacy { path: path.to_path_buf(), kernel_version: old.kernel.version }.into());
            }
            return Err(e)
                .with_context(|| format!("parse lock {}: delete it and run again without --locked to regenerate it", path.display()));
        }
    };
    check(path, &lock)?;
    Ok(Some(lock))
}

/// Checks every field of a lock read from `path`: versions, hashes, and paths exactly as
/// `fetch` would write them for those versions.
pub fn check(path: &Path, lock: &Lock) -> Result<()> {
    let bad = |field: &str, value: &str, why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "lock {}: {field} {value:?} {why}; fix: delete the lock and run `cargo xtask fetch` without --locked to re-resolve it",
            path.display()
        )
    };
    match &lock.request {
        Request::Exact(v) => releases::check_version(v).map_err(|e| bad("request.value", v, format!("is invalid ({e})")))?,
        Request::Longterm(Some(s)) => releases::check_version(s).map_err(|e| bad("request.value", s, format!("is invalid ({e})")))?,
        _ => {}
    }
    check_kernel(path, &lock.kernel)?;
    let b = &lock.busybox;
    releases::check_busybox_version(&b.version).map_err(|e| bad("busybox.version", &b.version, format!("is invalid ({e})")))?;
    let (file, tar_path) = releases::busybox_tarball(&b.version);
    if b.file != file {
        return Err(bad("busybox.file", &b.file, format!("is not the file busybox {} names (expected {file})", b.version)));
    }
    if b.path != tar_path {
        return Err(bad("busybox.path", &b.path, format!("is not the path busybox {} names (expected {tar_path})", b.version)));
    }
    check_sha256(&b.sha256).map_err(|why| bad("busybox.sha256", &b.sha256, why))?;
    match (&b.check, b.verified, &b.signer) {
        (BusyboxCheck::None, false, None) => {}
        (BusyboxCheck::None, _, _) => {
            return Err(bad("busybox.verified", &b.verified.to_string(), "must be false with no signer when busybox.check is none".into()))
        }
        (_, true, Some(fpr))
            if fpr.len() == 40 && fpr.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase() && c.is_ascii_hexdigit()) => {}
        (_, true, signer) => {
            let signer = signer.as_deref().unwrap_or("null");
            return Err(bad("busybox.signer", signer, "is not a 40-digit uppercase hex fingerprint".into()));
        }
        (check, false, _) => return Err(bad("busybox.verified", "false", format!("contradicts busybox.check {check:?}"))),
    }
    Ok(())
}

fn check_kernel(path: &Path, k: &LockedKernel) -> Result<()> {
    let bad = |field: &str, value: &str, why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "lock {}: {field} {value:?} {why}; fix: delete the lock and run `cargo xtask fetch` without --locked to re-resolve it",
            path.display()
        )
    };
    releases::check_version(&k.version).map_err(|e| bad("kernel.version", &k.version, format!("is invalid ({e})")))?;
    let signed = k.sums_path.is_some();
    let tar_path =
        releases::kernel_tarball(&k.version, signed).map_err(|e| bad("kernel.version", &k.version, format!("is invalid ({e})")))?;
    if k.path != tar_path {
        return Err(bad("kernel.path", &k.path, format!("is not the path kernel {} names (expected {tar_path})", k.version)));
    }
    let file = tar_path.rsplit('/').next().unwrap_or_default();
    if k.file != file {
        return Err(bad("kernel.file", &k.file, format!("is not the file kernel {} names (expected {file})", k.version)));
    }
    match &k.sums_path {
        Some(sums) => {
            let expected = releases::kernel_sums(&k.version)?;
            if *sums != expected {
                return Err(bad("kernel.sums_path", sums, format!("is not the sums file of kernel {} (expected {expected})", k.version)));
            }
        }
        None if k.verified => {
            return Err(bad("kernel.verified", "true", "needs kernel.sums_path: nothing signed an unsigned snapshot".into()))
        }
        None => {}
    }
    check_sha256(&k.sha256).map_err(|why| bad("kernel.sha256", &k.sha256, why))?;
    if k.released < 0 {
        return Err(bad("kernel.released", &k.released.to_string(), "is negative (expected unix seconds, or 0)".into()));
    }
    Ok(())
}

/// A sha256 names a file in the cache: exactly 64 lowercase hex digits, never a path.
fn check_sha256(sha: &str) -> std::result::Result<(), String> {
    if crate::hash::is_sha256(sha) {
        Ok(())
    } else {
        Err("is not a sha256 (expected exactly 64 lowercase hex digits)".into())
    }
}

/// The lock as `write` stores it.
pub fn to_text(lock: &Lock) -> Result<String> {
    Ok(serde_json::to_string_pretty(lock).context("serialize the lock")? + "\n")
}

pub fn write(path: &Path, lock: &Lock) -> Result<()> {
    let text = to_text(lock)?;
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
    cmp("busybox check", old.busybox.check.to_string(), new.busybox.check.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn good() -> serde_json::Value {
        serde_json::json!({
            "request": {"channel": "longterm", "value": null},
            "kernel": {
                "version": "6.12.117", "file": "linux-6.12.117.tar.xz", "path": "pub/linux/kernel/v6.x/linux-6.12.117.tar.xz",
                "sums_path": "pub/linux/kernel/v6.x/sha256sums.asc", "sha256": SHA, "released": 1761782400, "verified": true
            },
            "busybox": {
                "version": "1.36.1", "file": "busybox-1.36.1.tar.bz2", "path": "busybox/busybox-1.36.1.tar.bz2", "sha256": SHA,
                "verified": true, "check": "upstream-sig", "signer": "C9E9416F76E610DBD09D040F47B70C55ACC9965B"
            }
        })
    }

    fn read_value(name: &str, value: &serde_json::Value) -> Result<Option<Lock>> {
        let dir = crate::testutil::scratch(name);
        let path = dir.join("lts.lock");
        std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
        let result = read(&path);
        std::fs::remove_dir_all(dir).unwrap();
        result
    }

    #[test]
    fn every_field_is_checked_when_read() {
        let lock = read_value("lock-good", &good()).unwrap().unwrap();
        assert_eq!(lock.busybox.check, BusyboxCheck::UpstreamSig);
        let cases: &[(&str, &str, serde_json::Value, &str)] = &[
            ("kernel", "version", "6.12.117/../../../victim".into(), "is not a kernel version"),
            ("kernel", "path", "pub/linux/kernel/v6.x/linux-6.6.9.tar.xz".into(), "expected pub/linux/kernel/v6.x/linux-6.12.117.tar.xz"),
            ("kernel", "file", "linux-6.6.9.tar.xz".into(), "expected linux-6.12.117.tar.xz"),
            ("kernel", "sums_path", "pub/linux/kernel/v5.x/sha256sums.asc".into(), "expected pub/linux/kernel/v6.x/sha256sums.asc"),
            ("kernel", "sha256", "/etc/passwd".into(), "64 lowercase hex"),
            ("kernel", "sha256", SHA.to_uppercase().into(), "64 lowercase hex"),
            ("kernel", "released", (-1).into(), "negative"),
            ("busybox", "version", "1.36.1/../../x".into(), "is not a busybox version"),
            ("busybox", "path", "busybox/busybox-1.35.0.tar.bz2".into(), "expected busybox/busybox-1.36.1.tar.bz2"),
            ("busybox", "file", "../busybox-1.36.1.tar.bz2".into(), "expected busybox-1.36.1.tar.bz2"),
            ("busybox", "sha256", "../../x".into(), "64 lowercase hex"),
            ("busybox", "signer", "someone".into(), "40-digit uppercase hex"),
            ("busybox", "verified", false.into(), "contradicts busybox.check"),
        ];
        for (part, field, value, why) in cases {
            let mut lock = good();
            lock[part][field] = value.clone();
            let err = format!("{:#}", read_value("lock-bad", &lock).unwrap_err());
            let shown = value.as_str().map(|s| format!("{s:?}")).unwrap_or_else(|| format!("\"{value}\""));
            assert!(err.contains(&format!("{part}.{field} {shown}")) && err.contains(why), "{part}.{field}: {err}");
            assert!(err.contains("lts.lock") && err.contains("without --locked to re-resolve"), "{err}");
        }
        // An unsigned snapshot cannot be verified, and lives where git.kernel.org serves it.
        let mut lock = good();
        lock["kernel"]["sums_path"] = serde_json::Value::Null;
        let err = format!("{:#}", read_value("lock-unsigned", &lock).unwrap_err());
        assert!(err.contains("kernel.path") && err.contains("torvalds/t/linux-6.12.117.tar.gz"), "{err}");
        lock["kernel"]["path"] = "torvalds/t/linux-6.12.117.tar.gz".into();
        lock["kernel"]["file"] = "linux-6.12.117.tar.gz".into();
        let err = format!("{:#}", read_value("lock-unsigned", &lock).unwrap_err());
        assert!(err.contains("kernel.verified") && err.contains("needs kernel.sums_path"), "{err}");
        lock["kernel"]["verified"] = false.into();
        assert!(read_value("lock-unsigned", &lock).unwrap().is_some());
    }

    #[test]
    fn an_old_lock_is_named_legacy_with_its_kernel_version() {
        let mut lock = good();
        let bb = lock["busybox"].as_object_mut().unwrap();
        for field in ["verified", "check", "signer"] {
            bb.remove(field);
        }
        let err = read_value("lock-legacy", &lock).unwrap_err();
        assert!(format!("{err:#}").contains("re-resolve"), "{err:#}");
        assert_eq!(err.downcast_ref::<Legacy>().unwrap().kernel_version, "6.12.117");
        // Old or not, its kernel fields are checked before anything trusts its version.
        lock["kernel"]["version"] = "../x".into();
        let err = read_value("lock-legacy", &lock).unwrap_err();
        assert!(err.downcast_ref::<Legacy>().is_none() && format!("{err:#}").contains("kernel.version"), "{err:#}");
    }
}
