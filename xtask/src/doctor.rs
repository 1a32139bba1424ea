//! `cargo xtask doctor`: are the host tools the pipeline runs there, and is KVM really usable?

use std::path::Path;

use anyhow::{bail, Result};

/// (what, how to find it, Debian/Ubuntu package)
const CHECKS: &[(&str, Probe, &str)] = &[
    ("make", Probe::Program("make"), "make"),
    ("gcc", Probe::Program("gcc"), "build-essential"),
    ("flex", Probe::Program("flex"), "flex"),
    ("bison", Probe::Program("bison"), "bison"),
    ("bc", Probe::Program("bc"), "bc"),
    ("perl", Probe::Program("perl"), "perl"),
    ("libelf headers", Probe::File("/usr/include/libelf.h"), "libelf-dev"),
    ("libssl headers", Probe::File("/usr/include/openssl/ssl.h"), "libssl-dev"),
    ("pahole", Probe::Program("pahole"), "dwarves"),
    ("gpgv", Probe::Program("gpgv"), "gpgv"),
    ("gpg", Probe::Program("gpg"), "gnupg"),
    ("qemu-system-x86_64", Probe::Program("qemu-system-x86_64"), "qemu-system-x86"),
    ("gdb", Probe::Program("gdb"), "gdb"),
    ("cpio", Probe::Program("cpio"), "cpio"),
    // configs/lean.config compresses bzImage with LZ4.
    ("lz4", Probe::Program("lz4"), "lz4"),
];

#[derive(Clone, Copy)]
enum Probe {
    Program(&'static str),
    File(&'static str),
}

fn present(probe: Probe) -> bool {
    match probe {
        Probe::File(f) => Path::new(f).exists(),
        Probe::Program(p) => {
            std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file())).unwrap_or(false)
        }
    }
}

/// Names of missing tools with their packages; empty when all are there.
pub fn missing() -> Vec<(&'static str, &'static str)> {
    CHECKS.iter().filter(|(_, probe, _)| !present(*probe)).map(|(what, _, pkg)| (*what, *pkg)).collect()
}

/// KVM is usable only when the device is there and writable AND the CPU has vmx or svm:
/// a writable /dev/kvm without them makes `-enable-kvm` hang.
pub fn kvm_usable() -> (bool, String) {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return (false, "no /dev/kvm".into());
    }
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(dev).is_ok();
    if !rw {
        return (false, "/dev/kvm is not readable and writable by this user".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return (false, "/dev/kvm is writable but the CPU has no vmx/svm flag (nested virtualization off)".into());
    }
    (true, "/dev/kvm writable and the CPU has vmx/svm".into())
}

pub fn run() -> Result<()> {
    for (what, probe, pkg) in CHECKS {
        let ok = present(*probe);
        println!("{:>4}  {what:<20} {}", if ok { "ok" } else { "MISS" }, if ok { String::new() } else { format!("apt-get install {pkg}") });
    }
    let (kvm, why) = kvm_usable();
    println!("{:>4}  {:<20} {why}", if kvm { "ok" } else { "tcg" }, "kvm");
    let missing = missing();
    if !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        bail!("missing host tools; install them with: apt-get install -y {}", pkgs.join(" "));
    }
    Ok(())
}

/// Fails before a long build when something it needs is missing.
pub fn require() -> Result<()> {
    let missing = missing();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(w, _)| *w).collect();
        let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        bail!("missing host tools {}: apt-get install -y {} (see `cargo xtask doctor`)", names.join(", "), pkgs.join(" "));
    }
    Ok(())
}
