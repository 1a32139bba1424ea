//! The main job: plan -> sources -> configured tree -> kernel -> busybox -> rootfs -> lab -> boot report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    boottest::{self, BootReport},
    busybox,
    cli::{BootTestArgs, ConfigAction, ConfigTreeArgs, FetchArgs, KernelArgs, RootfsBuildArgs},
    cpio, doctor,
    fetch::{self, FetchPlan, Sources},
    kbuild::{self, KernelBuild, MakePlan},
    kconfig, kexplain,
    lab::{self, Lab},
    labscripts,
    layout::{self, Layout},
    lock, manifest,
    mitigations::Mitigations,
    modules, patch, programs,
    recipe::{self, LoadedRecipe},
    releases::Request,
    rootfs::{self, GuestFile},
};

/// Turns recipe + command line into the fetch plan; every later stage reads the plan and lock.
pub fn fetch_plan(layout: &Layout, args: &FetchArgs) -> Result<FetchPlan> {
    let flag = args.channel.request();
    let name = match (&args.recipe, &flag) {
        (Some(r), _) => r.clone(),
        (None, Some(Request::Stable)) => "stable".to_string(),
        (None, _) => "lts".to_string(),
    };
    let recipe = recipe::load(&recipe::find(&layout.recipes_dir(), &name))?;
    let mut plan = FetchPlan::new(recipe, args.source.mirror()?);
    if let Some(request) = flag {
        plan.request = request;
    }
    plan.keyring = args.source.keyring.clone();
    plan.locked = args.locked;
    plan.insecure_skip_signature = args.source.insecure_skip_signature;
    plan.busybox_keyring = args.source.busybox_keyring.clone();
    plan.allow_downgrade = args.allow_downgrade;
    Ok(plan)
}

/// Everything the `kernel` job does after fetching, decided before anything runs.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub make: MakePlan,
    /// `None`: stop after building the lab.
    pub boot_timeout: Option<Duration>,
    /// The boot test's mitigation profile (`None`: the recipe's); checked right after configure.
    pub mitigations: Option<String>,
}

impl BuildPlan {
    pub fn of(args: &KernelArgs) -> BuildPlan {
        BuildPlan {
            make: args.make.plan(),
            boot_timeout: (!args.no_boot_test).then(|| Duration::from_secs(args.boot_timeout)),
            mitigations: args.mitigations.clone(),
        }
    }
}

/// Phase timings for the closing table.
#[derive(Default)]
pub struct Timings(Vec<Phase>);

/// One timed phase; `beside` names the phase it ran at the same time as, and `overhang` is how
/// much longer it took than that one (the only part of it the total counts).
struct Phase {
    name: &'static str,
    took: Duration,
    beside: Option<(&'static str, Duration)>,
}

impl Timings {
    pub fn time<T>(&mut self, phase: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("==> {phase}");
        let start = Instant::now();
        let out = f();
        self.0.push(Phase { name: phase, took: start.elapsed(), beside: None });
        out
    }
    /// A phase that ran at the same time as the phase `beside` (already recorded): listed, and
    /// only the time it outlasted `beside` is added to the total.
    pub fn beside(&mut self, phase: &'static str, took: Duration, beside: &'static str) {
        let other = self.0.iter().rev().find(|p| p.name == beside).map_or(Duration::ZERO, |p| p.took);
        self.0.push(Phase { name: phase, took, beside: Some((beside, took.saturating_sub(other))) });
    }
    pub fn phases(&self) -> Vec<manifest::Phase> {
        self.0
            .iter()
            .map(|p| manifest::Phase {
                phase: match p.beside {
                    None => p.name.to_string(),
                    Some((b, _)) => format!("{} (beside {b})", p.name),
                },
                seconds: (p.took.as_secs_f64() * 10.0).round() / 10.0,
            })
            .collect()
    }
    /// Wall time: phases one after the other, plus what a phase beside another outlasted it by.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|p| p.beside.map_or(p.took, |(_, overhang)| overhang)).sum()
    }
    pub fn print(&self) {
        println!("{:<12} {:>9}", "phase", "seconds");
        for p in &self.0 {
            match p.beside {
                None => println!("{:<12} {:>9.2}", p.name, p.took.as_secs_f64()),
                Some((b, overhang)) => {
                    println!(
                        "{:<12} {:>9.2}  (beside {b}; {:.2} s after it, in the total)",
                        p.name,
                        p.took.as_secs_f64(),
                        overhang.as_secs_f64()
                    )
                }
            }
        }
        println!("{:<12} {:>9.2}", "total", self.total().as_secs_f64());
    }
}

/// What `kernel` made: the lab and the boot report if it ran.
pub struct Built {
    pub lab: Lab,
    pub report: Option<BootReport>,
}

/// `cargo xtask kernel`: the command layer turns a failing boot report into an error.
pub fn kernel_command(sh: &Shell, layout: &Layout, args: &KernelArgs) -> Result<()> {
    let plan = fetch_plan(layout, &args.fetch)?;
    if args.dry_run {
        return print_plan(layout, &plan);
    }
    if args.configure_only {
        let tree = configure_only(sh, layout, &plan, args.mitigations.as_deref())?;
        println!("configured: {} (every requested option survived; nothing built)", tree.dir.display());
        return Ok(());
    }
    let built = kernel(sh, layout, &plan, &BuildPlan::of(args))?;
    if let Some(report) = &built.report {
        if !report.passed() {
            bail!("boot test of {}: {}", built.lab.dir.display(), report.failure_message());
        }
    }
    Ok(())
}

