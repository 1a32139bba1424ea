//! `cargo xtask exec`: runs one program in a lab, N boots in a row, and reports every run with the
//! boot test's verdicts (exit code, output, new kernel messages, oops/panic/BUG/sanitizer/timeout).
//!
//! The lab is never touched: each run boots a view of it (symlinks to its kernel and scripts)
//! whose initramfs is the lab's own followed by a second, small cpio archive. The kernel unpacks
//! both in order, so the second one adds the program and replaces the self-test with a script
//! that runs the program once through `klab_run` (the self-test's own runner) and powers off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::Shell;

use crate::boottest::{self, BootReport, Verdict};
use crate::cli::ExecArgs;
use crate::cpio::{self, Archive};
use crate::lab::{self, Lab};
use crate::layout::Layout;
use crate::programs;
use crate::recipe::RunAs;
use crate::rootfs;

const EXEC_TEMPLATE: &str = include_str!("../templates/exec.sh");
/// `klab_run`'s name for the program's run (`KLAB:run:exec:...`).
const RUN_NAME: &str = "exec";
/// Kernel messages kept per run in the report.
const KERNEL_LOG_LINES: usize = 200;
/// Where the program goes in the guest: off PATH, so it cannot stand in for a tool.
const GUEST_DIR: &str = "opt/kernel-lab";
/// The largest program exec copies into an initramfs (it must unpack in the guest's memory).
const MAX_PROGRAM: u64 = 64 << 20;

/// One boot of `exec`.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub run: u32,
    /// `pass` when the kernel stayed healthy and the program ran to its end, else the boot
    /// test's verdict (`oops`, `kernel-panic`, `bug`, `sanitizer`, `timeout-checks`, ...).
    pub verdict: Verdict,
    /// The program's exit status; null when it never finished.
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Console lines between the program's start and its end (or the crash): kernel messages.
    pub kernel_log: Vec<String>,
    /// Why the verdict is not `pass`.
    pub detail: String,
    pub seconds: f64,
    pub console_log: PathBuf,
    /// Verdict pass and exit 0.
    pub succeeded: bool,
}

/// `exec-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lab: PathBuf,
    pub program: String,
    pub args: Vec<String>,
    #[serde(rename = "as")]
    pub run_as: RunAs,
    pub runs: Vec<Run>,
    pub succeeded: u32,
    /// succeeded / runs.
    pub success_rate: f64,
}

/// `cargo xtask exec`: the report, the table, and an error unless every run succeeded.
pub fn command(sh: &Shell, layout: &Layout, args: &ExecArgs) -> Result<()> {
    let report = run(sh, layout, args)?;
    print_table(&report);
    if let Some(junit) = &args.junit {
        crate::layout::write_atomic(junit, junit_xml(&report).as_bytes())?;
        println!("JUnit: {}", junit.display());
    }
    let total = report.runs.len();
    if report.succeeded as usize != total {
        bail!("{} of {total} runs of {} did not succeed (see the table above)", total - report.succeeded as usize, report.program);
    }
    Ok(())
}

