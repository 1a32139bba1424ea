//! Recipe files (`recipes/*.yaml`): shape only; `plan` resolves them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One lab recipe, as written in YAML.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Which kernel to build.
    pub kernel: KernelSpec,
    /// Which busybox to build.
    pub busybox: BusyboxSpec,
    /// Kconfig base and fragments.
    pub config: ConfigSpec,
    /// Contents of the initramfs.
    #[serde(default)]
    pub rootfs: RootfsSpec,
    /// How the lab is started.
    #[serde(default)]
    pub qemu: QemuSpec,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Newest non-EOL longterm release (optionally of `series`).
    Longterm,
    /// kernel.org's `latest_stable`.
    Stable,
    /// The mainline release (often an -rc).
    Mainline,
    /// Exactly `version`.
    Exact,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// longterm, stable, mainline or exact.
    pub channel: Channel,
    /// With `longterm`: restrict to one series, e.g. "6.12".
    #[serde(default)]
    pub series: Option<String>,
    /// With `exact`: the version, e.g. "6.12.117".
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusyboxSpec {
    /// Upstream version, e.g. "1.35.0".
    pub version: String,
    /// Fragments from `configs/busybox/` applied on top of busybox's defconfig.
    #[serde(default = "default_busybox_fragments")]
    pub fragments: Vec<String>,
}

