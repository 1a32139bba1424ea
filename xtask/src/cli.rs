//! The command line: every subcommand and flag, whose doc comments are the help text.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::boottest::DEFAULT_STAGE_TIMEOUT_SECS;
use crate::kbuild::{CcWrapper, MakePlan};
use crate::recipe::RunAs;
use crate::releases::Request;

/// kernel-lab: one command from a recipe to a ready, boot-tested Linux kernel lab
/// (QEMU + busybox + gdb).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", arg_required_else_help = true, disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch, configure, build and boot-test a kernel lab (the main job)
    Kernel(KernelArgs),
    /// Fetch, verify and extract kernel and busybox sources
    Fetch(FetchArgs),
    /// Build a kernel.org-layout mirror from local tarballs or an upstream
    Mirror(MirrorArgs),
    /// Serve a directory (e.g. a mirror) over HTTP on loopback
    Serve(ServeArgs),
    /// Build a lab's rootfs.cpio, or list/unpack/repack an archive
    Rootfs(RootfsArgs),
    /// Boot a built lab in QEMU, check it from inside, attach gdb, report a verdict
    BootTest(BootTestArgs),
    /// Run a program (static binary or C source) in a lab, N boots in a row, each reported with
    /// its exit code, output, new kernel messages and verdict (oops, panic, BUG, sanitizer, timeout)
    Exec(ExecArgs),
    /// Check host tools and whether KVM is really usable
    Doctor,
    /// End-to-end check: mirror from Debian's sources on loopback, build, boot, gdb, repro
    E2e(E2eArgs),
    /// Explain dropped Kconfig options and write a verified fix, against a configured tree (no build)
    Config(ConfigArgs),
    /// Ready labs: pack a lab, fetch a packed lab (verified), list or remove installed labs
    Lab(LabArgs),
    /// Rebuild a lab from its own inputs in a fresh directory and compare every file with its manifest
    Verify(VerifyArgs),
    /// Measure the speed claims side by side (no-op rerun, extraction, boot stages, fetch, cold build)
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub make: MakeArgs,
    /// Skip the two cold kernel builds (ours and raw make)
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub action: LabAction,
}

/// Which lab: `--lab DIR`, else the newest lab of `--recipe` (artifacts/labs/<recipe>).
#[derive(Debug, Args, Clone)]
pub struct LabSelect {
    /// Recipe whose newest lab to use (artifacts/labs/<recipe>; default lts)
    #[arg(long, value_name = "NAME", conflicts_with = "lab")]
    pub recipe: Option<String>,
    /// Lab directory
    #[arg(long, value_name = "DIR")]
    pub lab: Option<PathBuf>,
}

