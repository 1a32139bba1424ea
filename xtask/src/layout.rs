//! Where everything lives: the one module that joins path strings.
//!
//! Invariant: the xtask writes only under `artifacts` and `cache` (plus the lock file that sits
//! next to a recipe, which is the point of a lock).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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
    pub fn kernel_build(&self, recipe: &str, version: &str) -> PathBuf {
        self.artifacts.join("build").join(format!("linux-{version}-{recipe}"))
    }
    pub fn busybox_build(&self, version: &str) -> PathBuf {
        self.artifacts.join("build").join(format!("busybox-{version}"))
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

/// `dir/.name.<tag>-<pid>`: a scratch directory next to `path` (under the same artifacts
/// directory), for work like verifying a Kconfig fix in a copy of a build tree.
pub fn scratch_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// `dir/.name.tmp-<pid>`: a temporary name next to `path` (same filesystem, so rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
