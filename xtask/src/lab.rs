//! A lab directory: the one place that names its files, its description (lab.json), and its atomic assembly.
//!
//! A lab is assembled complete in a temporary sibling (`.NAME.tmp-PID`) and exchanged with the
//! old one in a single `renameat2(RENAME_EXCHANGE)`, so a crash leaves either the old lab or the
//! new one, never a mixture and never neither. `.NAME.lock` serializes assemblies (exclusive) and
//! keeps a lab in place while a boot test reads it (shared).

use std::fs;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::boottest::Expect;
use crate::kbuild::KernelBuild;
use crate::layout::{self, tmp_sibling};
use crate::manifest::{self, Manifest};
use crate::mitigations::Mitigations;
use crate::recipe::{CheckSpec, Nic};

pub const BZIMAGE: &str = "bzImage";
pub const VMLINUX: &str = "vmlinux";
pub const SYSTEM_MAP: &str = "System.map";
/// The kernel's final `.config`.
pub const CONFIG: &str = "config";
/// gdb auto-loads it next to vmlinux; it finds its package at `dirname(__file__)/scripts/gdb`.
pub const VMLINUX_GDB_PY: &str = "vmlinux-gdb.py";
pub const GDB_PACKAGE: &str = "scripts/gdb/linux";
pub const ROOTFS: &str = "rootfs.cpio";
pub const RUN_SH: &str = "run.sh";
pub const GDB_SH: &str = "gdb.sh";
pub const DEBUG_GDB: &str = "debug.gdb";
pub const README: &str = "README.md";
/// Host directories that gdb.sh adds to gdb's source path when they still exist.
pub const SOURCE_LIST: &str = ".kernel-lab-source";
/// What the lab is (`Description`), so `boot-test --lab DIR` knows what to expect.
pub const LAB_JSON: &str = "lab.json";
/// The recipe's out-of-tree modules with their debug info, for gdb's `lx-symbols`.
pub const MODULES: &str = "modules";
/// The inputs a lab was built from, laid out like a checkout (`recipes/`, `configs/`).
pub const INPUTS: &str = "inputs";
/// Where a fetched lab came from (written by `lab fetch`; not in the manifest).
pub const ORIGIN: &str = ".kernel-lab-origin";
/// Hash of everything the lab was assembled from; equal means nothing to do. Written last.
const STAMP: &str = ".kernel-lab-lab";
/// Written by the boot test.
pub const REPORT: &str = "boot-report.json";
pub const CONSOLE_LOG: &str = "boot-console.log";
pub const GDB_TRANSCRIPT: &str = "boot-gdb.log";
pub const GDB_CONSOLE_LOG: &str = "boot-gdb-console.log";

/// Files the boot test needs before it starts anything.
pub const BOOTABLE: [&str; 6] = [RUN_SH, GDB_SH, DEBUG_GDB, BZIMAGE, VMLINUX, ROOTFS];

/// `lab.json`: what a lab is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    pub recipe: String,
    /// `uname -r` of the lab kernel.
    pub kernel_version: String,
    pub busybox_version: String,
    /// CPUs run.sh gives the guest by default.
    pub smp: NonZeroU32,
    /// uid of the unprivileged user.
    pub uid: u32,
    /// NIC model run.sh gives the guest.
    pub nic: Nic,
    /// The recipe's boot-test checks (the guest script runs them; the host judges them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// The mitigation profile run.sh boots by default. `None`: a lab from before profiles, whose
    /// run.sh and guest know nothing of them (it boots as `none` did, and is not judged on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mitigations: Option<String>,
}

/// A built lab directory and its description.
#[derive(Debug, Clone)]
pub struct Lab {
    /// Absolute path of the directory.
    pub dir: PathBuf,
    pub desc: Description,
}