/// Boots the lab `args.runs` times with the program and returns the report (also written as
/// `exec-report.json` into the run directory); an error only when nothing could run.
pub fn run(sh: &Shell, layout: &Layout, args: &ExecArgs) -> Result<Report> {
    let lab = Lab::open(&args.which.dir(layout))?;
    // The lab stays as it is while we boot views of it.
    let _hold = lab.lock_shared()?;
    let lab_name = lab.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "lab".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let work = layout.exec_runs().join(format!("{lab_name}-{nanos}"));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;

    let (name, binary) = program(sh, &args.program, &work)?;
    let view_dir = work.join("lab");
    let view = view(&lab, &view_dir, &name, &binary, args.run_as, &args.args)?;
    let mut expect = boottest::Expect { builtin: false, checks: Vec::new(), ..lab.expect()? };
    if let Some(spec) = &args.mitigations {
        expect.mitigations = Some(lab.profile(spec)?);
    }
    let mut runs = Vec::new();
    for i in 1..=args.runs.get() {
        eprintln!("==> run {i}/{}: {name} as {}", args.runs, args.run_as.as_str());
        let out = work.join(format!("run-{i}"));
        let report = boottest::boot_once(&view, &expect, Duration::from_secs(args.timeout), &out)?;
        runs.push(judge_run(i, &report));
    }
    // The reports and console logs stay; the initramfs copy is only for booting.
    let _ = std::fs::remove_dir_all(&view_dir);
    let succeeded = runs.iter().filter(|r| r.succeeded).count() as u32;
    let report = Report {
        lab: lab.dir.clone(),
        program: args.program.display().to_string(),
        args: args.args.clone(),
        run_as: args.run_as,
        success_rate: f64::from(succeeded) / f64::from(args.runs.get()),
        succeeded,
        runs,
    };
    let path = work.join("exec-report.json");
    crate::layout::write_atomic(&path, (serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
    println!("report: {}", path.display());
    Ok(report)
}

/// The program's guest name and its static binary: a C source is compiled, a binary checked.
fn program(sh: &Shell, path: &Path, work: &Path) -> Result<(String, Vec<u8>)> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let name = if name.is_empty() || name.starts_with('.') { "program".to_string() } else { name };
    let binary = if path.extension().is_some_and(|e| e == "c") {
        let out = programs::compile(sh, path, &work.join("program").join(&name), 0, &format!("exec {}", path.display()))?;
        std::fs::read(&out).with_context(|| format!("read {}", out.display()))?
    } else {
        let size =
            std::fs::metadata(path).with_context(|| format!("read program {}: give a static binary or a C source", path.display()))?.len();
        if size > MAX_PROGRAM {
            bail!("program {} is {size} bytes: exec copies programs of at most {MAX_PROGRAM} bytes into the initramfs", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("read program {}: give a static binary or a C source", path.display()))?;
        programs::check_static_elf(&bytes, &path.display().to_string())?;
        bytes
    };
    Ok((name, binary))
}

/// A lab directory made of symlinks to `lab`'s files plus its own initramfs: the lab's archive
/// followed by one that adds `/opt/kernel-lab/<name>` and replaces the self-test with the run.
fn view(lab: &Lab, dir: &Path, name: &str, binary: &[u8], run_as: RunAs, args: &[String]) -> Result<Lab> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // run.sh boots rootfs.cpio, else rootfs.cpio.gz (`rootfs.gzip`); the kernel unpacks a gzip
    // archive followed by a plain one as well.
    let initrd = [lab::ROOTFS.to_string(), format!("{}.gz", lab::ROOTFS)]
        .into_iter()
        .map(|n| lab.file(&n))
        .find(|p| p.is_file())
        .with_context(|| format!("{} has neither rootfs.cpio nor rootfs.cpio.gz: rebuild the lab", lab.dir.display()))?;
    let original = std::fs::read(&initrd).with_context(|| format!("read {}", initrd.display()))?;
    // Labs from before `exec` have no runner to source: say so instead of booting a broken run.
    let entries = cpio::read(&original).with_context(|| format!("read {}", initrd.display()))?;
    if !entries.iter().any(|e| e.entry.path.trim_start_matches('/') == rootfs::RUN_FUNCTION_PATH) {
        bail!("{} has no /{}: the lab predates `exec`; rebuild it with `cargo xtask kernel`", lab.dir.display(), rootfs::RUN_FUNCTION_PATH);
    }
    let mut command = boottest::shell_quote(&format!("/{GUEST_DIR}/{name}"));
    for a in args {
        if a.chars().any(char::is_control) {
            bail!("program argument {a:?} contains a control character: pass one line per argument");
        }
        command.push(' ');
        command.push_str(&boottest::shell_quote(a));
    }
    let script = EXEC_TEMPLATE
        .replace("@RUN_FUNCTION_PATH@", rootfs::RUN_FUNCTION_PATH)
        .replace("@RUN@", &boottest::guest_run(RUN_NAME, run_as, &command));
    let mut extra = Archive::new();
    // Same owners and modes as the lab's own directories: the kernel applies them again.
    extra.add_dir_all(GUEST_DIR, 0o755, 0, 0)?;
    extra.add_dir_all("etc/kernel-lab", 0o755, 0, 0)?;
    extra.add_file(&format!("{GUEST_DIR}/{name}"), 0o755, 0, 0, binary.to_vec())?;
    extra.add_file(rootfs::BOOT_TEST_PATH, 0o755, 0, 0, script.into_bytes())?;
    let mut initramfs = original;
    // newc archives are 4-byte aligned; the kernel reads concatenated archives in order.
    initramfs.resize(initramfs.len().next_multiple_of(4), 0);
    initramfs.extend(cpio::to_bytes(&extra, 0, false)?);
    std::fs::write(dir.join(lab::ROOTFS), initramfs).with_context(|| format!("write {}", dir.join(lab::ROOTFS).display()))?;
    for name in [lab::RUN_SH, lab::GDB_SH, lab::DEBUG_GDB, lab::BZIMAGE, lab::VMLINUX, lab::LAB_JSON] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lab.file(name), &link).with_context(|| format!("link {}", link.display()))?;
    }
    Lab::open(dir)
}

