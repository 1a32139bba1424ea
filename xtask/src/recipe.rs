//! Recipe files (`recipes/*.yaml`): shape only; `plan` resolves them.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
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
    /// Out-of-tree modules built against the lab kernel (the config needs CONFIG_MODULES).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleSpec>,
    /// What the boot test checks beyond kernel-lab's own markers.
    #[serde(default, skip_serializing_if = "BootTestSpec::is_empty")]
    pub boot_test: BootTestSpec,
    /// The mitigation profile the lab boots by default (`none`, `default`, `hardened`, with
    /// `item=on|off|auto` overrides); absent means `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mitigations: Option<String>,
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
    /// Patch files applied in order to a patched copy of the source (the pristine tree is never
    /// changed): paths relative to the recipe's directory, else names in `recipes/patches/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// Name of the kernel build directory (default: the recipe's name). Recipes whose kernel,
    /// config, patches and NIC are the same can name one build and share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusyboxSpec {
    /// Upstream version, e.g. "1.35.0".
    pub version: String,
    /// Fragments from `configs/busybox/` applied on top of busybox's defconfig.
    #[serde(default = "default_busybox_fragments")]
    pub fragments: Vec<String>,
    /// The applets to build: a file in `configs/busybox/` (or beside the recipe) naming them,
    /// every other applet of the defconfig off. Absent or `all`: the whole defconfig, which is
    /// what a recipe from before this field meant (so `verify` of an older lab rebuilds the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applets: Option<String>,
}

/// `busybox.applets` value that keeps every applet of busybox's defconfig.
pub const ALL_APPLETS: &str = "all";

impl BusyboxSpec {
    /// The applets file's name, or None for the whole defconfig.
    pub fn applets_file(&self) -> Option<&str> {
        self.applets.as_deref().filter(|a| *a != ALL_APPLETS)
    }
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
    pub user: UserName,
    /// Its uid (and gid).
    #[serde(default = "default_uid")]
    pub uid: u32,
    /// Password of both root and the user (the lab is a toy machine).
    #[serde(default = "default_password")]
    pub password: String,
    /// Guest hostname.
    #[serde(default = "default_hostname")]
    pub hostname: Hostname,
    /// gzip the archive (rootfs.cpio.gz instead of rootfs.cpio).
    #[serde(default)]
    pub gzip: bool,
    /// Extra files: host path (relative to the recipe file) -> guest path.
    #[serde(default)]
    pub files: Vec<ExtraFile>,
    /// C programs compiled on the host (static) into the rootfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramSpec>,
}

/// A C source compiled with `cc -static -O2` into the rootfs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// The C source, relative to the recipe's directory.
    pub src: PathBuf,
    /// Absolute destination path in the guest, e.g. /usr/bin/klab-hello.
    pub guest: String,
    /// Octal mode string; default "0755".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Owner uid; default the lab user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Owner gid; default the lab user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// An out-of-tree module: a directory with a Kbuild file or Makefile.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// The module's directory, relative to the recipe's directory.
    pub dir: PathBuf,
    /// Load it (`insmod`) in /init before anything else runs.
    #[serde(default)]
    pub load: bool,
    /// Module parameters for insmod, e.g. "debug=1".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub args: String,
}

/// Extra boot-test checks from the recipe.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootTestSpec {
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
}

impl BootTestSpec {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

/// One command the boot test runs in the guest, and what it must give.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Names the check in boot-report.json and in its verdict (`check-failed:<name>`).
    pub name: CheckName,
    /// Shell command line (`sh -c`) run in the guest.
    pub run: String,
    /// Who runs it: the lab user (default) or root.
    #[serde(default, rename = "as")]
    pub run_as: RunAs,
    /// Expected exit status (default 0).
    #[serde(default)]
    pub exit: i32,
    /// What stdout must be, contain or match; unchecked when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Expected>,
}

/// Who runs a command in the guest.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunAs {
    /// The recipe's unprivileged user.
    #[default]
    User,
    Root,
}

impl RunAs {
    pub fn as_str(self) -> &'static str {
        match self {
            RunAs::User => "user",
            RunAs::Root => "root",
        }
    }
}

