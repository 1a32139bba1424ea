//! `manifest.json`: what a lab was built from and every file it holds, in two parts.
//!
//! The `reproducible` part is a function of the lock, the recipe's inputs and the toolchain: two
//! honest builds of one lock with one toolchain write it byte for byte the same, whatever their
//! paths and clocks. The `host` part (date, host OS, timings, boot verdict, xtask version) is kept
//! apart and never compared. Neither part holds a host name or an absolute path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::hash;

pub const FILE: &str = "manifest.json";
pub const SCHEMA: u32 = 1;
pub const ARCH: &str = "x86_64";
/// A manifest lists a few dozen files; anything near this is not one of ours.
const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `SCHEMA`; a reader refuses any other.
    pub schema: u32,
    /// Compared by `verify`; equal for honest builds of one lock with one toolchain.
    pub reproducible: Reproducible,
    /// This build's circumstances; never compared.
    pub host: Host,
}

/// Equal for two honest builds of one lock with one toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reproducible {
    /// `x86_64`.
    pub arch: String,
    /// The recipe's name and the sha256 of its bytes (a copy is in `inputs/recipes/`).
    pub recipe: Input,
    /// The kernel tarball and how it was trusted.
    pub kernel: Source,
    /// The busybox tarball and how it was trusted.
    pub busybox: Source,
    /// What configured the kernel and busybox.
    pub config: Config,
    /// Kernel patches in the order applied (none yet).
    pub patches: Vec<Input>,
    /// The reproducible-build environment.
    pub settings: Settings,
    /// What compiled the lab; `verify` names a different one before any file difference.
    pub toolchain: Toolchain,
    /// Every file of the lab except manifest.json itself and what runs write (reports, logs).
    pub files: Vec<FileEntry>,
}

/// A named input and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// As the recipe names it.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// As locked.
    pub version: String,
    /// Tarball path relative to the mirror root.
    pub path: String,
    pub sha256: String,
    /// How the tarball was trusted: `signed-sums`, `detached-sig`, `mirror-sums` or `unverified`.
    pub verified_by: String,
    /// Primary-key fingerprint of the signer; `None` when unverified.
    pub signer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `tinyconfig` or `defconfig`.
    pub base: String,
    /// Kernel fragments, in the order merged.
    pub fragments: Vec<Input>,
    /// busybox fragments (in `configs/busybox/`), in the order merged.
    pub busybox_fragments: Vec<Input>,
    /// sha256 of the kernel's final `.config` (the lab's `config`).
    pub final_sha256: String,
}

/// The reproducible-build environment, with the two trees' prefix maps written relative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The kernel's release date: every timestamp in the lab.
    pub source_date_epoch: u64,
    /// `uname -v`'s date.
    pub kbuild_build_timestamp: String,
    pub kbuild_build_user: String,
    pub kbuild_build_host: String,
    /// The `#1` in `uname -v`.
    pub kbuild_build_version: String,
    /// `-ffile-prefix-map` for both trees, with the host paths left out.
    pub prefix_maps: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// First line of `gcc --version`.
    pub gcc: String,
    /// First line of `ld --version`.
    pub ld: String,
    /// First line of `make --version`.
    pub make: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the lab directory, `/`-separated.
    pub path: String,
    /// In bytes.
    pub size: u64,
    /// Octal permission bits, e.g. "0755".
    pub mode: String,
    pub sha256: String,
}

/// Differs between builds; never compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// UTC, RFC 3339.
    pub build_date: String,
    /// PRETTY_NAME of /etc/os-release.
    pub host_os: String,
    /// `git describe --always --dirty` of the checkout that built the lab.
    pub xtask_version: String,
    pub timings: Vec<Phase>,
    /// Filled in after the boot test.
    pub boot_test: Option<BootSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// fetch, configure, kernel, busybox.
    pub phase: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSummary {
    /// As in boot-report.json (`pass`, `kernel-panic`, ...).
    pub verdict: String,
    /// Wall time of the whole boot test.
    pub seconds: f64,
}