/// One boot's report as an exec run.
fn judge_run(i: u32, report: &BootReport) -> Run {
    let run = report.runs.iter().find(|(n, _)| n == RUN_NAME).map(|(_, r)| r.clone()).unwrap_or_default();
    let console = std::fs::read(&report.console_log).unwrap_or_default();
    let kernel_log = kernel_lines(&String::from_utf8_lossy(&console));
    let exit = run.exit;
    let detail = if report.verdict == Verdict::Pass && exit.is_some() && !run.complete() {
        "the program's output reached the host incomplete (a line was lost)".to_string()
    } else {
        report.detail.clone()
    };
    Run {
        run: i,
        verdict: report.verdict.clone(),
        exit,
        stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        kernel_log,
        detail,
        seconds: (report.wall_seconds * 10.0).round() / 10.0,
        console_log: report.console_log.clone(),
        // Output that lost a line to a kernel message is not a success, whatever was left of it.
        succeeded: report.verdict == Verdict::Pass && exit == Some(0) && run.complete(),
    }
}

/// The console lines after `KLAB:BEGIN` that are not markers: what the kernel said while the
/// program ran (the program's own output goes to files in the guest).
fn kernel_lines(console: &str) -> Vec<String> {
    let mut lines = console.lines().skip_while(|l| l.trim_end() != "KLAB:BEGIN").skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim_end();
        if line == "KLAB:END" {
            break;
        }
        if line.starts_with("KLAB:") || line.starts_with("[kernel-lab]") || line.is_empty() {
            continue;
        }
        if out.len() == KERNEL_LOG_LINES {
            out.push("...".to_string());
            break;
        }
        out.push(line.to_string());
    }
    out
}

fn print_table(r: &Report) {
    println!("{:<4} {:<16} {:>5} {:>8}  first line of output / kernel message", "run", "verdict", "exit", "seconds");
    for run in &r.runs {
        let exit = run.exit.map_or("-".to_string(), |e| e.to_string());
        let first = run
            .stdout
            .lines()
            .next()
            .map(str::to_string)
            .or_else(|| run.kernel_log.iter().find(|l| l.contains("Oops") || l.contains("BUG") || l.contains("panic")).cloned())
            .unwrap_or_default();
        // Guest output: no escape sequences reach the terminal.
        let first: String = first.chars().filter(|c| !c.is_control()).take(70).collect();
        println!("{:<4} {:<16} {exit:>5} {:>8.1}  {first}", run.run, run.verdict.to_string(), run.seconds);
    }
    println!("{} of {} runs succeeded ({:.0}%)", r.succeeded, r.runs.len(), r.success_rate * 100.0);
}