/// The main job from a plan: fetch, build the lab and (unless told not to) boot-test it.
pub fn kernel(sh: &Shell, layout: &Layout, plan: &FetchPlan, build: &BuildPlan) -> Result<Built> {
    doctor::require()?;
    let mut t = Timings::default();
    let sources = t.time("fetch", || fetch::run(layout, plan))?;
    let (lab, _) = build_lab(sh, layout, &plan.recipe, &sources, &build.make, build.mitigations.as_deref(), &mut t)?;
    let report = match build.boot_timeout {
        Some(timeout) => {
            // Held across the test and the record, so the verdict lands in the lab it is about.
            let _hold = lab.lock_shared()?;
            let report = t.time("boot-test", || boottest::run(&lab, timeout, "", build.mitigations.as_deref()));
            t.print();
            let report = report?;
            manifest::record_boot(&lab.dir, &report.verdict.to_string(), report.wall_seconds)?;
            println!("boot test: {} ({:.1} s), report {}", report.verdict, report.wall_seconds, report.report.display());
            Some(report)
        }
        None => {
            t.print();
            None
        }
    };
    println!("lab: {}", lab.dir.display());
    Ok(Built { lab, report })
}

fn print_plan(layout: &Layout, plan: &FetchPlan) -> Result<()> {
    println!("recipe:   {} ({})", plan.recipe.name, plan.recipe.path.display());
    println!("request:  {}", plan.request);
    println!("mirror:   {}", plan.mirror.describe());
    println!("lock:     {}", plan.recipe.lock_path().display());
    // A dry run resolves but writes nothing, not even the lock.
    let lock = if plan.locked { fetch::lock_for(layout, plan)?.0 } else { fetch::resolve(layout, plan)?.0 };
    let k = &lock.kernel;
    println!("kernel:   {} sha256 {}\n          {}", k.version, k.sha256, plan.mirror.kernel_org(&k.path));
    let b = &lock.busybox;
    println!("busybox:  {} sha256 {}\n          {}", b.version, b.sha256, plan.mirror.busybox(&b.path));
    println!("sources:  {}", layout.kernel_src(&k.version).display());
    println!("build:    {}", layout.kernel_build(plan.recipe.kernel_build_name(), &k.version).display());
    println!("lab:      {}", layout.lab(&plan.recipe.name, &k.version).display());
    Ok(())
}

/// Configure, build, busybox, rootfs, scripts, and the lab assembled from them.
pub fn build_lab(
    sh: &Shell,
    layout: &Layout,
    recipe: &LoadedRecipe,
    sources: &Sources,
    make: &MakePlan,
    boot_profile: Option<&str>,
    t: &mut Timings,
) -> Result<(Lab, KernelBuild)> {
    let lock = &sources.lock;
    let version = &lock.kernel.version;
    let r = &recipe.recipe;
    let epoch = fetch::release_epoch(lock, &sources.kernel_src)?;
    let tree = configure_recipe(sh, layout, recipe, sources, boot_profile, t)?;
    let ConfiguredBuild { src, dir: kbuild_dir, patches, fragments, identity, profile, kernel_lacks, .. } = &tree;
    let patch_files: Vec<PathBuf> = patches.iter().map(|(_, p)| p.clone()).collect();
    let inputs = kbuild::BuildInputs {
        tarball_sha256: &lock.kernel.sha256,
        recipe: identity.as_bytes(),
        fragments,
        patches: &patch_files,
        base: r.config.base,
    };
    // busybox builds beside the kernel, at the lowest CPU priority, so it takes only what the
    // kernel leaves idle (its links, kallsyms, compression). Measured with -j2 on 2 cores: kernel
    // 278 s with busybox beside it, against 251 s + 25 s one after the other (at equal priority
    // the kernel took 287 s): no measurable gain, since kbuild keeps both cores busy, and no loss;
    // the busybox phase leaves the critical path. Both finish before either error is reported,
    // the kernel's first.
    let (kernel, bb) = std::thread::scope(|scope| {
        // The same shell (environment, directory), a copy of its own: a Shell is not Sync.
        let bb_sh = sh.clone();
        let busybox = scope.spawn(move || {
            let start = Instant::now();
            let background = MakePlan { background: true, ..*make };
            (build_busybox(&bb_sh, layout, recipe, sources, &background, epoch), start.elapsed())
        });
        let kernel = t.time("kernel", || kbuild::build(sh, src, kbuild_dir, &inputs, make, epoch));
        let (bb, took) = busybox.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        t.beside("busybox", took, "kernel");
        (kernel, bb)
    });
    let bb = bb.with_context(|| format!("build busybox-{}", lock.busybox.version));
    let kernel = match (kernel, &bb) {
        (Err(e), Err(b)) => return Err(e.context(format!("build linux-{version} (busybox beside it failed too: {b:#})"))),
        (kernel, _) => kernel.with_context(|| format!("build linux-{version}"))?,
    };
    if kernel.up_to_date {
        eprintln!("kernel up to date ({})", kbuild_dir.display());
    }
    let bb = bb?;

    let exercise = if r.rootfs.programs.is_empty() && r.modules.is_empty() {
        Exercise::default()
    } else {
        t.time("exercise", || build_exercise(sh, layout, recipe, src, &kernel, version, make, epoch))?
    };

    let dest = layout.lab(&recipe.name, version);
    let phases = t.phases();
    let lab = t
        .time("lab", || {
            let rootfs = rootfs_archive(recipe, &bb, version, epoch, &exercise)?;
            let scripts = labscripts::render(&labscripts::LabInfo {
                recipe: recipe.name.clone(),
                kernel_version: version.clone(),
                busybox_version: lock.busybox.version.clone(),
                user: r.rootfs.user.clone(),
                uid: r.rootfs.uid,
                password: r.rootfs.password.clone(),
                qemu: r.qemu.clone(),
                source_dir: Some(src.clone()),
                build_dir: Some(kbuild_dir.clone()),
                modules: exercise.modules.iter().map(|m| (m.file.clone(), m.load)).collect(),
                module_sources: r.modules.iter().map(|m| format!("{}/recipes/{}", lab::INPUTS, m.dir.display())).collect(),
                programs: r.rootfs.programs.iter().map(|p| p.guest.clone()).collect(),
                checks: r.boot_test.checks.iter().map(|c| c.name.to_string()).collect(),
                mitigations: profile.clone(),
                kernel_lacks: kernel_lacks.clone(),
            })?;
            let (inputs, manifest) = provenance(sh, layout, recipe, sources, fragments, patches, &kernel, epoch, phases.clone())?;
            let desc = lab::Description {
                recipe: recipe.name.clone(),
                kernel_version: version.clone(),
                busybox_version: lock.busybox.version.clone(),
                smp: r.qemu.smp,
                uid: r.rootfs.uid,
                nic: r.qemu.nic,
                checks: r.boot_test.checks.clone(),
                mitigations: Some(profile.spec.clone()),
            };
            let module_files: Vec<(String, PathBuf)> = exercise.modules.iter().map(|m| (m.file.clone(), m.ko.clone())).collect();
            let parts = lab::Parts {
                kernel: &kernel,
                kernel_src: src,
                rootfs: &rootfs,
                scripts: &scripts,
                desc: &desc,
                inputs: &inputs,
                manifest: &manifest,
                modules: &module_files,
            };
            let (lab, wrote) = lab::assemble(sh, &dest, &parts)?;
            if !wrote {
                eprintln!("lab up to date ({})", lab.dir.display());
            }
            lab::link_latest(&layout.lab_link(&recipe.name), &lab.dir)?;
            Ok(lab)
        })
        .context("assemble the lab")?;
    Ok((lab, kernel))
}

