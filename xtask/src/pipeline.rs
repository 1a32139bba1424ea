//! The main job: plan -> sources -> configured tree -> kernel -> busybox -> rootfs -> lab -> boot report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    boottest, busybox,
    cli::{FetchArgs, KernelArgs, MakeArgs},
    cpio, doctor,
    fetch::{self, FetchPlan, Sources},
    kbuild, labscripts,
    layout::Layout,
    lock::Lock,
    recipe::{self, LoadedRecipe},
    releases::Request,
    rootfs,
    source::Mirror,
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
    let request = match flag {
        Some(r) => r,
        None => request_of(&recipe),
    };
    let mirror = match &args.mirror {
        Some(url) => Mirror::new(url)?,
        None => Mirror::upstream(),
    };
    Ok(FetchPlan {
        recipe,
        request,
        mirror,
        keyring: args.keyring.clone(),
        locked: args.locked,
        insecure_skip_signature: args.insecure_skip_signature,
        busybox_keyring: args.busybox_keyring.clone(),
    })
}

fn request_of(r: &LoadedRecipe) -> Request {
    let k = &r.recipe.kernel;
    match k.channel {
        recipe::Channel::Longterm => Request::Longterm(k.series.clone()),
        recipe::Channel::Stable => Request::Stable,
        recipe::Channel::Mainline => Request::Mainline,
        recipe::Channel::Exact => Request::Exact(k.version.clone().unwrap_or_default()),
    }
}

/// Phase timings for the closing table.
#[derive(Default)]
pub struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    pub fn time<T>(&mut self, phase: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("==> {phase}");
        let start = Instant::now();
        let out = f();
        self.0.push((phase, start.elapsed()));
        out
    }
    pub fn print(&self) {
        let total: Duration = self.0.iter().map(|(_, d)| *d).sum();
        println!("{:<12} {:>9}", "phase", "seconds");
        for (phase, d) in &self.0 {
            println!("{phase:<12} {:>9.2}", d.as_secs_f64());
        }
        println!("{:<12} {:>9.2}", "total", total.as_secs_f64());
    }
}

/// Everything `cargo xtask kernel` produced.
pub struct Lab {
    pub dir: PathBuf,
    pub lock: Lock,
    pub recipe: LoadedRecipe,
}

/// The main job; `None` for a dry run, which only prints the plan.
pub fn kernel(sh: &Shell, layout: &Layout, args: &KernelArgs) -> Result<Option<Lab>> {
    let plan = fetch_plan(layout, &args.fetch)?;
    if args.dry_run {
        print_plan(layout, &plan)?;
        return Ok(None);
    }
    doctor::require()?;
    let mut t = Timings::default();
    let sources = t.time("fetch", || fetch::run(layout, &plan))?;
    let lab = build_lab(sh, layout, &plan.recipe, &sources, args, &mut t)?;
    if !args.no_boot_test {
        let report = t.time("boot-test", || boot_test(&lab.dir, &plan.recipe, &sources.lock, Duration::from_secs(args.boot_timeout), ""));
        t.print();
        let report = report?;
        println!("boot test: {} ({:.1} s), report {}", report.verdict.name(), report.wall_seconds, lab.dir.join(boottest::REPORT).display());
    } else {
        t.print();
    }
    println!("lab: {}", lab.dir.display());
    Ok(Some(lab))
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
    println!("build:    {}", layout.kernel_build(&plan.recipe.name, &k.version).display());
    println!("lab:      {}", layout.lab(&plan.recipe.name, &k.version).display());
    Ok(())
}