/// An expectation on a command's output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expected {
    /// The whole output, compared without trailing newlines.
    Exact(String),
    /// A substring.
    Contains(String),
    /// A regular expression (Rust `regex` syntax) that must match somewhere.
    Regex(String),
}

impl Expected {
    /// Whether `output` meets the expectation.
    pub fn matches(&self, output: &str) -> bool {
        match self {
            Expected::Exact(want) => output.trim_end_matches('\n') == want.trim_end_matches('\n'),
            Expected::Contains(want) => output.contains(want.as_str()),
            Expected::Regex(re) => regex::Regex::new(re).is_ok_and(|r| r.is_match(output)),
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Exact(s) => write!(f, "exactly {s:?}"),
            Expected::Contains(s) => write!(f, "containing {s:?}"),
            Expected::Regex(s) => write!(f, "matching the regex {s:?}"),
        }
    }
}

/// A check's name: lower-case letters, digits, '_' or '-', not one of kernel-lab's own markers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckName(String);

impl TryFrom<String> for CheckName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let plain = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if s.is_empty() || s.len() > 40 || !plain || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(format!(
                "check name {s:?} is not valid: use up to 40 lower-case letters, digits, '_' or '-', starting with a letter"
            ));
        }
        if crate::boottest::Check::reserved(&s) {
            return Err(format!("check name {s:?} is one of kernel-lab's own checks; pick another name"));
        }
        Ok(CheckName(s))
    }
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
            programs: Vec::new(),
        }
    }
}

fn default_user() -> UserName {
    UserName("user".to_string())
}
fn default_uid() -> u32 {
    1000
}
fn default_password() -> String {
    "kernel-lab".to_string()
}
fn default_hostname() -> Hostname {
    Hostname("kernel-lab".to_string())
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
    pub mode: Option<Mode>,
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
    pub smp: NonZeroU32,
    /// Cores per socket (`-smp N,cores=C`), optional.
    #[serde(default)]
    pub cores: Option<NonZeroU32>,
    /// Threads per core (`-smp N,threads=T`), optional.
    #[serde(default)]
    pub threads: Option<NonZeroU32>,
    /// NIC model on user networking; the boot test checks that its driver bound.
    #[serde(default)]
    pub nic: Nic,
    /// Text appended to the kernel command line.
    #[serde(default)]
    pub append: String,
    /// Extra QEMU arguments, one per list item.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// TCP port of QEMU's gdb stub.
    #[serde(default = "default_gdb_port")]
    pub gdb_port: NonZeroU16,
}

impl Default for QemuSpec {
    fn default() -> Self {
        QemuSpec {
            memory: default_memory(),
            smp: default_smp(),
            cores: None,
            threads: None,
            nic: Nic::default(),
            append: String::new(),
            extra_args: Vec::new(),
            gdb_port: default_gdb_port(),
        }
    }
}

fn default_memory() -> String {
    "4G".to_string()
}
fn default_smp() -> NonZeroU32 {
    NonZeroU32::new(4).expect("4 is not zero")
}
fn default_gdb_port() -> NonZeroU16 {
    NonZeroU16::new(1234).expect("1234 is not zero")
}

/// The NICs a lab supports: each names its QEMU device, its guest driver and the Kconfig options
/// it needs, so the recipe, the configuration, run.sh and the boot check cannot disagree.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Nic {
    /// Intel 82540EM, QEMU's classic default.
    #[default]
    #[serde(rename = "e1000")]
    E1000,
}

impl Nic {
    /// `-device` model on QEMU's command line.
    pub fn qemu_model(self) -> &'static str {
        match self {
            Nic::E1000 => "e1000",
        }
    }
    /// Driver name in the guest (`/sys/class/net/*/device/driver`).
    pub fn driver(self) -> &'static str {
        match self {
            Nic::E1000 => "e1000",
        }
    }
    /// Kconfig symbols (without `CONFIG_`) the driver needs; every build requests them as `y`.
    pub fn kconfig(self) -> &'static [&'static str] {
        match self {
            Nic::E1000 => &["NET_VENDOR_INTEL", "E1000"],
        }
    }
}

