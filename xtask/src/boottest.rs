//! Boot test: boots a lab through its own run.sh, checks the guest's markers, then attaches gdb.
//!
//! The guest/host contract lives here: `Check::MARKERS` is the list of checks, `guest_checks`
//! renders the guest script's lines from it (rootfs puts them into boot-test.sh), and `Console`
//! reads them back, each as a whole line `KLAB:<name>=<value>` after `KLAB:BEGIN`.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Serialize, Serializer};

use crate::lab::{self, Lab};
use crate::mitigations::{self, Item, Mitigations, Setting};
use crate::recipe::{CheckSpec, Expected, Nic, RunAs};

/// Kernel command-line words that put the guest's init into test mode and turn every oops or
/// panic into an immediate QEMU exit (with run.sh's -no-reboot), so failures end the run fast.
/// `printk.time=1` puts a timestamp before every kernel message, whatever the config says, so a
/// message (a process name, say) can never be a whole marker line.
pub const TEST_APPEND: &str = "lab.test=1 panic=-1 oops=panic printk.time=1";

/// The same words without `lab.test=1`, for the gdb stage's boot: /init starts the user's shell.
const GDB_APPEND: &str = "panic=-1 oops=panic printk.time=1";

/// Default timeout of each stage: generous, because TCG on a busy 2-core machine is slow.
pub const DEFAULT_STAGE_TIMEOUT_SECS: u64 = 300;

/// How many console lines a failure message shows.
const TAIL_LINES: usize = 30;
/// After a fatal message, how long to keep reading the register dump and call trace.
const AFTER_FATAL: Duration = Duration::from_secs(2);
/// How long QEMU may take to exit after its console closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// What the booted lab must report about itself.
#[derive(Debug, Clone)]
pub struct Expect {
    /// `uname -r`, and the first word after `Linux version` in the banner.
    pub kernel_version: String,
    /// CPUs the guest must see (`nproc`); run.sh's default `--smp`.
    pub smp: u32,
    /// uid of the unprivileged user.
    pub uid: u32,
    /// The NIC whose driver must have bound an interface.
    pub nic: Nic,
    /// Whether the guest prints kernel-lab's own markers (`Check::MARKERS`): a boot test does,
    /// an `exec` run only runs its program.
    pub builtin: bool,
    /// The recipe's own checks, judged after the built-in markers.
    pub checks: Vec<CheckSpec>,
    /// The mitigation profile run.sh boots (`--mitigations`); with `builtin`, the guest's
    /// evidence is judged against it. `None`: a lab from before profiles (neither).
    pub mitigations: Option<Mitigations>,
    /// `_text` in the lab's System.map, for the KASLR offset.
    pub link_text: Option<u64>,
}

/// The stages of a boot test, in order; each has its own timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Until the `Linux version` banner.
    Banner,
    /// Until the guest's `KLAB:BEGIN`.
    Markers,
    /// Until `KLAB:END`.
    Checks,
    /// Until QEMU exits by itself.
    Poweroff,
    /// gdb attached to a second boot (started beside the first): the time it adds after it.
    Gdb,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Banner => "banner",
            Stage::Markers => "markers",
            Stage::Checks => "checks",
            Stage::Poweroff => "poweroff",
            Stage::Gdb => "gdb",
        }
    }
}

/// One check of a booted lab. The marker checks are printed by the guest, in `MARKERS` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The `Linux version` banner names the expected kernel.
    Banner,
    /// `KLAB:uname=<uname -r>`.
    Uname,
    /// `KLAB:nproc=<nproc>`: every CPU came up.
    Nproc,
    /// `KLAB:netns=ok:<names>`: interfaces in a new network namespace (`unshare -n`); only `lo`.
    Netns,
    /// `KLAB:uid=<id -u>` as the lab user, through `setuidgid`.
    Uid,
    /// `KLAB:kallsyms=<n>`: symbols with a non-zero address in the copy init made as root.
    Kallsyms,
    /// `KLAB:nic=<names>`: interfaces bound to the recipe NIC's driver, or `none`.
    Nic,
    /// `KLAB:END`: every check ran.
    End,
}

impl Check {
    /// The checks whose marker the guest prints, in order, between BEGIN and END.
    pub const MARKERS: [Check; 6] = [Check::Uname, Check::Nproc, Check::Netns, Check::Uid, Check::Kallsyms, Check::Nic];

    /// The marker name (`KLAB:<name>=`), the guest's shell function (`check_<name>`) and the
    /// verdict suffix (`check-failed:<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Check::Banner => "banner",
            Check::Uname => "uname",
            Check::Nproc => "nproc",
            Check::Netns => "netns",
            Check::Uid => "uid",
            Check::Kallsyms => "kallsyms",
            Check::Nic => "nic",
            Check::End => "end",
        }
    }

    /// Whether a recipe check may not use `name` (it would read like one of ours in reports).
    pub fn reserved(name: &str) -> bool {
        Check::MARKERS.iter().chain(&[Check::Banner, Check::End]).any(|c| c.name() == name) || name == "gdb"
    }

    fn of_marker(name: &str) -> Option<Check> {
        Check::MARKERS.into_iter().find(|c| c.name() == name)
    }

    /// Whether `value` passes, and what was expected.
    fn judge(self, value: &str, expect: &Expect) -> (bool, String) {
        match self {
            Check::Uname => (value == expect.kernel_version, format!("expected {}", expect.kernel_version)),
            Check::Nproc => (value == expect.smp.to_string(), format!("expected {}", expect.smp)),
            Check::Netns => (
                value.strip_prefix("ok:").is_some_and(|i| i.split_whitespace().eq(["lo"])),
                "expected ok:lo (a fresh network namespace has only lo)".to_string(),
            ),
            Check::Uid => (value == expect.uid.to_string(), format!("expected {}", expect.uid)),
            Check::Kallsyms => (value.parse::<u64>().is_ok_and(|n| n > 0), "expected a count > 0".to_string()),
            Check::Nic => (
                value != "none"
                    && value != "fail"
                    && !value.is_empty()
                    && value.split(' ').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))),
                format!("expected an interface bound to the {} driver ({} NIC)", expect.nic.driver(), expect.nic.qemu_model()),
            ),
            Check::Banner | Check::End => (false, format!("{} is not a marker", self.name())),
        }
    }
}

/// The guest side of the contract: one line per marker check, calling the `check_<name>` shell
/// function that templates/boot-test.sh defines. A function's failure still prints its marker.
pub fn guest_checks(recipe_checks: &[CheckSpec]) -> String {
    let mut out = String::from("echo \"KLAB:BEGIN\"\n");
    for c in Check::MARKERS {
        let n = c.name();
        out.push_str(&format!("v=$(check_{n} 2>/dev/null) || v=fail\necho \"KLAB:{n}=$v\"\n"));
    }
    out.push_str("check_mitigations 2>/dev/null | while IFS= read -r line; do echo \"KLAB:mit:$line\"; done\n");
    for c in recipe_checks {
        out.push_str(&guest_run(c.name.as_str(), c.run_as, &c.run));
    }
    out.push_str("echo \"KLAB:END\"\n");
    out
}

/// The guest line that runs `command` through the `klab_run` shell function (templates/klab-run.sh),
/// which prints `KLAB:run:<name>:exit=`, `:out=` and `:err=` lines that `Console` reads back.
pub fn guest_run(name: &str, run_as: RunAs, command: &str) -> String {
    format!("klab_run {name} {} {}\n", run_as.as_str(), shell_quote(command))
}

/// One single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Bytes of each output stream a guest run reports (the rest is cut in the guest).
pub const RUN_OUTPUT_CAP: usize = 4096;

/// What one `klab_run` in the guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    pub exit: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Each stream's whole size in the guest (`out-size=`, `err-size=`).
    pub stdout_size: Option<usize>,
    pub stderr_size: Option<usize>,
    /// A line that was not valid hex: the output is incomplete.
    pub garbled: bool,
}

impl RunOutput {
    /// Every line arrived: an exit status, both sizes, and exactly that many bytes of each
    /// stream (up to the cap). A kernel message that split a line fails this.
    pub fn complete(&self) -> bool {
        let whole = |got: &[u8], size: Option<usize>| size.is_some_and(|n| got.len() == n.min(RUN_OUTPUT_CAP));
        self.exit.is_some() && !self.garbled && whole(&self.stdout, self.stdout_size) && whole(&self.stderr, self.stderr_size)
    }
}

/// A recipe check as judged, for boot-report.json.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckOutcome {
    pub name: String,
    #[serde(rename = "as")]
    pub run_as: RunAs,
    pub command: String,
    pub passed: bool,
    /// Exit status in the guest; null when the check never reported.
    pub exit: Option<i32>,
    pub expected_exit: i32,
    /// What stdout had to be (null: not checked).
    pub expected_stdout: Option<Expected>,
    pub stdout: String,
    pub stderr: String,
    /// Why it failed; empty when it passed.
    pub detail: String,
}

/// Judges one recipe check against what the guest reported.
pub fn judge_check(spec: &CheckSpec, run: Option<&RunOutput>) -> CheckOutcome {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut o = CheckOutcome {
        name: spec.name.to_string(),
        run_as: spec.run_as,
        command: spec.run.clone(),
        passed: false,
        exit: run.and_then(|r| r.exit),
        expected_exit: spec.exit,
        expected_stdout: spec.stdout.clone(),
        stdout: run.map(|r| text(&r.stdout)).unwrap_or_default(),
        stderr: run.map(|r| text(&r.stderr)).unwrap_or_default(),
        detail: String::new(),
    };
    o.detail = match run {
        None => format!("no KLAB:run:{}: lines: the check did not run", spec.name),
        Some(r) if r.exit.is_none() => format!("no exit status for {}", spec.name),
        Some(r) if !r.complete() => format!("the output of {} reached the host incomplete or garbled", spec.name),
        Some(r) if r.exit != Some(spec.exit) => {
            format!("{:?} as {} exited {}, expected {}", spec.run, spec.run_as.as_str(), r.exit.unwrap_or(-1), spec.exit)
        }
        Some(_) => match &spec.stdout {
            Some(want) if !want.matches(&o.stdout) => {
                let shown: String = o.stdout.chars().take(300).collect();
                let more = if shown.len() < o.stdout.len() { "..." } else { "" };
                format!("{:?} printed {shown:?}{more}, expected stdout {want}", spec.run)
            }
            _ => String::new(),
        },
    };
    o.passed = o.detail.is_empty();
    o
}

/// A step of the gdb stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GdbStep {
    /// debug.gdb found the running kernel's KASLR offset and relocated vmlinux's symbols.
    Kaslr,
    /// `hbreak __x64_sys_sethostname` was hit when the guest's user ran `hostname`.
    Breakpoint,
    /// `p linux_banner` printed the expected version.
    Banner,
    /// `lx-version` (the kernel's gdb scripts) printed it too.
    LxVersion,
    /// In a lab with modules: `lx-symbols modules` loaded them, and vmlinux stayed relocated.
    LxSymbols,
    /// `p $lx_current().comm` named the process that hit the breakpoint.
    LxCurrent,
    /// gdb ran to the last step.
    Done,
}

impl GdbStep {
    pub fn name(self) -> &'static str {
        match self {
            GdbStep::Kaslr => "kaslr",
            GdbStep::Breakpoint => "breakpoint",
            GdbStep::Banner => "banner",
            GdbStep::LxVersion => "lx-version",
            GdbStep::LxSymbols => "lx-symbols",
            GdbStep::LxCurrent => "lx-current",
            GdbStep::Done => "done",
        }
    }
}