/// Configure, build, busybox, rootfs, install, scripts.
pub fn build_lab(
    sh: &Shell,
    layout: &Layout,
    recipe: &LoadedRecipe,
    sources: &Sources,
    args: &KernelArgs,
    t: &mut Timings,
) -> Result<Lab> {
    let lock = &sources.lock;
    let version = &lock.kernel.version;
    let r = &recipe.recipe;
    let jobs = args.make.jobs();
    let epoch = fetch::release_epoch(lock, &sources.kernel_src)?;
    let kbuild_dir = layout.kernel_build(&recipe.name, version);
    let fragments: Vec<PathBuf> = r.config.fragments.iter().map(|f| fragment_path(layout, &recipe.path, f)).collect::<Result<_>>()?;
    t.time("configure", || kbuild::configure(sh, &sources.kernel_src, &kbuild_dir, r.config.base, &fragments, version))
        .with_context(|| format!("configure linux-{version}"))?;
    let recipe_bytes = std::fs::read(&recipe.path).with_context(|| format!("read recipe {}", recipe.path.display()))?;
    let inputs = kbuild::BuildInputs {
        tarball_sha256: &lock.kernel.sha256,
        recipe: &recipe_bytes,
        fragments: &fragments,
        patches: &[],
        base: r.config.base,
    };
    let out = t
        .time("kernel", || kbuild::build(sh, &sources.kernel_src, &kbuild_dir, &inputs, jobs, args.make.cc_wrapper.as_deref(), epoch))
        .with_context(|| format!("build linux-{version}"))?;
    if out.up_to_date {
        eprintln!("kernel up to date ({})", kbuild_dir.display());
    }

    let bb = t
        .time("busybox", || build_busybox(sh, layout, recipe, sources, &args.make, epoch))
        .with_context(|| format!("build busybox-{}", lock.busybox.version))?;

    let lab = layout.lab(&recipe.name, version);
    t.time("lab", || {
        // The rootfs and scripts are cheap to make; they and the kernel's inputs stamp decide
        // whether the expensive part (copying and indexing a 100 MB vmlinux) can be skipped.
        let rootfs_bytes = rootfs_archive(recipe, &bb, version, epoch)?;
        let info = labscripts::LabInfo {
            recipe: recipe.name.clone(),
            kernel_version: version.clone(),
            busybox_version: lock.busybox.version.clone(),
            user: r.rootfs.user.clone(),
            uid: r.rootfs.uid,
            password: r.rootfs.password.clone(),
            qemu: r.qemu.clone(),
            source_dir: Some(sources.kernel_src.clone()),
            build_dir: Some(kbuild_dir.clone()),
        };
        let lab_json = serde_json::to_string_pretty(&LabJson {
            recipe: recipe.name.clone(),
            kernel_version: version.clone(),
            busybox_version: lock.busybox.version.clone(),
            smp: r.qemu.smp,
            uid: r.rootfs.uid,
        })?;
        let mut stamp_input = std::fs::read(kbuild_dir.join(kbuild::INPUTS_STAMP)).unwrap_or_default();
        stamp_input.extend_from_slice(&rootfs_bytes);
        for g in labscripts::render(&info)? {
            stamp_input.extend_from_slice(g.text.as_bytes());
        }
        stamp_input.extend_from_slice(lab_json.as_bytes());
        let stamp = crate::hash::sha256_bytes(&stamp_input);
        let stamp_path = lab.join(LAB_STAMP);
        if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp) {
            eprintln!("lab up to date ({})", lab.display());
            return link_latest(&layout.lab_link(&recipe.name), &lab);
        }
        let _ = std::fs::remove_file(&stamp_path);
        kbuild::install(&kbuild_dir, &sources.kernel_src, &lab)?;
        add_gdb_index(sh, &lab.join("vmlinux"));
        crate::layout::write_atomic(&lab.join("rootfs.cpio"), &rootfs_bytes)?;
        labscripts::write(&lab, &info)?;
        crate::layout::write_atomic(&lab.join(LAB_JSON), lab_json.as_bytes())?;
        crate::layout::write_atomic(&stamp_path, format!("{stamp}\n").as_bytes())?;
        link_latest(&layout.lab_link(&recipe.name), &lab)
    })
    .context("assemble the lab")?;
    Ok(Lab { dir: lab, lock: lock.clone(), recipe: recipe.clone() })
}

/// The recipe's static busybox, built from its fragments in `configs/busybox/`.
fn build_busybox(sh: &Shell, layout: &Layout, recipe: &LoadedRecipe, sources: &Sources, make: &MakeArgs, epoch: u64) -> Result<PathBuf> {
    let fragments: Vec<PathBuf> = recipe
        .recipe
        .busybox
        .fragments
        .iter()
        .map(|f| fragment_path(layout, &recipe.path, &format!("busybox/{f}")))
        .collect::<Result<_>>()?;
    let b = &sources.lock.busybox;
    busybox::build(sh, &sources.busybox_src, &layout.busybox_build(&b.version), &fragments, &b.sha256, make.jobs(), make.cc_wrapper.as_deref(), epoch)
}

/// The recipe's rootfs.cpio bytes, every entry dated `epoch`.
fn rootfs_archive(recipe: &LoadedRecipe, busybox: &Path, kernel_version: &str, epoch: u64) -> Result<Vec<u8>> {
    let r = &recipe.recipe;
    let archive = rootfs::build(&rootfs::RootfsInput {
        spec: &r.rootfs,
        recipe_dir: recipe.dir(),
        busybox,
        applets: rootfs::applets(busybox)?,
        kernel_version,
    })?;
    let mtime = u32::try_from(epoch).context("release date after 2106: cpio mtimes are 32-bit")?;
    cpio::to_bytes(&archive, mtime, r.rootfs.gzip)
}