/// A recipe's kernel tree, configured: every requested option is in its `.config`, and the
/// options its mitigation profile switches.
pub struct ConfiguredBuild {
    /// The sources: the extracted tree, or its copy with the recipe's patches applied.
    src: PathBuf,
    /// The build directory (`O=`) with the `.config`.
    pub dir: PathBuf,
    /// The recipe's patches: (name as written, file).
    patches: Vec<(String, PathBuf)>,
    /// The recipe's fragments, as files.
    fragments: Vec<PathBuf>,
    /// `LoadedRecipe::kernel_identity`, recorded in the build directory.
    identity: String,
    /// The recipe's mitigation profile, which the configured kernel can give.
    profile: Mitigations,
    /// The options of the `hardened` profile the configured kernel lacks.
    kernel_lacks: Vec<(crate::mitigations::Item, &'static str)>,
    /// Recipes may share a build (`kernel.build`): one run at a time configures, builds and
    /// builds modules in it, and only recipes that ask for the same kernel take turns.
    _lock: lab::LabLock,
}

/// Patches the sources when the recipe has patches, configures the recipe's build directory and
/// proves that every requested option survived (`kbuild::configure`); a recipe with modules
/// also needs CONFIG_MODULES, and the recipe's mitigation profile (and `boot_profile`, the boot
/// test's) the options that switch it. Nothing is compiled.
fn configure_recipe(
    sh: &Shell,
    layout: &Layout,
    recipe: &LoadedRecipe,
    sources: &Sources,
    boot_profile: Option<&str>,
    t: &mut Timings,
) -> Result<ConfiguredBuild> {
    let version = &sources.lock.kernel.version;
    let r = &recipe.recipe;
    let patches = patch_paths(layout, recipe)?;
    // The pristine tree stays as extracted; patches go into a copy named by the patch set.
    let src = if patches.is_empty() {
        sources.kernel_src.clone()
    } else {
        let dest = layout.patched_src(version, &patch::digest(&patches)?);
        t.time("patch", || patch::patched_tree(&sources.kernel_src, &dest, &patches))
            .with_context(|| format!("{}: apply kernel.patches to linux-{version}", recipe.line_of("patches:")))?;
        dest
    };
    let dir = layout.kernel_build(recipe.kernel_build_name(), version);
    let identity = recipe.kernel_identity()?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let lock = lab::LabLock::exclusive(&dir)?;
    claim_build(&dir, recipe, &identity)?;
    let fragments: Vec<PathBuf> = r.config.fragments.iter().map(|f| fragment_path(layout, &recipe.path, f)).collect::<Result<_>>()?;
    // busybox's inputs are checked now, not after the kernel build it runs beside.
    check_busybox_applets(layout, recipe, sources)?;
    t.time("configure", || kbuild::configure(sh, &src, &dir, r.config.base, &fragments, version, r.qemu.nic))
        .with_context(|| format!("configure linux-{version}"))?;
    // Before the long build: a recipe with modules needs a kernel that loads them, and its
    // mitigation profile (and the boot test's) needs the options that switch it.
    modules::require_modules_support(recipe, &dir.join(".config"))?;
    let config_path = dir.join(".config");
    let config = std::fs::read_to_string(&config_path).with_context(|| format!("read {}", config_path.display()))?;
    let profile = recipe.mitigations()?;
    let boot = boot_profile.map(|p| Mitigations::parse(p, &profile.spec)).transpose().context("--mitigations")?;
    for (m, whose) in
        std::iter::once((&profile, recipe.line_of("mitigations:"))).chain(boot.iter().map(|b| (b, "--mitigations".to_string())))
    {
        if let Some((item, option)) = m.missing_options(&config).first() {
            bail!(
                "{whose}: mitigations {} needs {item}=on, but {} lacks {option}: add mitigations.config to config.fragments (or ask for {item}=off)",
                m.spec,
                config_path.display()
            );
        }
    }
    let kernel_lacks = Mitigations::parse("hardened", "none")?.missing_options(&config);
    Ok(ConfiguredBuild { src, dir, patches, fragments, identity, profile, kernel_lacks, _lock: lock })
}

/// `kernel --configure-only`: fetch, then configure the recipe's build directory and prove every
/// requested option survived, without building a kernel, busybox or a lab (CI checks recipes it
/// does not build this way). The tree stays configured for a later `kernel` run.
pub fn configure_only(sh: &Shell, layout: &Layout, plan: &FetchPlan, boot_profile: Option<&str>) -> Result<ConfiguredBuild> {
    let mut t = Timings::default();
    let sources = t.time("fetch", || fetch::run(layout, plan))?;
    let tree = configure_recipe(sh, layout, &plan.recipe, &sources, boot_profile, &mut t);
    t.print();
    tree
}

/// Records which recipe's kernel a build directory holds, and refuses a shared `kernel.build`
/// whose recipes ask for different kernels (they would rebuild it in turn, each lab's gdb paths
/// pointing at the other's tree).
fn claim_build(dir: &Path, recipe: &LoadedRecipe, identity: &str) -> Result<()> {
    const OWNER: &str = ".kernel-lab-identity";
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(OWNER);
    let mine = format!("{}\n{identity}\n", recipe.name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Some((owner, theirs)) = text.split_once('\n') {
            if owner != recipe.name && theirs.trim_end() != identity {
                bail!(
                    "{}: kernel.build {:?} ({}) holds recipe {owner:?}'s kernel, and {:?} asks for a different one (kernel, config, patches or NIC): give one of them its own kernel.build",
                    recipe.line_of("build:"),
                    recipe.kernel_build_name(),
                    dir.display(),
                    recipe.name
                );
            }
        }
    }
    layout::write_atomic(&path, mine.as_bytes())
}

/// A recipe's programs and modules, built for the guest.
#[derive(Default)]
struct Exercise {
    files: Vec<GuestFile>,
    modules: Vec<modules::BuiltModule>,
}

/// Compiles `rootfs.programs` and builds `modules` against the lab kernel.
#[allow(clippy::too_many_arguments)]
fn build_exercise(
    sh: &Shell,
    layout: &Layout,
    recipe: &LoadedRecipe,
    src: &Path,
    kernel: &KernelBuild,
    version: &str,
    make: &MakePlan,
    epoch: u64,
) -> Result<Exercise> {
    let r = &recipe.recipe;
    let work = layout.exercise_build(&recipe.name, version);
    let mut files = Vec::new();
    for p in &r.rootfs.programs {
        let origin = recipe.line_of(&p.src.display().to_string());
        let name = p.src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let out = programs::compile(sh, &recipe.dir().join(&p.src), &work.join("programs").join(&name), epoch, &origin)?;
        let data = std::fs::read(&out).with_context(|| format!("read {}", out.display()))?;
        let (uid, gid) = (p.uid.unwrap_or(r.rootfs.uid), p.gid.unwrap_or(r.rootfs.uid));
        files.push(GuestFile { path: p.guest.clone(), mode: p.mode.map_or(0o755, |m| m.0), uid, gid, data });
    }
    let built = modules::build(sh, recipe, kernel, src, &work.join("modules"), make, epoch)?;
    // The version /init's insmod lines use too (the generated config makes `uname -r` exactly it).
    let dir = modules::guest_dir(version);
    for m in &built {
        let data = std::fs::read(&m.ko).with_context(|| format!("read {}", m.ko.display()))?;
        files.push(GuestFile { path: format!("{dir}/{}", m.file), mode: 0o644, uid: 0, gid: 0, data });
    }
    Ok(Exercise { files, modules: built })
}

/// Where a patch `patch_paths` found at `path` goes in the lab's `inputs/` (a checkout): beside
/// the recipe when it was found there, else in `recipes/patches/`, so that `patch_paths` finds it
/// the same way in the copy.
fn patch_input(recipe: &LoadedRecipe, name: &str, path: &Path) -> String {
    if path == recipe.dir().join(name) {
        format!("recipes/{name}")
    } else {
        format!("recipes/patches/{name}")
    }
}

/// The recipe's patches: (name as written, file), each beside the recipe or in `recipes/patches/`.
fn patch_paths(layout: &Layout, recipe: &LoadedRecipe) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for name in &recipe.recipe.kernel.patches {
        let beside = recipe.dir().join(name);
        let shared = layout.recipes_dir().join("patches").join(name);
        let path = if beside.is_file() {
            beside
        } else if shared.is_file() {
            shared
        } else {
            bail!(
                "{}: kernel.patches: {name:?} is neither {} nor {}: fix the name or add the patch",
                recipe.line_of(name),
                beside.display(),
                shared.display()
            );
        };
        out.push((name.clone(), path));
    }
    Ok(out)
}

