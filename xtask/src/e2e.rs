//! `cargo xtask e2e`: the whole pipeline against a loopback mirror made from Debian's sources.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    cli::{ChannelArgs, E2eArgs, FetchArgs, KernelArgs},
    fetch,
    layout::Layout,
    mirror, pipeline, serve, verify,
};

const SIGNER: &str = "kernel-lab e2e mirror <e2e@kernel-lab.invalid>";
const SIGNER_EMAIL: &str = "e2e@kernel-lab.invalid";

pub fn run(sh: &Shell, layout: &Layout, args: &E2eArgs) -> Result<()> {
    let busybox_tarball = match &args.busybox_tarball {
        Some(f) => f.clone(),
        None => layout.artifacts.join("debsrc").join(format!("busybox_{}.orig.tar.bz2", args.busybox_version)),
    };
    for f in [&args.kernel_tarball, &busybox_tarball] {
        if !f.is_file() {
            bail!("{} is missing: `apt-get install linux-source-6.12` and `apt-get source --download-only busybox` (see .ci/run)", f.display());
        }
    }
    let root = layout.artifacts.join("e2e");
    let gnupg = root.join("gnupg");
    let mirror_dir = root.join("mirror");
    let _home = sh.push_env("GNUPGHOME", &gnupg);
    if !gnupg.join("pubring.kbx").is_file() {
        std::fs::create_dir_all(&gnupg)?;
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        cmd!(sh, "gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key {SIGNER} ed25519 sign never")
            .quiet()
            .ignore_stderr()
            .run()
            .context("make the throwaway mirror signing key")?;
    }
    eprintln!("==> mirror {}", mirror_dir.display());
    mirror::from_local(
        sh,
        &mirror_dir,
        &[mirror::LocalKernel { file: args.kernel_tarball.clone(), version: args.kernel_version.clone(), moniker: "longterm".into() }],
        &[mirror::LocalBusybox { file: busybox_tarball.clone(), version: args.busybox_version.clone() }],
        Some(SIGNER_EMAIL),
    )?;
    let server = serve::spawn(mirror_dir.clone(), "127.0.0.1:0")?;
    let url = server.url("");
    eprintln!("==> serving the mirror on {url}");

    // A copy of the lts recipe: its lock (which records Debian's tarball hash, not kernel.org's)
    // stays out of the repository's recipes/.
    let recipes = root.join("recipes");
    std::fs::create_dir_all(&recipes)?;
    let recipe = recipes.join("lts.yaml");
    std::fs::copy(layout.recipes_dir().join("lts.yaml"), &recipe)?;
    let kernel_args = KernelArgs {
        fetch: FetchArgs {
            channel: ChannelArgs { lts: Some(String::new()), ..Default::default() },
            recipe: Some(recipe.to_string_lossy().into_owned()),
            mirror: Some(url.clone()),
            keyring: Some(mirror_dir.join("kernel-lab-mirror.gpg")),
            locked: false,
            insecure_skip_signature: false,
            busybox_keyring: None,
        },
        jobs: args.jobs,
        cc_wrapper: None,
        no_boot_test: false,
        boot_timeout: 600,
        dry_run: false,
    };
    let lab = pipeline::kernel(sh, layout, &kernel_args)?.context("e2e never runs dry")?;

    if args.negative {
        negative(&lab)?;
        without_net_ns(sh, layout, &kernel_args, &recipes)?;
    }
    if args.repro {
        repro(sh, layout, &kernel_args, &lab)?;
    }
    let _ = cmd!(sh, "gpgconf --kill gpg-agent").quiet().ignore_stderr().run();
    println!("e2e: pass ({})", lab.dir.display());
    Ok(())
}