/// gdb's symbol index makes type lookups (`p $lx_current()`) about 13x faster; without
/// gdb-add-index (older gdb packages) the lab still works, only slower.
fn add_gdb_index(sh: &Shell, vmlinux: &Path) {
    let res = xshell::cmd!(sh, "gdb-add-index {vmlinux}").quiet().ignore_stdout().ignore_stderr().run();
    if let Err(e) = res {
        eprintln!("note: gdb-add-index failed ({e}); gdb will be slower to look up types");
    }
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

/// Points `artifacts/labs/<recipe>` at the newest lab, atomically (relative link: movable tree).
fn link_latest(link: &Path, target: &Path) -> Result<()> {
    let name = target.file_name().context("lab has no name")?;
    let tmp = crate::layout::tmp_sibling(link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, link).with_context(|| format!("update {}", link.display()))?;
    Ok(())
}

/// `lab.json`: what a lab is, so `boot-test --lab DIR` knows what to expect.
pub const LAB_JSON: &str = "lab.json";
/// Hash of everything the lab was assembled from; equal means nothing to do.
const LAB_STAMP: &str = ".kernel-lab-lab";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LabJson {
    pub recipe: String,
    pub kernel_version: String,
    pub busybox_version: String,
    pub smp: u32,
    pub uid: u32,
}

pub fn read_lab_json(lab: &Path) -> Result<LabJson> {
    let path = lab.join(LAB_JSON);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read {}: is {} a lab built by `cargo xtask kernel`?", path.display(), lab.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Boot test with `append` added to the kernel command line (e.g. to break a lab on purpose).
pub fn boot_test(lab: &Path, recipe: &LoadedRecipe, lock: &Lock, timeout: Duration, append: &str) -> Result<boottest::BootReport> {
    let expect = boottest::Expect {
        kernel_version: lock.kernel.version.clone(),
        smp: recipe.recipe.qemu.smp,
        uid: recipe.recipe.rootfs.uid,
    };
    boottest::run(lab, &expect, timeout, append)
}

/// The verdict named in a boot-test error ("... verdict NAME: ..."), if any.
pub fn verdict_of_error(e: &anyhow::Error) -> Option<String> {
    let text = format!("{e:#}");
    let rest = &text[text.find("verdict ")? + "verdict ".len()..];
    // "verdict check-failed:nproc: detail": the name runs to the first whitespace, minus the ':'.
    let word = rest.split_whitespace().next()?;
    Some(word.strip_suffix(':').unwrap_or(word).to_string())
}

/// `cargo xtask boot-test`.
pub fn boot_test_command(layout: &Layout, args: &crate::cli::BootTestArgs) -> Result<()> {
    let lab = match (&args.lab, &args.recipe) {
        (Some(dir), _) => dir.clone(),
        (None, r) => layout.lab_link(r.as_deref().unwrap_or("lts")),
    };
    let info = read_lab_json(&lab)?;
    let expect = boottest::Expect { kernel_version: info.kernel_version, smp: info.smp, uid: info.uid };
    let report = boottest::run(&lab, &expect, Duration::from_secs(args.timeout), &args.append)?;
    println!("boot test: {} in {:.1} s; report {}", report.verdict.name(), report.wall_seconds, lab.join(boottest::REPORT).display());
    Ok(())
}

/// `cargo xtask rootfs`: fetch, build busybox and write the recipe's rootfs.cpio.
pub fn rootfs_only(sh: &Shell, layout: &Layout, args: &crate::cli::RootfsBuildArgs) -> Result<()> {
    let plan = fetch_plan(layout, &args.fetch)?;
    let sources = fetch::run(layout, &plan)?;
    let lock = &sources.lock;
    let epoch = fetch::release_epoch(lock, &sources.kernel_src)?;
    let bb = build_busybox(sh, layout, &plan.recipe, &sources, &args.make, epoch)?;
    let bytes = rootfs_archive(&plan.recipe, &bb, &lock.kernel.version, epoch)?;
    let out = layout.rootfs_dir(&plan.recipe.name, &lock.kernel.version).join("rootfs.cpio");
    crate::layout::write_atomic(&out, &bytes)?;
    println!("rootfs: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn verdict_names_are_read_back_from_errors() {
        let e = anyhow::anyhow!("boot test of /lab: verdict check-failed:nproc: expected 4, got 1\nlast lines");
        assert_eq!(super::verdict_of_error(&e).as_deref(), Some("check-failed:nproc"));
        let e = anyhow::anyhow!("boot test of /lab: verdict kernel-panic: Kernel panic - not syncing");
        assert_eq!(super::verdict_of_error(&e).as_deref(), Some("kernel-panic"));
        assert_eq!(super::verdict_of_error(&anyhow::anyhow!("no such thing")), None);
    }
}
