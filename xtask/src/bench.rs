//! `cargo xtask bench`: the speed claims, each measured side by side with its reference in one run,
//! written as a table and as `artifacts/bench.json`.
//!
//! A benchmark never fails a run: a measurement that cannot be taken becomes a row saying why.
//! Goals are printed next to the numbers, never asserted.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::{
    boottest,
    cli::{BenchArgs, FetchArgs},
    extract,
    fetch::{self, Sources},
    kbuild,
    lab::Lab,
    layout::{self, Layout},
    pipeline, ready,
};

/// One measurement: ours against its reference, with the goal it is judged by.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// Seconds through kernel-lab.
    pub ours: Option<f64>,
    /// What `ours` is compared with, and its seconds.
    pub reference: String,
    pub reference_seconds: Option<f64>,
    pub goal: String,
    /// Why a number is missing, or what else to know.
    pub note: String,
}

impl Row {
    fn new(name: &str, reference: &str, goal: &str) -> Row {
        Row { name: name.into(), ours: None, reference: reference.into(), reference_seconds: None, goal: goal.into(), note: String::new() }
    }
    fn failed(mut self, e: anyhow::Error) -> Row {
        self.note = format!("not measured: {e:#}");
        self
    }
}

#[derive(Serialize)]
struct Report<'a> {
    quick: bool,
    rows: &'a [Row],
}

pub fn run(sh: &Shell, layout: &Layout, args: &BenchArgs) -> Result<()> {
    let plan = pipeline::fetch_plan(layout, &args.fetch)?;
    let scratch = layout.artifacts.join("bench");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let mut rows = Vec::new();
    let start = Instant::now();
    let step = |what: &str| eprintln!("==> bench: {what} (at {:.0} s)", start.elapsed().as_secs_f64());
    step("no-op rerun");
    // The no-op rerun also makes sure the lab is built (a full build the first time).
    rows.push(noop(sh, layout, &args.fetch).unwrap_or_else(|e| Row::new("no-op rerun", "make in the built tree", "< 1 s").failed(e)));
    step("sources");
    let sources = fetch::run(layout, &plan);
    match &sources {
        Ok(s) => {
            step("extraction");
            rows.push(extraction(sh, s, &scratch).unwrap_or_else(|e| Row::new("extract kernel", "tar xJf", "no slower").failed(e)));
            let lab = layout.lab(&plan.recipe.name, &s.lock.kernel.version);
            step("boot test");
            rows.extend(boot(&lab, &scratch).unwrap_or_else(|e| vec![Row::new("boot test", "", "banner <= 3 s").failed(e)]));
            step("lab fetch");
            rows.push(fetched(&lab, &scratch).unwrap_or_else(|e| Row::new("lab fetch (local pack)", "", "<= 5 s").failed(e)));
            if !args.quick {
                step("busybox builds");
                rows.push(
                    busybox_applets(sh, layout, s, &args.make.plan(), &scratch)
                        .unwrap_or_else(|e| Row::new("busybox build (lab applets)", "whole defconfig", "a third").failed(e)),
                );
                step("kernel cold builds");
                rows.push(
                    cold(sh, layout, &plan, s, &args.make.plan(), &scratch)
                        .unwrap_or_else(|e| Row::new("kernel cold build", "raw make, same config and env", "overhead <= 3%").failed(e)),
                );
            }
        }
        Err(e) => rows.push(Row::new("sources", "", "").failed(anyhow::anyhow!("{e:#}"))),
    }
    step("done");
    print(&rows);
    let out = layout.artifacts.join("bench.json");
    let json = serde_json::to_string_pretty(&Report { quick: args.quick, rows: &rows })? + "\n";
    layout::write_atomic(&out, json.as_bytes())?;
    println!("bench: {}", out.display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn print(rows: &[Row]) {
    let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.2}"));
    println!("{:<28} {:>9} {:>9} {:>7}  {:<30} {:<16} note", "measurement", "ours s", "ref s", "ratio", "reference", "goal");
    for r in rows {
        let ratio = match (r.ours, r.reference_seconds) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<28} {:>9} {:>9} {:>7}  {:<30} {:<16} {}",
            r.name,
            secs(r.ours),
            secs(r.reference_seconds),
            ratio,
            r.reference,
            r.goal,
            r.note
        );
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();

    let out = f()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

/// The fetch flags again, for a `kernel` subprocess.
fn forward(f: &FetchArgs) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |flag: &str, value: Option<&std::ffi::OsStr>| {
        a.push(flag.into());
        if let Some(v) = value {
            a.push(v.to_owned());
        }
    };
    if let Some(r) = &f.recipe {
        push("--recipe", Some(r.as_ref()));
    }
    if let Some(m) = &f.source.mirror {
        push("--mirror", Some(m.as_ref()));
    }
    if let Some(k) = &f.source.keyring {
        push("--keyring", Some(k.as_os_str()));
    }
    if let Some(k) = &f.source.busybox_keyring {
        push("--busybox-keyring", Some(k.as_os_str()));
    }
    if let Some(v) = &f.channel.version {
        push("--version", Some(v.as_ref()));
    }
    if let Some(s) = &f.channel.lts {
        push("--lts", None);
        if !s.is_empty() {
            a.push(s.into());
        }
    }
    for (on, flag) in [
        (f.channel.stable, "--stable"),
        (f.channel.mainline, "--mainline"),
        (f.locked, "--locked"),
        (f.source.insecure_skip_signature, "--insecure-skip-signature"),
        (f.allow_downgrade, "--allow-downgrade"),
    ] {
        if on {
            a.push(flag.into());
        }
    }
    a
}