/// An unprivileged account name, safe inside /etc/passwd and shell scripts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl TryFrom<String> for UserName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let plain = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if s.is_empty() || s.len() > 32 || !plain || !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err(format!("user name {s:?} is not valid: use up to 32 letters, digits, '_' or '-', starting with a letter"));
        }
        if s == "root" {
            return Err("user name \"root\": the lab user must be unprivileged; pick another name".to_string());
        }
        Ok(UserName(s))
    }
}

/// A guest hostname: letters, digits, '-' and '.'.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl TryFrom<String> for Hostname {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let labels_ok = s.split('.').all(|l| !l.is_empty() && l.starts_with(|c: char| c.is_ascii_alphanumeric()));
        if s.len() > 64 || !labels_ok || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(format!(
                "hostname {s:?} is not valid: use up to 64 letters, digits, '-' or '.', each label starting with a letter or digit"
            ));
        }
        Ok(Hostname(s))
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype!(UserName);
string_newtype!(Hostname);
string_newtype!(CheckName);

/// A file mode written in octal in YAML (`"0755"`), at most 0o7777.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mode(pub u32);

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o7777 && !s.is_empty() && s.chars().all(|c| c.is_digit(8)) => Ok(Mode(m)),
            _ => Err(format!("mode {s:?} is not an octal mode like \"0755\"")),
        }
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        format!("{:04o}", m.0)
    }
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
    /// The kernel build directory's name: `kernel.build`, else the recipe's own name.
    pub fn kernel_build_name(&self) -> &str {
        self.recipe.kernel.build.as_deref().unwrap_or(&self.name)
    }
    /// What of the recipe decides the kernel image (the kernel and config sections and the NIC):
    /// recipes that agree on it can share one `kernel.build`.
    pub fn kernel_identity(&self) -> Result<String> {
        let r = &self.recipe;
        let mut kernel = r.kernel.clone();
        kernel.build = None;
        Ok(serde_json::to_string(&(&kernel, &r.config, r.qemu.nic))?)
    }
    /// `path:line` of the first recipe line that mentions `needle` (for errors about a value),
    /// else the recipe's path.
    pub fn line_of(&self, needle: &str) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        match text.lines().position(|l| !l.trim_start().starts_with('#') && l.contains(needle)) {
            Some(i) => format!("{}:{}", self.path.display(), i + 1),
            None => self.path.display().to_string(),
        }
    }
    /// The recipe's mitigation profile (`none` when it names none); checked at load.
    pub fn mitigations(&self) -> Result<crate::mitigations::Mitigations> {
        crate::mitigations::Mitigations::parse(self.recipe.mitigations.as_deref().unwrap_or("none"), "none")
            .with_context(|| format!("{}: mitigations", self.line_of("mitigations:")))
    }

    /// The kernel the recipe asks for when no flag overrides it.
    pub fn request(&self) -> crate::releases::Request {
        use crate::releases::Request;
        let k = &self.recipe.kernel;
        match k.channel {
            Channel::Longterm => Request::Longterm(k.series.clone()),
            Channel::Stable => Request::Stable,
            Channel::Mainline => Request::Mainline,
            Channel::Exact => Request::Exact(k.version.clone().unwrap_or_default()),
        }
    }
    /// Writes `recipe` as YAML to `path` (e.g. a changed copy for a test) and loads it back.
    pub fn write(path: &Path, recipe: &Recipe, comment: &str) -> Result<LoadedRecipe> {
        let yaml = serde_saphyr::to_string(recipe).map_err(|e| anyhow::anyhow!("serialize recipe: {e}"))?;
        crate::layout::write_atomic(path, format!("# {comment}\n{yaml}").as_bytes())?;
        load(path)
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
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read recipe {} (list recipes with `ls recipes/`)", path.display()))?;
    let recipe = parse(&text).with_context(|| format!("recipe {}", path.display()))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).context("recipe path has no file name")?;
    check_file_name(&name, path)?;
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
    if !(1000..=60000).contains(&r.rootfs.uid) {
        bail!("rootfs.uid {} is not a regular user's uid: use 1000..60000 (default 1000)", r.rootfs.uid);
    }
    if r.rootfs.password.contains([':', '\n']) || r.rootfs.password.chars().any(char::is_control) {
        bail!("rootfs.password must not contain ':' or control characters (they would break /etc/shadow)");
    }
    for f in r.config.fragments.iter().chain(&r.busybox.fragments).map(String::as_str).chain(r.busybox.applets_file()) {
        // A recipe travels inside labs (`verify` rebuilds from it): fragments are names in configs/
        // or beside the recipe, never host paths.
        if crate::manifest::check_rel_path(f).is_err() {
            bail!("fragment {f:?} must be a relative name (a file in configs/ or beside the recipe), without `..`");
        }
    }
    for f in &r.rootfs.files {
        check_beside("rootfs.files: host path", &f.host)?;
        check_guest("rootfs.files", &f.guest)?;
    }
    for p in &r.kernel.patches {
        if crate::manifest::check_rel_path(p).is_err() {
            bail!("kernel.patches: {p:?} must be a relative path (beside the recipe or in recipes/patches/), without `..`");
        }
    }
    if let Some(b) = &r.kernel.build {
        check_name(b).context("kernel.build names the kernel build directory")?;
    }
    for p in &r.rootfs.programs {
        check_beside("rootfs.programs: src", &p.src)?;
        if p.src.extension().is_none_or(|e| e != "c") {
            bail!("rootfs.programs: src {:?} must be a C source file (*.c)", p.src.display());
        }
        check_guest("rootfs.programs", &p.guest)?;
    }
    let mut names = std::collections::BTreeSet::new();
    for m in &r.modules {
        check_beside("modules: dir", &m.dir)?;
        // The directory reaches debug.gdb's source path and make's M=: plain path characters only.
        if !m.dir.to_string_lossy().chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c)) {
            bail!("modules: dir {:?} may hold only letters, digits and ._/- (rename the directory)", m.dir.display());
        }
        let name = m.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.is_empty() || name == "." {
            bail!("modules: dir {:?} must name the module's own directory (e.g. modules/klab)", m.dir.display());
        }
        if !names.insert(name.clone()) {
            bail!("modules: two module directories are named {name:?}; rename one");
        }
        // insmod arguments land in /init: plain `name=value` words only.
        if !m.args.chars().all(|c| c.is_ascii_alphanumeric() || " _=,.-".contains(c)) {
            bail!("modules: args {:?} of {} may hold only letters, digits, spaces and _=,.- (name=value words)", m.args, m.dir.display());
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &r.boot_test.checks {
        if !names.insert(c.name.as_str()) {
            bail!("boot_test.checks: two checks are named {:?}; names must be unique", c.name.as_str());
        }
        if c.run.trim().is_empty() || c.run.chars().any(char::is_control) {
            bail!("boot_test.checks: {}: run {:?} must be one non-empty line of shell", c.name, c.run);
        }
        if let Some(Expected::Regex(re)) = &c.stdout {
            regex::Regex::new(re)
                .map_err(|e| anyhow::anyhow!("boot_test.checks: {}: stdout regex {re:?} does not compile: {e}", c.name))?;
        }
        if !(0..=255).contains(&c.exit) {
            bail!("boot_test.checks: {}: exit {} is not an exit status (0..255)", c.name, c.exit);
        }
    }
    if let Some(spec) = &r.mitigations {
        crate::mitigations::Mitigations::parse(spec, "none").context("mitigations")?;
    }
    // These reach run.sh, gdb commands and lab.json, where a newline would split a line.
    let q = &r.qemu;
    if q.memory.is_empty() || q.memory.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("qemu.memory {:?} must be one word in QEMU syntax, e.g. \"4G\"", q.memory);
    }
    for (what, value) in std::iter::once(("qemu.append", &q.append)).chain(q.extra_args.iter().map(|a| ("qemu.extra_args", a))) {
        if value.chars().any(char::is_control) {
            bail!("{what} {value:?} contains a control character (newline?): remove it");
        }
    }
    // The profile's switches come after the recipe's text on the command line only as far as run.sh
    // puts them; a word here would silently undo one while the banner names the profile.
    for word in q.append.split_whitespace() {
        let key = word.split_once('=').map_or(word, |(k, _)| k);
        if PROFILE_WORDS.contains(&key) {
            bail!("qemu.append: {word:?} switches a mitigation, which the mitigation profile owns; use `mitigations:` (e.g. none,kaslr=on) instead");
        }
    }
    // run.sh owns every socket QEMU opens: the gdb stub on loopback, user networking without
    // forwarded ports. These options would open another one, or a second stub on every interface.
    for arg in &q.extra_args {
        let opt = arg.trim_start_matches('-');
        let opt = opt.split_once('=').map_or(opt, |(o, _)| o);
        if arg.starts_with('-') && LISTENING_OPTIONS.contains(&opt) {
            bail!("qemu.extra_args: {arg:?} opens a socket or changes networking, which run.sh owns; remove it (use ./run.sh --gdb-port/--gdb-listen for the stub)");
        }
        // The mitigation profile's proof depends on the CPU model run.sh picks (SMEP, SMAP).
        if arg.starts_with('-') && opt == "cpu" {
            bail!("qemu.extra_args: {arg:?} replaces the CPU model, which run.sh picks for the mitigation profile (SMEP and SMAP); use `mitigations:` (e.g. hardened,smap=off) instead");
        }
    }
    Ok(())
}

