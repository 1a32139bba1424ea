//! `cargo xtask e2e`: the whole pipeline against a loopback mirror made from Debian's sources.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    cli::{ChannelArgs, E2eArgs, FetchArgs, KernelArgs, MakeArgs},
    fetch,
    layout::Layout,
    mirror, pipeline, serve,
};

const SIGNER: &str = "kernel-lab e2e mirror <e2e@kernel-lab.invalid>";
const SIGNER_EMAIL: &str = "e2e@kernel-lab.invalid";

pub fn run(sh: &Shell, layout: &Layout, args: &E2eArgs) -> Result<()> {
    if !args.kernel_tarball.is_file() {
        bail!(
            "{} is missing: run `sudo bash .ci/host-setup.sh --e2e` (installs linux-source-6.12)",
            args.kernel_tarball.display()
        );
    }
    let kernel_version = match &args.kernel_version {
        Some(v) => v.clone(),
        None => debian_upstream_version(sh, &args.kernel_tarball)?,
    };
    let busybox_tarball = match &args.busybox_tarball {
        Some(f) => f.clone(),
        None => find_busybox_orig(&layout.artifacts.join("debsrc"))?,
    };
    let busybox_version = busybox_version_of(&busybox_tarball)?;
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
        &[mirror::LocalKernel { file: args.kernel_tarball.clone(), version: kernel_version.clone(), moniker: "longterm".into() }],
        &[mirror::LocalBusybox { file: busybox_tarball.clone(), version: busybox_version.clone() }],
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
    let lts = layout.recipes_dir().join("lts.yaml");
    let text = std::fs::read_to_string(&lts).with_context(|| format!("read {}", lts.display()))?;
    let pinned = crate::recipe::parse(&text).with_context(|| format!("recipe {}", lts.display()))?.busybox.version;
    // The e2e builds the busybox Debian ships, whatever version the recipe pins.
    let text = text.replace(&format!("\"{pinned}\""), &format!("\"{busybox_version}\""));
    crate::layout::write_atomic(&recipe, text.as_bytes())?;
    let kernel_args = KernelArgs {
        fetch: FetchArgs {
            channel: ChannelArgs { lts: Some(String::new()), ..Default::default() },
            recipe: Some(recipe.to_string_lossy().into_owned()),
            mirror: Some(url.clone()),
            keyring: Some(mirror_dir.join("kernel-lab-mirror.gpg")),
            locked: false,
            insecure_skip_signature: false,
            busybox_keyring: Some(mirror_dir.join("kernel-lab-mirror.gpg")),
        },
        make: MakeArgs { jobs: args.jobs, cc_wrapper: None },
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
        let report = pipeline::boot_test(&lab.dir, &lab.recipe, &lab.lock, Duration::from_secs(300), append);
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
        let (a, b) = (crate::hash::sha256_file(&a)?, crate::hash::sha256_file(&b)?);
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


/// "6.12.117" from the Debian package owning `tarball` (version "6.12.117-1~deb12u1").
fn debian_upstream_version(sh: &Shell, tarball: &std::path::Path) -> Result<String> {
    let owner = cmd!(sh, "dpkg -S {tarball}").quiet().read().with_context(|| {
        format!("find the Debian package of {}; or pass --kernel-version", tarball.display())
    })?;
    let package = owner.split(':').next().unwrap_or_default().trim().to_string();
    let format = "${Version}";
    let version = cmd!(sh, "dpkg-query -W -f {format} {package}").quiet().read()?;
    let upstream = version.split('-').next().unwrap_or_default().to_string();
    crate::releases::check_version(&upstream)
        .with_context(|| format!("version {version:?} of {package}; pass --kernel-version"))?;
    Ok(upstream)
}

fn find_busybox_orig(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("busybox_") && n.ends_with(".orig.tar.bz2")
        })
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => Ok(p),
        None => bail!(
            "no busybox_*.orig.tar.bz2 in {}: run `sudo bash .ci/host-setup.sh --e2e`, or pass --busybox-tarball",
            dir.display()
        ),
    }
}

/// "busybox_1.35.0.orig.tar.bz2" -> "1.35.0"; other names need the version in the name too.
fn busybox_version_of(tarball: &std::path::Path) -> Result<String> {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let v = name
        .trim_start_matches("busybox_")
        .trim_start_matches("busybox-")
        .trim_end_matches(".tar.bz2")
        .trim_end_matches(".orig");
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || c == '.') {
        bail!("cannot read a busybox version from {}: name it busybox-X.Y.Z.tar.bz2", tarball.display());
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn busybox_version_from_file_name() {
        assert_eq!(super::busybox_version_of(Path::new("/x/busybox_1.35.0.orig.tar.bz2")).unwrap(), "1.35.0");
        assert_eq!(super::busybox_version_of(Path::new("busybox-1.36.1.tar.bz2")).unwrap(), "1.36.1");
        let err = super::busybox_version_of(Path::new("bb.tar.bz2")).unwrap_err().to_string();
        assert!(err.contains("bb.tar.bz2"), "{err}");
    }
}