/// The outcome of a boot test; `Display` gives the stable names used in reports and CI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    KernelPanic,
    Oops,
    Bug,
    /// A KASAN or UBSAN report, or a lockdep one (`LOCKDEP_REPORTS`).
    Sanitizer,
    InitDied,
    RebootLoop,
    Timeout(Stage),
    /// QEMU exited before the stage completed, without a panic message.
    Exited(Stage),
    /// A marker (or the banner) is missing or has the wrong value.
    CheckFailed(Check),
    /// A recipe check (`boot_test.checks`) failed.
    RecipeCheckFailed(String),
    /// An item of the mitigation profile does not hold in the guest.
    MitigationFailed(Item),
    /// The gdb stage failed at the named step.
    GdbFailed(GdbStep),
    Interrupted,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::KernelPanic => f.write_str("kernel-panic"),
            Verdict::Oops => f.write_str("oops"),
            Verdict::Bug => f.write_str("bug"),
            Verdict::Sanitizer => f.write_str("sanitizer"),
            Verdict::InitDied => f.write_str("init-died"),
            Verdict::RebootLoop => f.write_str("reboot-loop"),
            Verdict::Timeout(s) => write!(f, "timeout-{}", s.name()),
            Verdict::Exited(s) => write!(f, "exited-{}", s.name()),
            Verdict::CheckFailed(c) => write!(f, "check-failed:{}", c.name()),
            Verdict::RecipeCheckFailed(name) => write!(f, "check-failed:{name}"),
            Verdict::MitigationFailed(item) => write!(f, "check-failed:mitigation:{item}"),
            Verdict::GdbFailed(s) => write!(f, "gdb-failed:{}", s.name()),
            Verdict::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A verdict with the evidence behind it, e.g. `KLAB:nproc=1, expected 4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub detail: String,
}

impl Finding {
    fn new(verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding { verdict, detail: detail.into() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    /// Time this stage took.
    pub seconds: f64,
}

/// Written to `boot-report.json` in the lab, for every outcome.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    pub verdict: Verdict,
    /// Why the verdict is not `pass`; empty when it is.
    pub detail: String,
    /// Completed stages with their durations.
    pub stages: Vec<StageTime>,
    /// Whole test, both boots included.
    pub wall_seconds: f64,
    /// The QEMU command run.sh ran for the first boot, as `run.sh --dry-run` printed it.
    pub qemu_command: String,
    /// Serial console of the first boot.
    pub console_log: PathBuf,
    /// gdb's output, when the gdb stage ran gdb.
    pub gdb_transcript: Option<PathBuf>,
    /// Serial console of the gdb stage's boot (its own boot, to the user's shell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdb_console_log: Option<PathBuf>,
    /// The last lines of the console (or of the gdb transcript when gdb failed).
    pub last_lines: Vec<String>,
    /// The recipe's checks, each judged on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckOutcome>,
    /// The mitigation profile and the guest's evidence for each item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mitigations: Option<mitigations::Report>,
    /// The KASLR offset gdb found in the gdb stage's boot (another boot than the checks').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdb_kaslr_offset: Option<String>,
    /// Every run the guest reported, raw (`exec` reads its program's here).
    #[serde(skip)]
    pub runs: Vec<(String, RunOutput)>,
    /// Where this report was written.
    pub report: PathBuf,
}

impl BootReport {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// What a failing report means, for the command layer's error message.
    pub fn failure_message(&self) -> String {
        let tail: String = self.last_lines.iter().map(|l| format!("  | {l}\n")).collect();
        format!(
            "verdict {}: {}\nlast {} lines:\n{}full console: {}{}{}; report: {}",
            self.verdict,
            self.detail,
            self.last_lines.len(),
            tail,
            self.console_log.display(),
            self.gdb_console_log.as_ref().map(|t| format!(", gdb boot's console: {}", t.display())).unwrap_or_default(),
            self.gdb_transcript.as_ref().map(|t| format!(", gdb transcript: {}", t.display())).unwrap_or_default(),
            self.report.display(),
        )
    }
}

/// Incremental, pure console parser: feed it lines, ask it what it saw.
#[derive(Debug, Default, Clone)]
pub struct Console {
    banners: u32,
    /// First word after the first `Linux version`.
    pub version: Option<String>,
    pub begin: bool,
    pub end: bool,
    markers: Vec<(Check, String)>,
    /// What each `klab_run` reported, by name, in order.
    pub runs: Vec<(String, RunOutput)>,
    /// The first fatal message, with its line.
    pub fatal: Option<Finding>,
    /// The guest's mitigation evidence (`KLAB:mit:<key>=<value>`).
    pub mit: mitigations::Observed,
}

impl Console {
    pub fn push(&mut self, line: &str) {
        let line = line.trim_end();
        if self.fatal.is_none() {
            if let Some(v) = classify_fatal(line) {
                self.fatal = Some(Finding::new(v, line));
            }
        }
        if let Some(pos) = line.find("Linux version ") {
            self.banners += 1;
            if self.banners == 1 {
                let rest = &line[pos + "Linux version ".len()..];
                self.version = Some(rest.split_whitespace().next().unwrap_or("").to_string());
            } else if self.fatal.is_none() {
                self.fatal = Some(Finding::new(Verdict::RebootLoop, format!("second banner: {line}")));
            }
        }
        // Markers are whole lines in the exact format, and count only between BEGIN and END: the
        // kernel echoes its command line, so text from `--append` must not fake or end a check.
        if line == "KLAB:BEGIN" {
            self.begin = true;
        } else if !self.begin || self.end {
        } else if line == "KLAB:END" {
            self.end = true;
        } else if let Some(rest) = line.strip_prefix("KLAB:run:") {
            self.push_run(rest);
        } else if let Some(rest) = line.strip_prefix("KLAB:mit:") {
            self.mit.push(rest);
        } else if let Some((name, value)) = line.strip_prefix("KLAB:").and_then(|r| r.split_once('=')) {
            if let Some(check) = Check::of_marker(name) {
                if self.marker(check).is_none() {
                    self.markers.push((check, value.to_string()));
                }
            }
        }
    }

    /// `<name>:exit=<n>`, `<name>:out=<hex>` or `<name>:err=<hex>`.
    fn push_run(&mut self, rest: &str) {
        let Some((key, value)) = rest.split_once('=') else { return };
        let Some((name, field)) = key.rsplit_once(':') else { return };
        let at = match self.runs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None if self.runs.len() < 256 => {
                self.runs.push((name.to_string(), RunOutput::default()));
                self.runs.len() - 1
            }
            None => return,
        };
        let run = &mut self.runs[at].1;
        match field {
            "exit" if run.exit.is_none() => match value.parse() {
                Ok(n) => run.exit = Some(n),
                Err(_) => run.garbled = true,
            },
            "out-size" | "err-size" => {
                let size = if field == "out-size" { &mut run.stdout_size } else { &mut run.stderr_size };
                match value.parse() {
                    Ok(n) if size.is_none() => *size = Some(n),
                    _ => run.garbled = true,
                }
            }
            "out" | "err" => {
                let stream = if field == "out" { &mut run.stdout } else { &mut run.stderr };
                match decode_hex(value) {
                    Some(bytes) if stream.len() + bytes.len() <= RUN_OUTPUT_CAP => stream.extend(bytes),
                    _ => run.garbled = true,
                }
            }
            _ => run.garbled = true,
        }
    }

    /// What the guest's `klab_run NAME` reported.
    pub fn run(&self, name: &str) -> Option<&RunOutput> {
        self.runs.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// Every recipe check, judged.
    pub fn check_outcomes(&self, expect: &Expect) -> Vec<CheckOutcome> {
        expect.checks.iter().map(|c| judge_check(c, self.run(c.name.as_str()))).collect()
    }

    /// The guest's mitigation evidence judged against the profile (a boot test's guest prints it).
    pub fn mitigation_report(&self, expect: &Expect) -> Option<mitigations::Report> {
        let want = expect.mitigations.as_ref().filter(|_| expect.builtin)?;
        Some(mitigations::judge(want, &self.mit, expect.link_text))
    }

    pub fn marker(&self, check: Check) -> Option<&str> {
        self.markers.iter().find(|(c, _)| *c == check).map(|(_, v)| v.as_str())
    }

    /// The first stage not completed by the lines so far (Poweroff once END was seen).
    pub fn stage(&self) -> Stage {
        if self.version.is_none() {
            Stage::Banner
        } else if !self.begin {
            Stage::Markers
        } else if !self.end {
            Stage::Checks
        } else {
            Stage::Poweroff
        }
    }

    /// The banner names the expected kernel.
    pub fn check_banner(&self, expect: &Expect) -> Result<(), Finding> {
        let failed = Verdict::CheckFailed(Check::Banner);
        match &self.version {
            Some(v) if *v == expect.kernel_version => Ok(()),
            Some(v) => Err(Finding::new(failed, format!("booted Linux {v}, expected {}", expect.kernel_version))),
            None => Err(Finding::new(failed, "no `Linux version` banner")),
        }
    }

    /// Every marker check in contract order; the first failure wins.
    pub fn check_markers(&self, expect: &Expect) -> Result<(), Finding> {
        let builtin: &[Check] = if expect.builtin { &Check::MARKERS } else { &[] };
        for &check in builtin {
            let value = self.marker(check);
            let (ok, want) = check.judge(value.unwrap_or(""), expect);
            if !ok || value.is_none() {
                let n = check.name();
                let seen = value.map_or(format!("no KLAB:{n}= line"), |v| format!("KLAB:{n}={v}"));
                return Err(Finding::new(Verdict::CheckFailed(check), format!("{seen}, {want}")));
            }
        }
        if !self.end {
            return Err(Finding::new(Verdict::CheckFailed(Check::End), "no KLAB:END line"));
        }
        if let Some(report) = self.mitigation_report(expect) {
            if let Some(o) = report.first_failure() {
                let wanted = serde_json::to_value(o.wanted).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                return Err(Finding::new(
                    Verdict::MitigationFailed(o.item),
                    format!("profile {} wants {}={wanted}, the guest shows {} ({})", report.spec, o.item, o.seen, o.evidence),
                ));
            }
        }
        if let Some(failed) = self.check_outcomes(expect).into_iter().find(|o| !o.passed) {
            return Err(Finding::new(Verdict::RecipeCheckFailed(failed.name), failed.detail));
        }
        Ok(())
    }

    /// The verdict for a complete console, QEMU having exited after the last line.
    pub fn verdict_at_exit(&self, expect: &Expect) -> Finding {
        if let Some(f) = &self.fatal {
            return f.clone();
        }
        if self.version.is_some() {
            if let Err(f) = self.check_banner(expect) {
                return f;
            }
        }
        match self.stage() {
            stage @ (Stage::Banner | Stage::Markers) => {
                Finding::new(Verdict::Exited(stage), format!("QEMU exited before the {} stage completed", stage.name()))
            }
            _ => match self.check_markers(expect) {
                Ok(()) => Finding::new(Verdict::Pass, ""),
                Err(f) => f,
            },
        }
    }
}

/// The verdict for a whole console log, QEMU having exited after it (the runner feeds
/// `Console` line by line instead, to notice timeouts and stop early).
#[cfg(test)]
pub fn judge<'a>(lines: impl IntoIterator<Item = &'a str>, expect: &Expect) -> Finding {
    let mut console = Console::default();
    for line in lines {
        console.push(line);
    }
    console.verdict_at_exit(expect)
}

/// Hex digits (two per byte, as `od -An -tx1` prints them without spaces) to bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// The first line of each lockdep report about the kernel's locking (kernel/locking/lockdep.c,
/// PROVE_LOCKING and PROVE_RCU): a finding like a sanitizer's, after which the kernel goes on.
const LOCKDEP_REPORTS: [&str; 10] = [
    "WARNING: possible circular locking dependency detected",
    "WARNING: possible recursive locking detected",
    // "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", and the SOFTIRQ one.
    "-unsafe lock order detected",
    "WARNING: inconsistent lock state",
    "WARNING: possible irq lock inversion dependency detected",
    "WARNING: bad unlock balance detected!",
    "WARNING: held lock freed!",
    "still has locks held!",
    "WARNING: lock held when returning to user space!",
    "WARNING: suspicious RCU usage",
];

/// Kernel messages that mean the run failed, most specific first (one line can hold several).
pub fn classify_fatal(line: &str) -> Option<Verdict> {
    if line.contains("Attempted to kill init") {
        Some(Verdict::InitDied)
    } else if line.contains("KASAN") || line.contains("UBSAN") || LOCKDEP_REPORTS.iter().any(|r| line.contains(r)) {
        Some(Verdict::Sanitizer)
    } else if line.contains("BUG:") || line.contains("kernel BUG at") {
        Some(Verdict::Bug)
    } else if line.contains("Oops") {
        Some(Verdict::Oops)
    } else if line.contains("Kernel panic") {
        Some(Verdict::KernelPanic)
    } else {
        None
    }
}

/// gdb commands of the gdb stage, run on a booted guest; the echo lines split the transcript
/// into steps. debug.gdb has already relocated the symbols when it connected; `klab-kaslr` says
/// by how much. The host types `hostname` into the guest's shell until the breakpoint hits, so
/// the stop is in a process of the user's (`$lx_current()`), at an address KASLR moved.
const GDB_STEPS: [&str; 14] = [
    "echo KLAB-GDB:kaslr\\n",
    "klab-kaslr",
    "echo KLAB-GDB:banner\\n",
    "p linux_banner",
    "echo KLAB-GDB:lx-version\\n",
    "lx-version",
    "echo KLAB-GDB:breakpoint\\n",
    "hbreak __x64_sys_sethostname",
    "continue",
    "echo KLAB-GDB:lx-current\\n",
    "p $lx_current().comm",
    "echo KLAB-GDB:done\\n",
    // A kill packet makes QEMU exit at once; the process-group kill afterwards is the backstop.
    "kill",
    "echo KLAB-GDB:killed\\n",
];

/// Steps for a lab with modules, after `lx-version`: lx-symbols reloads vmlinux (debug.gdb keeps
/// the KASLR offset) and loads each module at its address; the banner must still read.
const GDB_MODULE_STEPS: [&str; 3] = ["echo KLAB-GDB:lx-symbols\\n", "lx-symbols modules", "p linux_banner"];

/// What the guest's shell gets typed into it until the breakpoint hits: an unprivileged
/// `hostname NAME` still enters sethostname(2), and nothing else in the guest calls it.
const GDB_TRIGGER: &[u8] = b"hostname klab-gdb\n";

/// Checks a gdb transcript of GDB_STEPS against the expected kernel; returns the KASLR offset
/// debug.gdb found. With `kaslr_off`, that offset must be zero.
pub fn judge_gdb(transcript: &str, version: &str, kaslr_off: bool, modules: bool) -> Result<String, Finding> {
    let section = |step: GdbStep| -> Option<&str> {
        let marker = format!("KLAB-GDB:{}\n", step.name());
        let start = transcript.find(&marker)? + marker.len();
        let rest = &transcript[start..];
        Some(rest.find("KLAB-GDB:").map_or(rest, |end| &rest[..end]))
    };
    let fail = |step: GdbStep, why: String| Err(Finding::new(Verdict::GdbFailed(step), why));
    // `kernel-lab: KASLR offset 0x1c000000 (vmlinux symbols relocated)`.
    let offset = section(GdbStep::Kaslr).and_then(|s| {
        s.lines().find_map(|l| l.split("KASLR offset ").nth(1)).and_then(|r| r.split_whitespace().next()).map(str::to_string)
    });
    let offset = match offset {
        Some(o) if o.starts_with("0x") && u64::from_str_radix(&o[2..], 16).is_ok() => o,
        _ => return fail(GdbStep::Kaslr, "`klab-kaslr` did not print `KASLR offset 0x...` (see the transcript)".into()),
    };
    if kaslr_off && offset != "0x0" {
        return fail(GdbStep::Kaslr, format!("the profile has kaslr=off, but gdb found the kernel moved by {offset}"));
    }
    let banner = format!("Linux version {version} ");
    match section(GdbStep::Banner) {
        // gdb prints the array as `$1 = 0xffffffff81666fc0 <linux_banner> "Linux version ..."`.
        Some(s) if s.lines().any(|l| l.starts_with('$') && l.contains(&format!("\"{banner}"))) => {}
        _ => return fail(GdbStep::Banner, format!("`p linux_banner` did not print \"{banner}...\" (symbols relocated by {offset})")),
    }
    match section(GdbStep::LxVersion) {
        Some(s) if s.lines().any(|l| l.starts_with(&banner)) => {}
        _ => {
            return fail(
                GdbStep::LxVersion,
                format!("`lx-version` did not print \"{banner}...\" (are vmlinux-gdb.py and scripts/gdb in the lab?)"),
            )
        }
    }
    if modules {
        match section(GdbStep::LxSymbols) {
            Some(s) if s.contains("loading @0x") && s.lines().any(|l| l.starts_with('$') && l.contains(&format!("\"{banner}"))) => {}
            _ => {
                return fail(
                    GdbStep::LxSymbols,
                    format!(
                    "`lx-symbols modules` loaded no module (`loading @0x...`), or `p linux_banner` no longer read \"{banner}...\" after it"
                ),
                )
            }
        }
    }
    match section(GdbStep::Breakpoint) {
        Some(s) if s.contains("Breakpoint 1, ") && s.contains("sethostname") => {}
        _ => return fail(GdbStep::Breakpoint, "gdb did not stop at `Breakpoint 1, ... __x64_sys_sethostname`".into()),
    }
    match section(GdbStep::LxCurrent) {
        Some(s) if s.lines().any(|l| l.starts_with('$') && l.contains("= \"hostname")) => {}
        _ => return fail(GdbStep::LxCurrent, "`p $lx_current().comm` did not print \"hostname\"".into()),
    }
    if section(GdbStep::Done).is_none() {
        return fail(GdbStep::Done, "gdb stopped before the last step".into());
    }
    Ok(offset)
}

/// Boots `lab` with its run.sh, checks the markers and poweroff, and attaches gdb to a second
/// boot that runs beside the first and counts only when the first passed. `timeout` applies to
/// each stage separately. Writes boot-report.json and the logs into the lab and returns the
/// report for every verdict; an error means the test could not run at all (a missing file, a
/// tool not installed). `extra` is added to the kernel command line of both boots, e.g.
/// `maxcpus=1` to check that a broken boot gets the right verdict.
/// `mitigations` picks the profile (a spec, or overrides on top of the lab's); `None` is the lab's.
pub fn run(lab: &Lab, timeout: Duration, extra: &str, mitigations: Option<&str>) -> Result<BootReport> {
    run_into(lab, timeout, extra, mitigations, &lab.dir)
}

/// `run`, with the report and logs written into `out` instead of the lab (a deliberately broken
/// boot must not leave its verdict in the lab).
pub fn run_into(lab: &Lab, timeout: Duration, extra: &str, mitigations: Option<&str>, out: &Path) -> Result<BootReport> {
    let mut expect = lab.expect()?;
    if let Some(spec) = mitigations {
        expect.mitigations = Some(lab.profile(spec)?);
    }
    run_with(lab, &expect, timeout, extra, out, true)
}

/// One boot without the gdb stage, judged against `expect` (an `exec` run: its guest script
/// prints only the program's run between BEGIN and END).
pub fn boot_once(lab: &Lab, expect: &Expect, timeout: Duration, out: &Path) -> Result<BootReport> {
    run_with(lab, expect, timeout, "", out, false)
}

fn run_with(lab: &Lab, expect: &Expect, timeout: Duration, extra: &str, out: &Path, with_gdb: bool) -> Result<BootReport> {
    // A newline would put text of the user's choosing on a console line of its own (init prints
    // the command line), where it could pose as a marker.
    if let Some(c) = extra.chars().find(|c| c.is_control()) {
        bail!("extra kernel command line {extra:?} contains the control character {c:?}: use spaces only");
    }
    if extra.contains("printk.time") {
        bail!("extra kernel command line {extra:?} sets printk.time: the boot test needs kernel messages timestamped (markers are whole lines); remove it");
    }
    let append = if extra.trim().is_empty() { TEST_APPEND.to_string() } else { format!("{TEST_APPEND} {}", extra.trim()) };
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let report_path = out.join(lab::REPORT);
    // A report of an earlier run must not outlive a run that fails to start.
    match std::fs::remove_file(&report_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove the old {}", report_path.display()));
        }
        _ => {}
    }
    // No assembly replaces the lab while it boots.
    let _hold = lab.lock_shared()?;
    preflight(lab)?;
    let signals = interrupt::install();
    let start = Instant::now();
    // Its own free loopback ports: a running lab or another boot test on the recipe's port must
    // not collide with these boots (QEMU would refuse to start and the verdict would mislead).
    let [port, gdb_port] = free_ports()?.map(|p| p.to_string());
    let qemu_command = dry_run(lab, &port, &append, expect)?;
    let console_log = out.join(lab::CONSOLE_LOG);
    let mut report = BootReport {
        verdict: Verdict::Pass,
        detail: String::new(),
        stages: Vec::new(),
        wall_seconds: 0.0,
        qemu_command,
        console_log: console_log.clone(),
        gdb_transcript: None,
        gdb_console_log: None,
        last_lines: Vec::new(),
        checks: Vec::new(),
        mitigations: None,
        gdb_kaslr_offset: None,
        runs: Vec::new(),
        report: report_path,
    };
    let mut tail = Tail::default();
    let transcript = out.join(lab::GDB_TRANSCRIPT);
    let gdb_console = out.join(lab::GDB_CONSOLE_LOG);
    if with_gdb {
        // An earlier run's transcript must not stand in for this one's.
        match std::fs::remove_file(&transcript) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove the old {}", transcript.display()));
            }
            _ => {}
        }
    }
    let gdb_append = if extra.trim().is_empty() { GDB_APPEND.to_string() } else { format!("{GDB_APPEND} {}", extra.trim()) };
    // The gdb stage's boot runs beside the checked boot (each QEMU keeps about one core busy under
    // TCG), and its result counts only when the checked boot passed; otherwise it is called off.
    let cancel = AtomicBool::new(false);
    let (mut outcome, gdb_outcome, boot_end) = std::thread::scope(|s| {
        let gdb = with_gdb.then(|| s.spawn(|| gdb_stage(lab, &gdb_port, &gdb_append, expect, timeout, &transcript, &gdb_console, &cancel)));
        // Should the checked boot panic, the scope waits for the gdb thread: call it off then too.
        let _on_unwind = CancelOnUnwind(&cancel);
        let outcome = boot(lab, &port, &append, expect, timeout, &console_log, &mut report, &mut tail);
        let boot_end = Instant::now();
        if !matches!(&outcome, Ok(f) if f.verdict == Verdict::Pass) {
            cancel.store(true, Ordering::SeqCst);
        }
        let gdb_outcome = gdb.map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        (outcome, gdb_outcome, boot_end)
    });
    match gdb_outcome {
        Some(gdb_outcome) if matches!(&outcome, Ok(f) if f.verdict == Verdict::Pass) => {
            report.gdb_console_log = Some(gdb_console.clone());
            outcome = gdb_outcome.map(|(finding, offset)| {
                report.gdb_kaslr_offset = offset;
                finding
            });
            let ran_gdb = transcript.exists();
            if ran_gdb {
                report.gdb_transcript = Some(transcript.clone());
            }
            if let Ok(f) = &outcome {
                if f.verdict == Verdict::Pass {
                    // What the gdb stage added to the wall time, after the checked boot.
                    report.stages.push(StageTime { stage: Stage::Gdb.name(), seconds: boot_end.elapsed().as_secs_f64() });
                } else {
                    // The console tail would be the first boot's: the transcript explains a gdb
                    // failure, the gdb boot's console one before gdb ran (a panic, no shell).
                    tail = Tail::default();
                    let text = std::fs::read_to_string(if ran_gdb { &transcript } else { &gdb_console }).unwrap_or_default();
                    for line in text.lines() {
                        tail.push(line);
                    }
                }
            }
        }
        Some(_) => {
            // Called off: the cut-short gdb run's transcript and console would only mislead.
            let _ = std::fs::remove_file(&transcript);
            let _ = std::fs::remove_file(&gdb_console);
        }
        None => {}
    }
    drop(signals);
    let finding = outcome?;
    report.verdict = finding.verdict;
    report.detail = finding.detail;
    report.wall_seconds = start.elapsed().as_secs_f64();
    if report.verdict != Verdict::Pass {
        report.last_lines = tail.0.into_iter().collect();
    }
    let text = serde_json::to_string_pretty(&report).context("serialize the boot report")? + "\n";
    crate::layout::write_atomic(&report.report, text.as_bytes())?;
    Ok(report)
}

/// run.sh's `--mitigations SPEC`, unless the lab predates profiles (its run.sh has no such option).
fn profile_args(expect: &Expect) -> Vec<&str> {
    expect.mitigations.as_ref().map_or(Vec::new(), |m| vec!["--mitigations", m.spec.as_str()])
}

/// Fails before booting anything when the lab or the host tools are incomplete.
fn preflight(lab: &Lab) -> Result<()> {
    lab.check_bootable()?;
    for (tool, package) in [("qemu-system-x86_64", "qemu-system-x86"), ("gdb", "gdb"), ("kill", "procps")] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} is not in PATH: install it (Debian package {package})");
        }
    }
    Ok(())
}

/// The QEMU command run.sh would run, for the report; also proves run.sh accepts the options.
fn dry_run(lab: &Lab, port: &str, append: &str, expect: &Expect) -> Result<String> {
    let run_sh = lab.file(lab::RUN_SH);
    let out = Command::new(&run_sh)
        .args(["--dry-run", "--gdb-port", port])
        .args(profile_args(expect))
        .args(["--append", append])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} --dry-run", run_sh.display()))?;
    if !out.status.success() {
        bail!("{} --dry-run failed ({}): {}", run_sh.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

enum Msg {
    Out(String),
    Err(String),
    OutClosed,
}

/// Stages 1-4: the first boot, up to QEMU's own exit.
#[allow(clippy::too_many_arguments)]
fn boot(
    lab: &Lab,
    port: &str,
    append: &str,
    expect: &Expect,
    timeout: Duration,
    console_log: &Path,
    report: &mut BootReport,
    tail: &mut Tail,
) -> Result<Finding> {
    let mut log = std::io::BufWriter::new(File::create(console_log).with_context(|| format!("create {}", console_log.display()))?);
    let (mut qemu, rx) = start_lab(lab, port, append, expect, Stdio::null())?;

    let mut console = Console::default();
    let mut stage = Stage::Banner;
    let mut stage_start = Instant::now();
    let finding = 'outer: loop {
        if interrupt::interrupted() {
            break Finding::new(Verdict::Interrupted, "interrupted by a signal");
        }
        let deadline = stage_start + timeout;
        let now = Instant::now();
        if now >= deadline {
            break Finding::new(
                Verdict::Timeout(stage),
                format!("the {} stage took longer than {} s", stage.name(), timeout.as_secs_f64()),
            );
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(Msg::Out(line)) => {
                let _ = writeln!(log, "{line}");
                // Hex-encoded run output says nothing to a reader of the tail; the report has it.
                if !line.starts_with("KLAB:run:") {
                    tail.push(&line);
                }
                console.push(&line);
                if let Some(f) = &console.fatal {
                    // The lines after an oops (registers, call trace) are what a reader needs.
                    drain(&rx, &mut log, tail, AFTER_FATAL);
                    break f.clone();
                }
                while console.stage() != stage {
                    if stage == Stage::Banner {
                        if let Err(f) = console.check_banner(expect) {
                            break 'outer f;
                        }
                    }
                    if stage == Stage::Checks {
                        if let Err(f) = console.check_markers(expect) {
                            break 'outer f;
                        }
                    }
                    report.stages.push(StageTime { stage: stage.name(), seconds: stage_start.elapsed().as_secs_f64() });
                    stage_start = Instant::now();
                    stage = next(stage);
                }
            }
            Ok(Msg::Err(line)) => {
                let line = format!("[run.sh stderr] {line}");
                let _ = writeln!(log, "{line}");
                tail.push(&line);
            }
            Ok(Msg::OutClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = qemu.wait_for(EXIT_GRACE);
                // stderr may still hold QEMU's last words (e.g. why it refused to start).
                drain(&rx, &mut log, tail, Duration::from_millis(500));
                let _ = writeln!(log, "[kernel-lab] run.sh exited: {}", status.map_or("still running".to_string(), |s| s.to_string()));
                // A guest that closed its console but kept running never powered off.
                let f = match status {
                    None if console.fatal.is_none() => Finding::new(
                        Verdict::Timeout(Stage::Poweroff),
                        format!("QEMU closed the console but was still running {} s later", EXIT_GRACE.as_secs()),
                    ),
                    _ => console.verdict_at_exit(expect),
                };
                if f.verdict == Verdict::Pass {
                    report.stages.push(StageTime { stage: stage.name(), seconds: stage_start.elapsed().as_secs_f64() });
                }
                break f;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    qemu.kill();
    log.flush().with_context(|| format!("write {}", console_log.display()))?;
    report.checks = console.check_outcomes(expect);
    report.mitigations = console.mitigation_report(expect);
    report.runs = console.runs.clone();
    Ok(finding)
}

/// Starts the lab's run.sh on `port` under the expected profile, in its own process group, with
/// its stdout and stderr lines arriving on the returned channel (OutClosed when stdout ends).
fn start_lab(lab: &Lab, port: &str, append: &str, expect: &Expect, stdin: Stdio) -> Result<(Group, mpsc::Receiver<Msg>)> {
    let mut cmd = Command::new(lab.file(lab::RUN_SH));
    cmd.args(["--gdb-port", port])
        .args(profile_args(expect))
        .args(["--append", append])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut qemu = Group::spawn(&mut cmd, "run.sh")?;
    let (tx, rx) = mpsc::channel();
    forward_lines(qemu.child.stdout.take().context("run.sh stdout")?, tx.clone(), Msg::Out, Some(Msg::OutClosed));
    forward_lines(qemu.child.stderr.take().context("run.sh stderr")?, tx, Msg::Err, None);
    Ok((qemu, rx))
}

fn next(stage: Stage) -> Stage {
    match stage {
        Stage::Banner => Stage::Markers,
        Stage::Markers => Stage::Checks,
        Stage::Checks => Stage::Poweroff,
        Stage::Poweroff | Stage::Gdb => Stage::Gdb,
    }
}

/// Copies what is still queued (up to `limit`) into the log and the tail.
fn drain(rx: &mpsc::Receiver<Msg>, log: &mut impl Write, tail: &mut Tail, limit: Duration) {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(Msg::Out(line)) => {
                let _ = writeln!(log, "{line}");
                tail.push(&line);
            }
            Ok(Msg::Err(line)) => {
                let line = format!("[run.sh stderr] {line}");
                let _ = writeln!(log, "{line}");
                tail.push(&line);
            }
            Ok(Msg::OutClosed) => {}
            Err(_) => break,
        }
    }
}

/// Reads `from` line by line on a thread; QEMU's serial output has \r\n endings and may hold
/// bytes that are not UTF-8.
fn forward_lines(from: impl Read + Send + 'static, tx: mpsc::Sender<Msg>, wrap: fn(String) -> Msg, at_end: Option<Msg>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if tx.send(wrap(line.trim_end_matches(['\n', '\r']).to_string())).is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(msg) = at_end {
            let _ = tx.send(msg);
        }
    });
}

/// Stage 5: a second boot (beside the checked one; `cancel` calls it off), to the user's shell,
/// then `gdb.sh -batch` through GDB_STEPS while the host types GDB_TRIGGER into the shell.
/// Returns the finding and the KASLR offset gdb found.
#[allow(clippy::too_many_arguments)]
fn gdb_stage(
    lab: &Lab,
    port: &str,
    append: &str,
    expect: &Expect,
    timeout: Duration,
    transcript: &Path,
    console_path: &Path,
    cancel: &AtomicBool,
) -> Result<(Finding, Option<String>)> {
    let port = port.to_string();
    let mut console = File::create(console_path).with_context(|| format!("create {}", console_path.display()))?;
    let (mut qemu, rx) = start_lab(lab, &port, append, expect, Stdio::piped())?;
    let mut guest_input = qemu.child.stdin.take().context("run.sh stdin")?;
    let mut log_line = |line: &str| {
        let _ = writeln!(console, "{line}");
    };

    // Up to the user's shell: /init prints this line just before starting it.
    let deadline = Instant::now() + timeout;
    let mut fatal = Console::default();
    loop {
        if interrupt::interrupted() || cancel.load(Ordering::SeqCst) {
            return Ok((Finding::new(Verdict::Interrupted, "interrupted by a signal"), None));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok((
                Finding::new(Verdict::Timeout(Stage::Gdb), format!("the guest reached no shell within {} s", timeout.as_secs_f64())),
                None,
            ));
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(Msg::Out(line)) => {
                log_line(&line);
                fatal.push(&line);
                if let Some(f) = &fatal.fatal {
                    return Ok((f.clone(), None));
                }
                if line.starts_with("Logged in as ") {
                    break;
                }
            }
            Ok(Msg::Err(line)) => log_line(&format!("[run.sh stderr] {line}")),
            Ok(Msg::OutClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok((Finding::new(Verdict::Exited(Stage::Gdb), "QEMU exited before the guest's shell started"), None));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }

    let out = File::create(transcript).with_context(|| format!("create {}", transcript.display()))?;
    let mut gdb_cmd = Command::new(lab.file(lab::GDB_SH));
    gdb_cmd.args(["--port", &port, "-batch"]);
    let modules = lab.file(lab::MODULES).is_dir();
    let at = GDB_STEPS.iter().position(|s| *s == "lx-version").expect("GDB_STEPS has lx-version") + 1;
    let steps = GDB_STEPS[..at].iter().chain(if modules { &GDB_MODULE_STEPS[..] } else { &[] }).chain(&GDB_STEPS[at..]);
    for step in steps {
        gdb_cmd.args(["-ex", step]);
    }
    gdb_cmd.stdin(Stdio::null()).stdout(out.try_clone().context("duplicate the gdb transcript handle")?).stderr(out);
    let mut gdb = Group::spawn(&mut gdb_cmd, "gdb.sh")?;
    let deadline = Instant::now() + timeout;
    let mut typed = Instant::now();
    let kaslr_off = expect.mitigations.as_ref().is_some_and(|m| m.get(Item::Kaslr) == Setting::Off);
    let mut waiting_judged = false;
    let early = loop {
        if interrupt::interrupted() || cancel.load(Ordering::SeqCst) {
            return Ok((Finding::new(Verdict::Interrupted, "interrupted by a signal"), None));
        }
        if gdb.try_wait().is_some() {
            break None;
        }
        if Instant::now() >= deadline {
            break Some(Finding::new(Verdict::Timeout(Stage::Gdb), format!("gdb did not finish within {} s", timeout.as_secs_f64())));
        }
        // Once gdb waits for the breakpoint, the steps before it are complete. A failed one (no
        // KASLR offset: the breakpoint sits where the kernel is not, and never hits) is the
        // verdict now, not a timeout later.
        if !waiting_judged {
            let text = std::fs::read_to_string(transcript).unwrap_or_default();
            if text.contains("KLAB-GDB:breakpoint\n") {
                waiting_judged = true;
                if let Err(f) = judge_gdb(&text, &expect.kernel_version, kaslr_off, modules) {
                    if f.verdict != Verdict::GdbFailed(GdbStep::Breakpoint) {
                        break Some(f);
                    }
                }
            }
        }
        // Until the breakpoint hits: the first lines may run before gdb has set it.
        if typed.elapsed() >= Duration::from_secs(1) {
            let _ = guest_input.write_all(GDB_TRIGGER).and_then(|_| guest_input.flush());
            typed = Instant::now();
        }
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Out(line) => log_line(&line),
                Msg::Err(line) => log_line(&format!("[run.sh stderr] {line}")),
                Msg::OutClosed => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    gdb.kill();
    qemu.kill();
    if let Some(f) = early {
        return Ok((f, None));
    }
    let text = std::fs::read_to_string(transcript).with_context(|| format!("read {}", transcript.display()))?;
    Ok(match judge_gdb(&text, &expect.kernel_version, kaslr_off, modules) {
        Ok(offset) => (Finding::new(Verdict::Pass, ""), Some(offset)),
        Err(f) => (f, None),
    })
}

/// N different ports nobody listens on right now; QEMU binds one a moment later, a race that only
/// a busy machine loses, and then gdb fails to connect with a clear message.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // All probes stay bound until every port is known, so the N ports differ.
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("find a free TCP port for the gdb stub")?;
        *port = listener.local_addr().context("local address of the port probe")?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Sets the flag when dropped during unwinding (a panic), and only then.
struct CancelOnUnwind<'a>(&'a AtomicBool);

impl Drop for CancelOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// The last TAIL_LINES lines, for failure messages.
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_string());
    }
}

/// A child in its own process group, so QEMU (and anything run.sh started) dies with it: on
/// timeout, on failure, on Ctrl-C (see `interrupt`) and on drop, including unwinding.
struct Group {
    child: Child,
    what: &'static str,
    status: Option<ExitStatus>,
}

impl Group {
    fn spawn(cmd: &mut Command, what: &'static str) -> Result<Group> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let parent = std::process::id();
        // SAFETY: between fork and exec the closure only makes two async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || die_with_parent(parent));
        }
        let child = cmd.spawn().with_context(|| format!("start {what} ({:?})", cmd.get_program()))?;
        Ok(Group { child, what, status: None })
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// TERM to the whole group, KILL after a grace period. A reaped leader's pid could be reused
    /// by an unrelated group, so the group is signalled only while the leader is unreaped.
    fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let pgid = format!("-{}", self.child.id());
        for (signal, grace) in [("TERM", Duration::from_secs(3)), ("KILL", Duration::from_secs(5))] {
            let _ = Command::new("kill")
                .args(["-s", signal, "--", &pgid])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if self.wait_for(grace).is_some() {
                return;
            }
        }
        eprintln!("boottest: {} (process group {pgid}) survived SIGKILL", self.what);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes the kernel SIGKILL this child (run.sh, which execs QEMU; gdb.sh, which execs gdb) when
/// the xtask dies, even by SIGKILL, which no handler sees. The setting survives exec. It fires
/// when the *thread* that spawned the child exits (the gdb stage's thread, for its boot and
/// gdb): a `Group` must never outlive the thread that spawned it.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The parent may have died before prctl: then nobody would ever kill us.
    if std::os::unix::process::parent_id() != parent {
        return Err(std::io::Error::other("kernel-lab exited while starting QEMU"));
    }
    Ok(())
}

/// SIGINT/SIGTERM/SIGHUP while a boot test runs set a flag instead of ending the process, so the
/// process groups above are killed before we exit. std links the C library on Linux, so its
/// `signal` is declared here rather than adding the libc crate for one function.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    const SIGHUP: i32 = 1;
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    const SIG_ERR: usize = usize::MAX;

    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }

    extern "C" fn on_signal(_signum: i32) {
        // Only an atomic store: async-signal-safe.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    /// Restores the previous handlers when dropped.
    pub struct Installed {
        previous: Vec<(i32, usize)>,
    }

    pub fn install() -> Installed {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in [SIGHUP, SIGINT, SIGTERM] {
            // SAFETY: glibc's signal() installs a handler with BSD semantics; on_signal only
            // touches an atomic.
            let old = unsafe { signal(sig, on_signal as extern "C" fn(i32) as usize) };
            if old != SIG_ERR {
                previous.push((sig, old));
            }
        }
        Installed { previous }
    }

    pub fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    impl Drop for Installed {
        fn drop(&mut self) {
            for &(sig, old) in &self.previous {
                // SAFETY: puts back the handler signal() returned earlier.
                unsafe { signal(sig, old) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            kernel_version: "6.12.117".to_string(),
            smp: 4,
            uid: 1000,
            nic: Nic::E1000,
            builtin: true,
            checks: Vec::new(),
            mitigations: Some(Mitigations::parse("none", "none").unwrap()),
            link_text: Some(LINK_TEXT),
        }
    }

    const LINK_TEXT: u64 = 0xffff_ffff_8100_0000;

    /// What a guest booted with the `none` profile shows.
    fn none_evidence() -> Vec<&'static str> {
        vec![
            "KLAB:mit:text=ffffffff81000000",
            "KLAB:mit:phys=01000000",
            "KLAB:mit:flags=",
            "KLAB:mit:meltdown=Not affected",
            "KLAB:mit:spectre_v2=Vulnerable",
            "KLAB:mit:kptr_restrict=0",
            "KLAB:mit:dmesg_restrict=0",
        ]
    }

    /// A passing console with the usual noise: timestamps, \r, kernel messages between markers.
    fn good_console() -> Vec<String> {
        [
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
            "[    0.000000] Linux version 6.12.117 (kernel-lab@kernel-lab) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP\r",
            "[    0.000000] Command line: console=ttyS0 nokaslr lab.test=1 panic=-1 oops=panic",
            "[    0.812345] Run /init as init process",
            "KLAB:BEGIN",
            "KLAB:uname=6.12.117",
            "[    1.201000] e1000 0000:00:03.0 eth0: (PCI:33MHz:32-bit) 52:54:00:12:34:56",
            "KLAB:nproc=4",
            "KLAB:netns=ok:lo",
            "KLAB:uid=1000",
            "KLAB:kallsyms=31337",
            "KLAB:nic=eth0",
        ]
        .into_iter()
        .chain(none_evidence())
        .chain(["KLAB:END\r", "[    1.650000] reboot: Power down"])
        .map(|s| s.to_string())
        .collect()
    }

    fn verdict_of(lines: &[String]) -> Verdict {
        judge(lines.iter().map(String::as_str), &expect()).verdict
    }

    /// The good console with `marker`'s line replaced (or removed when `with` is None).
    fn with_marker(marker: &str, with: Option<&str>) -> Vec<String> {
        let mut lines = good_console();
        let i = lines.iter().position(|l| l.starts_with(&format!("KLAB:{marker}"))).unwrap();
        match with {
            Some(w) => lines[i] = w.to_string(),
            None => {
                lines.remove(i);
            }
        }
        lines
    }

    #[test]
    fn good_console_passes() {
        assert_eq!(judge(good_console().iter().map(String::as_str), &expect()), Finding::new(Verdict::Pass, ""));
    }

    #[test]
    fn fatal_messages_have_their_own_verdicts() {
        let cases = [
            ("[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs", Verdict::KernelPanic),
            ("[    2.0] Oops: general protection fault, probably for non-canonical address", Verdict::Oops),
            ("[    2.0] BUG: kernel NULL pointer dereference, address: 0000000000000000", Verdict::Bug),
            ("[    2.0] kernel BUG at mm/slub.c:123!", Verdict::Bug),
            ("[    2.0] BUG: KASAN: slab-out-of-bounds in foo+0x1/0x2", Verdict::Sanitizer),
            ("[    2.0] UBSAN: shift-out-of-bounds in kernel/foo.c:1:2", Verdict::Sanitizer),
            ("[    2.0] WARNING: possible circular locking dependency detected", Verdict::Sanitizer),
            ("[    2.0] WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", Verdict::Sanitizer),
            ("[    2.0] WARNING: klab-echo/93 still has locks held!", Verdict::Sanitizer),
            ("[    2.0] BUG: sleeping function called from invalid context at mm/slub.c:4086", Verdict::Bug),
            ("[    2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100", Verdict::InitDied),
        ];
        for (line, want) in cases {
            // In the middle of the markers, and after END (a failed poweroff kills init).
            let mut lines = good_console();
            lines.insert(6, line.to_string());
            assert_eq!(verdict_of(&lines), want, "{line}");
            let mut lines = good_console();
            lines.push(line.to_string());
            assert_eq!(verdict_of(&lines), want, "{line} after END");
        }
    }

    /// What a kasan.yaml kernel (KASAN, UBSAN, lockdep) prints on every clean boot is no finding.
    #[test]
    fn sanitizer_boot_banners_are_not_findings() {
        let lines = [
            "[    0.0] kasan: KernelAddressSanitizer initialized",
            "[    0.0] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar",
            "[    0.0] ... MAX_LOCKDEP_SUBCLASSES:  8",
            "[    0.0]  memory used by lock dependency info: 6365 kB",
            "[    0.0]  per task-struct memory footprint: 1920 bytes",
        ];
        for line in lines {
            assert_eq!(classify_fatal(line), None, "{line}");
            let mut console = good_console();
            console.insert(2, line.to_string());
            assert_eq!(verdict_of(&console), Verdict::Pass, "{line}");
        }
    }

    fn recipe_checks(yaml: &str) -> Vec<CheckSpec> {
        crate::recipe::parse(&format!("{}boot_test:\n  checks:\n{yaml}", crate::recipe::tests::MINIMAL)).unwrap().boot_test.checks
    }

    /// The console of a good boot with recipe check runs inserted before END.
    fn with_runs(runs: &[&str]) -> Vec<String> {
        let mut lines = good_console();
        let end = lines.iter().position(|l| l.trim_end() == "KLAB:END").unwrap();
        for (i, r) in runs.iter().enumerate() {
            lines.insert(end + i, r.to_string());
        }
        lines
    }

    #[test]
    fn recipe_checks_are_judged_by_exit_and_output_and_named_in_the_verdict() {
        let mut e = expect();
        e.checks = recipe_checks(
            "    - {name: syscall, run: klab-hello, stdout: {exact: \"klab_hello(20) = 41\"}}\n\
             \x20   - {name: log, run: dmesg, as: root, stdout: {regex: \"klab_hello: called by pid [0-9]+\"}}\n\
             \x20   - {name: fails, run: \"false\", exit: 1}\n",
        );
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let log = "[ 1.2] klab_hello: called by pid 77 (klab-hello) with 20\n";
        let good = [
            "KLAB:run:syscall:exit=0".to_string(),
            "KLAB:run:syscall:out-size=20".to_string(),
            format!("KLAB:run:syscall:out={}", hex("klab_hello(20) ")),
            format!("KLAB:run:syscall:out={}", hex("= 41\n")),
            "KLAB:run:syscall:err-size=0".to_string(),
            "KLAB:run:log:exit=0".to_string(),
            format!("KLAB:run:log:out-size={}", log.len()),
            format!("KLAB:run:log:out={}", hex(log)),
            "KLAB:run:log:err-size=0".to_string(),
            "KLAB:run:fails:exit=1".to_string(),
            "KLAB:run:fails:out-size=0".to_string(),
            "KLAB:run:fails:err-size=0".to_string(),
        ];
        let judge_with = |runs: &[String]| {
            let lines = with_runs(&runs.iter().map(String::as_str).collect::<Vec<_>>());
            let mut c = Console::default();
            for l in &lines {
                c.push(l);
            }
            (c.verdict_at_exit(&e), c.check_outcomes(&e))
        };
        let (f, outcomes) = judge_with(&good);
        assert_eq!(f.verdict, Verdict::Pass, "{}", f.detail);
        assert!(outcomes.iter().all(|o| o.passed) && outcomes.len() == 3);
        assert_eq!(outcomes[0].stdout, "klab_hello(20) = 41\n");

        // Wrong value, wrong exit status, a missing run: each fails its own named check.
        let mut bad = good.clone();
        bad[3] = format!("KLAB:run:syscall:out={}", hex("= 42\n"));
        let (f, outcomes) = judge_with(&bad);
        assert_eq!(f.verdict.to_string(), "check-failed:syscall");
        assert!(f.detail.contains("expected stdout exactly \"klab_hello(20) = 41\""), "{}", f.detail);
        assert!(!outcomes[0].passed && outcomes[1].passed);
        let mut bad = good.clone();
        bad[9] = "KLAB:run:fails:exit=0".into();
        let (f, _) = judge_with(&bad);
        assert_eq!(f.verdict.to_string(), "check-failed:fails");
        assert!(f.detail.contains("exited 0, expected 1"), "{}", f.detail);
        let (f, outcomes) = judge_with(&good[..5]);
        assert_eq!(f.verdict.to_string(), "check-failed:log");
        assert!(outcomes[1].detail.contains("did not run"), "{}", outcomes[1].detail);
        // Garbled hex is never taken as output, and a line lost to a kernel message (the size
        // no longer adds up) fails too, even when what is left would match.
        let mut bad = good.clone();
        bad[2] = "KLAB:run:syscall:out=6g".into();
        assert_eq!(judge_with(&bad).0.verdict.to_string(), "check-failed:syscall");
        let mut lost = good.clone();
        lost[4] = "KLAB:run:syscall:err-size=5".into();
        let (f, _) = judge_with(&lost);
        assert!(f.verdict.to_string() == "check-failed:syscall" && f.detail.contains("incomplete"), "{}", f.detail);
        // A run line outside BEGIN..END (the kernel echoing its command line) is ignored.
        let mut c = Console::default();
        c.push("KLAB:run:syscall:exit=0");
        assert!(c.runs.is_empty());
    }

    #[test]
    fn check_names_cannot_shadow_builtin_checks() {
        for name in ["uname", "nproc", "end", "banner", "gdb"] {
            let e = crate::recipe::parse(&format!(
                "{}boot_test:\n  checks:\n    - {{name: {name}, run: \"true\"}}\n",
                crate::recipe::tests::MINIMAL
            ))
            .unwrap_err();
            assert!(format!("{e:#}").contains("kernel-lab's own checks"), "{name}: {e:#}");
        }
    }

    #[test]
    fn first_fatal_message_wins() {
        let mut lines = good_console();
        lines.truncate(4);
        lines.push("[    2.0] BUG: unable to handle page fault for address: ffff".into());
        lines.push("[    2.0] Oops: 0000 [#1] SMP".into());
        lines.push("[    2.1] Kernel panic - not syncing: Fatal exception".into());
        let f = judge(lines.iter().map(String::as_str), &expect());
        assert_eq!(f.verdict, Verdict::Bug);
        assert!(f.detail.contains("page fault"), "{}", f.detail);
    }

    #[test]
    fn second_banner_is_a_reboot_loop() {
        let mut lines = good_console();
        lines.truncate(5);
        lines.push("[    0.000000] Linux version 6.12.117 (kernel-lab@kernel-lab) #1 SMP".into());
        assert_eq!(verdict_of(&lines), Verdict::RebootLoop);
    }

    #[test]
    fn wrong_banner_version_fails_even_if_uname_matches() {
        let mut lines = good_console();
        lines[1] = "[    0.000000] Linux version 6.12.117-dirty (x@y) #1".into();
        assert_eq!(verdict_of(&lines), Verdict::CheckFailed(Check::Banner));
    }

    #[test]
    fn each_wrong_marker_fails_its_check() {
        let cases = [
            (Check::Uname, "KLAB:uname=6.1.0"),
            (Check::Nproc, "KLAB:nproc=1"),
            (Check::Netns, "KLAB:netns=ok:lo eth0"),
            (Check::Netns, "KLAB:netns=fail:"),
            (Check::Netns, "KLAB:netns=ok:"),
            (Check::Uid, "KLAB:uid=0"),
            (Check::Kallsyms, "KLAB:kallsyms=0"),
            (Check::Kallsyms, "KLAB:kallsyms=lots"),
            (Check::Nic, "KLAB:nic=none"),
            (Check::Nic, "KLAB:nic="),
            (Check::Nic, "KLAB:nic=fail"),
            (Check::Nic, "KLAB:nic=[ 1.2] e1000"),
            (Check::Nic, "KLAB:nic=eth0  eth1"),
            // A check whose command failed prints `fail` (guest_checks).
            (Check::Uid, "KLAB:uid=fail"),
        ];
        for (check, line) in cases {
            assert_eq!(verdict_of(&with_marker(check.name(), Some(line))), Verdict::CheckFailed(check), "{line}");
        }
        for check in Check::MARKERS {
            let f = judge(with_marker(check.name(), None).iter().map(String::as_str), &expect());
            assert_eq!(f.verdict, Verdict::CheckFailed(check), "missing {check:?}");
            assert!(f.detail.contains("no KLAB:"), "{}", f.detail);
        }
    }

    #[test]
    fn missing_end_fails() {
        assert_eq!(verdict_of(&with_marker("END", None)), Verdict::CheckFailed(Check::End));
    }

    /// The kernel echoes its command line (and init prints it), so marker text given with
    /// `--append` appears on the console before BEGIN and inside other lines.
    #[test]
    fn marker_text_on_the_command_line_neither_fakes_nor_breaks_a_check() {
        let append = "maxcpus=1 KLAB:BEGIN KLAB:nproc=4 KLAB:END";
        let mut lines = with_marker("nproc", Some("KLAB:nproc=1"));
        lines.insert(2, format!("[    0.000000] Command line: console=ttyS0 lab.test=1 {append}"));
        lines.insert(3, format!("[    0.000000] Unknown kernel command line parameters \"{append}\", will be passed to user space."));
        lines.insert(5, format!("cmdline: console=ttyS0 lab.test=1 {append}"));
        assert_eq!(verdict_of(&lines), Verdict::CheckFailed(Check::Nproc));
        // The same text on a good boot does not end the checks early or hide a marker.
        let mut good = good_console();
        good.insert(2, format!("[    0.000000] Command line: {append} KLAB:nic=none KLAB:uid=0"));
        assert_eq!(verdict_of(&good), Verdict::Pass);
    }

    #[test]
    fn markers_count_only_as_whole_lines_between_begin_and_end() {
        // Before BEGIN: ignored, so the real (later) line decides.
        let mut lines = with_marker("uid", Some("KLAB:uid=0"));
        lines.insert(3, "KLAB:uid=1000".to_string());
        assert_eq!(verdict_of(&lines), Verdict::CheckFailed(Check::Uid));
        // Inside another line, or with a prefix: not a marker.
        let shared = with_marker("nproc", Some("[    1.2] e1000 eth0: link up KLAB:nproc=4"));
        assert_eq!(verdict_of(&shared), Verdict::CheckFailed(Check::Nproc));
        let spaced = with_marker("nproc", Some(" KLAB:nproc=4"));
        assert_eq!(verdict_of(&spaced), Verdict::CheckFailed(Check::Nproc));
        // After END: too late.
        let mut late = with_marker("kallsyms", None);
        late.push("KLAB:kallsyms=5".to_string());
        assert_eq!(verdict_of(&late), Verdict::CheckFailed(Check::Kallsyms));
        // A marker name outside the contract is ignored; the first of a repeated marker counts.
        let mut extra = good_console();
        extra.insert(6, "KLAB:bogus=1".to_string());
        extra.insert(7, "KLAB:uname=6.12.117".to_string());
        extra.insert(8, "KLAB:uname=other".to_string());
        assert_eq!(verdict_of(&extra), Verdict::Pass);
    }

    /// The guest's checks are rendered from `Check::MARKERS`; the template must define exactly
    /// one `check_<name>` shell function for each of them, and the host must parse what the
    /// rendered lines print.
    #[test]
    fn guest_template_and_host_agree_on_every_marker() {
        let template = include_str!("../templates/boot-test.sh");
        let defined: Vec<&str> = template.lines().filter_map(|l| l.strip_prefix("check_").and_then(|r| r.strip_suffix("() {"))).collect();
        let expected: Vec<&str> = Check::MARKERS.iter().map(|c| c.name()).chain(["mitigations"]).collect();
        assert_eq!(defined, expected, "check_* functions in templates/boot-test.sh vs Check::MARKERS and check_mitigations");
        assert!(template.contains("@CHECKS@"), "the template must include the rendered checks");
        assert!(!template.contains("KLAB:"), "markers are printed only by the rendered lines (guest_checks)");
        let rendered = guest_checks(&[]);
        // Simulate the guest: every function prints a passing value.
        let values = ["6.12.117", "4", "ok:lo", "1000", "42", "eth0"];
        let mut console = vec!["[    0.0] Linux version 6.12.117 (x@y) #1".to_string()];
        let mut value = None;
        for line in rendered.lines() {
            if line.starts_with("check_mitigations ") {
                console.extend(none_evidence().iter().map(|l| l.to_string()));
                continue;
            }
            if let Some(call) = line.strip_prefix("v=$(check_") {
                let name = call.split_once(' ').unwrap().0;
                value = Some(values[Check::MARKERS.iter().position(|c| c.name() == name).unwrap()]);
                continue;
            }
            let text = line.strip_prefix("echo \"").and_then(|l| l.strip_suffix('"')).unwrap();
            console.push(match text.strip_suffix("=$v") {
                Some(marker) => format!("{marker}={}", value.take().unwrap()),
                None => text.to_string(),
            });
        }
        assert_eq!(verdict_of(&console), Verdict::Pass, "{console:?}");
    }

    #[test]
    fn early_exits_name_the_stage() {
        let lines = good_console();
        assert_eq!(verdict_of(&lines[..1]), Verdict::Exited(Stage::Banner));
        assert_eq!(verdict_of(&lines[..4]), Verdict::Exited(Stage::Markers));
        // After BEGIN the checks say what is missing.
        assert_eq!(verdict_of(&lines[..6]), Verdict::CheckFailed(Check::Nproc));
    }

    #[test]
    fn console_tracks_stages() {
        let mut c = Console::default();
        let lines = good_console();
        let stages: Vec<Stage> = lines
            .iter()
            .map(|l| {
                c.push(l);
                c.stage()
            })
            .collect();
        assert_eq!(stages[0], Stage::Banner);
        assert_eq!(stages[1], Stage::Markers);
        assert_eq!(stages[4], Stage::Checks);
        assert_eq!(stages[18], Stage::Checks);
        assert_eq!(stages[19], Stage::Poweroff);
        assert_eq!(c.marker(Check::Nproc), Some("4"));
    }

    #[test]
    fn verdict_names_are_stable() {
        let names: Vec<String> = [
            Verdict::Pass,
            Verdict::KernelPanic,
            Verdict::InitDied,
            Verdict::RebootLoop,
            Verdict::Timeout(Stage::Markers),
            Verdict::CheckFailed(Check::Netns),
            Verdict::GdbFailed(GdbStep::Breakpoint),
        ]
        .iter()
        .map(Verdict::to_string)
        .collect();
        assert_eq!(
            names,
            ["pass", "kernel-panic", "init-died", "reboot-loop", "timeout-markers", "check-failed:netns", "gdb-failed:breakpoint"]
        );
        assert_eq!(serde_json::to_string(&Verdict::Oops).unwrap(), "\"oops\"");
    }

    const GOOD_GDB: &str = "kernel-lab: KASLR offset 0x1c000000 (vmlinux symbols relocated)\n\
        KLAB-GDB:kaslr\n\
        kernel-lab: KASLR offset 0x1c000000 (vmlinux symbols relocated)\n\
        KLAB-GDB:banner\n\
        $1 = 0xffffffff9d666fc0 <linux_banner> \"Linux version 6.12.117 (kernel-lab@kernel-lab) (gcc) #1 SMP\\n\"\n\
        KLAB-GDB:lx-version\n\
        Linux version 6.12.117 (kernel-lab@kernel-lab) (gcc) #1 SMP\n\
        KLAB-GDB:breakpoint\n\
        Hardware assisted breakpoint 1 at 0xffffffff9d0b3f10: file kernel/sys.c, line 1383.\n\n\
        Thread 2 hit Breakpoint 1, __x64_sys_sethostname (regs=0xffffc90000427f58) at kernel/sys.c:1383\n\
        1383\tSYSCALL_DEFINE2(sethostname, char __user *, name, int, len)\n\
        KLAB-GDB:lx-current\n\
        $2 = \"hostname\\000\\000\\000\\000\\000\\000\\000\"\n\
        KLAB-GDB:done\n\
        [Inferior 1 (process 1) killed]\n\
        KLAB-GDB:killed\n";

    #[test]
    fn gdb_transcript_checks() {
        assert_eq!(judge_gdb(GOOD_GDB, "6.12.117", false, false), Ok("0x1c000000".to_string()));
        let step = |text: &str, version: &str| judge_gdb(text, version, false, false).unwrap_err().verdict;
        assert_eq!(step(GOOD_GDB, "6.1.0"), Verdict::GdbFailed(GdbStep::Banner));
        // Under kaslr=off the kernel must not have moved.
        let f = judge_gdb(GOOD_GDB, "6.12.117", true, false).unwrap_err();
        assert_eq!(f.verdict, Verdict::GdbFailed(GdbStep::Kaslr));
        assert!(f.detail.contains("moved by 0x1c000000"), "{}", f.detail);
        let unmoved = GOOD_GDB.replace("0x1c000000", "0x0");
        assert_eq!(judge_gdb(&unmoved, "6.12.117", true, false), Ok("0x0".to_string()));
        let no_offset =
            GOOD_GDB.replace("KLAB-GDB:kaslr\nkernel-lab: KASLR offset", "KLAB-GDB:kaslr\nkernel-lab: the kernel has not set up");
        assert_eq!(step(&no_offset, "6.12.117"), Verdict::GdbFailed(GdbStep::Kaslr));
        let no_break = GOOD_GDB.replace("Breakpoint 1, __x64_sys_sethostname", "Program received signal SIGTRAP");
        assert_eq!(step(&no_break, "6.12.117"), Verdict::GdbFailed(GdbStep::Breakpoint));
        let no_lx =
            GOOD_GDB.replace("KLAB-GDB:lx-version\nLinux version", "KLAB-GDB:lx-version\nUndefined command: \"lx-version\".\nLinux versio");
        assert_eq!(step(&no_lx, "6.12.117"), Verdict::GdbFailed(GdbStep::LxVersion));
        let other = GOOD_GDB.replace("$2 = \"hostname", "$2 = \"swapper/0");
        assert_eq!(step(&other, "6.12.117"), Verdict::GdbFailed(GdbStep::LxCurrent));
        let cut = &GOOD_GDB[..GOOD_GDB.find("KLAB-GDB:done").unwrap()];
        assert_eq!(step(cut, "6.12.117"), Verdict::GdbFailed(GdbStep::Done));
        assert_eq!(step("localhost:1234: Connection refused.\n", "6.12.117"), Verdict::GdbFailed(GdbStep::Kaslr));
        // A lab with modules: lx-symbols must load one and leave vmlinux relocated.
        let banner_line = GOOD_GDB.lines().find(|l| l.starts_with("$1 = ")).unwrap();
        let with_modules = GOOD_GDB.replace(
            "KLAB-GDB:breakpoint\n",
            &format!("KLAB-GDB:lx-symbols\nloading vmlinux\nscanning for modules in /lab/modules\nloading @0xffffffffc0200000: /lab/modules/klab.ko\n{}\nKLAB-GDB:breakpoint\n", banner_line.replace("$1", "$3")),
        );
        assert_eq!(judge_gdb(&with_modules, "6.12.117", false, true), Ok("0x1c000000".to_string()));
        assert_eq!(judge_gdb(GOOD_GDB, "6.12.117", false, true).unwrap_err().verdict, Verdict::GdbFailed(GdbStep::LxSymbols));
        let unrelocated =
            with_modules.replace("$3 = 0xffffffff9d666fc0 <linux_banner> \"Linux", "$3 = 0xffffffff81666fc0 <linux_banner> \"\\000");
        assert_eq!(judge_gdb(&unrelocated, "6.12.117", false, true).unwrap_err().verdict, Verdict::GdbFailed(GdbStep::LxSymbols));
    }

    #[test]
    fn a_profile_that_does_not_hold_is_a_named_verdict() {
        let mut lines = good_console();
        let at = lines.iter().position(|l| l == "KLAB:mit:flags=").unwrap();
        lines[at] = "KLAB:mit:flags=smep".to_string();
        let f = judge(lines.iter().map(String::as_str), &expect());
        assert_eq!(f.verdict, Verdict::MitigationFailed(Item::Smep));
        assert_eq!(f.verdict.to_string(), "check-failed:mitigation:smep");
        assert!(f.detail.contains("profile none wants smep=off, the guest shows on (cpuinfo flags: smep)"), "{}", f.detail);
        // The same evidence passes a profile that allows it; a missing line fails the item.
        let mut e = expect();
        e.mitigations = Some(Mitigations::parse("none,smep=on", "none").unwrap());
        assert_eq!(judge(lines.iter().map(String::as_str), &e).verdict, Verdict::Pass);
        lines.retain(|l| !l.starts_with("KLAB:mit:kptr_restrict="));
        assert_eq!(judge(lines.iter().map(String::as_str), &e).verdict, Verdict::MitigationFailed(Item::KptrRestrict));
        // Outside BEGIN..END (the command line echo) evidence does not count.
        let mut c = Console::default();
        c.push("KLAB:mit:flags=smep smap pti");
        assert!(c.mit.get("flags").is_none());
    }

    // --- The runner, with shell scripts standing in for run.sh/gdb.sh (no QEMU, no kernel). ---

    fn scratch(name: &str) -> PathBuf {
        crate::testutil::scratch(&format!("boottest-{name}"))
    }

    fn script(path: &Path, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/bash\n{body}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A lab whose run.sh replays `console` (then runs `after`), and whose gdb.sh prints GOOD_GDB.
    fn fake_lab(name: &str, console: &[String], after: &str) -> Lab {
        let dir = scratch(name);
        for f in [lab::BZIMAGE, lab::VMLINUX, lab::DEBUG_GDB, lab::ROOTFS] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let e = expect();
        let desc = lab::Description {
            recipe: "lts".into(),
            kernel_version: e.kernel_version,
            busybox_version: "1.35.0".into(),
            smp: std::num::NonZeroU32::new(e.smp).unwrap(),
            uid: e.uid,
            nic: e.nic,
            checks: Vec::new(),
            mitigations: Some("none".into()),
        };
        lab::write_description(&dir, &desc).unwrap();
        std::fs::write(dir.join(lab::SYSTEM_MAP), "ffffffff81000000 T _text\n").unwrap();
        std::fs::write(dir.join("console.txt"), console.join("\n") + "\n").unwrap();
        // The `none` profile: gdb finds the kernel where vmlinux says.
        std::fs::write(dir.join("gdb.txt"), GOOD_GDB.replace("0x1c000000", "0x0")).unwrap();
        let lab_s = dir.display();
        script(
            &dir.join(lab::RUN_SH),
            &format!(
                "echo \"$*\" >> {lab_s}/calls\n\
                 [ \"$1\" = --dry-run ] && {{ eval \"a=\\${{$#}}\"; echo qemu-system-x86_64 -gdb \"tcp:127.0.0.1:$3\" -append \"$a\"; exit 0; }}\n\
                 case \"$*\" in *lab.test=1*) ;; *) echo 'Logged in as user (uid 1000)'; exec sleep 600 ;; esac\n\
                 echo $$ > {lab_s}/pid\n\
                 echo 'run.sh: KVM not usable; emulating with TCG' >&2\n\
                 cat {lab_s}/console.txt\n{after}\n"
            ),
        );
        script(&dir.join(lab::GDB_SH), &format!("echo \"$*\" > {lab_s}/gdb-args\ncat {lab_s}/gdb.txt\n"));
        Lab::open(&dir).unwrap()
    }

    fn alive(pid_file: &Path) -> bool {
        let pid = std::fs::read_to_string(pid_file).unwrap();
        Command::new("kill").args(["-0", pid.trim()]).stderr(Stdio::null()).status().unwrap().success()
    }

    fn report_json(lab: &Lab) -> serde_json::Value {
        report_json_at(&lab.dir)
    }

    fn report_json_at(dir: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(lab::REPORT)).unwrap()).unwrap()
    }

    #[test]
    fn runner_passes_a_good_lab_and_writes_the_report() {
        let lab = fake_lab("pass", &good_console(), "exit 0");
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::Pass);
        assert!(report.passed() && report.last_lines.is_empty());
        let stages: Vec<&str> = report.stages.iter().map(|s| s.stage).collect();
        assert_eq!(stages, ["banner", "markers", "checks", "poweroff", "gdb"]);
        assert!(report.qemu_command.contains(TEST_APPEND), "{}", report.qemu_command);
        let json = report_json(&lab);
        assert_eq!(json["verdict"], "pass");
        assert_eq!(json["stages"][4]["stage"], "gdb");
        let console = std::fs::read_to_string(lab.file(lab::CONSOLE_LOG)).unwrap();
        assert!(console.contains("KLAB:END\n") && console.contains("[run.sh stderr] run.sh: KVM"), "{console}");
        let mut calls: Vec<String> = std::fs::read_to_string(lab.file("calls")).unwrap().lines().map(str::to_string).collect();
        assert_eq!(calls.len(), 3, "dry run, boot, gdb boot: {calls:?}");
        // The dry run comes first; the two boots run side by side, in either order.
        if calls[1].ends_with(&format!("--append {GDB_APPEND}")) {
            calls.swap(1, 2);
        }
        // Both boots get their own free port, never the recipe's fixed one, and the report shows
        // the command of the boot that ran.
        let port_of = |call: &str, prefix: &str| call.strip_prefix(prefix).unwrap().split(' ').next().unwrap().parse::<u16>().unwrap();
        let (boot_port, gdb_port) = (port_of(&calls[1], "--gdb-port "), port_of(&calls[2], "--gdb-port "));
        assert!(boot_port != 1234 && gdb_port != 1234 && boot_port != gdb_port, "{calls:?}");
        assert_eq!(calls[0], format!("--dry-run --gdb-port {boot_port} --mitigations none --append {TEST_APPEND}"));
        // The gdb boot goes to the user's shell (no lab.test=1) under the same profile.
        assert_eq!(calls[2], format!("--gdb-port {gdb_port} --mitigations none --append {GDB_APPEND}"));
        assert_eq!(json["mitigations"]["spec"], "none");
        assert_eq!(json["mitigations"]["kaslr_offset"], "0x0");
        assert_eq!(json["gdb_kaslr_offset"], "0x0");
        assert!(report.qemu_command.contains(&format!("tcp:127.0.0.1:{boot_port}")), "{}", report.qemu_command);
        assert!(calls[1].ends_with(&format!("--append {TEST_APPEND}")), "{calls:?}");
        let gdb_args = std::fs::read_to_string(lab.file("gdb-args")).unwrap();
        assert!(gdb_args.starts_with(&format!("--port {gdb_port} -batch -ex echo KLAB-GDB:kaslr")), "{gdb_args}");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn runner_reports_a_failed_check_with_the_console_tail() {
        let lab = fake_lab("nproc", &with_marker("nproc", Some("KLAB:nproc=1")), "exit 0");
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::CheckFailed(Check::Nproc));
        assert_eq!(report.detail, "KLAB:nproc=1, expected 4");
        assert!(report.last_lines.iter().any(|l| l == "KLAB:netns=ok:lo"), "{:?}", report.last_lines);
        let msg = report.failure_message();
        assert!(msg.starts_with("verdict check-failed:nproc: KLAB:nproc=1, expected 4\n"), "{msg}");
        assert!(msg.contains("  | KLAB:netns=ok:lo\n") && msg.contains(lab::CONSOLE_LOG), "{msg}");
        let json = report_json(&lab);
        assert_eq!(json["verdict"], "check-failed:nproc");
        assert!(json["gdb_transcript"].is_null());
        // stdout and stderr are read by two threads: the stderr line may come after the verdict.
        let last: Vec<&str> = json["last_lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert!(last.contains(&"KLAB:nproc=1") && last.contains(&"KLAB:BEGIN"), "{last:?}");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn runner_times_out_and_kills_the_process_group() {
        let mut console = good_console();
        console.truncate(3);
        // The guest hangs before init: no markers ever come.
        let lab = fake_lab("hang", &console, "exec sleep 600");
        let report = run(&lab, Duration::from_secs(2), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::Timeout(Stage::Markers));
        assert!(!alive(&lab.file("pid")), "run.sh's process survived the timeout");
        assert_eq!(report_json(&lab)["verdict"], "timeout-markers");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn runner_notices_a_guest_that_does_not_power_off() {
        let lab = fake_lab("nopoweroff", &good_console(), "exec sleep 600");
        assert_eq!(run(&lab, Duration::from_secs(2), "", None).unwrap().verdict, Verdict::Timeout(Stage::Poweroff));
        assert!(!alive(&lab.file("pid")));
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn runner_stops_at_a_panic() {
        let mut console = good_console();
        console.truncate(5);
        console.push("[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100".into());
        let lab = fake_lab("panic", &console, "exec sleep 600");
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::InitDied);
        assert!(report.detail.contains("Attempted to kill init"), "{}", report.detail);
        assert!(!alive(&lab.file("pid")));
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn runner_fails_a_broken_gdb_stage() {
        let lab = fake_lab("gdbfail", &good_console(), "exit 0");
        std::fs::write(lab.file("gdb.txt"), "localhost:1: Connection refused.\n").unwrap();
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::GdbFailed(GdbStep::Kaslr));
        assert_eq!(report.last_lines, ["localhost:1: Connection refused."], "the transcript, not the console");
        assert!(report.failure_message().contains(lab::GDB_TRANSCRIPT));
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    /// Marker text in `--append` reaches the fake kernel's console echo and changes nothing.
    /// gdb without the KASLR offset waits at `continue` for a breakpoint that never hits: the
    /// failed step is the verdict as soon as gdb waits, not a timeout of the whole stage.
    #[test]
    fn a_gdb_stage_without_the_offset_fails_at_once() {
        let lab = fake_lab("gdbnooffset", &good_console(), "exit 0");
        let cut = GOOD_GDB.find("Hardware assisted").unwrap();
        let waiting = GOOD_GDB[..cut].replace(
            "KLAB-GDB:kaslr\nkernel-lab: KASLR offset 0x1c000000 (vmlinux symbols relocated)",
            "KLAB-GDB:kaslr\nkernel-lab: `monitor info registers` failed",
        );
        std::fs::write(lab.file("gdb.txt"), waiting).unwrap();
        let lab_s = lab.dir.display();
        script(&lab.file(lab::GDB_SH), &format!("cat {lab_s}/gdb.txt\nexec sleep 600\n"));
        let start = Instant::now();
        let report = run(&lab, Duration::from_secs(40), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::GdbFailed(GdbStep::Kaslr), "{}", report.detail);
        assert!(start.elapsed() < Duration::from_secs(30), "waited {:?} for the timeout", start.elapsed());
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    /// A gdb boot that fails before gdb runs (here a panic before the shell) is explained by its
    /// own console, never by the transcript an earlier run left in the lab.
    #[test]
    fn a_gdb_boot_that_fails_before_gdb_shows_its_own_console() {
        let lab = fake_lab("gdbbootpanic", &good_console(), "exit 0");
        std::fs::write(lab.file(lab::GDB_TRANSCRIPT), GOOD_GDB).unwrap();
        let lab_s = lab.dir.display();
        let run_sh = std::fs::read_to_string(lab.file(lab::RUN_SH)).unwrap().replace(
            "echo 'Logged in as user (uid 1000)'; exec sleep 600",
            "echo '[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100'; exec sleep 600",
        );
        script(&lab.file(lab::RUN_SH), run_sh.trim_start_matches("#!/bin/bash\n"));
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::InitDied, "{}", report.detail);
        assert!(report.last_lines.iter().any(|l| l.contains("Kernel panic")), "{:?}", report.last_lines);
        assert!(!report.last_lines.iter().any(|l| l.contains("KLAB-GDB")), "a stale transcript: {:?}", report.last_lines);
        assert!(!lab.file(lab::GDB_TRANSCRIPT).exists() && report.gdb_transcript.is_none());
        assert!(report.failure_message().contains(lab::GDB_CONSOLE_LOG), "{}", report.failure_message());
        assert!(!std::path::Path::new(&format!("{lab_s}/gdb-args")).exists(), "gdb ran");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    /// The gdb stage's boot runs beside the checked one: when that one fails, the gdb stage is
    /// called off at once (here gdb waits for its breakpoint, which would last until the stage's
    /// timeout), its processes die, and neither its transcript nor its console is left behind.
    #[test]
    fn a_failed_first_boot_calls_the_gdb_stage_off() {
        let lab = fake_lab("gdbcalledoff", &with_marker("nproc", Some("KLAB:nproc=1")), "exit 0");
        let lab_s = lab.dir.display();
        // The checked boot replays its (failing) console only once `until` holds in its shell.
        let run_sh = std::fs::read_to_string(lab.file(lab::RUN_SH)).unwrap();
        let checked_boot_waits = |until: &str| {
            let gated =
                run_sh.replace(&format!("cat {lab_s}/console.txt"), &format!("until {until}; do sleep 0.1; done\ncat {lab_s}/console.txt"));
            script(&lab.file(lab::RUN_SH), gated.trim_start_matches("#!/bin/bash\n"));
        };
        // It fails only once gdb runs, so the call-off meets a running gdb.
        checked_boot_waits(&format!("[ -e {lab_s}/gdb-args ]"));
        let cut = GOOD_GDB.find("Hardware assisted").unwrap();
        std::fs::write(lab.file("gdb.txt"), GOOD_GDB[..cut].replace("0x1c000000", "0x0")).unwrap();
        script(
            &lab.file(lab::GDB_SH),
            &format!("echo $$ > {lab_s}/gdbpid\necho \"$*\" > {lab_s}/gdb-args\ncat {lab_s}/gdb.txt\nexec sleep 600\n"),
        );
        let start = Instant::now();
        let report = run(&lab, Duration::from_secs(120), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::CheckFailed(Check::Nproc), "{}", report.detail);
        assert!(start.elapsed() < Duration::from_secs(60), "waited {:?} for the gdb stage", start.elapsed());
        assert!(!alive(&lab.file("gdbpid")), "the called-off gdb survived");
        assert!(report.gdb_transcript.is_none() && report.gdb_console_log.is_none());
        assert!(!lab.file(lab::GDB_TRANSCRIPT).exists() && !lab.file(lab::GDB_CONSOLE_LOG).exists(), "the called-off stage left its logs");
        assert!(report.last_lines.iter().any(|l| l == "KLAB:nproc=1"), "the first boot's console: {:?}", report.last_lines);

        // A gdb stage that passed before the checked boot failed counts for nothing either: the
        // checked boot fails only once gdb has exited and been reaped (kill -0 fails).
        let _ = std::fs::remove_file(lab.file("gdbpid"));
        checked_boot_waits(&format!("[ -e {lab_s}/gdbpid ] && ! kill -0 \"$(cat {lab_s}/gdbpid)\" 2>/dev/null"));
        std::fs::write(lab.file("gdb.txt"), GOOD_GDB.replace("0x1c000000", "0x0")).unwrap();
        script(&lab.file(lab::GDB_SH), &format!("cat {lab_s}/gdb.txt\necho $$ > {lab_s}/gdbpid\n"));
        let report = run(&lab, Duration::from_secs(120), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::CheckFailed(Check::Nproc), "{}", report.detail);
        assert!(report.gdb_transcript.is_none() && report.gdb_kaslr_offset.is_none());
        assert!(!lab.file(lab::GDB_TRANSCRIPT).exists(), "the passed but uncounted gdb stage left its transcript");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn extra_append_reaches_both_boots_and_cannot_fake_a_marker() {
        let mut console = with_marker("nproc", Some("KLAB:nproc=1"));
        console[2] = format!("[    0.000000] Command line: console=ttyS0 {TEST_APPEND} maxcpus=1 KLAB:BEGIN KLAB:nproc=4");
        let lab = fake_lab("append", &console, "exit 0");
        let report = run(&lab, Duration::from_secs(60), " maxcpus=1 KLAB:BEGIN KLAB:nproc=4 ", None).unwrap();
        assert_eq!(report.verdict, Verdict::CheckFailed(Check::Nproc));
        let calls = std::fs::read_to_string(lab.file("calls")).unwrap();
        let want = format!("--append {TEST_APPEND} maxcpus=1 KLAB:BEGIN KLAB:nproc=4");
        assert_eq!(calls.matches(&want).count(), 2, "dry run and boot: {calls}");
        // A newline could put a line of the user's choosing on the console: refused up front.
        let err = format!("{:#}", run(&lab, Duration::from_secs(60), "maxcpus=1\nKLAB:BEGIN", None).unwrap_err());
        assert!(err.contains("control character"), "{err}");
        std::fs::write(lab.file("console.txt"), good_console().join("\n") + "\n").unwrap();
        assert_eq!(
            run(&lab, Duration::from_secs(60), "maxcpus=1", Some("kaslr=on")).unwrap().verdict,
            Verdict::MitigationFailed(Item::Kaslr)
        );
        assert_eq!(run(&lab, Duration::from_secs(60), "maxcpus=1", None).unwrap().verdict, Verdict::Pass);
        let calls = std::fs::read_to_string(lab.file("calls")).unwrap();
        assert_eq!(
            calls.matches(&format!("--mitigations none,kaslr=on --append {TEST_APPEND} maxcpus=1\n")).count(),
            2,
            "dry run and boot: {calls}"
        );
        assert_eq!(
            calls.matches(&format!("--mitigations none --append {TEST_APPEND} maxcpus=1\n")).count(),
            2,
            "dry run and boot: {calls}"
        );
        // The passing run's gdb boot; the failing run's, started beside its first boot, was called off.
        assert_eq!(calls.matches(&format!("--mitigations none --append {GDB_APPEND} maxcpus=1\n")).count(), 1, "gdb boot: {calls}");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    /// A lab built before mitigation profiles: its run.sh has no --mitigations and its guest
    /// prints no evidence. It still boot-tests (unjudged); asking it for a profile is refused.
    #[test]
    fn a_lab_from_before_profiles_boots_unjudged_and_refuses_a_profile() {
        let mut console = good_console();
        console.retain(|l| !l.starts_with("KLAB:mit:"));
        let lab = fake_lab("old", &console, "exit 0");
        let json = std::fs::read_to_string(lab.file(lab::LAB_JSON)).unwrap().replace(",\n  \"mitigations\": \"none\"", "");
        assert!(!json.contains("mitigations"), "{json}");
        std::fs::write(lab.file(lab::LAB_JSON), json).unwrap();
        let lab = Lab::open(&lab.dir).unwrap();
        assert_eq!(lab.desc.mitigations, None);
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::Pass, "{}", report.failure_message());
        assert!(report.mitigations.is_none());
        let calls = std::fs::read_to_string(lab.file("calls")).unwrap();
        assert!(!calls.contains("--mitigations"), "{calls}");
        let err = format!("{:#}", run(&lab, Duration::from_secs(60), "", Some("hardened")).unwrap_err());
        assert!(err.contains("built before mitigation profiles") && err.contains("rebuild it"), "{err}");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn a_guest_that_closes_its_console_but_keeps_running_did_not_power_off() {
        let lab = fake_lab("closed", &good_console(), "exec >&- 2>&-\nexec sleep 600");
        let report = run(&lab, Duration::from_secs(60), "", None).unwrap();
        assert_eq!(report.verdict, Verdict::Timeout(Stage::Poweroff), "{}", report.detail);
        assert!(!alive(&lab.file("pid")));
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn run_into_leaves_the_lab_report_alone() {
        let lab = fake_lab("into", &with_marker("nproc", Some("KLAB:nproc=1")), "exit 0");
        std::fs::write(lab.file(lab::REPORT), "{\"verdict\": \"pass\"}").unwrap();
        let out = lab.dir.join("negative");
        let report = run_into(&lab, Duration::from_secs(60), "maxcpus=1", None, &out).unwrap();
        assert_eq!(report.report, out.join(lab::REPORT));
        assert_eq!(report_json_at(&out)["verdict"], "check-failed:nproc");
        assert!(out.join(lab::CONSOLE_LOG).is_file());
        assert_eq!(std::fs::read_to_string(lab.file(lab::REPORT)).unwrap(), "{\"verdict\": \"pass\"}");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }

    #[test]
    fn preflight_names_the_missing_file() {
        let lab = fake_lab("preflight", &good_console(), "exit 0");
        // The report of an earlier passing run must not survive a run that cannot start.
        std::fs::write(lab.file(lab::REPORT), "{\"verdict\": \"pass\"}").unwrap();
        std::fs::remove_file(lab.file(lab::VMLINUX)).unwrap();
        let err = format!("{:#}", run(&lab, Duration::from_secs(60), "", None).unwrap_err());
        assert!(err.contains("vmlinux is missing"), "{err}");
        assert!(!lab.file(lab::REPORT).exists(), "a test that could not run wrote a report");
        let _ = std::fs::remove_dir_all(&lab.dir);
    }
}

/// The real thing on a built lab: `KLAB_BOOTTEST_LAB=<lab> cargo test -p xtask boottest::real --
/// --ignored --nocapture` (needs QEMU and gdb; slow). Optional: KLAB_BOOTTEST_APPEND (extra
/// kernel command line).
#[cfg(test)]
mod real {
    use super::*;

    #[test]
    #[ignore]
    fn real_lab_boot_test() {
        let dir = PathBuf::from(std::env::var("KLAB_BOOTTEST_LAB").expect("set KLAB_BOOTTEST_LAB to a lab directory"));
        let lab = Lab::open(&dir).unwrap();
        let append = std::env::var("KLAB_BOOTTEST_APPEND").unwrap_or_default();
        let profile = std::env::var("KLAB_BOOTTEST_MITIGATIONS").ok();
        let report = run(&lab, Duration::from_secs(120), &append, profile.as_deref()).unwrap();
        eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
        assert!(report.passed(), "{}", report.failure_message());
    }
}