/// `cargo xtask kernel --no-boot-test` on a built lab (its binary, so cargo's own start-up is left
/// out) against `make` run again in the built tree.
fn noop(sh: &Shell, layout: &Layout, f: &FetchArgs) -> Result<Row> {
    let mut row = Row::new("no-op rerun (kernel job)", "make again in the built tree", "< 1 s");
    let exe = std::env::current_exe().context("find the running xtask")?;
    let args = forward(f);
    let run = || -> Result<()> {
        let args = &args;
        let out = cmd!(sh, "{exe} kernel --no-boot-test {args...}").quiet().ignore_stdout().ignore_stderr().output()?;
        if !out.status.success() {
            bail!("`xtask kernel --no-boot-test` failed; run it by hand to see why");
        }
        Ok(())
    };
    run()?; // builds what is missing; the second run is the no-op
    let ((), ours) = timed(run)?;
    row.ours = Some(ours);
    let plan = pipeline::fetch_plan(layout, f)?;
    let mut locked = plan.clone();
    locked.locked = true;
    let lock = fetch::lock_for(layout, &locked)?.0;
    let version = &lock.kernel.version;
    let (src, build) = (layout.kernel_src(version), layout.kernel_build(plan.recipe.kernel_build_name(), version));
    let epoch = fetch::release_epoch(&lock, &src)?;
    let make = crate::cli::MakeArgs::default().plan();
    let ((), reference) = timed(|| {
        kbuild::make_command(sh, &src, &build, &make, epoch).quiet().ignore_stdout().ignore_stderr().run().context("make again")?;
        Ok(())
    })?;
    row.reference_seconds = Some(reference);
    Ok(row)
}

/// Our extraction (hashing as it reads, guarded) against `tar xJf` of the same cached tarball.
fn extraction(sh: &Shell, s: &Sources, scratch: &Path) -> Result<Row> {
    let mut row = Row::new("extract kernel tarball", "tar xJf, same file", "no slower");
    let tarball = &s.kernel_tarball;
    let ours_dir = scratch.join("extract-ours/linux");
    let ((), ours) = timed(|| extract::extract(tarball, &s.lock.kernel.sha256, &ours_dir, "bench"))?;
    let _ = std::fs::remove_dir_all(scratch.join("extract-ours"));
    let tar_dir = scratch.join("extract-tar");
    std::fs::create_dir_all(&tar_dir)?;
    let ((), reference) = timed(|| cmd!(sh, "tar xJf {tarball} -C {tar_dir}").quiet().run().context("tar xJf"))?;
    let _ = std::fs::remove_dir_all(&tar_dir);
    row.ours = Some(ours);
    row.reference_seconds = Some(reference);
    Ok(row)
}

/// One boot test of the lab, per stage.
fn boot(lab: &Path, scratch: &Path) -> Result<Vec<Row>> {
    let lab = Lab::open(lab)?;
    let report = boottest::run_into(&lab, Duration::from_secs(boottest::DEFAULT_STAGE_TIMEOUT_SECS), "", None, &scratch.join("boot"))?;
    let mut rows: Vec<Row> =
        report.stages.iter().map(|s| Row { ours: Some(s.seconds), ..Row::new(&format!("boot-test stage {}", s.stage), "", "") }).collect();
    let mut total = Row::new("boot test (whole)", "", "banner <= 3 s");
    total.ours = Some(report.wall_seconds);
    total.note = format!("verdict {}", report.verdict);
    rows.push(total);
    Ok(rows)
}