/// A lab's `inputs/`: (path under `inputs/`, bytes).
type Inputs = Vec<(String, Vec<u8>)>;

/// The lab's `inputs/` (recipe, lock and fragments, laid out like a checkout) and its manifest
/// without the file list.
#[allow(clippy::too_many_arguments)]
fn provenance(
    sh: &Shell,
    layout: &Layout,
    recipe: &LoadedRecipe,
    sources: &Sources,
    fragments: &[PathBuf],
    patches: &[(String, PathBuf)],
    kernel: &KernelBuild,
    epoch: u64,
    phases: Vec<manifest::Phase>,
) -> Result<(Inputs, manifest::Manifest)> {
    let r = &recipe.recipe;
    let lock = &sources.lock;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let recipe_bytes = read(&recipe.path)?;
    let mut inputs = vec![
        (format!("recipes/{}.yaml", recipe.name), recipe_bytes.clone()),
        (format!("recipes/{}.lock", recipe.name), lock::to_text(lock)?.into_bytes()),
    ];
    let mut listed = |names: &[String], paths: &[PathBuf], under: &str| -> Result<Vec<manifest::Input>> {
        let mut out = Vec::new();
        for (name, path) in names.iter().zip(paths) {
            let bytes = read(path)?;
            // A fragment outside configs/ (`../x`) is listed but cannot be copied as an input.
            if manifest::check_rel_path(name).is_ok() {
                inputs.push((format!("configs/{under}{name}"), bytes.clone()));
            }
            out.push(manifest::Input { name: name.clone(), sha256: crate::hash::sha256_bytes(&bytes) });
        }
        Ok(out)
    };
    let fragments = listed(&r.config.fragments, fragments, "")?;
    let (bb_names, bb_paths): (Vec<String>, Vec<PathBuf>) = busybox_inputs(layout, recipe)?.into_iter().unzip();
    let busybox_fragments = listed(&bb_names, &bb_paths, "busybox/")?;
    // Patches, programs and module sources, where a checkout of the inputs finds them again.
    let mut patch_inputs = Vec::new();
    for (name, path) in patches {
        let bytes = read(path)?;
        let under = patch_input(recipe, name, path);
        inputs.push((under, bytes.clone()));
        patch_inputs.push(manifest::Input { name: name.clone(), sha256: crate::hash::sha256_bytes(&bytes) });
    }
    for p in &r.rootfs.programs {
        inputs.push((format!("recipes/{}", p.src.display()), read(&recipe.dir().join(&p.src))?));
    }
    for m in &r.modules {
        for (rel, bytes) in read_tree(&recipe.dir().join(&m.dir))? {
            inputs.push((format!("recipes/{}/{rel}", m.dir.display()), bytes));
        }
    }
    let b = &lock.busybox;
    let m = manifest::Manifest {
        schema: manifest::SCHEMA,
        reproducible: manifest::Reproducible {
            arch: manifest::ARCH.into(),
            recipe: manifest::Input { name: recipe.name.clone(), sha256: crate::hash::sha256_bytes(&recipe_bytes) },
            kernel: manifest::Source {
                version: lock.kernel.version.clone(),
                path: lock.kernel.path.clone(),
                sha256: lock.kernel.sha256.clone(),
                verified_by: if sources.kernel_signer.is_some() { "signed-sums" } else { "unverified" }.into(),
                signer: sources.kernel_signer.clone(),
            },
            busybox: manifest::Source {
                version: b.version.clone(),
                path: b.path.clone(),
                sha256: b.sha256.clone(),
                verified_by: match &sources.busybox_signer {
                    Some(_) => serde_json::to_value(b.check)?.as_str().unwrap_or_default().to_string(),
                    None => "unverified".into(),
                },
                signer: sources.busybox_signer.clone(),
            },
            config: manifest::Config {
                base: serde_json::to_value(r.config.base)?.as_str().unwrap_or_default().to_string(),
                fragments,
                busybox_fragments,
                final_sha256: crate::hash::sha256_file(&kernel.dir.join(".config"))?,
            },
            patches: patch_inputs,
            settings: kbuild::settings(epoch),
            toolchain: kbuild::toolchain(sh)?,
            files: vec![],
        },
        host: manifest::host_now(phases),
    };
    Ok((inputs, m))
}

