//! User programs for the guest: C sources compiled statically on the host, reproducibly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout;

/// The compiler flags every guest program gets: static (the rootfs has no libc), optimised, no
/// build-id and no host paths, so the same source gives the same bytes on every machine.
pub fn flags(src_dir: &Path) -> Vec<String> {
    let dir = src_dir.display().to_string();
    vec![
        "-static".into(),
        "-O2".into(),
        "-Wall".into(),
        format!("-ffile-prefix-map={}=.", dir.trim_end_matches('/')),
        "-Wl,--build-id=none".into(),
    ]
}

/// Compiles `src` into `out` (through a temporary sibling). `origin` says where the program was
/// asked for (a recipe line, a command line) and leads the error, which quotes the compiler.
pub fn compile(sh: &Shell, src: &Path, out: &Path, epoch: u64, origin: &str) -> Result<PathBuf> {
    match std::fs::symlink_metadata(src) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            bail!("{origin}: program source {} is not a regular file (a symlink or a directory): give the C file itself", src.display())
        }
        Err(_) => {
            bail!("{origin}: program source {} does not exist: fix the path (it is relative to the recipe's directory)", src.display())
        }
    }
    let dir = src.parent().unwrap_or(Path::new("."));
    let flags = flags(dir);
    let parent = out.parent().context("program output has no parent directory")?;
    std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let tmp = layout::tmp_sibling(out);
    // __DATE__ and __TIME__ follow SOURCE_DATE_EPOCH, like the kernel and busybox.
    let res = cmd!(sh, "cc {flags...} -o {tmp} {src}").env("SOURCE_DATE_EPOCH", epoch.to_string()).quiet().ignore_status().output();
    let output = res.context("run cc (install build-essential; static programs also need libc6-dev)")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = text.lines().take(30).collect();
        bail!("{origin}: cc -static -O2 {} failed ({}):\n{}", src.display(), output.status, lines.join("\n"));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("rename {} to {}", tmp.display(), out.display()))?;
    Ok(out.to_path_buf())
}

/// Whether an ELF file has no program interpreter (`PT_INTERP`): a dynamic binary cannot run in
/// the lab's libc-less rootfs. `Err` names what is wrong with the file.
pub fn check_static_elf(bytes: &[u8], name: &str) -> Result<()> {
    let bad = |why: &str| anyhow::anyhow!("{name}: {why}: give a static x86_64 binary (cc -static) or a C source (*.c)");
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if bytes[4] != 2 || bytes[5] != 1 || u16::from_le_bytes([bytes[18], bytes[19]]) != 62 {
        return Err(bad("not a 64-bit little-endian x86_64 ELF file"));
    }
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")));
    let (phoff, phentsize, phnum) = match (u64_at(32), u16_at(54), u16_at(56)) {
        (Some(o), Some(s), Some(n)) => (o as usize, s as usize, n as usize),
        _ => return Err(bad("truncated ELF header")),
    };
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or_else(|| bad("bad program header table"))?;
        let kind = bytes.get(at..at + 4).ok_or_else(|| bad("truncated program header table"))?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(kind.try_into().expect("4 bytes")) == PT_INTERP {
            return Err(bad("dynamically linked (it needs a program interpreter the lab does not have)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch;

    #[test]
    fn compiles_static_reproducible_programs_and_rejects_broken_ones() {
        let dir = scratch("programs");
        let sh = Shell::new().unwrap();
        let src = dir.join("hello.c");
        std::fs::write(&src, "#include <stdio.h>\nint main(void) { puts(\"hi \" __DATE__); return 3; }\n").unwrap();
        let a = compile(&sh, &src, &dir.join("out/a"), 86400, "recipe x.yaml:3").unwrap();
        let bytes = std::fs::read(&a).unwrap();
        check_static_elf(&bytes, "a").unwrap();
        let run = std::process::Command::new(&a).output().unwrap();
        assert_eq!(run.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&run.stdout), "hi Jan  2 1970\n");
        // Same source in another directory: the same bytes.
        let other = dir.join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::copy(&src, other.join("hello.c")).unwrap();
        let b = compile(&sh, &other.join("hello.c"), &dir.join("out/b"), 86400, "x").unwrap();
        assert_eq!(bytes, std::fs::read(b).unwrap(), "the program's bytes depend on its directory");

        std::fs::write(&src, "int main(void) { return missing_function(); }\n").unwrap();
        let e = format!("{:#}", compile(&sh, &src, &dir.join("out/c"), 0, "recipe x.yaml:7").unwrap_err());
        assert!(e.starts_with("recipe x.yaml:7: cc -static -O2"), "{e}");
        assert!(e.contains("missing_function"), "the compiler's message is missing: {e}");
        assert!(!dir.join("out/c").exists());
        let e = format!("{:#}", compile(&sh, &dir.join("nope.c"), &dir.join("out/d"), 0, "recipe x.yaml:9").unwrap_err());
        assert!(e.contains("recipe x.yaml:9") && e.contains("does not exist"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dynamic_and_foreign_binaries_are_refused() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let e = check_static_elf(&ls, "/bin/ls").unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
        let e = check_static_elf(b"#!/bin/sh\necho hi\n", "x.sh").unwrap_err().to_string();
        assert!(e.contains("not an ELF file") && e.contains("cc -static"), "{e}");
        let mut short = ls[..64].to_vec();
        short[56] = 200; // many program headers beyond the end
        assert!(check_static_elf(&short, "cut").is_err());
    }
}