/// A host path in a recipe: relative to the recipe's directory, without `..` (a recipe travels
/// inside labs and `verify` rebuilds from it, so it may name only files beside it).
fn check_beside(what: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() || path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("{what} {:?} must be relative to the recipe's directory, without `..`", path.display());
    }
    Ok(())
}

/// A guest path in a recipe: absolute, below /, and not kernel-lab's own /init or self-test
/// (a recipe that replaced them would test itself).
fn check_guest(what: &str, guest: &str) -> Result<()> {
    if !guest.starts_with('/') || guest.trim_start_matches('/').is_empty() {
        bail!("{what}: guest path {guest:?} must be absolute and below / (e.g. \"/home/user/notes\")");
    }
    let g = guest.trim_start_matches('/').trim_end_matches('/');
    if guest.chars().any(char::is_control) || g.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("{what}: guest path {guest:?} must be a plain path: no control characters, no empty, `.` or `..` components");
    }
    // The boot test's runner calls every tool through /bin/busybox.
    if g == "bin/busybox" || g == "bin/busybox-suid" {
        bail!("{what}: guest path {guest:?} would replace busybox, which /init and the boot self-test run; pick another path");
    }
    if g == "init" || g == "etc" || g == "etc/kernel-lab" || g.starts_with("etc/kernel-lab/") {
        bail!("{what}: guest path {guest:?} would replace kernel-lab's /init or boot self-test; pick another path");
    }
    Ok(())
}