/// Every regular file below `dir`: (relative path, bytes), sorted.
fn read_tree(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("read {}", dir.display()))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("inspect {}", path.display()))?;
        if meta.is_dir() {
            out.extend(read_tree(&path)?.into_iter().map(|(rel, b)| (format!("{name}/{rel}"), b)));
        } else if meta.is_file() {
            out.push((name, std::fs::read(&path).with_context(|| format!("read {}", path.display()))?));
        }
    }
    Ok(out)
}

/// The recipe's busybox inputs in `configs/busybox/` (or beside the recipe), by name: its applets
/// file first (unless `applets: all`), then its fragments.
fn busybox_inputs(layout: &Layout, recipe: &LoadedRecipe) -> Result<Vec<(String, PathBuf)>> {
    let b = &recipe.recipe.busybox;
    b.applets_file()
        .into_iter()
        .chain(b.fragments.iter().map(String::as_str))
        .map(|f| Ok((f.to_string(), fragment_path(layout, &recipe.path, &format!("busybox/{f}"))?)))
        .collect()
}

/// The recipe's busybox inputs exist, and its applets file names only this busybox's applets,
/// the ones the lab's scripts call among them; cheap, so it runs before any build.
fn check_busybox_applets(layout: &Layout, recipe: &LoadedRecipe, sources: &Sources) -> Result<()> {
    let inputs = busybox_inputs(layout, recipe)?;
    if recipe.recipe.busybox.applets_file().is_some() {
        busybox::check_applets(&sources.busybox_src, &inputs[0].1)
            .with_context(|| format!("recipe {}: busybox.applets", recipe.path.display()))?;
    }
    Ok(())
}