impl Manifest {
    pub fn to_text(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self).context("serialize manifest.json")? + "\n")
    }

    /// Reads and checks `dir/manifest.json` (a fetched lab's is hostile input).
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE);
        let len = fs::symlink_metadata(&path).with_context(|| format!("{} is missing: is {} a lab?", path.display(), dir.display()))?;
        if !len.is_file() || len.len() > MAX_BYTES {
            bail!("{} is not a regular file of at most {MAX_BYTES} bytes: not a lab manifest", path.display());
        }
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        m.check().with_context(|| format!("check {}", path.display()))?;
        Ok(m)
    }

    /// Every value that later names a file or directory is checked here.
    pub fn check(&self) -> Result<()> {
        if self.schema != SCHEMA {
            bail!("schema {} is not {SCHEMA}: update kernel-lab, or rebuild the lab", self.schema);
        }
        let r = &self.reproducible;
        if r.arch != ARCH {
            bail!("arch {:?} is not {ARCH}", r.arch);
        }
        crate::recipe::check_name(&r.recipe.name).with_context(|| format!("recipe name {:?}", r.recipe.name))?;
        crate::releases::check_version(&r.kernel.version).with_context(|| format!("kernel version {:?}", r.kernel.version))?;
        crate::releases::check_busybox_version(&r.busybox.version).with_context(|| format!("busybox version {:?}", r.busybox.version))?;
        let mut seen = std::collections::BTreeSet::new();
        for f in &r.files {
            check_rel_path(&f.path)?;
            check_sha(&f.sha256).with_context(|| format!("file {}", f.path))?;
            parse_mode(&f.mode).with_context(|| format!("file {}", f.path))?;
            if !seen.insert(f.path.as_str()) {
                bail!("file {} is listed twice", f.path);
            }
        }
        if !seen.contains(crate::lab::LAB_JSON) {
            bail!("lists no {}", crate::lab::LAB_JSON);
        }
        Ok(())
    }

    /// `<recipe>-<version>`: the lab's directory name under artifacts/labs.
    pub fn lab_name(&self) -> String {
        format!("{}-{}", self.reproducible.recipe.name, self.reproducible.kernel.version)
    }

    /// `kernel-lab-<recipe>-<version>-x86_64`: the pack's name and its top directory.
    pub fn pack_name(&self) -> String {
        format!("kernel-lab-{}-{}", self.lab_name(), self.reproducible.arch)
    }

    pub fn sha256_of_file(dir: &Path) -> Result<String> {
        hash::sha256_file(&dir.join(FILE))
    }
}

/// A listed path: relative, `/`-separated, no `.`/`..`, no hidden top-level run files.
pub fn check_rel_path(p: &str) -> Result<()> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && !p.contains('\\')
        && !p.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    if !ok || p == FILE {
        bail!("file path {p:?} is not a plain relative path inside the lab");
    }
    Ok(())
}

fn check_sha(s: &str) -> Result<()> {
    if hash::is_sha256(s) {
        Ok(())
    } else {
        bail!("sha256 {s:?} is not 64 lowercase hex digits")
    }
}

/// "0644" -> 0o644; only permission bits a lab file may have (no setuid, never group/world-writable).
pub fn parse_mode(s: &str) -> Result<u32> {
    let m = u32::from_str_radix(s, 8).ok().filter(|m| s.len() == 4 && m & !0o755 == 0);
    m.with_context(|| format!("mode {s:?} is not an octal mode of at most 0755"))
}

/// Which files of a lab directory the manifest lists: everything but manifest.json itself, what
/// runs write (boot-report.json, logs, the origin note) and host-only hidden files (the assembly
/// stamp, the host's source paths).
pub fn listed(rel: &str) -> bool {
    let top = rel.split('/').next().unwrap_or(rel);
    !(top == FILE || top.starts_with('.') || top.starts_with("boot-") || top.ends_with(".log"))
}

/// The entries of every listed file under `dir`, sorted by path. Refuses symlinks and special
/// files: a lab holds only regular files and directories.
pub fn file_entries(dir: &Path) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("walk stays under root").to_string_lossy().into_owned();
        if !listed(&rel) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let mode = meta.permissions().mode() & 0o7777;
            out.push(FileEntry { path: rel, size: meta.len(), mode: format!("{mode:04o}"), sha256: hash::sha256_file(&path)? });
        } else {
            bail!("{} is neither a regular file nor a directory: a lab holds only those", path.display());
        }
    }
    Ok(())
}

/// One line per difference between the files in `dir` and the manifest's list: missing, extra,
/// or different size, mode or sha256. Empty when they agree.
pub fn compare_files(dir: &Path, want: &[FileEntry]) -> Result<Vec<String>> {
    let have = file_entries(dir)?;
    let mut problems = Vec::new();
    let by_path = |v: &[FileEntry]| v.iter().map(|f| (f.path.clone(), f.clone())).collect::<std::collections::BTreeMap<_, _>>();
    let (have, want) = (by_path(&have), by_path(want));
    for (path, w) in &want {
        match have.get(path) {
            None => problems.push(format!("{path}: missing")),
            Some(h) if h.sha256 != w.sha256 => problems.push(format!("{path}: sha256 {} is not the manifest's {}", h.sha256, w.sha256)),
            Some(h) if h.mode != w.mode => problems.push(format!("{path}: mode {} is not the manifest's {}", h.mode, w.mode)),
            Some(h) if h.size != w.size => problems.push(format!("{path}: size {} is not the manifest's {}", h.size, w.size)),
            Some(_) => {}
        }
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("{path}: not in the manifest"));
    }
    Ok(problems)
}

/// Every directory that holds a listed file, at any depth (`scripts`, `scripts/gdb`, ...).
pub fn parent_dirs(files: &[FileEntry]) -> std::collections::BTreeSet<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(&f.path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    dirs
}

