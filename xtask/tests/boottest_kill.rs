//! A boot test never leaves QEMU behind: not when the xtask is SIGKILLed, not on SIGHUP.
//!
//! The lab's run.sh starts a real, idle QEMU (`-machine none -S`, no kernel), which is what a boot
//! test's QEMU is while it waits: only the kernel inside is missing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xtask");

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A lab whose run.sh records its pid and execs an idle QEMU, as the real run.sh execs QEMU.
fn idle_lab(tag: &str) -> PathBuf {
    let lab = common::scratch(tag);
    for f in ["bzImage", "vmlinux", "debug.gdb", "rootfs.cpio"] {
        std::fs::write(lab.join(f), b"").unwrap();
    }
    std::fs::write(
        lab.join("lab.json"),
        r#"{"recipe":"lts","kernel_version":"6.12.117","busybox_version":"1.35.0","smp":1,"uid":1000,"nic":"e1000"}"#,
    )
    .unwrap();
    let run_sh = "#!/bin/bash\n\
        [ \"$1\" = --dry-run ] && { echo qemu-system-x86_64; exit 0; }\n\
        echo $$ > \"$(dirname \"$0\")/qemu.pid\"\n\
        exec qemu-system-x86_64 -machine none -nodefaults -display none -S\n";
    for (name, text) in [("run.sh", run_sh), ("gdb.sh", "#!/bin/sh\nexit 1\n")] {
        std::fs::write(lab.join(name), text).unwrap();
        std::fs::set_permissions(lab.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    lab
}

fn start_boot_test(lab: &Path) -> Child {
    Command::new(BIN)
        .args(["boot-test", "--timeout", "120", "--lab"])
        .arg(lab)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pid of the running QEMU, once run.sh has exec'd it.
fn qemu_pid(lab: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = std::fs::read_to_string(lab.join("qemu.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("qemu-system") {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "QEMU did not start within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is gone (or a zombie nobody reaps yet) within `limit`.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn sigkill_of_the_xtask_takes_qemu_with_it() {
    if !on_path("qemu-system-x86_64") || !on_path("gdb") {
        eprintln!("skipped: needs qemu-system-x86_64 and gdb (sudo bash .ci/host-setup.sh)");
        return;
    }
    let lab = idle_lab("kill9");
    let mut xtask = start_boot_test(&lab);
    let qemu = qemu_pid(&lab);
    signal(xtask.id(), "KILL");
    let _ = xtask.wait();
    let ok = gone_within(qemu, Duration::from_secs(5));
    if !ok {
        signal(qemu, "KILL");
    }
    assert!(ok, "QEMU (pid {qemu}) survived a SIGKILL of the xtask");
    let _ = std::fs::remove_dir_all(&lab);
}

#[test]
fn sighup_ends_the_boot_test_and_qemu() {
    if !on_path("qemu-system-x86_64") || !on_path("gdb") {
        eprintln!("skipped: needs qemu-system-x86_64 and gdb (sudo bash .ci/host-setup.sh)");
        return;
    }
    let lab = idle_lab("hup");
    let xtask = start_boot_test(&lab);
    let qemu = qemu_pid(&lab);
    signal(xtask.id(), "HUP");
    let out = xtask.wait_with_output().unwrap();
    let ok = gone_within(qemu, Duration::from_secs(5));
    if !ok {
        signal(qemu, "KILL");
    }
    assert!(ok, "QEMU (pid {qemu}) survived a SIGHUP of the xtask");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(lab.join("boot-report.json")).unwrap();
    assert!(report.contains("\"verdict\": \"interrupted\""), "{report}");
    let _ = std::fs::remove_dir_all(&lab);
}