/// A built busybox, read while its build directory was locked: a concurrent run with other
/// busybox inputs may rebuild the directory's binary as soon as the lock is released.
struct Busybox {
    binary: Vec<u8>,
    /// `busybox --list-full` of that binary.
    applets: Vec<String>,
}

/// The recipe's static busybox: its applets and fragments from `configs/busybox/`.
fn build_busybox(sh: &Shell, layout: &Layout, recipe: &LoadedRecipe, sources: &Sources, make: &MakePlan, epoch: u64) -> Result<Busybox> {
    let mut inputs = busybox_inputs(layout, recipe)?.into_iter().map(|(_, p)| p);
    let applets = if recipe.recipe.busybox.applets_file().is_some() { inputs.next() } else { None };
    let fragments: Vec<PathBuf> = inputs.collect();
    let b = &sources.lock.busybox;
    let dir = layout.busybox_build(&b.version, recipe.recipe.busybox.applets_file());
    // Two runs (recipes sharing busybox) take turns in the build directory.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let _turn = crate::download::lock_path(&layout::hidden_sibling(&dir, "lock"), &format!("building busybox in {}", dir.display()))?;
    let path = busybox::build(sh, &sources.busybox_src, &dir, applets.as_deref(), &fragments, &b.sha256, make, epoch)?;
    let binary = std::fs::read(&path).with_context(|| format!("read the busybox binary {}", path.display()))?;
    Ok(Busybox { applets: rootfs::applets(&path)?, binary })
}

/// The recipe's rootfs.cpio bytes, every entry dated `epoch`.
fn rootfs_archive(recipe: &LoadedRecipe, busybox: &Busybox, kernel_version: &str, epoch: u64, exercise: &Exercise) -> Result<Vec<u8>> {
    let r = &recipe.recipe;
    let archive = rootfs::build(&rootfs::RootfsInput {
        spec: &r.rootfs,
        recipe_dir: recipe.dir(),
        busybox: &busybox.binary,
        applets: busybox.applets.clone(),
        kernel_version,
        nic: r.qemu.nic,
        built: &exercise.files,
        insmod: &modules::insmod_lines(&exercise.modules, kernel_version),
        checks: &r.boot_test.checks,
    })?;
    let mtime = u32::try_from(epoch).context("release date after 2106: cpio mtimes are 32-bit")?;
    cpio::to_bytes(&archive, mtime, r.rootfs.gzip)
}

/// A fragment named in a recipe: `configs/<name>`, or a path relative to the recipe.
fn fragment_path(layout: &Layout, recipe_path: &Path, name: &str) -> Result<PathBuf> {
    let in_configs = layout.configs_dir().join(name);
    if in_configs.is_file() {
        return Ok(in_configs);
    }
    let beside = recipe_path.parent().unwrap_or(Path::new(".")).join(name);
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "recipe {}: fragment {name:?} is neither {} nor {}; list fragments with `ls configs/`",
        recipe_path.display(),
        in_configs.display(),
        beside.display()
    )
}

/// `cargo xtask boot-test`: a failing verdict is an error here, and only here.
pub fn boot_test_command(layout: &Layout, args: &BootTestArgs) -> Result<()> {
    let dir = match (&args.lab, &args.recipe) {
        (Some(dir), _) => dir.clone(),
        (None, r) => layout.lab_link(r.as_deref().unwrap_or("lts")),
    };
    let lab = Lab::open(&dir)?;
    let report = boottest::run(&lab, Duration::from_secs(args.timeout), &args.append, args.mitigations.as_deref())?;
    if !report.passed() {
        bail!("boot test of {}: {}", lab.dir.display(), report.failure_message());
    }
    println!("boot test: {} in {:.1} s; report {}", report.verdict, report.wall_seconds, report.report.display());
    Ok(())
}