impl Lab {
    /// Opens a lab built by `cargo xtask kernel` (through its `artifacts/labs/<recipe>` link too).
    pub fn open(dir: &Path) -> Result<Lab> {
        let dir =
            fs::canonicalize(dir).with_context(|| format!("lab directory {}: build it first with `cargo xtask kernel`", dir.display()))?;
        let path = dir.join(LAB_JSON);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("read {}: is {} a lab built by `cargo xtask kernel`?", path.display(), dir.display()))?;
        let desc: Description =
            serde_json::from_str(&text).with_context(|| format!("parse {}: rebuild the lab with `cargo xtask kernel`", path.display()))?;
        // lab.json travels with fetched labs; its profile reaches run.sh's command line.
        // It is also the base of `--mitigations` overrides, so it must start with a profile, as
        // the spec the build wrote does.
        if let Some(spec) = &desc.mitigations {
            let m = Mitigations::parse(spec, "none").with_context(|| format!("{}: field mitigations", path.display()))?;
            if m.spec != *spec {
                bail!("{}: field mitigations {spec:?} must start with a profile ({})", path.display(), m.spec);
            }
        }
        Ok(Lab { dir, desc })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What the booted lab must report about itself, under the lab's own mitigation profile.
    pub fn expect(&self) -> Result<Expect> {
        let d = &self.desc;
        let map = self.file(SYSTEM_MAP);
        let link_text = fs::read_to_string(&map).ok().and_then(|m| crate::mitigations::link_text(&m));
        Ok(Expect {
            kernel_version: d.kernel_version.clone(),
            smp: d.smp.get(),
            uid: d.uid,
            nic: d.nic,
            builtin: true,
            checks: d.checks.clone(),
            mitigations: d
                .mitigations
                .as_deref()
                .map(|spec| Mitigations::parse(spec, "none"))
                .transpose()
                .with_context(|| format!("{}: field mitigations", self.file(LAB_JSON).display()))?,
            link_text,
        })
    }

    /// The profile `spec` asks for in this lab (overrides apply on top of the lab's own); a lab
    /// from before profiles cannot switch any.
    pub fn profile(&self, spec: &str) -> Result<Mitigations> {
        let base = self.desc.mitigations.as_deref().with_context(|| {
            format!(
                "{} was built before mitigation profiles (its run.sh has no --mitigations): rebuild it with `cargo xtask kernel`, or leave out --mitigations",
                self.dir.display()
            )
        })?;
        Mitigations::parse(spec, base).context("--mitigations")
    }

    /// Holds the lab in place (no assembly replaces it) until the guard is dropped.
    pub fn lock_shared(&self) -> Result<LabLock> {
        LabLock::take(&self.dir, false)
    }

    /// Fails naming the first missing file the boot test needs.
    pub fn check_bootable(&self) -> Result<()> {
        for name in BOOTABLE {
            if !self.file(name).exists() {
                bail!("{} is missing: rebuild the lab with `cargo xtask kernel`", self.file(name).display());
            }
        }
        Ok(())
    }
}

/// One generated text file of a lab: its name, mode and contents.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFile {
    pub name: &'static str,
    pub mode: u32,
    pub text: String,
}

/// Everything a lab is made from.
pub struct Parts<'a> {
    pub kernel: &'a KernelBuild,
    /// The kernel source tree (for `vmlinux-gdb.py`).
    pub kernel_src: &'a Path,
    pub rootfs: &'a [u8],
    /// run.sh, gdb.sh, debug.gdb, README.md and friends (labscripts::render).
    pub scripts: &'a [TextFile],
    pub desc: &'a Description,
    /// What the lab was built from, copied under `inputs/` as a small checkout (recipe, lock,
    /// fragments), so `verify` can rebuild it anywhere: (path under `inputs/`, bytes).
    pub inputs: &'a [(String, Vec<u8>)],
    /// The manifest without its file list, which `assemble` fills in from what it wrote.
    pub manifest: &'a Manifest,
    /// Built modules (file name, `.ko`), copied into `modules/`.
    pub modules: &'a [(String, PathBuf)],
}

