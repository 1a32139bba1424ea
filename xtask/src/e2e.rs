//! `cargo xtask e2e`: the whole pipeline against a loopback mirror made from Debian's sources.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    boottest::{self, Check, Verdict},
    cli::E2eArgs,
    fetch::FetchPlan,
    lab::Lab,
    layout::Layout,
    mirror,
    pipeline::{self, BuildPlan},
    ready,
    recipe::{ConfigBase, LoadedRecipe},
    repro, serve,
    source::Mirror,
};

/// Shipped recipes the e2e configures but does not build: GitHub's labs workflow builds and
/// boot-tests them, where build time is cheaper.
const CONFIGURE_ONLY: [&str; 1] = ["kasan"];
const SIGNER: &str = "kernel-lab e2e mirror <e2e@kernel-lab.invalid>";
const SIGNER_EMAIL: &str = "e2e@kernel-lab.invalid";
/// Per-stage boot-test timeout: generous, CI machines are slow and noisy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(boottest::DEFAULT_STAGE_TIMEOUT_SECS);

pub fn run(sh: &Shell, layout: &Layout, args: &E2eArgs) -> Result<()> {
    if !args.kernel_tarball.is_file() {
        bail!("{} is missing: run `sudo bash .ci/host-setup.sh --e2e` (installs linux-source-6.12)", args.kernel_tarball.display());
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
    // stays out of the repository's recipes/. The e2e builds the busybox Debian ships.
    let recipes = root.join("recipes");
    let lts = crate::recipe::load(&layout.recipes_dir().join("lts.yaml"))?;
    let mut changed = lts.recipe.clone();
    changed.busybox.version = busybox_version.clone();
    let recipe = LoadedRecipe::write(&recipes.join("lts.yaml"), &changed, "e2e: recipes/lts.yaml with the busybox Debian ships")?;
    let mirror_key = mirror_dir.join("kernel-lab-mirror.gpg");
    // The mirror key verifies the kernel sums and the mirror's busybox/sha256sums.asc: Debian's
    // busybox orig tarball has no upstream .sig for the pinned busybox key to check.
    let plan = FetchPlan { keyring: Some(mirror_key), ..FetchPlan::new(recipe, Mirror::new(&url)?) };
    let build = BuildPlan { make: args.make.plan(), boot_timeout: Some(BOOT_TIMEOUT), mitigations: None };
    let first = pipeline::kernel(sh, layout, &plan, &build)?;
    match &first.report {
        Some(r) if r.passed() => {}
        Some(r) => bail!("boot test of {}: {}", first.lab.dir.display(), r.failure_message()),
        None => bail!("the e2e's first build must boot-test its lab"),
    }
    configure_only_recipes(sh, layout, &plan)?;

    mitigation_profiles(sh, layout, &first, &plan, &build)?;
    if args.negative {
        negative(layout, &first.lab)?;
        kconfig_explained(sh, layout, &first.lab)?;
        without_net_ns(sh, layout, &plan, &build)?;
    }
    ready_labs(sh, layout, &first.lab)?;
    exercises(sh, layout, &plan, &build)?;
    if args.repro {
        let trust = repro::Trust {
            mirror: plan.mirror.clone(),
            keyring: plan.keyring.clone(),
            busybox_keyring: None,
            insecure_skip_signature: false,
        };
        eprintln!("==> reproducibility: `verify` rebuilds the lab from its inputs in another directory");
        let outcome = repro::verify(sh, layout, &first.lab.dir, &trust, &build.make, false)?;
        if outcome.differing > 0 {
            bail!(
                "verify: the rebuild differs from the lab's manifest in {} place(s); kept in {}",
                outcome.differing,
                outcome.work.display()
            );
        }
    }
    let _ = cmd!(sh, "gpgconf --kill gpg-agent").quiet().ignore_stderr().run();
    println!("e2e: pass ({})", first.lab.dir.display());
    Ok(())
}

/// The first boot test ran the recipe's profile (`none`); the same kernel must hold `hardened`
/// too, with gdb working under KASLR; a profile that does not hold is a named verdict; a recipe
/// whose config cannot give its profile fails right after configure, naming the option.
fn mitigation_profiles(sh: &Shell, layout: &Layout, first: &pipeline::Built, plan: &FetchPlan, build: &BuildPlan) -> Result<()> {
    eprintln!("==> mitigations: the lab's own profile (none), then hardened on the same kernel");
    let check = |report: &boottest::BootReport, spec: &str| -> Result<()> {
        let m = report.mitigations.as_ref().context("the boot report has no mitigations")?;
        if !report.passed() || m.spec != spec || m.first_failure().is_some() || report.gdb_kaslr_offset.is_none() {
            bail!(
                "profile {spec}: expected a pass with every item held and gdb's KASLR offset, got {}: {}",
                report.verdict,
                report.failure_message()
            );
        }
        let items: Vec<String> = m.items.iter().map(|i| format!("{}={}", i.item, i.seen)).collect();
        eprintln!(
            "    {spec}: pass; {}; KASLR offset {} (gdb's boot: {})",
            items.join(" "),
            m.kaslr_offset.as_deref().unwrap_or("?"),
            report.gdb_kaslr_offset.as_deref().unwrap_or("?")
        );
        Ok(())
    };
    let none = first.report.as_ref().context("the e2e's first build is boot-tested")?;
    check(none, "none")?;
    if none.gdb_kaslr_offset.as_deref() != Some("0x0") {
        bail!("profile none: gdb found a KASLR offset {:?}, expected 0x0", none.gdb_kaslr_offset);
    }
    let out = layout.artifacts.join("e2e/mitigations");
    let hardened = boottest::run_into(&first.lab, BOOT_TIMEOUT, "", Some("hardened"), &out.join("hardened"))?;
    check(&hardened, "hardened")?;
    let kaslr = hardened.mitigations.as_ref().and_then(|m| m.items.iter().find(|i| i.item == crate::mitigations::Item::Kaslr));
    if kaslr.is_none_or(|k| k.seen != "on") {
        bail!("profile hardened: KASLR is not on: {kaslr:?}");
    }

    eprintln!("==> mitigations: hardened with SMEP taken away (clearcpuid=smep), expecting check-failed:mitigation:smep");
    let broken = boottest::run_into(&first.lab, BOOT_TIMEOUT, "clearcpuid=smep", Some("hardened"), &out.join("nosmep"))?;
    if broken.verdict.to_string() != "check-failed:mitigation:smep" {
        bail!("hardened without SMEP: expected check-failed:mitigation:smep, got {} ({})", broken.verdict, broken.detail);
    }
    eprintln!("    verdict {}: {}", broken.verdict, broken.detail);

    eprintln!("==> mitigations: a hardened recipe without mitigations.config fails after configure, before the kernel build");
    let mut r = plan.recipe.recipe.clone();
    r.config.fragments.retain(|f| f != "mitigations.config");
    r.mitigations = Some("hardened".into());
    r.kernel.build = Some("nomitigations".into());
    let recipe = LoadedRecipe::write(&plan.recipe.dir().join("nomitigations.yaml"), &r, "e2e: a hardened profile its config cannot give")?;
    let err = match pipeline::kernel(sh, layout, &FetchPlan { recipe, ..plan.clone() }, &BuildPlan { boot_timeout: None, ..build.clone() })
    {
        Ok(_) => bail!("a hardened recipe without mitigations.config built a lab"),
        Err(e) => format!("{e:#}"),
    };
    if !err.contains("lacks CONFIG_RANDOMIZE_BASE=y") || !err.contains("mitigations.config") {
        bail!("a hardened recipe without mitigations.config: the error does not name the missing option:\n{err}");
    }
    eprintln!("    refused: {}", err.lines().next().unwrap_or_default());
    Ok(())
}

/// Each recipe of CONFIGURE_ONLY, configured against the e2e's kernel: every option it requests
/// must survive (`kernel --configure-only`).
fn configure_only_recipes(sh: &Shell, layout: &Layout, plan: &FetchPlan) -> Result<()> {
    for name in CONFIGURE_ONLY {
        eprintln!("==> configure only: recipes/{name}.yaml (built on GitHub), every requested option must survive");
        let recipe = copy_recipe(layout, plan, name, &|_| {})?;
        let t = Instant::now();
        // The e2e plan's request and mirror: the kernel the lts lab was built from.
        let tree = pipeline::configure_only(sh, layout, &FetchPlan { recipe, ..plan.clone() }, None)?;
        eprintln!("    {} configured and checked in {:.0} s", tree.dir.display(), t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// A shipped recipe copied beside the e2e's lts copy (its lock stays out of recipes/), with the
/// busybox Debian ships and `edit` applied.
fn copy_recipe(layout: &Layout, plan: &FetchPlan, name: &str, edit: &dyn Fn(&mut crate::recipe::Recipe)) -> Result<LoadedRecipe> {
    let shipped = crate::recipe::load(&layout.recipes_dir().join(format!("{name}.yaml")))?;
    let mut r = shipped.recipe.clone();
    r.busybox.version = plan.recipe.recipe.busybox.version.clone();
    edit(&mut r);
    let path = plan.recipe.dir().join(format!("{name}.yaml"));
    LoadedRecipe::write(&path, &r, &format!("e2e: recipes/{name}.yaml with the busybox Debian ships"))
}

/// Breaks the lab on purpose and checks that each break gets its own named verdict.
fn negative(layout: &Layout, lab: &Lab) -> Result<()> {
    let cases = [
        ("rdinit=/nonexistent init=/nonexistent", Verdict::KernelPanic),
        ("rdinit=/bin/true", Verdict::InitDied),
        ("maxcpus=1", Verdict::CheckFailed(Check::Nproc)),
        // The kernel echoes its command line: marker text in it must not fake the nproc check.
        ("maxcpus=1 KLAB:BEGIN KLAB:nproc=4 KLAB:END", Verdict::CheckFailed(Check::Nproc)),
    ];
    for (i, (append, want)) in cases.into_iter().enumerate() {
        eprintln!("==> negative boot: append {append:?}, expecting {want}");
        // Reports and logs of broken boots stay out of the lab, whose report says `pass`.
        let out = layout.artifacts.join(format!("e2e/negative/{i}"));
        let report = boottest::run_into(lab, BOOT_TIMEOUT, append, None, &out)?;
        if report.verdict != want {
            bail!("negative boot with {append:?}: expected verdict {want}, got {} ({})", report.verdict, report.detail);
        }
        eprintln!("    verdict {}: as expected", report.verdict);
    }
    Ok(())
}

/// One configure of the real tree with several broken requests reports every one of them with
/// its kind, and the fragment it suggests (ready to paste) makes a second configure pass.
fn kconfig_explained(sh: &Shell, layout: &Layout, lab: &Lab) -> Result<()> {
    eprintln!("==> kconfig: broken requests explained, the suggested fragment verified");
    let version = &lab.desc.kernel_version;
    let src = layout.kernel_src(version);
    let dir = layout.artifacts.join("e2e/kconfig");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut fragments: Vec<std::path::PathBuf> =
        ["lab.config", "smp.config", "netns.config", "debug.config"].iter().map(|f| layout.configs_dir().join(f)).collect();
    let fixable = "# e2e: broken on purpose\nCONFIG_SCSI_VIRTIO=y\nCONFIG_E1000E=m\nCONFIG_VIRTIO=y\n";
    let broken = dir.join("broken.config");
    std::fs::write(&broken, format!("{fixable}CONFIG_ARM64_VA_BITS_48=y\n"))?;
    fragments.push(broken.clone());
    let nic = lab.desc.nic;
    let err = match crate::kbuild::configure(sh, &src, &dir.join("build"), ConfigBase::Tinyconfig, &fragments, version, nic) {
        Ok(()) => bail!("a configure with four impossible requests passed"),
        Err(e) => format!("{e:#}"),
    };
    let wanted = [
        "4 requested option(s) did not survive",
        "CONFIG_SCSI_VIRTIO: asked y",
        "UNMET SCSI [=n]",
        "asked m but MODULES [=n]",
        "other architecture: ARM64_VA_BITS_48 is defined only for arm64",
        "no prompt: VIRTIO cannot be set by a fragment",
        "suggested fragment (verified with olddefconfig",
    ];
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !err.contains(w)).collect();
    if !missing.is_empty() {
        bail!("the configure error lacks {missing:?}:\n{err}");
    }
    // The suggested fragment, as a user would paste it, with the impossible request dropped.
    let fix = crate::kexplain::fragment_in(&err);
    std::fs::write(&broken, fixable)?;
    let fix_path = dir.join("fix.config");
    std::fs::write(&fix_path, &fix)?;
    fragments.push(fix_path);
    crate::kbuild::configure(sh, &src, &dir.join("build-fixed"), ConfigBase::Tinyconfig, &fragments, version, nic)
        .with_context(|| format!("configure with the suggested fragment:\n{fix}"))?;
    eprintln!("    all four explained; the suggested fragment ({} lines) makes every fixable request survive", fix.lines().count());
    Ok(())
}

/// A lab whose kernel lacks NET_NS (the lts recipe without netns.config) must fail the netns check.
fn without_net_ns(sh: &Shell, layout: &Layout, plan: &FetchPlan, build: &BuildPlan) -> Result<()> {
    eprintln!("==> negative lab: a kernel without NET_NS, expecting check-failed:netns");
    let mut without = plan.recipe.recipe.clone();
    let before = without.config.fragments.len();
    without.config.fragments.retain(|f| f != "netns.config");
    if without.config.fragments.len() == before {
        bail!("recipes/lts.yaml no longer lists netns.config: update the e2e's no-netns case");
    }
    let path = plan.recipe.dir().join("nonetns.yaml");
    let recipe = LoadedRecipe::write(&path, &without, "e2e: the lts lab without network namespaces (must fail its boot test)")?;
    let plan = FetchPlan { recipe, ..plan.clone() };
    let built = pipeline::kernel(sh, layout, &plan, &BuildPlan { boot_timeout: None, ..build.clone() })?;
    let report = boottest::run(&built.lab, BOOT_TIMEOUT, "", None)?;
    let want = Verdict::CheckFailed(Check::Netns);
    if report.verdict != want {
        bail!("a kernel without NET_NS: expected verdict {want}, got {} ({})", report.verdict, report.detail);
    }
    eprintln!("    verdict {}: as expected", report.verdict);
    Ok(())
}

/// The shipped exercise recipes (syscall.yaml, module.yaml) share one patched kernel build; each
/// lab must pass its boot test with every recipe check, `exec` must report a success, a non-zero
/// exit and an oops with the right verdicts, and a failing check and a module recipe without
/// CONFIG_MODULES must each fail with their own clear message.
fn exercises(sh: &Shell, layout: &Layout, plan: &FetchPlan, build: &BuildPlan) -> Result<()> {
    let dir = plan.recipe.dir().to_path_buf();
    // The recipes name their patches, programs and modules relative to themselves.
    for sub in ["patches", "programs", "modules"] {
        let (from, to) = (layout.recipes_dir().join(sub), dir.join(sub));
        let _ = std::fs::remove_dir_all(&to);
        cmd!(sh, "cp -R {from} {to}").run().with_context(|| format!("copy {}", from.display()))?;
    }
    let copy = |name: &str, edit: &dyn Fn(&mut crate::recipe::Recipe)| copy_recipe(layout, plan, name, edit);
    let mut labs = Vec::new();
    for name in ["syscall", "module"] {
        eprintln!("==> exercise lab: recipes/{name}.yaml (kernel.build {:?})", "exercises");
        let recipe = copy(name, &|_| {})?;
        let built = pipeline::kernel(sh, layout, &FetchPlan { recipe, ..plan.clone() }, build)?;
        let report = built.report.context("the exercise labs are boot-tested")?;
        if !report.passed() {
            bail!("boot test of {}: {}", built.lab.dir.display(), report.failure_message());
        }
        if report.checks.is_empty() || report.checks.iter().any(|c| !c.passed) {
            bail!("{name}: the recipe checks did not all pass: {:?}", report.checks);
        }
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        eprintln!("    boot test pass with recipe checks {names:?}");
        labs.push(built.lab);
    }
    let module_lab = &labs[1];
    eprintln!("==> exercise: the module lab under hardened: gdb's lx-symbols loads the module with KASLR on");
    let hardened = boottest::run_into(module_lab, BOOT_TIMEOUT, "", Some("hardened"), &layout.artifacts.join("e2e/mitigations/module"))?;
    if !hardened.passed() {
        bail!("the module lab under hardened: {}", hardened.failure_message());
    }
    eprintln!("    pass; gdb found KASLR offset {}", hardened.gdb_kaslr_offset.as_deref().unwrap_or("?"));

    eprintln!("==> exec: a program that succeeds (2 boots), one that exits 3, one that oopses the kernel");
    let scratch = layout.artifacts.join("e2e/exec");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let exit3 = scratch.join("exit3.c");
    std::fs::write(&exit3, "#include <stdio.h>\nint main(void) { puts(\"leaving with 3\"); return 3; }\n")?;
    let echo = dir.join("programs/klab-echo.c");
    let exec = |program: &std::path::Path, args: &[&str], runs: u32| -> Result<crate::exec::Report> {
        let a = crate::cli::ExecArgs {
            which: crate::cli::LabSelect { recipe: None, lab: Some(module_lab.dir.clone()) },
            run_as: crate::recipe::RunAs::User,
            runs: std::num::NonZeroU32::new(runs).context("runs")?,
            timeout: BOOT_TIMEOUT.as_secs(),
            junit: None,
            mitigations: None,
            program: program.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        crate::exec::run(sh, layout, &a)
    };
    let ok = exec(&echo, &["hi"], 2)?;
    let want = "klab: HI";
    if ok.succeeded != 2 || !ok.runs.iter().all(|r| r.stdout.trim_end() == want) {
        bail!("exec klab-echo hi: expected 2 of 2 runs printing {want:?}, got {:?}", ok.runs);
    }
    let three = exec(&exit3, &[], 1)?;
    let r = &three.runs[0];
    if r.verdict != Verdict::Pass || r.exit != Some(3) || r.succeeded || r.stdout != "leaving with 3\n" {
        bail!("exec of a program that exits 3: expected verdict pass, exit 3, not succeeded; got {r:?}");
    }
    let oops = exec(&echo, &["--oops"], 1)?;
    let r = &oops.runs[0];
    if r.verdict != Verdict::Oops || r.succeeded || !r.kernel_log.iter().any(|l| l.contains("klab")) {
        bail!("exec klab-echo --oops: expected verdict oops with the module in the kernel log; got {r:?}");
    }
    eprintln!(
        "    2/2 succeeded ({want:?}); exit 3 reported as exit 3; the oops as verdict {} ({} kernel lines)",
        r.verdict,
        r.kernel_log.len()
    );

    eprintln!("==> exercise: a failing recipe check is named in the verdict");
    let recipe = copy("module", &|r| {
        for c in &mut r.boot_test.checks {
            if c.name.as_str() == "roundtrip" {
                c.stdout = Some(crate::recipe::Expected::Exact("klab: WRONG".into()));
            }
        }
    })?;
    let renamed = dir.join("module-badcheck.yaml");
    std::fs::rename(&recipe.path, &renamed)?;
    let recipe = crate::recipe::load(&renamed)?;
    let built = pipeline::kernel(sh, layout, &FetchPlan { recipe, ..plan.clone() }, &BuildPlan { boot_timeout: None, ..build.clone() })?;
    let report = boottest::run(&built.lab, BOOT_TIMEOUT, "", None)?;
    if report.verdict.to_string() != "check-failed:roundtrip" || !report.detail.contains("klab: WRONG") {
        bail!(
            "a failing check: expected verdict check-failed:roundtrip naming the expectation, got {} ({})",
            report.verdict,
            report.detail
        );
    }
    eprintln!("    verdict {}: {}", report.verdict, report.detail);

    eprintln!("==> exercise: a module recipe without CONFIG_MODULES fails after configure, before the kernel build");
    let recipe = copy("module", &|r| {
        r.config.fragments.retain(|f| f != "modules.config");
        r.kernel.build = Some("nomodules".into());
    })?;
    let renamed = dir.join("module-nomodules.yaml");
    std::fs::rename(&recipe.path, &renamed)?;
    let recipe = crate::recipe::load(&renamed)?;
    let err = match pipeline::kernel(sh, layout, &FetchPlan { recipe, ..plan.clone() }, &BuildPlan { boot_timeout: None, ..build.clone() })
    {
        Ok(_) => bail!("a module recipe without modules.config built a lab"),
        Err(e) => format!("{e:#}"),
    };
    if !err.contains("need CONFIG_MODULES=y") || !err.contains("modules.config") {
        bail!("a module recipe without CONFIG_MODULES: the error does not say what modules need:\n{err}");
    }
    eprintln!("    refused: {}", err.lines().next().unwrap_or_default());
    Ok(())
}

/// Ready labs: pack twice (identical bytes), serve on loopback, `lab fetch` through the index into
/// another artifacts directory and boot it; the curl + sha256sum + tar route boots too; a flipped
/// byte and an index with a wrong sha256 are refused with nothing installed.
fn ready_labs(sh: &Shell, layout: &Layout, lab: &Lab) -> Result<()> {
    let root = layout.artifacts.join("e2e/ready");
    let _ = std::fs::remove_dir_all(&root);
    let (dist, again) = (root.join("dist"), root.join("again"));
    eprintln!("==> ready labs: pack twice");
    let t = Instant::now();
    let packed = ready::pack(&lab.dir, &dist, ready::DEFAULT_LEVEL)?;
    let pack_secs = t.elapsed().as_secs_f64();
    ready::update_index(&dist.join("labs.json"), &packed)?;
    let second = ready::pack(&lab.dir, &again, ready::DEFAULT_LEVEL)?;
    if second.sha256 != packed.sha256 {
        bail!("packing {} twice gave different bytes: {} vs {}", lab.dir.display(), packed.sha256, second.sha256);
    }
    eprintln!("    {} ({:.1} MB in {pack_secs:.0} s), identical when packed again", packed.path.display(), packed.size as f64 / 1e6);

    let server = serve::spawn(dist.clone(), "127.0.0.1:0")?;
    let index = server.url("/labs.json");
    let exe = std::env::current_exe().context("find the running xtask")?;
    let fetched = root.join("fetched-artifacts");
    eprintln!("==> ready labs: lab fetch lts --index {index} (KERNEL_LAB_ARTIFACTS={})", fetched.display());
    let t = Instant::now();
    cmd!(sh, "{exe} lab fetch lts --index {index}").env("KERNEL_LAB_ARTIFACTS", &fetched).run().context("lab fetch through the index")?;
    eprintln!("    fetched, unpacked and checked in {:.1} s", t.elapsed().as_secs_f64());
    boot_must_pass(&Lab::open(&fetched.join("labs/lts"))?)?;

    eprintln!("==> ready labs: curl + sha256sum + tar, then boot");
    let curl = root.join("curl");
    std::fs::create_dir_all(&curl)?;
    let name = packed.path.file_name().context("pack has a name")?.to_string_lossy().into_owned();
    let (url, sha_url) = (server.url(&format!("/{name}")), server.url(&format!("/{name}.sha256")));
    {
        let _dir = sh.push_dir(&curl);
        cmd!(sh, "curl -fsSLO {url}").run()?;
        cmd!(sh, "curl -fsSLO {sha_url}").run()?;
        cmd!(sh, "sha256sum -c {name}.sha256").run()?;
        cmd!(sh, "tar --zstd -xf {name}").run()?;
    }
    boot_must_pass(&Lab::open(&curl.join(packed.manifest.pack_name()))?)?;

    eprintln!("==> ready labs: a flipped byte and a wrong sha256 in the index are refused, nothing installed");
    let refused = root.join("refused-artifacts");
    // A cache of its own: the shared one already holds the honest pack under its sha256, which
    // `lab fetch` would (rightly) use instead of downloading the tampered copy.
    let refused_cache = root.join("refused-cache");
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad)?;
    let mut bytes = std::fs::read(&packed.path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let flipped = bad.join(&name);
    std::fs::write(&flipped, &bytes)?;
    let sha = &packed.sha256;
    let out = cmd!(sh, "{exe} lab fetch {flipped} --sha256 {sha}")
        .env("KERNEL_LAB_ARTIFACTS", &refused)
        .env("KERNEL_LAB_CACHE", &refused_cache)
        .ignore_status()
        .output()?;
    must_refuse(&out, "verify sha256", &refused)?;
    let mut index_bytes: serde_json::Value = serde_json::from_slice(&std::fs::read(dist.join("labs.json"))?)?;
    index_bytes["labs"][0]["sha256"] = serde_json::Value::String(crate::hash::sha256_bytes(b"not the pack"));
    std::fs::write(dist.join("wrong.json"), serde_json::to_vec_pretty(&index_bytes)?)?;
    let wrong = server.url("/wrong.json");
    let out = cmd!(sh, "{exe} lab fetch lts --index {wrong}")
        .env("KERNEL_LAB_ARTIFACTS", &refused)
        .env("KERNEL_LAB_CACHE", &refused_cache)
        .ignore_status()
        .output()?;
    must_refuse(&out, "verify sha256", &refused)?;
    eprintln!("    both refused");
    Ok(())
}

fn boot_must_pass(lab: &Lab) -> Result<()> {
    let report = boottest::run(lab, BOOT_TIMEOUT, "", None)?;
    if !report.passed() {
        bail!("boot test of {}: {}", lab.dir.display(), report.failure_message());
    }
    eprintln!("    boot test of {}: pass in {:.1} s", lab.dir.display(), report.wall_seconds);
    Ok(())
}

/// The command failed, said `why`, and left no lab (only lock files) under `artifacts/labs`.
fn must_refuse(out: &std::process::Output, why: &str, artifacts: &std::path::Path) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains(why) {
        bail!("lab fetch should have been refused with {why:?}: status {}, stderr:\n{stderr}", out.status);
    }
    let left: Vec<String> = std::fs::read_dir(artifacts.join("labs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    if !left.is_empty() {
        bail!("a refused lab fetch left {left:?} in {}", artifacts.join("labs").display());
    }
    Ok(())
}

/// "6.12.117" from the Debian package owning `tarball` (version "6.12.117-1~deb12u1").
fn debian_upstream_version(sh: &Shell, tarball: &std::path::Path) -> Result<String> {
    let owner = cmd!(sh, "dpkg -S {tarball}")
        .quiet()
        .read()
        .with_context(|| format!("find the Debian package of {}; or pass --kernel-version", tarball.display()))?;
    let package = owner.split(':').next().unwrap_or_default().trim().to_string();
    let format = "${Version}";
    let version = cmd!(sh, "dpkg-query -W -f {format} {package}").quiet().read()?;
    let upstream = version.split('-').next().unwrap_or_default().to_string();
    crate::releases::check_version(&upstream).with_context(|| format!("version {version:?} of {package}; pass --kernel-version"))?;
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
        None => bail!("no busybox_*.orig.tar.bz2 in {}: run `sudo bash .ci/host-setup.sh --e2e`, or pass --busybox-tarball", dir.display()),
    }
}

/// "busybox_1.35.0.orig.tar.bz2" -> "1.35.0"; other names need the version in the name too.
fn busybox_version_of(tarball: &std::path::Path) -> Result<String> {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let v = name.trim_start_matches("busybox_").trim_start_matches("busybox-").trim_end_matches(".tar.bz2").trim_end_matches(".orig");
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