/// Kernel command-line words a mitigation profile sets (checked in `qemu.append`).
const PROFILE_WORDS: [&str; 10] = [
    "nokaslr",
    "pti",
    "nopti",
    "mitigations",
    "clearcpuid",
    "nosmep",
    "nosmap",
    "sysctl.kernel.kptr_restrict",
    "sysctl.kernel.dmesg_restrict",
    "lab.mitigations",
];

/// QEMU options that open sockets or change the guest's network (checked in `qemu.extra_args`).
const LISTENING_OPTIONS: [&str; 12] =
    ["s", "gdb", "monitor", "qmp", "qmp-pretty", "chardev", "serial", "netdev", "nic", "net", "vnc", "spice"];

/// A recipe's name (its file stem) names lab directories and their links: no separators, no dots
/// (so `labs/<name>` can never be another recipe's `labs/<name>-<version>`).
fn check_file_name(name: &str, path: &Path) -> Result<()> {
    check_name(name).with_context(|| format!("recipe file {}: rename the file", path.display()))
}

/// A recipe name: letters, digits, '_' or '-' (also checked in fetched manifests and indexes).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("recipe name {name:?} must be 1-64 letters, digits, '_' or '-' (no dots)");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
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
        assert_eq!(lts.recipe.qemu.smp.get(), 4);
        assert_eq!(lts.recipe.qemu.nic, Nic::E1000);
        assert_eq!(lts.recipe.qemu.memory, "4G");
        let stable = load(&dir.join("stable.yaml")).unwrap();
        assert_eq!(stable.recipe.kernel.channel, Channel::Stable);
    }

    pub(crate) const MINIMAL: &str =
        "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragments: [lab.config]\n";

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = parse(MINIMAL).unwrap();
        assert_eq!(r.rootfs.uid, 1000);
        assert_eq!(r.rootfs.user.as_str(), "user");
        assert_eq!(r.qemu.gdb_port.get(), 1234);
        assert_eq!(r.busybox.fragments, vec!["static.config"]);
        // No applets field: the whole defconfig, as recipes from before the field meant.
        assert_eq!(r.busybox.applets_file(), None);
        let r = parse(&MINIMAL.replace("version: \"1.35.0\"", "version: \"1.35.0\"\n  applets: all")).unwrap();
        assert_eq!(r.busybox.applets_file(), None);
        let r = parse(&MINIMAL.replace("version: \"1.35.0\"", "version: \"1.35.0\"\n  applets: lab.applets")).unwrap();
        assert_eq!(r.busybox.applets_file(), Some("lab.applets"));
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

    #[test]
    fn values_are_checked_once_at_load() {
        let cases = [
            ("qemu:\n  smp: 0\n", "nonzero"),
            ("qemu:\n  nic: virtio\n", "e1000"),
            ("qemu:\n  gdb_port: 0\n", "nonzero"),
            ("rootfs:\n  user: root\n", "unprivileged"),
            ("rootfs:\n  user: \"a b\"\n", "\"a b\" is not valid"),
            ("rootfs:\n  hostname: \"x;reboot\"\n", "hostname \"x;reboot\""),
            ("rootfs:\n  password: \"a:b\"\n", "rootfs.password"),
            ("rootfs:\n  files:\n    - {host: a, guest: /a, mode: \"0999\"}\n", "mode \"0999\""),
            ("rootfs:\n  files:\n    - {host: a, guest: a}\n", "must be absolute"),
            ("rootfs:\n  files:\n    - {host: /root/.ssh/id_ed25519, guest: /a}\n", "must be relative"),
            ("rootfs:\n  files:\n    - {host: ../../x, guest: /a}\n", "without `..`"),
            ("rootfs:\n  files:\n    - {host: a, guest: /init}\n", "would replace"),
            ("rootfs:\n  files:\n    - {host: a, guest: /etc/kernel-lab/boot-test.sh}\n", "would replace"),
            ("rootfs:\n  files:\n    - {host: a, guest: /a, mode: \"+755\"}\n", "mode \"+755\""),
            ("rootfs:\n  hostname: \"-x\"\n", "hostname \"-x\""),
            ("rootfs:\n  hostname: \"a..b\"\n", "hostname \"a..b\""),
            ("rootfs:\n  user: \"123\"\n", "user name \"123\""),
            ("rootfs:\n  uid: 5\n", "rootfs.uid 5"),
            ("qemu:\n  cores: 0\n", "nonzero"),
            ("qemu:\n  extra_args: [\"-s\"]\n", "opens a socket"),
            ("qemu:\n  extra_args: [\"-gdb\", \"tcp::1234\"]\n", "opens a socket"),
            ("qemu:\n  extra_args: [\"--monitor=telnet::4444,server\"]\n", "opens a socket"),
            ("qemu:\n  memory: \"4G -hda x\"\n", "qemu.memory"),
            ("qemu:\n  append: \"loglevel=7 nokaslr\"\n", "\"nokaslr\" switches a mitigation"),
            ("qemu:\n  append: \"pti=off\"\n", "switches a mitigation"),
            ("qemu:\n  append: \"sysctl.kernel.kptr_restrict=0\"\n", "switches a mitigation"),
            ("qemu:\n  extra_args: [\"-cpu\", \"qemu64\"]\n", "replaces the CPU model"),
            ("mitigations: \"hardened,smap=maybe\"\n", "use on, off or auto"),
            ("qemu:\n  append: \"a\\nb\"\n", "control character"),
            ("rootfs:\n  programs:\n    - {src: ../x.c, guest: /bin/x}\n", "without `..`"),
            ("rootfs:\n  programs:\n    - {src: x.txt, guest: /bin/x}\n", "must be a C source"),
            ("rootfs:\n  programs:\n    - {src: x.c, guest: /init}\n", "would replace"),
            ("modules:\n  - {dir: m, args: \"x=1; reboot\"}\n", "name=value words"),
            ("modules:\n  - {dir: .}\n", "the module's own directory"),
            ("modules:\n  - {dir: \"m x\"}\n", "only letters, digits"),
            ("rootfs:\n  programs:\n    - {src: x.c, guest: /bin/busybox}\n", "would replace busybox"),
            ("rootfs:\n  programs:\n    - {src: x.c, guest: \"/usr/./bin/x\"}\n", "plain path"),
            ("rootfs:\n  files:\n    - {host: a, guest: \"/a\\tb\"}\n", "plain path"),
            ("modules:\n  - {dir: a/m}\n  - {dir: b/m}\n", "two module directories are named \"m\""),
            ("boot_test:\n  checks:\n    - {name: Bad, run: x}\n", "check name \"Bad\""),
            ("boot_test:\n  checks:\n    - {name: a, run: x}\n    - {name: a, run: y}\n", "two checks are named \"a\""),
            ("boot_test:\n  checks:\n    - {name: a, run: \"\"}\n", "non-empty line"),
            ("boot_test:\n  checks:\n    - {name: a, run: x, stdout: {regex: \"(\"}}\n", "does not compile"),
            ("boot_test:\n  checks:\n    - {name: a, run: x, stdout: {glob: \"*\"}}\n", "glob"),
            ("boot_test:\n  checks:\n    - {name: a, run: x, as: admin}\n", "admin"),
            ("boot_test:\n  checks:\n    - {name: a, run: x, exit: 300}\n", "exit 300"),
            // The profile reaches run.sh's default and the kernel command line.
            ("mitigations: \"none\\nfoo\"\n", "is not a profile spec"),
            ("mitigations: \"none lab.test=1\"\n", "is not a profile spec"),
            ("mitigations: \"none,kaslr=on,\"\n", "neither an override"),
            ("mitigations: harden\n", "unknown profile"),
        ];
        for (extra, want) in cases {
            let err = format!("{:#}", parse(&format!("{MINIMAL}{extra}")).unwrap_err());
            assert!(err.contains(want), "{extra}: {err}");
        }
        for (from, to, want) in [
            ("fragments: [lab.config]", "fragments: [lab.config, /etc/passwd]", "fragment \"/etc/passwd\" must be a relative name"),
            ("fragments: [lab.config]", "fragments: [../../x.config]", "without `..`"),
            ("version: \"1.35.0\"", "version: \"1.35.0\"\n  fragments: [/etc/shadow]", "must be a relative name"),
            ("version: \"1.35.0\"", "version: \"1.35.0\"\n  applets: ../../x.applets", "\"../../x.applets\" must be a relative name"),
            ("channel: longterm", "channel: longterm\n  patches: [/tmp/x.patch]", "must be a relative path"),
            ("channel: longterm", "channel: longterm\n  build: \"a/b\"", "kernel.build"),
        ] {
            let err = format!("{:#}", parse(&MINIMAL.replace(from, to)).unwrap_err());
            assert!(err.contains(want), "{to}: {err}");
        }
        let r = parse(&format!("{MINIMAL}rootfs:\n  files:\n    - {{host: a, guest: /a, mode: \"4755\"}}\n")).unwrap();
        assert_eq!(r.rootfs.files[0].mode, Some(Mode(0o4755)));
    }

    #[test]
    fn a_recipe_survives_a_round_trip_through_yaml() {
        let mut r = parse(MINIMAL).unwrap();
        r.busybox.version = "1.36.1".to_string();
        r.config.fragments.retain(|f| f != "netns.config");
        let text = serde_saphyr::to_string(&r).unwrap();
        assert_eq!(parse(&text).unwrap(), r, "{text}");
    }
}