/// `cargo xtask rootfs`: fetch, build busybox and write the recipe's rootfs.cpio.
pub fn rootfs_command(sh: &Shell, layout: &Layout, args: &RootfsBuildArgs) -> Result<()> {
    let plan = fetch_plan(layout, &args.fetch)?;
    let sources = fetch::run(layout, &plan)?;
    let lock = &sources.lock;
    let epoch = fetch::release_epoch(lock, &sources.kernel_src)?;
    if !plan.recipe.recipe.rootfs.programs.is_empty() || !plan.recipe.recipe.modules.is_empty() {
        bail!(
            "recipe {} has programs or modules, which need the kernel build: use `cargo xtask kernel --recipe {}`",
            plan.recipe.name,
            plan.recipe.name
        );
    }
    check_busybox_applets(layout, &plan.recipe, &sources)?;
    let bb = build_busybox(sh, layout, &plan.recipe, &sources, &args.make.plan(), epoch)?;
    let bytes = rootfs_archive(&plan.recipe, &bb, &lock.kernel.version, epoch, &Exercise::default())?;
    let out = layout.rootfs_dir(&plan.recipe.name, &lock.kernel.version).join(lab::ROOTFS);
    crate::layout::write_atomic(&out, &bytes)?;
    println!("rootfs: {}", out.display());
    Ok(())
}

/// A recipe's configured tree, as `config explain` and `config fix` read it.
struct ConfiguredTree {
    src: PathBuf,
    build: PathBuf,
    recipe: LoadedRecipe,
    config: Vec<kconfig::Entry>,
}

fn configured_tree(layout: &Layout, args: &ConfigTreeArgs) -> Result<ConfiguredTree> {
    let recipe = recipe::load(&recipe::find(&layout.recipes_dir(), &args.recipe))?;
    let version = match &args.version {
        Some(v) => v.clone(),
        None => match lock::read(&recipe.lock_path())? {
            Some(l) => l.kernel.version,
            None => bail!(
                "recipe {} has no lock {}: pass --version, or run `cargo xtask kernel --recipe {}` to fetch and configure first",
                recipe.name,
                recipe.lock_path().display(),
                recipe.name
            ),
        },
    };
    let src = layout.kernel_src(&version);
    let build = layout.kernel_build(recipe.kernel_build_name(), &version);
    let config_path = build.join(".config");
    if !config_path.is_file() {
        bail!(
            "{} is missing: the recipe {} has no configured tree for linux-{version}; run `cargo xtask kernel --recipe {}` (it stops after configure when options are lost)",
            config_path.display(),
            recipe.name,
            recipe.name
        );
    }
    let config = kconfig::parse_file(&config_path)?;
    Ok(ConfiguredTree { src, build, recipe, config })
}