impl LabSelect {
    pub fn dir(&self, layout: &crate::layout::Layout) -> PathBuf {
        match (&self.lab, &self.recipe) {
            (Some(dir), _) => dir.clone(),
            (None, r) => layout.lab_link(r.as_deref().unwrap_or("lts")),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Write kernel-lab-<recipe>-<version>-x86_64.tar.zst and its .sha256, deterministically
    Pack {
        #[command(flatten)]
        which: LabSelect,
        /// Output directory
        #[arg(long, value_name = "DIR", default_value = "artifacts/dist")]
        out: PathBuf,
        /// Add (or update) the lab's entry in this labs.json (it must sit in --out or above it)
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// zstd level (1-22); the default makes the smallest packs that still unpack in a second
        #[arg(long, default_value_t = crate::ready::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
    },
    /// Download (cached, resumed), verify and install a packed lab into artifacts/labs/
    Fetch {
        /// A pack URL (http://, https://, file://), a local pack file, or with --index a recipe name
        #[arg(value_name = "URL|PATH|NAME")]
        what: String,
        /// sha256 the pack must have (required unless --index gives it)
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// A lab index (labs.json); takes the newest lab of the named recipe from it
        #[arg(long, value_name = "URL")]
        index: Option<String>,
        /// Replace an installed, different lab of the same name
        #[arg(long)]
        force: bool,
    },
    /// Installed labs: recipe, kernel, busybox, boot verdict, size, built here or fetched from where
    List,
    /// Remove an installed lab (a name from `lab list`, or a recipe's link)
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub which: LabSelect,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Keep the rebuild directory (removed after a clean comparison by default)
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub make: MakeArgs,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Why SYMBOL has (or would lose) a value: effective dependency with values, the problem, a fix
    /// verified with olddefconfig
    Explain {
        /// Symbols as NAME, CONFIG_NAME or NAME=value (default value y)
        #[arg(required = true, value_name = "SYMBOL")]
        symbols: Vec<String>,
        #[command(flatten)]
        tree: ConfigTreeArgs,
    },
    /// Write the fragment, verified with olddefconfig, that makes every requested option of the
    /// recipe survive (add it to the recipe's config.fragments)
    Fix {
        #[command(flatten)]
        tree: ConfigTreeArgs,
        /// Fragment file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Which configured tree: artifacts/build/linux-<version>-<recipe>.
#[derive(Debug, Args, Clone)]
pub struct ConfigTreeArgs {
    /// Recipe name in recipes/ or a path
    #[arg(long, value_name = "NAME|PATH", default_value = "lts")]
    pub recipe: String,
    /// Kernel version of the configured tree (default: the version in the recipe's lock)
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
}

/// Which kernel: overrides the recipe's channel.
#[derive(Debug, Args, Clone, Default)]
pub struct ChannelArgs {
    /// Newest longterm release, or the newest of SERIES (e.g. --lts 6.6)
    #[arg(long, value_name = "SERIES", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["stable", "mainline", "version"])]
    pub lts: Option<String>,
    /// kernel.org's latest stable release
    #[arg(long, conflicts_with_all = ["mainline", "version"])]
    pub stable: bool,
    /// The mainline release (often an unsigned -rc snapshot)
    #[arg(long, conflicts_with = "version")]
    pub mainline: bool,
    /// Exactly this version, e.g. 6.12.117
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
}

impl ChannelArgs {
    /// The request the flags make, or `None` to use the recipe's channel.
    pub fn request(&self) -> Option<Request> {
        if let Some(series) = &self.lts {
            return Some(Request::Longterm((!series.is_empty()).then(|| series.clone())));
        }
        if self.stable {
            return Some(Request::Stable);
        }
        if self.mainline {
            return Some(Request::Mainline);
        }
        self.version.clone().map(Request::Exact)
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct FetchArgs {
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// Recipe name in recipes/ or a path (default: lts, or stable with --stable)
    #[arg(long, value_name = "NAME|PATH")]
    pub recipe: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Use only the lock file; fail if it is missing or stale
    #[arg(long)]
    pub locked: bool,
    /// Let a fresh resolve move the lock to an older kernel (releases.json is unsigned, so
    /// without this, --version or --lts SERIES, an older release is refused)
    #[arg(long)]
    pub allow_downgrade: bool,
}

/// Where sources come from and which keys vouch for them (`fetch`, `kernel`, `verify`, ...).
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArgs {
    /// Base URL of a kernel.org-layout mirror (http://, https:// or file://)
    #[arg(long, env = "KERNEL_LAB_MIRROR", value_name = "URL")]
    pub mirror: Option<String>,
    /// Public key (binary or armored) that signs the mirror's sha256sums.asc
    #[arg(long, env = "KERNEL_LAB_KEYRING", value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Key that signs busybox tarballs: verify the detached .sig with it (default: the mirror's
    /// signed busybox/sha256sums.asc, else the .sig with busybox's pinned upstream key)
    #[arg(long, env = "KERNEL_LAB_BUSYBOX_KEYRING", value_name = "FILE")]
    pub busybox_keyring: Option<PathBuf>,
    /// DANGER: accept unsigned or wrongly signed checksums (kernel sums and busybox)
    #[arg(long)]
    pub insecure_skip_signature: bool,
}

impl SourceArgs {
    /// `--mirror`, else kernel.org and busybox.net.
    pub fn mirror(&self) -> anyhow::Result<crate::source::Mirror> {
        match &self.mirror {
            Some(url) => crate::source::Mirror::new(url),
            None => Ok(crate::source::Mirror::upstream()),
        }
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct KernelArgs {
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub make: MakeArgs,
    /// Stop after building the lab; do not boot it
    #[arg(long)]
    pub no_boot_test: bool,
    /// Boot-test timeout of each stage, in seconds
    #[arg(long, default_value_t = DEFAULT_STAGE_TIMEOUT_SECS, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub boot_timeout: u64,
    /// Print the plan (versions, URLs, paths) and stop
    #[arg(long)]
    pub dry_run: bool,
    /// Boot-test the lab under this mitigation profile (the lab's run.sh keeps the recipe's as
    /// its default): none, default or hardened, and/or item=on|off|auto overrides of kaslr, smep,
    /// smap, pti, spectre, kptr_restrict, dmesg_restrict, e.g. hardened,smap=off
    #[arg(long, value_name = "SPEC")]
    pub mitigations: Option<String>,
    /// Fetch, configure the recipe's build tree, check that every requested option survived and
    /// the mitigation profile can be given, print the tree and stop (no kernel build, busybox or lab)
    #[arg(long, conflicts_with = "dry_run")]
    pub configure_only: bool,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Output directory (default: artifacts/mirror)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Local kernel tarball to publish (pairs with --version)
    #[arg(long, value_name = "FILE")]
    pub add_kernel: Vec<PathBuf>,
    /// Version of each --add-kernel, in order
    #[arg(long, value_name = "V")]
    pub version: Vec<String>,
    /// releases.json moniker of each --add-kernel (default longterm)
    #[arg(long, value_name = "MONIKER")]
    pub moniker: Vec<String>,
    /// Local busybox .tar.bz2 to publish (pairs with --busybox-version)
    #[arg(long, value_name = "FILE")]
    pub add_busybox: Vec<PathBuf>,
    /// Version of each --add-busybox, in order
    #[arg(long, value_name = "V")]
    pub busybox_version: Vec<String>,
    /// gpg key (id, fingerprint or email in GNUPGHOME) to clearsign sha256sums.asc with
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<String>,
    /// Instead of local files: download (verified) what a recipe needs from an upstream
    #[arg(long)]
    pub from_upstream: bool,
    /// With --from-upstream: the recipe whose channel and busybox to mirror (default lts)
    #[arg(long, value_name = "NAME|PATH", requires = "from_upstream")]
    pub recipe: Option<String>,
    /// With --from-upstream: another mirror to copy from (default kernel.org + busybox.net)
    #[arg(long, value_name = "URL", requires = "from_upstream")]
    pub upstream: Option<String>,
    /// With --from-upstream: key that signs the upstream's sha256sums.asc
    #[arg(long, value_name = "FILE", requires = "from_upstream")]
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to serve
    pub dir: PathBuf,
    /// Address to listen on (loopback by default)
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub bind: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RootfsArgs {
    #[command(subcommand)]
    pub action: Option<RootfsAction>,
    #[command(flatten)]
    pub build: RootfsBuildArgs,
}

/// `cargo xtask rootfs` without a subcommand: fetch, build busybox, write rootfs.cpio.
#[derive(Debug, Args, Clone)]
pub struct RootfsBuildArgs {
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub make: MakeArgs,
}

/// How `make` runs, for the kernel and busybox alike.
#[derive(Debug, Args, Clone, Default)]
pub struct MakeArgs {
    /// Parallel make jobs (default: number of CPUs + 1, which keeps the CPUs busy while a job
    /// waits on the disk: a cold lab kernel built 3-5% faster with -j3 than -j2 on 2 cores)
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<NonZeroUsize>,
    /// Compiler wrapper passed through CC
    #[arg(long, value_name = "WRAPPER")]
    pub cc_wrapper: Option<CcWrapper>,
}

impl MakeArgs {
    /// `--jobs` (or the number of CPUs + 1) and the wrapper.
    pub fn plan(&self) -> MakePlan {
        let jobs = self.jobs.unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN).saturating_add(1));
        MakePlan { jobs, cc_wrapper: self.cc_wrapper, background: false }
    }
}

#[derive(Debug, Subcommand)]
pub enum RootfsAction {
    /// List an archive: mode, owner, size, device numbers, path
    List { file: PathBuf },
    /// Unpack an archive into DIR (owners, modes and devices kept in a manifest)
    Unpack { file: PathBuf, dir: PathBuf },
    /// Pack DIR (from unpack, possibly edited) into FILE, deterministically
    Repack { dir: PathBuf, file: PathBuf },
}

#[derive(Debug, Args)]
pub struct BootTestArgs {
    /// Recipe whose newest lab to test (artifacts/labs/<recipe>)
    #[arg(long, value_name = "NAME", conflicts_with = "lab")]
    pub recipe: Option<String>,
    /// Lab directory to test
    #[arg(long, value_name = "DIR")]
    pub lab: Option<PathBuf>,
    /// Timeout of each boot-test stage, in seconds
    #[arg(long, default_value_t = DEFAULT_STAGE_TIMEOUT_SECS, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// Extra kernel command line for this boot (e.g. to break it on purpose)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub append: String,
    /// Mitigation profile: none, default or hardened, and/or item=on|off|auto overrides of kaslr,
    /// smep, smap, pti, spectre, kptr_restrict, dmesg_restrict (e.g. hardened,smap=off); overrides
    /// alone apply on top of the recipe's (the lab's) profile
    #[arg(long, value_name = "SPEC")]
    pub mitigations: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ExecArgs {
    #[command(flatten)]
    pub which: LabSelect,
    /// Who runs the program in the guest
    #[arg(long = "as", value_enum, default_value_t = RunAs::User, value_name = "WHO")]
    pub run_as: RunAs,
    /// Boots, one run of the program each
    #[arg(long, default_value = "1", value_name = "N")]
    pub runs: std::num::NonZeroU32,
    /// Timeout of each boot stage (the program's run is one), in seconds
    #[arg(long, default_value_t = DEFAULT_STAGE_TIMEOUT_SECS, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// Also write the runs as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Mitigation profile: none, default or hardened, and/or item=on|off|auto overrides of kaslr,
    /// smep, smap, pti, spectre, kptr_restrict, dmesg_restrict (e.g. hardened,smap=off); overrides
    /// alone apply on top of the recipe's (the lab's) profile
    #[arg(long, value_name = "SPEC")]
    pub mitigations: Option<String>,
    /// A static x86_64 binary, or a C source compiled with cc -static -O2
    #[arg(value_name = "PROGRAM")]
    pub program: PathBuf,
    /// Arguments for the program (after --)
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct E2eArgs {
    /// Debian's kernel source tarball
    #[arg(long, default_value = "/usr/src/linux-source-6.12.tar.xz")]
    pub kernel_tarball: PathBuf,
    /// Version the kernel tarball is published as (default: the upstream part of the Debian
    /// package version that owns the tarball, e.g. 6.12.117)
    #[arg(long, value_name = "V")]
    pub kernel_version: Option<String>,
    /// busybox's orig tarball (default: the busybox_*.orig.tar.bz2 that .ci/host-setup.sh puts in
    /// artifacts/debsrc/; its version replaces the recipe's)
    #[arg(long, value_name = "FILE")]
    pub busybox_tarball: Option<PathBuf>,
    /// Also run `verify`: rebuild the lab from its inputs in another directory and compare every
    /// file with its manifest
    #[arg(long)]
    pub repro: bool,
    /// Also boot broken variants and assert their verdicts
    #[arg(long)]
    pub negative: bool,
    #[command(flatten)]
    pub make: MakeArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn channel_flags_make_requests() {
        let parse = |args: &[&str]| {
            let mut full = vec!["cargo xtask", "fetch"];
            full.extend_from_slice(args);
            match Cli::try_parse_from(full).map(|c| c.command) {
                Ok(Command::Fetch(f)) => Ok(f.channel.request()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.kind()),
            }
        };
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&["--lts"]).unwrap(), Some(Request::Longterm(None)));
        assert_eq!(parse(&["--lts", "6.6"]).unwrap(), Some(Request::Longterm(Some("6.6".into()))));
        assert_eq!(parse(&["--stable"]).unwrap(), Some(Request::Stable));
        assert_eq!(parse(&["--mainline"]).unwrap(), Some(Request::Mainline));
        assert_eq!(parse(&["--version", "6.12.117"]).unwrap(), Some(Request::Exact("6.12.117".into())));
        assert!(parse(&["--lts", "--stable"]).is_err());
    }

    #[test]
    fn make_flags_are_checked_before_anything_runs() {
        let parse = |args: &[&str]| {
            let mut full = vec!["cargo xtask", "kernel"];
            full.extend_from_slice(args);
            match Cli::try_parse_from(full).map(|c| c.command) {
                Ok(Command::Kernel(k)) => Ok(k.make.plan()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        let p = parse(&["-j", "3", "--cc-wrapper", "ccache"]).unwrap();
        assert_eq!((p.jobs.get(), p.cc_wrapper), (3, Some(CcWrapper::Ccache)));
        let err = parse(&["--cc-wrapper", "icecc"]).unwrap_err();
        assert!(err.contains("icecc") && err.contains("ccache, sccache, distcc"), "{err}");
        assert!(parse(&["-j", "0"]).is_err());
        assert!(parse(&[]).unwrap().jobs.get() >= 1);
    }
}