/// `flock` on `.NAME.lock` beside a lab: exclusive while assembling, shared while booting.
pub struct LabLock {
    _file: fs::File,
}

impl LabLock {
    /// Exclusive: nobody assembles, fetches into, removes or boots the lab at `dir` meanwhile.
    pub fn exclusive(dir: &Path) -> Result<LabLock> {
        LabLock::take(dir, true)
    }

    fn take(dir: &Path, exclusive: bool) -> Result<LabLock> {
        let path = layout::hidden_sibling(dir, "lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open the lab lock {}", path.display()))?;
        let busy = if exclusive { file.try_lock() } else { file.try_lock_shared() };
        if busy.is_err() {
            eprintln!("waiting for another kernel-lab run that uses {} ...", dir.display());
            let locked = if exclusive { file.lock() } else { file.lock_shared() };
            locked.with_context(|| format!("lock {}", path.display()))?;
        }
        Ok(LabLock { _file: file })
    }
}

/// Assembles the lab at `dest` from `parts`, unless the lab there was made from the same parts
/// and is intact. Returns the lab and whether anything was written.
pub fn assemble(sh: &Shell, dest: &Path, parts: &Parts<'_>) -> Result<(Lab, bool)> {
    let lab_json = serde_json::to_string_pretty(parts.desc).context("serialize lab.json")? + "\n";
    let stamp = stamp(parts, &lab_json)?;
    let parent = dest.parent().context("lab path has no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let _lock = LabLock::take(dest, true)?;
    if intact(dest, &stamp, parts, &lab_json) {
        return Ok((Lab::open(dest)?, false));
    }
    // Under the exclusive lock nobody else is assembling: every temporary sibling is abandoned.
    layout::remove_abandoned_siblings(dest)?;
    let tmp = tmp_sibling(dest);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let filled = (|| {
        copy_kernel(parts.kernel, parts.kernel_src, &tmp)?;
        add_gdb_index(sh, &tmp.join(VMLINUX));
        write_file(&tmp.join(ROOTFS), parts.rootfs, 0o644)?;
        for f in parts.scripts {
            write_file(&tmp.join(f.name), f.text.as_bytes(), f.mode)?;
        }
        write_file(&tmp.join(LAB_JSON), lab_json.as_bytes(), 0o644)?;
        for (name, ko) in parts.modules {
            let bytes = fs::read(ko).with_context(|| format!("read module {}", ko.display()))?;
            fs::create_dir_all(tmp.join(MODULES)).with_context(|| format!("create {}", tmp.join(MODULES).display()))?;
            write_file(&tmp.join(MODULES).join(name), &bytes, 0o644)?;
        }
        for (rel, bytes) in parts.inputs {
            let path = tmp.join(INPUTS).join(rel);
            fs::create_dir_all(path.parent().expect("inputs have a parent")).with_context(|| format!("create {}", path.display()))?;
            write_file(&path, bytes, 0o644)?;
        }
        let mut m = parts.manifest.clone();
        m.reproducible.files = manifest::file_entries(&tmp)?;
        write_file(&tmp.join(manifest::FILE), m.to_text()?.as_bytes(), 0o644)?;
        write_file(&tmp.join(STAMP), format!("{stamp}\n").as_bytes(), 0o644)
    })();
    if let Err(e) = filled {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    layout::replace_dir(&tmp, dest)?;
    Ok((Lab::open(dest)?, true))
}

/// The lab at `dest` was made from these parts and still has every file they made: a deleted
/// vmlinux or a hand-edited run.sh is repaired by the next run, not reported as up to date.
fn intact(dest: &Path, stamp: &str, parts: &Parts<'_>, lab_json: &str) -> bool {
    let same = |name: &str, want: &[u8]| fs::read(dest.join(name)).is_ok_and(|got| got == want);
    fs::read_to_string(dest.join(STAMP)).is_ok_and(|s| s.trim() == stamp)
        && [BZIMAGE, VMLINUX, SYSTEM_MAP, CONFIG, VMLINUX_GDB_PY].iter().all(|f| dest.join(f).is_file())
        && same(LAB_JSON, lab_json.as_bytes())
        && same(ROOTFS, parts.rootfs)
        && parts.scripts.iter().all(|f| same(f.name, f.text.as_bytes()))
        && parts.inputs.iter().all(|(rel, bytes)| same(&format!("{INPUTS}/{rel}"), bytes))
        && parts.modules.iter().all(|(name, ko)| fs::read(ko).is_ok_and(|b| same(&format!("{MODULES}/{name}"), &b)))
        && Manifest::read(dest).is_ok_and(|m| {
            let mut without_files = m.reproducible.clone();
            without_files.files.clear();
            without_files == parts.manifest.reproducible && manifest::compare_files(dest, &m.reproducible.files).is_ok_and(|p| p.is_empty())
        })
}

/// The kernel's inputs stamp plus every other byte the lab is made of.
fn stamp(parts: &Parts<'_>, lab_json: &str) -> Result<String> {
    let kernel_stamp = fs::read(&parts.kernel.inputs_stamp)
        .with_context(|| format!("read {} (did the kernel build finish?)", parts.kernel.inputs_stamp.display()))?;
    let mut input = kernel_stamp;
    input.extend_from_slice(parts.rootfs);
    for f in parts.scripts {
        input.extend_from_slice(format!("\0{}\0{:o}\0", f.name, f.mode).as_bytes());
        input.extend_from_slice(f.text.as_bytes());
    }
    input.extend_from_slice(lab_json.as_bytes());
    for (rel, bytes) in parts.inputs {
        input.extend_from_slice(format!("\0{rel}\0{}\0", bytes.len()).as_bytes());
        input.extend_from_slice(bytes);
    }
    for (name, ko) in parts.modules {
        let sha = crate::hash::sha256_file(ko)?;
        input.extend_from_slice(format!("\0{MODULES}/{name}\0{sha}\0").as_bytes());
    }
    input.extend_from_slice(serde_json::to_string(&parts.manifest.reproducible).context("serialize the manifest")?.as_bytes());
    Ok(crate::hash::sha256_bytes(&input))
}

/// Copies the kernel and the gdb helpers, so `gdb lab/vmlinux` gets the lx- commands even after
/// the source and build trees are deleted. The build tree's scripts/gdb/linux holds symlinks into
/// the source tree plus generated modules (constants.py); copying contents gives real files.
fn copy_kernel(kernel: &KernelBuild, src: &Path, to: &Path) -> Result<()> {
    let build = &kernel.dir;
    let constants = build.join(GDB_PACKAGE).join("constants.py");
    if !constants.is_file() {
        bail!("{} is missing: enable CONFIG_GDB_SCRIPTS (debug.config) and build the scripts_gdb target", constants.display());
    }
    let gdb_pkg = to.join(GDB_PACKAGE);
    fs::create_dir_all(&gdb_pkg).with_context(|| format!("create {}", gdb_pkg.display()))?;
    let mut copies = vec![
        (kernel.bzimage.clone(), to.join(BZIMAGE)),
        (kernel.vmlinux.clone(), to.join(VMLINUX)),
        (kernel.system_map.clone(), to.join(SYSTEM_MAP)),
        (build.join(".config"), to.join(CONFIG)),
        (src.join("scripts/gdb/vmlinux-gdb.py"), to.join(VMLINUX_GDB_PY)),
    ];
    let pkg_dir = build.join(GDB_PACKAGE);
    let mut names: Vec<_> = fs::read_dir(&pkg_dir)
        .with_context(|| format!("list {}", pkg_dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("list {}", pkg_dir.display()))?;
    names.sort();
    for name in names {
        if Path::new(&name).extension().is_some_and(|e| e == "py") {
            copies.push((pkg_dir.join(&name), gdb_pkg.join(&name)));
        }
    }
    for (from, to) in &copies {
        fs::copy(from, to).with_context(|| format!("copy {} to {} (did the build finish?)", from.display(), to.display()))?;
        sync(to)?;
    }
    Ok(())
}

/// gdb's symbol index makes type lookups (`p $lx_current()`) about 13x faster; without
/// gdb-add-index (older gdb packages) the lab still works, only slower.
fn add_gdb_index(sh: &Shell, vmlinux: &Path) {
    let res = xshell::cmd!(sh, "gdb-add-index {vmlinux}").quiet().ignore_stdout().ignore_stderr().run();
    if let Err(e) = res {
        eprintln!("note: gdb-add-index failed ({e}); gdb will be slower to look up types");
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    sync(path)
}

/// On disk before the rename that publishes it: after a power loss the stamp must not outlive
/// the files it vouches for.
fn sync(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("sync {}", path.display()))
}

/// Points `link` (`artifacts/labs/<recipe>`) at `lab`, atomically, with a relative target so the
/// artifacts tree can move.
pub fn link_latest(link: &Path, lab: &Path) -> Result<()> {
    let name = lab.file_name().context("lab has no name")?;
    let tmp = tmp_sibling(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).with_context(|| format!("create {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("update {}", link.display()))
}

/// Writes `lab.json` into an existing directory (tests and hand-made labs).
#[cfg(test)]
pub fn write_description(dir: &Path, desc: &Description) -> Result<()> {
    crate::layout::write_atomic(&dir.join(LAB_JSON), serde_json::to_string_pretty(desc)?.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    pub(crate) fn description() -> Description {
        Description {
            recipe: "lts".into(),
            kernel_version: "6.12.117".into(),
            busybox_version: "1.35.0".into(),
            smp: NonZeroU32::new(4).unwrap(),
            uid: 1000,
            nic: Nic::E1000,
            checks: Vec::new(),
            mitigations: Some("none".into()),
        }
    }

    use crate::testutil::scratch;

    /// The parts of a test lab: a cpio of b"cpio", no inputs, the sample manifest.
    fn parts<'a>(kernel: &'a KernelBuild, src: &'a Path, scripts: &'a [TextFile], desc: &'a Description) -> Parts<'a> {
        Parts { kernel, kernel_src: src, rootfs: b"cpio", scripts, desc, inputs: &[], manifest: crate::manifest::sample(), modules: &[] }
    }

    /// A source and build tree with symlinks like kbuild makes, and what `kbuild::build` returns.
    fn fake_kernel(dir: &Path) -> (PathBuf, KernelBuild) {
        let (src, build) = (dir.join("src"), dir.join("build"));
        fs::create_dir_all(src.join("scripts/gdb/linux")).unwrap();
        fs::create_dir_all(build.join("scripts/gdb/linux")).unwrap();
        fs::create_dir_all(build.join("arch/x86/boot")).unwrap();
        fs::write(src.join("scripts/gdb/vmlinux-gdb.py"), "import linux.utils\n").unwrap();
        fs::write(src.join("scripts/gdb/linux/utils.py"), "# utils\n").unwrap();
        std::os::unix::fs::symlink(src.join("scripts/gdb/linux/utils.py"), build.join("scripts/gdb/linux/utils.py")).unwrap();
        fs::write(build.join("scripts/gdb/linux/constants.py"), "LX_CONFIG = 1\n").unwrap();
        fs::write(build.join("scripts/gdb/linux/.constants.py.cmd"), "x").unwrap();
        for (p, c) in [
            ("arch/x86/boot/bzImage", "bz"),
            ("vmlinux", "elf"),
            ("System.map", "map"),
            (".config", "CONFIG_A=y\n"),
            (".stamp", "inputs v1\n"),
        ] {
            fs::write(build.join(p), c).unwrap();
        }
        let kernel = KernelBuild {
            bzimage: build.join("arch/x86/boot/bzImage"),
            vmlinux: build.join("vmlinux"),
            system_map: build.join("System.map"),
            inputs_stamp: build.join(".stamp"),
            dir: build,
            up_to_date: false,
            objects: 0,
            elapsed: std::time::Duration::ZERO,
        };
        (src, kernel)
    }

    fn scripts(run_sh: &str) -> Vec<TextFile> {
        vec![TextFile { name: RUN_SH, mode: 0o755, text: run_sh.into() }, TextFile { name: README, mode: 0o644, text: "# lab\n".into() }]
    }

    #[test]
    fn assemble_copies_real_files_and_replaces_the_whole_lab() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("assemble");
        let (src, kernel) = fake_kernel(&dir);
        let dest = dir.join("labs/lts-6.12.117");
        // A lab from an earlier build with a boot report and a file no longer made.
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join(VMLINUX), "stale").unwrap();
        fs::write(dest.join(REPORT), "{}").unwrap();
        let desc = description();
        let sh = Shell::new().unwrap();
        let s = scripts("#!/bin/sh\n");
        let inputs = [("recipes/lts.yaml".to_string(), b"kernel: {}\n".to_vec())];
        let parts = Parts { inputs: &inputs, ..parts(&kernel, &src, &s, &desc) };
        let (lab, wrote) = assemble(&sh, &dest, &parts).unwrap();
        assert!(wrote);
        assert_eq!(lab.desc, desc);
        // The manifest lists exactly what was written, inputs included, and nothing else.
        let m = Manifest::read(&dest).unwrap();
        let listed: Vec<&str> = m.reproducible.files.iter().map(|f| f.path.as_str()).collect();
        assert!(listed.contains(&"inputs/recipes/lts.yaml") && listed.contains(&LAB_JSON) && listed.contains(&VMLINUX), "{listed:?}");
        assert!(!listed.iter().any(|p| p.starts_with('.') || *p == manifest::FILE), "{listed:?}");
        assert!(manifest::compare_files(&dest, &m.reproducible.files).unwrap().is_empty());
        assert_eq!(fs::read_to_string(dest.join("inputs/recipes/lts.yaml")).unwrap(), "kernel: {}\n");
        assert_eq!(lab.dir, fs::canonicalize(&dest).unwrap());
        let read = |p: &str| fs::read_to_string(dest.join(p)).unwrap();
        assert_eq!(read(VMLINUX), "elf");
        assert_eq!(read(BZIMAGE), "bz");
        assert_eq!(read(CONFIG), "CONFIG_A=y\n");
        assert_eq!(read(SYSTEM_MAP), "map");
        assert_eq!(read(VMLINUX_GDB_PY), "import linux.utils\n");
        assert_eq!(read(ROOTFS), "cpio");
        assert_eq!(read("scripts/gdb/linux/utils.py"), "# utils\n");
        assert_eq!(read("scripts/gdb/linux/constants.py"), "LX_CONFIG = 1\n");
        assert!(!dest.join("scripts/gdb/linux/.constants.py.cmd").exists());
        assert!(!fs::symlink_metadata(dest.join("scripts/gdb/linux/utils.py")).unwrap().file_type().is_symlink());
        assert_eq!(fs::metadata(dest.join(RUN_SH)).unwrap().permissions().mode() & 0o7777, 0o755);
        assert!(!dest.join(REPORT).exists(), "a report of the old lab survived into the new one");
        assert_eq!(leftovers(&dir.join("labs")), [".lts-6.12.117.lock", "lts-6.12.117"]);

        // Same parts: nothing written (the report a boot test wrote stays).
        fs::write(dest.join(REPORT), "{}").unwrap();
        assert!(!assemble(&sh, &dest, &parts).unwrap().1);
        assert!(dest.join(REPORT).exists());
        // Any changed part rebuilds: a script, the rootfs, the description, the kernel's stamp.
        let s2 = scripts("#!/bin/sh\n# changed\n");
        assert!(assemble(&sh, &dest, &Parts { scripts: &s2, ..parts }).unwrap().1);
        assert!(assemble(&sh, &dest, &Parts { rootfs: b"cpio2", ..parts }).unwrap().1);
        let d2 = Description { uid: 1001, ..description() };
        assert!(assemble(&sh, &dest, &Parts { desc: &d2, ..parts }).unwrap().1);
        fs::write(&kernel.inputs_stamp, "inputs v2\n").unwrap();
        assert!(assemble(&sh, &dest, &parts).unwrap().1);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Modules land in modules/ and in the manifest; a changed or deleted .ko is repaired by the
    /// next assembly, not reported as up to date.
    #[test]
    fn modules_are_part_of_the_lab() {
        let dir = scratch("assemble-modules");
        let (src, kernel) = fake_kernel(&dir);
        let ko = dir.join("klab.ko");
        fs::write(&ko, "elf module").unwrap();
        let dest = dir.join("labs/module-6.12.117");
        let (desc, sh, s) = (description(), Shell::new().unwrap(), scripts("#!/bin/sh\n"));
        let modules = [("klab.ko".to_string(), ko.clone())];
        let parts = Parts { modules: &modules, ..parts(&kernel, &src, &s, &desc) };
        assert!(assemble(&sh, &dest, &parts).unwrap().1);
        assert_eq!(fs::read_to_string(dest.join("modules/klab.ko")).unwrap(), "elf module");
        let m = Manifest::read(&dest).unwrap();
        assert!(m.reproducible.files.iter().any(|f| f.path == "modules/klab.ko"));
        assert!(!assemble(&sh, &dest, &parts).unwrap().1, "same parts: nothing to do");
        fs::write(dest.join("modules/klab.ko"), "tampered").unwrap();
        assert!(assemble(&sh, &dest, &parts).unwrap().1, "a changed module must be repaired");
        assert_eq!(fs::read_to_string(dest.join("modules/klab.ko")).unwrap(), "elf module");
        fs::write(&ko, "rebuilt module").unwrap();
        assert!(assemble(&sh, &dest, &parts).unwrap().1, "a rebuilt module must reach the lab");
        assert_eq!(fs::read_to_string(dest.join("modules/klab.ko")).unwrap(), "rebuilt module");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_assembly_leaves_the_old_lab_untouched() {
        let dir = scratch("failed");
        let (src, kernel) = fake_kernel(&dir);
        let dest = dir.join("labs/lts-6.12.117");
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join(VMLINUX), "old").unwrap();
        fs::remove_file(&kernel.bzimage).unwrap();
        let desc = description();
        let s = scripts("#!/bin/sh\n");
        let parts = parts(&kernel, &src, &s, &desc);
        let err = format!("{:#}", assemble(&Shell::new().unwrap(), &dest, &parts).unwrap_err());
        assert!(err.contains("bzImage"), "{err}");
        assert_eq!(fs::read_to_string(dest.join(VMLINUX)).unwrap(), "old");
        assert_eq!(leftovers(&dir.join("labs")), [".lts-6.12.117.lock", "lts-6.12.117"], "temporary directory left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn abandoned_temporaries_are_removed_by_the_next_assembly() {
        let dir = scratch("abandoned");
        let (src, kernel) = fake_kernel(&dir);
        let dest = dir.join("labs/lts-6.12.117");
        let dead = dir.join("labs/.lts-6.12.117.tmp-4242");
        let old = dir.join("labs/.lts-6.12.117.old-17");
        let other = dir.join("labs/.lts-6.12.1.tmp-4242");
        for d in [&dead, &old, &other] {
            fs::create_dir_all(d).unwrap();
        }
        let desc = description();
        let s = scripts("#!/bin/sh\n");
        let parts = parts(&kernel, &src, &s, &desc);
        assemble(&Shell::new().unwrap(), &dest, &parts).unwrap();
        assert!(!dead.exists() && !old.exists() && other.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A damaged lab with an intact stamp is reassembled, not reported as up to date.
    #[test]
    fn a_damaged_lab_is_repaired() {
        let dir = scratch("damaged");
        let (src, kernel) = fake_kernel(&dir);
        let dest = dir.join("labs/lts-6.12.117");
        let desc = description();
        let s = scripts("#!/bin/sh\n");
        let parts = parts(&kernel, &src, &s, &desc);
        let sh = Shell::new().unwrap();
        assemble(&sh, &dest, &parts).unwrap();
        for damage in [VMLINUX, LAB_JSON, ROOTFS, RUN_SH] {
            if damage == RUN_SH {
                fs::write(dest.join(RUN_SH), "#!/bin/sh\nexec evil\n").unwrap();
            } else {
                fs::remove_file(dest.join(damage)).unwrap();
            }
            assert!(assemble(&sh, &dest, &parts).unwrap().1, "{damage} damaged, yet up to date");
            assert!(!assemble(&sh, &dest, &parts).unwrap().1);
        }
        assert_eq!(fs::read_to_string(dest.join(RUN_SH)).unwrap(), "#!/bin/sh\n");
        fs::remove_dir_all(dir).unwrap();
    }

    /// A boot test holds the lab (shared lock): an assembly waits for it instead of replacing
    /// the directory under it.
    #[test]
    fn assembly_waits_for_a_boot_test_holding_the_lab() {
        let dir = scratch("locked");
        let (src, kernel) = fake_kernel(&dir);
        let dest = dir.join("labs/lts-6.12.117");
        let desc = description();
        let s = scripts("#!/bin/sh\n");
        let parts = parts(&kernel, &src, &s, &desc);
        let sh = Shell::new().unwrap();
        let (lab, _) = assemble(&sh, &dest, &parts).unwrap();
        let held = lab.lock_shared().unwrap();
        let s2 = scripts("#!/bin/sh\n# v2\n");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let parts2 = Parts { scripts: &s2, ..parts };
                assemble(&Shell::new().unwrap(), &dest, &parts2).unwrap();
                tx.send(()).unwrap();
            });
            assert!(rx.recv_timeout(std::time::Duration::from_millis(500)).is_err(), "assembled under a boot test");
            drop(held);
            rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        });
        assert_eq!(fs::read_to_string(dest.join(RUN_SH)).unwrap(), "#!/bin/sh\n# v2\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_names_a_missing_or_bad_description() {
        let dir = scratch("open");
        let err = format!("{:#}", Lab::open(&dir).unwrap_err());
        assert!(err.contains("lab.json") && err.contains("cargo xtask kernel"), "{err}");
        fs::write(
            dir.join(LAB_JSON),
            r#"{"recipe":"lts","kernel_version":"6.12.117","busybox_version":"1.35.0","smp":4,"uid":1000,"nic":"rtl8139"}"#,
        )
        .unwrap();
        let err = format!("{:#}", Lab::open(&dir).unwrap_err());
        assert!(err.contains("rtl8139"), "{err}");
        // A fetched lab's profile reaches run.sh's command line: refused unless it parses.
        for bad in ["none; reboot", "none\nKLAB:BEGIN", "", "kaslr=on"] {
            let mut d = description();
            d.mitigations = Some(bad.to_string());
            write_description(&dir, &d).unwrap();
            let err = format!("{:#}", Lab::open(&dir).unwrap_err());
            assert!(err.contains("field mitigations"), "{bad:?}: {err}");
        }
        write_description(&dir, &description()).unwrap();
        let lab = Lab::open(&dir).unwrap();
        assert_eq!(lab.expect().unwrap().smp, 4);
        let err = format!("{:#}", lab.check_bootable().unwrap_err());
        assert!(err.contains("run.sh is missing"), "{err}");
        for f in BOOTABLE {
            fs::write(dir.join(f), "").unwrap();
        }
        lab.check_bootable().unwrap();
        fs::remove_file(dir.join(ROOTFS)).unwrap();
        assert!(format!("{:#}", lab.check_bootable().unwrap_err()).contains("rootfs.cpio is missing"));
        fs::remove_dir_all(dir).unwrap();
    }
}