/// `cargo xtask config explain|fix`: the Kconfig analysis against a configured tree, without building.
pub fn config_command(sh: &Shell, layout: &Layout, action: &ConfigAction) -> Result<()> {
    let (tree_args, symbols, out) = match action {
        ConfigAction::Explain { symbols, tree } => (tree, Some(symbols), None),
        ConfigAction::Fix { tree, out } => (tree, None, Some(out)),
    };
    let t = configured_tree(layout, tree_args)?;
    let index = kconfig::index(&t.src, None)?;
    let tree = kexplain::load(&t.src, kexplain::SRCARCH)?;
    let scratch = layout::scratch_sibling(&t.build, "verify");
    let mut run = |assign: &[kexplain::Assign]| kexplain::olddefconfig_with(sh, &t.src, &t.build, &scratch, assign);
    let an = kexplain::Analysis::new(&tree, &index, &t.config);
    // What the recipe asks for (its fragments and the generated one): a fix must keep all of it.
    let mut fragments: Vec<PathBuf> =
        t.recipe.recipe.config.fragments.iter().map(|f| fragment_path(layout, &t.recipe.path, f)).collect::<Result<_>>()?;
    fragments.push(t.build.join(kbuild::GENERATED_FRAGMENT));
    let mut recipe_requests = Vec::new();
    for f in &fragments {
        recipe_requests.extend(kconfig::parse_file(f)?);
    }
    if let Some(symbols) = symbols {
        let asked: Vec<kconfig::Entry> = symbols.iter().map(|s| kexplain::parse_request(s)).collect::<Result<_>>()?;
        for r in &asked {
            let now = kexplain::current_value(&t.config, &r.symbol);
            println!("CONFIG_{}: asked {}, now {now} in {}", r.symbol, r.value, t.build.join(".config").display());
            let lost = kexplain::lost(&an, std::slice::from_ref(r));
            let problems = lost.first().map(|l| l.problems.clone()).unwrap_or_default();
            if problems.is_empty() {
                println!("    survives: nothing to fix");
            }
            print!("{}", kexplain::describe(&an, &r.symbol, &problems));
        }
        // The recipe's requests come first, so the ones asked here win where they differ, and a
        // fix that would drop one of the recipe's options is a conflict, not "verified".
        let requested: Vec<kconfig::Entry> = recipe_requests.into_iter().chain(asked).collect();
        let v = kexplain::verified_fix(&tree, &index, &t.config, &requested, &mut run)?;
        print!("{}", kexplain::render_fix(&v));
        return Ok(());
    }
    let out = out.expect("fix has --out");
    let requested = recipe_requests;
    let lost = kexplain::lost(&an, &requested);
    for l in &lost {
        print!("{}", kexplain::explain(&an, l));
    }
    let v = kexplain::verified_fix(&tree, &index, &t.config, &requested, &mut run)?;
    print!("{}", kexplain::render_fix(&v));
    let header = if lost.is_empty() {
        "# kernel-lab: every requested option survives; nothing to add.\n".to_string()
    } else if v.still_lost.is_empty() {
        format!("# kernel-lab fix for recipe {}: verified with olddefconfig.\n", t.recipe.name)
    } else {
        format!("# kernel-lab fix for recipe {}: NOT verified, olddefconfig still drops {}.\n", t.recipe.name, v.still_lost.join(", "))
    };
    let mut text = header;
    for (sym, why) in &v.suggestion.unfixable {
        text.push_str(&format!("# no fix for CONFIG_{sym}: {why}\n"));
    }
    text.push_str(&kconfig::render(&v.suggestion.fragment));
    std::fs::write(out, text).with_context(|| format!("write the fragment to {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patch from `recipes/patches/` goes to `inputs/recipes/patches/`, one beside the recipe
    /// beside it; in a checkout of those inputs (what `verify` builds from), each resolves to the
    /// same place again. (verify of the module lab found the shared patch moved.)
    #[test]
    fn patch_inputs_resolve_the_same_way_in_a_checkout_of_them() {
        let dir = crate::testutil::scratch("patch-inputs");
        let text =
            crate::recipe::tests::MINIMAL.replace("channel: longterm", "channel: longterm\n  patches: [shared.patch, own/beside.patch]");
        let place = |root: &Path, recipe_dir: &Path| {
            let layout = Layout { root: root.to_path_buf(), artifacts: root.join("artifacts"), cache: root.join("cache") };
            std::fs::create_dir_all(recipe_dir.join("own")).unwrap();
            std::fs::create_dir_all(layout.recipes_dir().join("patches")).unwrap();
            std::fs::write(recipe_dir.join("r.yaml"), &text).unwrap();
            std::fs::write(recipe_dir.join("own/beside.patch"), "b").unwrap();
            std::fs::write(layout.recipes_dir().join("patches/shared.patch"), "s").unwrap();
            let recipe = recipe::load(&recipe_dir.join("r.yaml")).unwrap();
            let found = patch_paths(&layout, &recipe).unwrap();
            found.iter().map(|(name, path)| (patch_input(&recipe, name, path), std::fs::read_to_string(path).unwrap())).collect::<Vec<_>>()
        };
        // The e2e's layout: the recipe outside recipes/, the shared patch in the checkout's recipes/patches/.
        let repo = place(&dir.join("repo"), &dir.join("repo/artifacts/e2e/recipes"));
        let want =
            vec![("recipes/patches/shared.patch".to_string(), "s".to_string()), ("recipes/own/beside.patch".to_string(), "b".to_string())];
        assert_eq!(repo, want);
        // verify's checkout: inputs/ copied to checkout/, the recipe in checkout/recipes/.
        let checkout = place(&dir.join("checkout"), &dir.join("checkout/recipes"));
        assert_eq!(checkout, want);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Two recipes may share a kernel build only while they ask for the same kernel; one recipe
    /// may change its own kernel (it is rebuilt).
    #[test]
    fn a_shared_build_refuses_a_recipe_that_asks_for_another_kernel() {
        let dir = crate::testutil::scratch("claim-build");
        let minimal = crate::recipe::tests::MINIMAL;
        let write = |name: &str, fragments: &str| {
            let text = minimal.replace("channel: longterm", "channel: longterm\n  build: shared").replace("[lab.config]", fragments);
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, text).unwrap();
            recipe::load(&path).unwrap()
        };
        let build = dir.join("linux-6.12.1-shared");
        let a = write("a", "[lab.config]");
        let b = write("b", "[lab.config]");
        claim_build(&build, &a, &a.kernel_identity().unwrap()).unwrap();
        claim_build(&build, &b, &b.kernel_identity().unwrap()).unwrap();
        let c = write("c", "[lab.config, smp.config]");
        let e = format!("{:#}", claim_build(&build, &c, &c.kernel_identity().unwrap()).unwrap_err());
        assert!(
            e.contains("holds recipe \"b\"'s kernel") && e.contains("\"c\" asks for a different one") && e.contains("own kernel.build"),
            "{e}"
        );
        // b changing its own kernel is a rebuild, not a conflict.
        let b2 = write("b", "[lab.config, smp.config]");
        claim_build(&build, &b2, &b2.kernel_identity().unwrap()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_phase_beside_another_adds_only_its_overhang_to_the_total() {
        let mut t = Timings::default();
        t.0.push(Phase { name: "fetch", took: Duration::from_secs(8), beside: None });
        t.0.push(Phase { name: "kernel", took: Duration::from_secs(250), beside: None });
        t.beside("busybox", Duration::from_secs(30), "kernel");
        assert_eq!(t.total(), Duration::from_secs(258));
        // An up-to-date kernel: busybox's rebuild is the wall time.
        let mut t = Timings::default();
        t.0.push(Phase { name: "kernel", took: Duration::from_secs(2), beside: None });
        t.beside("busybox", Duration::from_secs(30), "kernel");
        assert_eq!(t.total(), Duration::from_secs(30));
        let names: Vec<String> = t.phases().into_iter().map(|p| p.phase).collect();
        assert_eq!(names, ["kernel", "busybox (beside kernel)"]);
    }
}