/// JUnit XML: one test case per run, a failure for each run that did not succeed.
pub fn junit_xml(r: &Report) -> String {
    let esc = |s: &str| {
        s.chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect::<String>()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = r.runs.len() - r.succeeded as usize;
    let time: f64 = r.runs.iter().map(|x| x.seconds).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"kernel-lab exec {}\" tests=\"{}\" failures=\"{failures}\" time=\"{time:.1}\">\n",
        esc(&r.program),
        r.runs.len()
    );
    for run in &r.runs {
        x.push_str(&format!("  <testcase classname=\"kernel-lab.exec\" name=\"run {}\" time=\"{:.1}\">\n", run.run, run.seconds));
        if !run.succeeded {
            let exit = run.exit.map_or("none".to_string(), |e| e.to_string());
            x.push_str(&format!(
                "    <failure message=\"verdict {} exit {exit}\">{}</failure>\n",
                esc(&run.verdict.to_string()),
                esc(&format!("{}\n{}", run.detail, run.kernel_log.join("\n")))
            ));
        }
        x.push_str(&format!("    <system-out>{}</system-out>\n", esc(&run.stdout)));
        x.push_str(&format!("    <system-err>{}</system-err>\n", esc(&run.stderr)));
        x.push_str("  </testcase>\n");
    }
    x.push_str("</testsuite>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab directory with a real lab.json and rootfs.cpio (with or without the runner).
    fn fake_lab(dir: &Path, with_runner: bool) -> Lab {
        std::fs::create_dir_all(dir).unwrap();
        let mut a = Archive::new();
        a.add_dir_all("etc/kernel-lab", 0o755, 0, 0).unwrap();
        a.add_file("etc/kernel-lab/boot-test.sh", 0o755, 0, 0, b"#!/bin/sh\n".to_vec()).unwrap();
        if with_runner {
            a.add_file(rootfs::RUN_FUNCTION_PATH, 0o644, 0, 0, b"klab_run() { :; }\n".to_vec()).unwrap();
        }
        std::fs::write(dir.join(lab::ROOTFS), cpio::to_bytes(&a, 7, false).unwrap()).unwrap();
        for f in [lab::RUN_SH, lab::GDB_SH, lab::DEBUG_GDB, lab::BZIMAGE, lab::VMLINUX] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        crate::lab::write_description(dir, &crate::lab::tests::description()).unwrap();
        Lab::open(dir).unwrap()
    }

    #[test]
    fn a_view_boots_the_lab_with_the_program_and_never_writes_the_lab() {
        let dir = crate::testutil::scratch("exec-view");
        let lab = fake_lab(&dir.join("lab"), true);
        let before = std::fs::read(lab.file(lab::ROOTFS)).unwrap();
        let args = ["a'b".to_string(), "$(id)".to_string()];
        let v = view(&lab, &dir.join("view"), "poc", b"\x7fELF...", RunAs::Root, &args).unwrap();
        assert_eq!(std::fs::read(lab.file(lab::ROOTFS)).unwrap(), before, "the lab's rootfs changed");
        for f in [lab::RUN_SH, lab::BZIMAGE, lab::VMLINUX, lab::LAB_JSON] {
            let link = dir.join("view").join(f);
            assert_eq!(std::fs::read_link(&link).unwrap(), lab.file(f), "{f}");
        }
        // The lab's archive, padded to 4 bytes, then ours: the program off PATH and the run.
        let initramfs = std::fs::read(v.file(lab::ROOTFS)).unwrap();
        let start = before.len().next_multiple_of(4);
        assert_eq!(&initramfs[..before.len()], &before[..]);
        let ours = cpio::read(&initramfs[start..]).unwrap();
        let get = |p: &str| ours.iter().find(|e| e.entry.path == p).unwrap_or_else(|| panic!("{p} missing")).entry.clone();
        let prog = get("opt/kernel-lab/poc");
        assert_eq!((prog.mode, prog.uid), (0o755, 0));
        let script = match get(rootfs::BOOT_TEST_PATH).kind {
            crate::cpio::Kind::File(b) => String::from_utf8(b).unwrap(),
            k => panic!("{k:?}"),
        };
        // The command line, quoted word by word, is itself one word for klab_run (`sh -c "$3"`).
        let command = "'/opt/kernel-lab/poc' 'a'\\''b' '$(id)'";
        assert!(script.contains(&boottest::guest_run("exec", RunAs::Root, command)), "{script}");
        let argv = std::process::Command::new("sh").args(["-c", &format!("set -- {command}; printf '%s|' \"$@\"")]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&argv.stdout), "/opt/kernel-lab/poc|a'b|$(id)|");
        assert!(script.contains(&format!(". /{}", rootfs::RUN_FUNCTION_PATH)) && script.trim_end().ends_with("poweroff -f"), "{script}");
        // Arguments are lines of their own in the guest script: no control characters.
        let e = view(&lab, &dir.join("view2"), "poc", b"x", RunAs::User, &["a\nb".to_string()]).unwrap_err();
        assert!(format!("{e:#}").contains("control character"), "{e:#}");
        // A lab from before `exec` has no runner: refused with the fix.
        let old = fake_lab(&dir.join("old"), false);
        let e = format!("{:#}", view(&old, &dir.join("view3"), "poc", b"x", RunAs::User, &[]).unwrap_err());
        assert!(e.contains("predates `exec`") && e.contains("rebuild"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kernel_lines_are_the_messages_between_begin_and_end() {
        let console = "Linux version 6.12\nKLAB:BEGIN\n[    1.0] klab_hello: called\r\nKLAB:run:exec:exit=0\nKLAB:run:exec:out=6869\n[    1.1] second\nKLAB:END\n[    1.2] after\n";
        assert_eq!(kernel_lines(console), ["[    1.0] klab_hello: called", "[    1.1] second"]);
        // A crash: no END, everything after BEGIN counts.
        let console = "KLAB:BEGIN\nBUG: kernel NULL pointer dereference\nOops: 0002 [#1] SMP\n";
        assert_eq!(kernel_lines(console).len(), 2);
        assert!(kernel_lines("no markers\n").is_empty());
    }

    #[test]
    fn junit_has_one_case_per_run_and_escapes_output() {
        let run = |i, verdict: Verdict, exit: Option<i32>| Run {
            run: i,
            succeeded: verdict == Verdict::Pass && exit == Some(0),
            verdict,
            exit,
            stdout: "a<b & \"c\"\u{1b}[0m".into(),
            stderr: String::new(),
            kernel_log: vec!["Oops: 0002".into()],
            detail: "d".into(),
            seconds: 1.5,
            console_log: PathBuf::from("c.log"),
        };
        let r = Report {
            lab: PathBuf::from("/l"),
            program: "p.c".into(),
            args: vec![],
            run_as: RunAs::User,
            runs: vec![run(1, Verdict::Pass, Some(0)), run(2, Verdict::Oops, None), run(3, Verdict::Pass, Some(1))],
            succeeded: 1,
            success_rate: 1.0 / 3.0,
        };
        let x = junit_xml(&r);
        assert!(x.contains("tests=\"3\" failures=\"2\""), "{x}");
        assert_eq!(x.matches("<testcase").count(), 3);
        assert_eq!(x.matches("<failure").count(), 2);
        assert!(x.contains("verdict oops exit none") && x.contains("verdict pass exit 1"), "{x}");
        assert!(x.contains("a&lt;b &amp; &quot;c&quot;[0m") && !x.contains('\u{1b}'), "{x}");
    }
}