fn default_busybox_fragments() -> Vec<String> {
    vec!["static.config".to_string()]
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigBase {
    /// Smallest kernel; the fast lab profile.
    Tinyconfig,
    /// x86_64 defconfig plus the kernel's own kvm_guest.config.
    Defconfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// tinyconfig or defconfig.
    pub base: ConfigBase,
    /// Fragments from `configs/`, applied in order.
    pub fragments: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Name of the unprivileged user.
    #[serde(default = "default_user")]
    pub user: String,
    /// Its uid (and gid).
    #[serde(default = "default_uid")]
    pub uid: u32,
    /// Password of both root and the user (the lab is a toy machine).
    #[serde(default = "default_password")]
    pub password: String,
    /// Guest hostname.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// gzip the archive (rootfs.cpio.gz instead of rootfs.cpio).
    #[serde(default)]
    pub gzip: bool,
    /// Extra files: host path (relative to the recipe file) -> guest path.
    #[serde(default)]
    pub files: Vec<ExtraFile>,
}

impl Default for RootfsSpec {
    fn default() -> Self {
        RootfsSpec {
            user: default_user(),
            uid: default_uid(),
            password: default_password(),
            hostname: default_hostname(),
            gzip: false,
            files: Vec::new(),
        }
    }
}

fn default_user() -> String {
    "user".to_string()
}
fn default_uid() -> u32 {
    1000
}
fn default_password() -> String {
    "kernel-lab".to_string()
}
fn default_hostname() -> String {
    "kernel-lab".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    /// File or directory on the host, relative to the recipe's directory.
    pub host: PathBuf,
    /// Absolute destination path in the guest.
    pub guest: String,
    /// Octal mode string such as "0755"; default: the host file's mode.
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner uid; default 0.
    #[serde(default)]
    pub uid: u32,
    /// Owner gid; default 0.
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QemuSpec {
    /// Guest memory, QEMU syntax ("4G").
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Number of CPUs (`-smp N`).
    #[serde(default = "default_smp")]
    pub smp: u32,
    /// Cores per socket (`-smp N,cores=C`), optional.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Threads per core (`-smp N,threads=T`), optional.
    #[serde(default)]
    pub threads: Option<u32>,
    /// NIC model on user networking.
    #[serde(default = "default_nic")]
    pub nic: String,
    /// Text appended to the kernel command line.
    #[serde(default)]
    pub append: String,
    /// Extra QEMU arguments, one per list item.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// TCP port of QEMU's gdb stub.
    #[serde(default = "default_gdb_port")]
    pub gdb_port: u16,
}

impl Default for QemuSpec {
    fn default() -> Self {
        QemuSpec {
            memory: default_memory(),
            smp: default_smp(),
            cores: None,
            threads: None,
            nic: default_nic(),
            append: String::new(),
            extra_args: Vec::new(),
            gdb_port: default_gdb_port(),
        }
    }
}

fn default_memory() -> String {
    "4G".to_string()
}
fn default_smp() -> u32 {
    4
}
fn default_nic() -> String {
    "e1000".to_string()
}
fn default_gdb_port() -> u16 {
    1234
}

/// A recipe together with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    /// Recipe name: the file stem (`lts` for `recipes/lts.yaml`).
    pub name: String,
    pub path: PathBuf,
    pub recipe: Recipe,
}

impl LoadedRecipe {
    /// `recipes/<name>.lock`, next to the recipe.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Finds a recipe by name (`lts` -> `<recipes_dir>/lts.yaml`) or by path.
pub fn find(recipes_dir: &Path, name_or_path: &str) -> PathBuf {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || name_or_path.ends_with(".yaml") || name_or_path.ends_with(".yml") {
        as_path.to_path_buf()
    } else {
        recipes_dir.join(format!("{name_or_path}.yaml"))
    }
}

pub fn load(path: &Path) -> Result<LoadedRecipe> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read recipe {} (list recipes with `ls recipes/`)", path.display()))?;
    let recipe = parse(&text).with_context(|| format!("recipe {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("recipe path has no file name")?;
    Ok(LoadedRecipe { name, path: path.to_path_buf(), recipe })
}

/// Parses and checks the shape of a recipe; errors carry line and column.
pub fn parse(text: &str) -> Result<Recipe> {
    let recipe: Recipe = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    check(&recipe)?;
    Ok(recipe)
}

fn check(r: &Recipe) -> Result<()> {
    match (r.kernel.channel, &r.kernel.version, &r.kernel.series) {
        (Channel::Exact, None, _) => bail!("kernel.channel is `exact` but kernel.version is missing: add e.g. `version: \"6.12.117\"`"),
        (Channel::Exact, Some(_), Some(_)) => bail!("kernel.series only applies to channel `longterm`; remove it"),
        (Channel::Longterm, Some(v), _) | (Channel::Stable, Some(v), _) | (Channel::Mainline, Some(v), _) => {
            bail!("kernel.version {v:?} only applies to channel `exact`; remove it or set `channel: exact`")
        }
        (Channel::Stable | Channel::Mainline, None, Some(s)) => {
            bail!("kernel.series {s:?} only applies to channel `longterm`; remove it")
        }
        _ => {}
    }
    if r.qemu.smp == 0 {
        bail!("qemu.smp is 0: a machine needs at least one CPU");
    }
    if !(1..=65535).contains(&r.rootfs.uid) {
        bail!("rootfs.uid {} is not an unprivileged uid: use 1..65535 (default 1000)", r.rootfs.uid);
    }
    if r.rootfs.user.is_empty() || !r.rootfs.user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("rootfs.user {:?} is not a valid user name: use letters, digits, '_' or '-'", r.rootfs.user);
    }
    for f in &r.rootfs.files {
        if !f.guest.starts_with('/') {
            bail!("rootfs.files: guest path {:?} must be absolute (start with '/')", f.guest);
        }
        if let Some(m) = &f.mode {
            if u32::from_str_radix(m, 8).map_or(true, |m| m > 0o7777) {
                bail!("rootfs.files: mode {m:?} for {:?} is not an octal mode like \"0755\"", f.guest);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_recipes_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected lts.yaml and stable.yaml, found {n} recipes");
        let lts = load(&dir.join("lts.yaml")).unwrap();
        assert_eq!(lts.recipe.kernel.channel, Channel::Longterm);
        assert_eq!(lts.recipe.qemu.smp, 4);
        assert_eq!(lts.recipe.qemu.memory, "4G");
        let stable = load(&dir.join("stable.yaml")).unwrap();
        assert_eq!(stable.recipe.kernel.channel, Channel::Stable);
    }

    const MINIMAL: &str = "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragments: [lab.config]\n";

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = parse(MINIMAL).unwrap();
        assert_eq!(r.rootfs.uid, 1000);
        assert_eq!(r.rootfs.user, "user");
        assert_eq!(r.qemu.gdb_port, 1234);
        assert_eq!(r.busybox.fragments, vec!["static.config"]);
    }

    #[test]
    fn typo_in_field_is_rejected_with_position() {
        let text = MINIMAL.replace("  base:", "  bsae:");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("bsae"), "{err}");
        assert!(err.contains("line 6") || err.contains("6:"), "no line number in: {err}");
    }

    #[test]
    fn unknown_channel_is_rejected() {
        let text = MINIMAL.replace("longterm", "longtrem");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("longtrem"), "{err}");
    }

    #[test]
    fn exact_needs_version() {
        let text = MINIMAL.replace("longterm", "exact");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("kernel.version is missing"), "{err}");
    }

    #[test]
    fn root_uid_is_rejected() {
        let text = format!("{MINIMAL}rootfs:\n  uid: 0\n");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("rootfs.uid 0"), "{err}");
    }
}