/// Everything under `dir` that is neither manifest.json, a listed file, nor a directory holding
/// one: what a fetched pack must not carry (a forged boot-report.json, hidden directories...).
pub fn unlisted(dir: &Path, want: &[FileEntry]) -> Result<Vec<String>> {
    let files: std::collections::BTreeSet<&str> = want.iter().map(|f| f.path.as_str()).collect();
    let dirs = parent_dirs(want);
    let mut extra = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let path = entry.with_context(|| format!("list {}", d.display()))?.path();
            let rel = path.strip_prefix(dir).expect("under dir").to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            if meta.is_dir() && dirs.contains(&rel) {
                stack.push(path);
            } else if !(meta.is_file() && (files.contains(rel.as_str()) || rel == FILE)) {
                extra.push(rel);
            }
        }
    }
    extra.sort();
    Ok(extra)
}

/// The host part for a build finished now.
pub fn host_now(timings: Vec<Phase>) -> Host {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let host_os = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    Host { build_date: rfc3339_now(), host_os, xtask_version: xtask_version(), timings, boot_test: None }
}

/// `git describe --always --dirty` of this checkout, "unknown" outside git.
fn xtask_version() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["describe", "--always", "--dirty", "--tags"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d) = crate::kbuild::civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Records the boot verdict in a lab's manifest (the host part; the file list is unchanged).
pub fn record_boot(dir: &Path, verdict: &str, seconds: f64) -> Result<()> {
    let mut m = Manifest::read(dir)?;
    m.host.boot_test = Some(BootSummary { verdict: verdict.to_string(), seconds: (seconds * 10.0).round() / 10.0 });
    crate::layout::write_atomic(&dir.join(FILE), m.to_text()?.as_bytes())
}

/// A manifest for unit tests (no files listed: `assemble` fills them in).
#[cfg(test)]
pub fn sample() -> &'static Manifest {
    static SAMPLE: std::sync::LazyLock<Manifest> = std::sync::LazyLock::new(|| {
        let sha = "0".repeat(64);
        let input = |name: &str| Input { name: name.into(), sha256: sha.clone() };
        let source = |version: &str, path: &str| Source {
            version: version.into(),
            path: path.into(),
            sha256: sha.clone(),
            verified_by: "signed-sums".into(),
            signer: Some("A".repeat(40)),
        };
        Manifest {
            schema: SCHEMA,
            reproducible: Reproducible {
                arch: ARCH.into(),
                recipe: input("lts"),
                kernel: source("6.12.117", "pub/linux/kernel/v6.x/linux-6.12.117.tar.xz"),
                busybox: source("1.35.0", "busybox/busybox-1.35.0.tar.bz2"),
                config: Config {
                    base: "tinyconfig".into(),
                    fragments: vec![input("lab.config")],
                    busybox_fragments: vec![],
                    final_sha256: sha.clone(),
                },
                patches: vec![],
                settings: Settings {
                    source_date_epoch: 1,
                    kbuild_build_timestamp: "Thu Jan  1 00:00:01 UTC 1970".into(),
                    kbuild_build_user: "kernel-lab".into(),
                    kbuild_build_host: "kernel-lab".into(),
                    kbuild_build_version: "1".into(),
                    prefix_maps: "-ffile-prefix-map=<src>=. -ffile-prefix-map=<build>=.".into(),
                },
                toolchain: Toolchain { gcc: "gcc 12".into(), ld: "ld 2.40".into(), make: "make 4.3".into() },
                files: vec![],
            },
            host: Host {
                build_date: "2026-01-01T00:00:00Z".into(),
                host_os: "test".into(),
                xtask_version: "test".into(),
                timings: vec![],
                boot_test: None,
            },
        }
    });
    &SAMPLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch;

    #[test]
    fn listed_files_leave_out_run_outputs_and_host_files() {
        for name in ["bzImage", "run.sh", "scripts/gdb/linux/utils.py", "inputs/recipes/lts.yaml", "lab.json"] {
            assert!(listed(name), "{name}");
        }
        for name in [FILE, ".kernel-lab-source", ".kernel-lab-lab", ".kernel-lab-origin", "boot-report.json", "boot-console.log", "x.log"] {
            assert!(!listed(name), "{name}");
        }
    }

    #[test]
    fn paths_and_modes_from_a_manifest_are_checked() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", FILE, "a\\b"] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        check_rel_path("scripts/gdb/linux/utils.py").unwrap();
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        for bad in ["4755", "0777", "0664", "755", "rwx", "00644"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compare_names_missing_changed_and_extra_files() {
        let dir = scratch("manifest-compare");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), "a").unwrap();
        fs::write(dir.join("sub/b"), "b").unwrap();
        fs::write(dir.join("boot-report.json"), "{}").unwrap();
        let want = file_entries(&dir).unwrap();
        assert_eq!(want.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a", "sub/b"]);
        assert!(compare_files(&dir, &want).unwrap().is_empty());
        fs::write(dir.join("a"), "A").unwrap();
        fs::remove_file(dir.join("sub/b")).unwrap();
        fs::write(dir.join("extra"), "x").unwrap();
        let problems = compare_files(&dir, &want).unwrap().join("\n");
        assert!(problems.contains("a: sha256"), "{problems}");
        assert!(problems.contains("sub/b: missing"), "{problems}");
        assert!(problems.contains("extra: not in the manifest"), "{problems}");
        std::os::unix::fs::symlink("a", dir.join("link")).unwrap();
        assert!(file_entries(&dir).is_err());
    }
}