/// Breaks the lab on purpose and checks that each break gets its own named verdict.
fn negative(lab: &pipeline::Lab) -> Result<()> {
    let cases = [
        ("rdinit=/nonexistent init=/nonexistent", None::<()>, "kernel-panic"),
        ("rdinit=/bin/true", None, "init-died"),
        ("maxcpus=1", None, "check-failed:nproc"),
    ];
    for (append, _, want) in cases {
        eprintln!("==> negative boot: append {append:?}, expecting {want}");
        let report = pipeline::boot_test_with(&lab.dir, &lab.recipe, &lab.lock, Duration::from_secs(300), append);
        let got = match &report {
            Ok(r) => r.verdict.name().to_string(),
            Err(e) => pipeline::verdict_of_error(e).unwrap_or_else(|| format!("error: {e:#}")),
        };
        if got != want {
            bail!("negative boot with {append:?}: expected verdict {want}, got {got}");
        }
        eprintln!("    verdict {got}: as expected");
    }
    Ok(())
}

/// A lab whose kernel lacks NET_NS (the lts recipe without netns.config) must fail the netns check.
fn without_net_ns(sh: &Shell, layout: &Layout, args: &KernelArgs, recipes: &std::path::Path) -> Result<()> {
    eprintln!("==> negative lab: a kernel without NET_NS, expecting check-failed:netns");
    let text = std::fs::read_to_string(recipes.join("lts.yaml"))?;
    let without = text.replace("netns.config, ", "").replace(", netns.config", "");
    if without == text {
        bail!("recipes/lts.yaml no longer lists netns.config: update the e2e's no-netns case");
    }
    let recipe = recipes.join("nonetns.yaml");
    std::fs::write(&recipe, format!("# e2e: the lts lab without network namespaces (must fail its boot test)\n{without}"))?;
    let mut args = args.clone();
    args.fetch.recipe = Some(recipe.to_string_lossy().into_owned());
    args.no_boot_test = true;
    let lab = pipeline::kernel(sh, layout, &args)?.context("e2e never runs dry")?;
    let got = match pipeline::boot_test(&lab.dir, &lab.recipe, &lab.lock, Duration::from_secs(300), "") {
        Ok(r) => r.verdict.name().to_string(),
        Err(e) => pipeline::verdict_of_error(&e).unwrap_or_else(|| format!("error: {e:#}")),
    };
    if got != "check-failed:netns" {
        bail!("a kernel without NET_NS: expected verdict check-failed:netns, got {got}");
    }
    eprintln!("    verdict {got}: as expected");
    Ok(())
}

/// Builds the same lock again with the sources and build tree in other, deeper directories and
/// compares bzImage and vmlinux byte for byte.
fn repro(sh: &Shell, layout: &Layout, args: &KernelArgs, first: &pipeline::Lab) -> Result<()> {
    eprintln!("==> reproducibility: second build in another directory");
    let other = Layout { artifacts: layout.artifacts.join("e2e/repro/elsewhere/deeper"), ..layout.clone() };
    let mut args = args.clone();
    args.fetch.locked = true;
    args.no_boot_test = true;
    let plan = pipeline::fetch_plan(&other, &args.fetch)?;
    let sources = fetch::run(&other, &plan)?;
    let mut t = pipeline::Timings::default();
    let second = pipeline::build_lab(sh, &other, &plan.recipe, &sources, &args, &mut t)?;
    t.print();
    let mut differ = Vec::new();
    let version = &first.lock.kernel.version;
    let name = &first.recipe.name;
    let pairs = [
        ("bzImage", layout.kernel_build(name, version).join("arch/x86/boot/bzImage"), other.kernel_build(name, version).join("arch/x86/boot/bzImage")),
        ("vmlinux", layout.kernel_build(name, version).join("vmlinux"), other.kernel_build(name, version).join("vmlinux")),
        ("rootfs.cpio", first.dir.join("rootfs.cpio"), second.dir.join("rootfs.cpio")),
    ];
    for (what, a, b) in pairs {
        let (a, b) = (verify::sha256_file(&a)?, verify::sha256_file(&b)?);
        println!("repro {what}: {a} vs {b}: {}", if a == b { "identical" } else { "DIFFERENT" });
        if a != b {
            differ.push(what);
        }
    }
    if !differ.is_empty() {
        bail!("builds of the same lock in two directories differ: {}", differ.join(", "));
    }
    Ok(())
}

