//! Where everything lives: the one module that joins path strings.
//!
//! Invariant: the xtask writes only under `artifacts` and `cache` (plus the lock file that sits
//! next to a recipe, which is the point of a lock).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Layout {
    /// Repository root (parent of `xtask/`).
    pub root: PathBuf,
    /// Output tree, `<root>/artifacts` unless `KERNEL_LAB_ARTIFACTS` says otherwise.
    pub artifacts: PathBuf,
    /// Download cache, `$KERNEL_LAB_CACHE`, else `$XDG_CACHE_HOME/kernel-lab`, else `~/.cache/kernel-lab`.
    pub cache: PathBuf,
}

impl Layout {
    pub fn from_env() -> Result<Layout> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask crate has no parent directory")?.to_path_buf();
        let artifacts = match std::env::var_os("KERNEL_LAB_ARTIFACTS") {
            Some(dir) => PathBuf::from(dir),
            None => root.join("artifacts"),
        };
        let cache = if let Some(dir) = std::env::var_os("KERNEL_LAB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("kernel-lab")
        } else {
            let home = std::env::var_os("HOME").context("neither KERNEL_LAB_CACHE, XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache/kernel-lab")
        };
        Ok(Layout { root, artifacts, cache })
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("recipes")
    }
    pub fn configs_dir(&self) -> PathBuf {
        self.root.join("configs")
    }
    /// Content-addressed download cache: a verified file is stored under its sha256.
    pub fn cache_blob(&self, sha256: &str) -> PathBuf {
        self.cache.join("sha256").join(sha256)
    }
    /// Keys fetched through WKD, by fingerprint.
    pub fn cache_key(&self, fingerprint: &str) -> PathBuf {
        self.cache.join("keys").join(format!("{fingerprint}.gpg"))
    }
    pub fn kernel_src(&self, version: &str) -> PathBuf {
        self.artifacts.join("src").join(format!("linux-{version}"))
    }
    pub fn busybox_src(&self, version: &str) -> PathBuf {
        self.artifacts.join("src").join(format!("busybox-{version}"))
    }
    /// `build` is the recipe's name, or the build its `kernel.build` names.
    pub fn kernel_build(&self, build: &str, version: &str) -> PathBuf {
        self.artifacts.join("build").join(format!("linux-{version}-{build}"))
    }
    /// A copy of the pristine tree with a recipe's patches applied (`digest` names the patch set).
    pub fn patched_src(&self, version: &str, digest: &str) -> PathBuf {
        self.artifacts.join("src").join(format!("linux-{version}+{digest}"))
    }
    /// A recipe's compiled programs and out-of-tree module builds.
    pub fn exercise_build(&self, recipe: &str, version: &str) -> PathBuf {
        self.artifacts.join("build").join(format!("exercise-{recipe}-{version}"))
    }
    /// One `exec` run's reports, logs and rootfs copy.
    pub fn exec_runs(&self) -> PathBuf {
        self.artifacts.join("exec")
    }
    /// busybox's build directory; one per applets file (`applets`: its name), so recipes with
    /// different applet sets do not rebuild each other's busybox.
    pub fn busybox_build(&self, version: &str, applets: Option<&str>) -> PathBuf {
        let stem = applets.map(|a| {
            let last = Path::new(a).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>()
        });
        match stem {
            Some(stem) => self.artifacts.join("build").join(format!("busybox-{version}-{stem}")),
            None => self.artifacts.join("build").join(format!("busybox-{version}")),
        }
    }
    pub fn rootfs_dir(&self, recipe: &str, version: &str) -> PathBuf {
        self.artifacts.join("build").join(format!("rootfs-{recipe}-{version}"))
    }
    pub fn labs_dir(&self) -> PathBuf {
        self.artifacts.join("labs")
    }
    pub fn lab(&self, recipe: &str, version: &str) -> PathBuf {
        self.labs_dir().join(format!("{recipe}-{version}"))
    }
    /// `artifacts/labs/<recipe>`: symlink to the newest lab of that recipe.
    pub fn lab_link(&self, recipe: &str) -> PathBuf {
        self.labs_dir().join(recipe)
    }
    pub fn default_mirror_dir(&self) -> PathBuf {
        self.artifacts.join("mirror")
    }
}