/// Pack the lab (not timed here: `lab pack` is a release step), then time `lab fetch` of the pack
/// into a scratch artifacts tree with a cold cache.
fn fetched(lab: &Path, scratch: &Path) -> Result<Row> {
    let mut row = Row::new("lab fetch (local pack)", "", "<= 5 s");
    let packed = ready::pack(lab, &scratch.join("dist"), 3)?;
    let layout = Layout { root: scratch.join("root"), artifacts: scratch.join("fetched"), cache: scratch.join("cache") };
    let req =
        ready::FetchRequest { what: packed.path.display().to_string(), sha256: Some(packed.sha256.clone()), index: None, force: false };
    let (_, secs) = timed(|| ready::fetch(&layout, &req))?;
    row.ours = Some(secs);
    row.note = format!("{:.1} MB pack (zstd -3 here; releases use -19)", packed.size as f64 / 1e6);
    Ok(row)
}

/// busybox with only configs/busybox/lab.applets against its whole defconfig, both static
/// (configs/busybox/static.config), each in a fresh build directory.
fn busybox_applets(sh: &Shell, layout: &Layout, s: &Sources, make: &kbuild::MakePlan, scratch: &Path) -> Result<Row> {
    let mut row = Row::new("busybox build (lab applets)", "whole defconfig", "a third");
    let configs = layout.configs_dir().join("busybox");
    let (list, fragments) = (configs.join("lab.applets"), [configs.join("static.config")]);
    let b = &s.lock.busybox;
    let epoch = fetch::release_epoch(&s.lock, &s.kernel_src)?;
    let (bin, ours) =
        timed(|| crate::busybox::build(sh, &s.busybox_src, &scratch.join("busybox-lab"), Some(&list), &fragments, &b.sha256, make, epoch))?;
    let (all, reference) =
        timed(|| crate::busybox::build(sh, &s.busybox_src, &scratch.join("busybox-all"), None, &fragments, &b.sha256, make, epoch))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    row.note = format!("binary {:.1} MB against {:.1} MB", size(&bin), size(&all));
    let _ = std::fs::remove_dir_all(scratch.join("busybox-lab"));
    let _ = std::fs::remove_dir_all(scratch.join("busybox-all"));
    row.ours = Some(ours);
    row.reference_seconds = Some(reference);
    Ok(row)
}

/// The kernel build through kbuild against raw make with the same .config and environment, each
/// in a fresh build directory.
fn cold(sh: &Shell, layout: &Layout, plan: &fetch::FetchPlan, s: &Sources, make: &kbuild::MakePlan, scratch: &Path) -> Result<Row> {
    let mut row = Row::new("kernel cold build", "raw make, same config and env", "overhead <= 3%");
    let version = &s.lock.kernel.version;
    let config = layout.kernel_build(plan.recipe.kernel_build_name(), version).join(".config");
    let epoch = fetch::release_epoch(&s.lock, &s.kernel_src)?;
    let (a, b) = (scratch.join("cold-ours"), scratch.join("cold-make"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d)?;
        std::fs::copy(&config, d.join(".config")).with_context(|| format!("copy {}", config.display()))?;
    }
    let recipe = std::fs::read(&plan.recipe.path)?;
    let inputs = kbuild::BuildInputs {
        tarball_sha256: &s.lock.kernel.sha256,
        recipe: &recipe,
        fragments: &[],
        patches: &[],
        base: plan.recipe.recipe.config.base,
    };
    let (_, ours) = timed(|| kbuild::build(sh, &s.kernel_src, &a, &inputs, make, epoch))?;
    let _ = std::fs::remove_dir_all(&a);
    let src = &s.kernel_src;
    let ((), reference) =
        timed(|| kbuild::make_command(sh, src, &b, make, epoch).quiet().ignore_stdout().ignore_stderr().run().context("raw make"))?;
    let _ = std::fs::remove_dir_all(&b);
    row.ours = Some(ours);
    row.reference_seconds = Some(reference);
    Ok(row)
}