/// Copies the tree at `from` into `to` (created): directories and regular files only. A symlink
/// or device is refused, so a copied tree (a lab's inputs, a module's sources) cannot pull in
/// files from elsewhere on the host.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    let mut names: Vec<_> = fs::read_dir(from)
        .with_context(|| format!("list {}", from.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("list {}", from.display()))?;
    names.sort();
    for name in names {
        let (src, dst) = (from.join(&name), to.join(&name));
        let meta = fs::symlink_metadata(&src).with_context(|| format!("inspect {}", src.display()))?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.is_file() {
            fs::copy(&src, &dst).with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
        } else {
            bail!("{} is not a regular file or directory: symlinks and devices are not copied", src.display());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = tmp_sibling(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} -> {}", tmp.display(), path.display()))?;
    Ok(())
}

/// `dir/.name.<suffix>`: a hidden name next to `path`, e.g. its lock file `.name.lock`.
pub fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// `dir/.name.<tag>-<pid>`: a scratch directory next to `path` (under the same artifacts
/// directory), for work like verifying a Kconfig fix in a copy of a build tree.
pub fn scratch_sibling(path: &Path, tag: &str) -> PathBuf {
    hidden_sibling(path, &format!("{tag}-{}", std::process::id()))
}

/// `dir/.name.tmp-<pid>`: a temporary name next to `path` (same filesystem, so rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    scratch_sibling(path, "tmp")
}

/// Puts the complete directory `tmp` at `dest`: one atomic exchange with an existing directory
/// (then deleted), or one rename. `dest` is never absent or partial.
pub fn replace_dir(tmp: &Path, dest: &Path) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        exchange(tmp, dest).with_context(|| format!("exchange {} with {}", tmp.display(), dest.display()))?;
        // `tmp` now holds the old copy.
        fs::remove_dir_all(tmp).with_context(|| format!("remove the old copy, now at {}", tmp.display()))?;
    } else {
        fs::rename(tmp, dest).with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
    }
    Ok(())
}

/// `renameat2(RENAME_EXCHANGE)`: both paths must exist; afterwards each names the other's entry.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    const AT_FDCWD: i32 = -100;
    const RENAME_EXCHANGE: u32 = 2;
    unsafe extern "C" {
        fn renameat2(olddirfd: i32, oldpath: *const std::ffi::c_char, newdirfd: i32, newpath: *const std::ffi::c_char, flags: u32) -> i32;
    }
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    if unsafe { renameat2(AT_FDCWD, a.as_ptr(), AT_FDCWD, b.as_ptr(), RENAME_EXCHANGE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes the `.NAME.tmp-PID` and `.NAME.old-PID` siblings of `dest` that killed runs left.
/// Call it holding `dest`'s lock, so that no live run owns one (pids are not compared: they
/// mean nothing across containers).
pub fn remove_abandoned_siblings(dest: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else { return Ok(()) };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(parent) else { return Ok(()) };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = [".tmp-", ".old-"].iter().find_map(|k| file.strip_prefix(&format!(".{name}{k}")));
        if pid.is_some_and(|p| p.parse::<u32>().is_ok()) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}, left by an interrupted run", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_directories_atomically() {
        let dir = crate::testutil::scratch("layout-exchange");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), "a").unwrap();
        fs::write(b.join("f"), "b").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!((fs::read_to_string(a.join("f")).unwrap(), fs::read_to_string(b.join("f")).unwrap()), ("b".into(), "a".into()));
        assert!(exchange(&a, &dir.join("missing")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
