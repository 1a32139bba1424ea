//! Configures and builds a static busybox out of tree, reproducibly, for the lab's initramfs.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kbuild::{self, BuildInputs, MakePlan};
use crate::kconfig::{self, Entry, Value};
use crate::layout;
use crate::progress;
use crate::recipe::ConfigBase;

/// How this module builds busybox; hashed into the inputs stamp, so changing the steps here
/// (bump the version) rebuilds existing trees.
const BUILD_STEPS: &[u8] = b"kernel-lab busybox v2: make defconfig, applets kept (the rest off), fragments, make oldconfig, make busybox";
/// Progress lines (CC, LD, AR, ...) of a defconfig build of 1.35.0; sizes the first progress bar.
const EXPECTED_STEPS: u64 = 640;
/// The same for a build of configs/busybox/lab.applets.
const EXPECTED_STEPS_APPLETS: u64 = 330;
/// `make oldconfig` asks about every option it has no value for and exits on end of input; an
/// empty answer takes the default. Busybox has about 1,800 options, so this answers them all,
/// and it stays under the pipe buffer (64 KiB) so writing it never blocks.
const OLDCONFIG_ANSWERS: usize = 8192;

/// Builds `build/busybox` from the source tree `src`, configured as defconfig with only the
/// applets named in `applets` left on (None: all of them), plus `fragments`, and checks that it
/// is statically linked. The same inputs give a byte-identical binary whatever the directories
/// are called; unchanged inputs and an existing binary skip make entirely.
#[allow(clippy::too_many_arguments)]
pub fn build(
    sh: &Shell,
    src: &Path,
    build: &Path,
    applets: Option<&Path>,
    fragments: &[PathBuf],
    tarball_sha256: &str,
    make: &MakePlan,
    release_epoch: u64,
) -> Result<PathBuf> {
    check_preconditions(src, fragments)?;
    // The applets file is an input like a fragment: editing it rebuilds.
    let stamped: Vec<PathBuf> = applets.map(Path::to_path_buf).into_iter().chain(fragments.iter().cloned()).collect();
    std::fs::create_dir_all(build).with_context(|| format!("create busybox build directory {}", build.display()))?;
    let binary = build.join("busybox");
    let log_path = build.join("build.log");
    let maps = kbuild::prefix_maps(src, build);
    let inputs = BuildInputs { tarball_sha256, recipe: BUILD_STEPS, fragments: &stamped, patches: &[], base: ConfigBase::Defconfig };
    let stamp_path = build.join(kbuild::INPUTS_STAMP);
    // The stamp covers the final .config too, so a hand-edited .config is configured again.
    if binary.is_file() && build.join(".config").is_file() {
        let stamp = kbuild::inputs_stamp(sh, build, &inputs, make.cc_wrapper, release_epoch, &maps)?;
        if std::fs::read(&stamp_path).ok().as_deref() == Some(stamp.as_bytes()) {
            return Ok(binary);
        }
    }
    // A failed or interrupted build must not leave a stamp that claims the old binary is current.
    let _ = std::fs::remove_file(&stamp_path);

    configure(sh, src, build, applets, fragments, release_epoch).with_context(|| format!("configure busybox in {}", build.display()))?;

    let o = kbuild::make_out_arg(build);
    let j = make.jobs_arg();
    let cc = make.cc_arg();
    // Busybox's Makefile starts from CFLAGS in the environment and appends its own flags to it;
    // on the command line CFLAGS would replace them instead.
    let (program, first) = make.launcher();
    let make_cmd =
        kbuild::reproducible_env(cmd!(sh, "{program} {first...} -C {src} {o} {j} {cc...} busybox"), release_epoch).env("CFLAGS", &maps);
    let objects_path = build.join(kbuild::OBJECTS_STAMP);
    let expected = std::fs::read_to_string(&objects_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(if applets.is_some() {
        EXPECTED_STEPS_APPLETS
    } else {
        EXPECTED_STEPS
    });
    let steps = kbuild::run_streaming(make_cmd, &log_path, "busybox", expected).context("build busybox")?;
    std::fs::write(&objects_path, format!("{steps}\n")).with_context(|| format!("write {}", objects_path.display()))?;

    check_static(&binary, &log_path)?;
    let stamp = kbuild::inputs_stamp(sh, build, &inputs, make.cc_wrapper, release_epoch, &maps)?;
    layout::write_atomic(&stamp_path, stamp.as_bytes())?;
    Ok(binary)
}

fn check_preconditions(src: &Path, fragments: &[PathBuf]) -> Result<()> {
    if !src.join("Makefile").is_file() || !src.join("Config.in").is_file() || !src.join("applets").is_dir() {
        bail!(
            "{} is not a busybox source tree (no Makefile, Config.in and applets/): extract the busybox tarball there first",
            src.display()
        );
    }
    // Busybox's Makefile refuses O= builds from a configured source tree, after defconfig ran.
    if src.join(".config").exists() {
        bail!(
            "busybox source tree {} has a .config (it was built in place): extract it again, or run `make -C {} mrproper`",
            src.display(),
            src.display()
        );
    }
    for f in fragments {
        if !f.is_file() {
            bail!("busybox config fragment {} does not exist: fix the name in the recipe or add the file", f.display());
        }
    }
    Ok(())
}

/// defconfig, then every applet not in `applets` turned off and the fragments written into
/// .config, then `make oldconfig` (busybox 1.35 has no olddefconfig) answering every question
/// with its default, then a check that every requested option (the kept applets included)
/// survived.
fn configure(sh: &Shell, src: &Path, build: &Path, applets: Option<&Path>, fragments: &[PathBuf], epoch: u64) -> Result<()> {
    let log_path = build.join("configure.log");
    let mut log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let bar = progress::spinner("configure");
    bar.set_message("busybox");
    let o = kbuild::make_out_arg(build);
    kbuild::run_logged(kbuild::reproducible_env(cmd!(sh, "make -C {src} {o} defconfig"), epoch), &mut log, &log_path, "make defconfig")?;

    let config = build.join(".config");
    let text = std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
    // The applets turned off are not checked afterwards: a kept applet may select one back on.
    let (mut requested, off) = match applets {
        Some(list) => applet_selection(&applet_table(src)?, &kconfig::parse(&text, &config)?, list)?,
        None => (Vec::new(), Vec::new()),
    };
    for f in fragments {
        requested.extend(kconfig::parse_file(f)?);
    }
    let merged = apply_fragments(&text, &[off, requested.clone()].concat(), &config)?;
    layout::write_atomic(&config, merged.as_bytes())?;

    let answers = "\n".repeat(OLDCONFIG_ANSWERS);
    kbuild::run_logged(
        kbuild::reproducible_env(cmd!(sh, "make -C {src} {o} oldconfig"), epoch).stdin(answers),
        &mut log,
        &log_path,
        "make oldconfig",
    )?;
    bar.finish_and_clear();

    let lost = lost_options(&requested, &kconfig::parse_file(&config)?);
    if !lost.is_empty() {
        bail!(
            "{} requested option(s) did not survive `make oldconfig` (a misspelt name, or a dependency that is off); fix the fragment:\n  {}\nsee {} and {}",
            lost.len(),
            lost.join("\n  "),
            config.display(),
            log_path.display()
        );
    }
    Ok(())
}

/// One applet as busybox's sources declare it (`//applet:IF_FOO(IF_BAR(APPLET(name, ...)))`):
/// its name, its own option (FOO, the outermost) and the options it also needs (BAR: features
/// such as MODPROBE_SMALL or FEATURE_TAB_COMPLETION, which the selection never turns off).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppletDecl {
    name: String,
    option: String,
    conditions: Vec<String>,
}

/// The `busybox` multiplexer, kept whatever the applets file says: the rootfs links every
/// applet that `busybox --list` names.
const MULTIPLEXER: &str = "BUSYBOX";

/// Every applet declaration in the busybox tree at `src` (its `*.c` files).
fn applet_table(src: &Path) -> Result<Vec<AppletDecl>> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("read {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let kind = e.file_type().with_context(|| format!("stat {}", path.display()))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|x| x == "c") {
                let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
                out.extend(String::from_utf8_lossy(&text).lines().filter_map(parse_applet_line));
            }
        }
    }
    Ok(out)
}

/// `//applet:IF_A(  IF_B(APPLET_ODDNAME(name, ...` -> name, A, [B]; None for other lines and
/// for applets no option switches.
fn parse_applet_line(line: &str) -> Option<AppletDecl> {
    let mut rest = line.strip_prefix("//applet:")?.trim_start();
    let mut options = Vec::new();
    while let Some(after) = rest.strip_prefix("IF_") {
        let (symbol, tail) = after.split_once('(')?;
        if symbol.is_empty() || !symbol.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
            return None;
        }
        options.push(symbol.to_string());
        rest = tail.trim_start();
    }
    let (macro_name, args) = rest.split_once('(')?;
    if options.is_empty() || !macro_name.trim_end().starts_with("APPLET") {
        return None;
    }
    let name = args.split(',').next()?.trim();
    let option = options.remove(0);
    (!name.is_empty()).then(|| AppletDecl { name: name.to_string(), option, conditions: options })
}

/// busybox's shell engines and the applet each one serves.
const SHELL_ENGINES: &[(&str, &str)] = &[("SHELL_ASH", "ASH"), ("SHELL_HUSH", "HUSH")];

/// Applets the lab's own scripts call (/init, the boot self-test, exec's runner, module labs'
/// insmod lines): an applets file without them builds a lab that cannot boot into a shell.
const GUEST_NEEDS: &[&str] = &[
    "sh",
    "mount",
    "mkdir",
    "cp",
    "chmod",
    "cat",
    "grep",
    "sed",
    "tr",
    "echo",
    "test",
    "[",
    "setsid",
    "cttyhack",
    "setuidgid",
    "poweroff",
    "uname",
    "hostname",
    "ip",
    "nproc",
    "readlink",
    "unshare",
    "id",
    "head",
    "mktemp",
    "od",
    "stat",
    "kill",
    "dmesg",
    "insmod",
];

/// The applet names in the file `list`, each with its line: words, `#` starts a comment.
fn read_applets(list: &Path) -> Result<Vec<(String, usize)>> {
    let text = std::fs::read_to_string(list).with_context(|| format!("read busybox applets file {}", list.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .flat_map(|(i, line)| line.split('#').next().unwrap_or_default().split_whitespace().map(move |w| (w.to_string(), i + 1)))
        .collect())
}

/// Checks the applets file `list` against the busybox tree at `src`, before anything is built:
/// every name is an applet of this busybox, and the applets the lab's scripts call are there.
pub fn check_applets(src: &Path, list: &Path) -> Result<()> {
    let table = applet_table(src)?;
    let names = read_applets(list)?;
    for (name, line) in &names {
        if name == "busybox" {
            continue;
        }
        if !table.iter().any(|d| d.name == *name) {
            bail!(
                "{}:{line}: busybox has no applet {name:?}: fix the name (`busybox --list` in a lab shows them) or remove it",
                list.display()
            );
        }
    }
    let missing: Vec<&str> = GUEST_NEEDS.iter().copied().filter(|n| !names.iter().any(|(m, _)| m == n)).collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks applets the lab's /init, boot self-test or exec runner call: {}; add them to it",
            list.display(),
            missing.join(" ")
        );
    }
    Ok(())
}

/// The requests that keep the applets named in the file `list` (as defconfig has them), and those
/// that turn every other applet of the defconfig off. A name busybox does not have, or one
/// defconfig leaves off, is an error naming the file and line.
fn applet_selection(table: &[AppletDecl], defconfig: &[Entry], list: &Path) -> Result<(Vec<Entry>, Vec<Entry>)> {
    let names = read_applets(list)?;
    let on: HashSet<&str> = defconfig.iter().filter(|e| e.value == Value::Yes).map(|e| e.symbol.as_str()).collect();
    // `IF_NOT_X(...)` is busybox's "unless X".
    let holds = |c: &str| c.strip_prefix("NOT_").map_or(on.contains(c), |x| !on.contains(x));
    // Each kept option with the line that asked for it first (0: kept by this module).
    let mut keep: HashMap<&str, usize> = HashMap::from([(MULTIPLEXER, 0)]);
    for (name, line) in &names {
        // The multiplexer stays whatever the list says (MULTIPLEXER).
        if name == "busybox" {
            continue;
        }
        let decls: Vec<&AppletDecl> = table.iter().filter(|d| d.name == *name).collect();
        if decls.is_empty() {
            bail!(
                "{}:{line}: busybox has no applet {name:?}: fix the name (`busybox --list` in a lab shows them) or remove it",
                list.display()
            );
        }
        // `sh` is ash or hush, `insmod` full or modprobe-small: keep the one defconfig picked.
        let Some(picked) = decls.iter().find(|d| on.contains(d.option.as_str()) && d.conditions.iter().all(|c| holds(c))) else {
            let d = decls[0];
            let unmet = std::iter::once(&d.option).chain(&d.conditions).find(|c| !holds(c)).unwrap_or(&d.option);
            let needs = match unmet.strip_prefix("NOT_") {
                Some(x) => format!("CONFIG_{x} off"),
                None => format!("CONFIG_{unmet}"),
            };
            bail!(
                "{}:{line}: applet {name:?} is off in busybox's defconfig (it needs {needs}): turn it on with a fragment in configs/busybox/ instead",
                list.display()
            );
        };
        for o in std::iter::once(&picked.option).chain(picked.conditions.iter().filter(|c| !c.starts_with("NOT_"))) {
            keep.entry(o.as_str()).or_insert(*line);
        }
    }
    let mut symbols: Vec<&str> = table.iter().map(|d| d.option.as_str()).chain(keep.keys().copied()).collect();
    // A shell's engine has a prompt of its own and stays on with its applet gone (hush.c, the
    // build's second-largest object, was compiled for nothing); oldconfig selects it back if a
    // kept applet needs it.
    symbols.extend(SHELL_ENGINES.iter().filter(|(_, applet)| !keep.contains_key(applet)).map(|(engine, _)| *engine));
    symbols.sort_unstable();
    symbols.dedup();
    let request = |s: &str| Entry {
        symbol: s.to_string(),
        value: if keep.contains_key(s) { Value::Yes } else { Value::No },
        file: list.to_path_buf(),
        line: keep.get(s).copied().unwrap_or(0),
    };
    Ok(symbols.into_iter().filter(|s| keep.contains_key(s) || on.contains(s)).map(request).partition(|e| e.value == Value::Yes))
}

/// `.config` text with every requested option set: its `CONFIG_X=...` or `# CONFIG_X is not set`
/// line is replaced, and options the file does not mention are appended. The last request wins.
fn apply_fragments(config_text: &str, requested: &[Entry], config_path: &Path) -> Result<String> {
    let mut wanted: Vec<(String, Value)> = Vec::new();
    for e in requested {
        match wanted.iter_mut().find(|(s, _)| *s == e.symbol) {
            Some(w) => w.1 = e.value.clone(),
            None => wanted.push((e.symbol.clone(), e.value.clone())),
        }
    }
    let symbol_at: HashMap<usize, String> = kconfig::parse(config_text, config_path)?.into_iter().map(|e| (e.line, e.symbol)).collect();
    let mut written = HashSet::new();
    let mut out = String::new();
    for (i, line) in config_text.lines().enumerate() {
        match symbol_at.get(&(i + 1)).and_then(|s| wanted.iter().find(|(w, _)| w == s)) {
            Some(w) => {
                out.push_str(&kconfig::render(std::slice::from_ref(w)));
                written.insert(w.0.as_str());
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let missing: Vec<(String, Value)> = wanted.iter().filter(|(s, _)| !written.contains(s.as_str())).cloned().collect();
    out.push_str(&kconfig::render(&missing));
    Ok(out)
}

/// One line per requested option whose final value differs, naming the symbol, the asked and
/// the final value. Kconfig does not write options it cannot show, so absent counts as `n`.
fn lost_options(requested: &[Entry], final_config: &[Entry]) -> Vec<String> {
    let finals: HashMap<&str, &Value> = final_config.iter().map(|e| (e.symbol.as_str(), &e.value)).collect();
    let last: HashMap<&str, &Entry> = requested.iter().map(|e| (e.symbol.as_str(), e)).collect();
    let mut lost = Vec::new();
    for req in requested {
        if !std::ptr::eq(last[req.symbol.as_str()], req) {
            continue;
        }
        let fin = finals.get(req.symbol.as_str()).copied();
        let survived = match (&req.value, fin) {
            (Value::No, None) => true,
            (want, Some(got)) => want == got,
            (_, None) => false,
        };
        if !survived {
            let got = match fin {
                Some(Value::No) => "not set".to_string(),
                Some(v) => v.to_string(),
                None => "absent".to_string(),
            };
            lost.push(format!("CONFIG_{}: asked {} ({}:{}), final {got}", req.symbol, req.value, req.file.display(), req.line));
        }
    }
    lost
}

/// Fails unless `binary` is an ELF file without an interpreter, i.e. runs in an initramfs that
/// has no dynamic loader.
fn check_static(binary: &Path, log_path: &Path) -> Result<()> {
    let bytes = std::fs::read(binary)
        .with_context(|| format!("make succeeded but {} cannot be read; see {}", binary.display(), log_path.display()))?;
    let interp = elf_interpreter(&bytes).with_context(|| format!("inspect {}", binary.display()))?;
    if interp.is_some() {
        bail!(
            "busybox at {} is dynamically linked (has an ELF interpreter): CONFIG_STATIC did not take effect; see {}",
            binary.display(),
            log_path.display()
        );
    }
    Ok(())
}

/// The PT_INTERP path of a little-endian ELF64 file (the dynamic loader), or None for a static
/// executable. A static-pie binary has a PT_DYNAMIC segment but no interpreter, and runs anywhere.
fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |at: usize| elf.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if elf.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if elf.get(4..6) != Some(&[2, 1]) {
        bail!("not a little-endian 64-bit ELF file (EI_CLASS, EI_DATA = {:?})", elf.get(4..6));
    }
    let truncated = || anyhow::anyhow!("truncated ELF file ({} bytes)", elf.len());
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(truncated)?)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let offset = usize::try_from(u64_at(ph + 8).ok_or_else(truncated)?)?;
        let size = usize::try_from(u64_at(ph + 32).ok_or_else(truncated)?)?;
        let path = elf.get(offset..offset + size).ok_or_else(truncated)?;
        return Ok(Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::testutil::scratch;

    fn two_jobs() -> MakePlan {
        MakePlan { jobs: std::num::NonZeroUsize::new(2).unwrap(), cc_wrapper: None, background: false }
    }

    /// A minimal ELF64 executable: the header, then the given program headers (type, and for
    /// PT_INTERP the path placed after them).
    fn fixture_elf(types: &[u32], interp: &str) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        let data_at = 64 + 56 * types.len() as u64;
        for &t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            ph[8..16].copy_from_slice(&data_at.to_le_bytes());
            ph[32..40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
            elf.extend(ph);
        }
        elf.extend(interp.bytes());
        elf.push(0);
        elf
    }

    #[test]
    fn finds_the_interpreter_of_a_dynamic_elf() {
        assert_eq!(elf_interpreter(&fixture_elf(&[6, 3, 1], "/lib/ld.so")).unwrap().as_deref(), Some("/lib/ld.so"));
        // PT_LOAD and PT_DYNAMIC (static-pie) but no PT_INTERP: static.
        assert_eq!(elf_interpreter(&fixture_elf(&[1, 2], "")).unwrap(), None);
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(elf_interpreter(&ls).unwrap().unwrap().contains("ld-linux"));
    }

    #[test]
    fn rejects_what_is_not_elf64() {
        assert!(format!("{:#}", elf_interpreter(b"#!/bin/sh\n").unwrap_err()).contains("not an ELF"));
        let mut elf32 = fixture_elf(&[1], "");
        elf32[4] = 1;
        assert!(elf_interpreter(&elf32).is_err());
        let whole = fixture_elf(&[3], "/lib/ld.so");
        assert!(format!("{:#}", elf_interpreter(&whole[..whole.len() - 4]).unwrap_err()).contains("truncated"));
    }

    #[test]
    fn dynamic_busybox_error_names_the_binary_and_the_log() {
        let dir = scratch("busybox-static");
        let (bin, log) = (dir.join("busybox"), dir.join("build.log"));
        std::fs::write(&bin, fixture_elf(&[1, 3], "/lib64/ld-linux-x86-64.so.2")).unwrap();
        let e = format!("{:#}", check_static(&bin, &log).unwrap_err());
        assert_eq!(
            e,
            format!(
                "busybox at {} is dynamically linked (has an ELF interpreter): CONFIG_STATIC did not take effect; see {}",
                bin.display(),
                log.display()
            )
        );
        std::fs::write(&bin, fixture_elf(&[1], "")).unwrap();
        check_static(&bin, &log).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn entries(text: &str) -> Vec<Entry> {
        kconfig::parse(text, Path::new("static.config")).unwrap()
    }

    #[test]
    fn fragments_replace_lines_in_place_and_append_the_rest() {
        let config = "#\n# Busybox version: 1.35.0\n#\n# CONFIG_STATIC is not set\nCONFIG_TC=y\nCONFIG_EXTRA_CFLAGS=\"\"\nCONFIG_LS=y\n";
        let req = entries(
            "CONFIG_STATIC=y\n# CONFIG_TC is not set\nCONFIG_NEW=y\nCONFIG_LS=n\n# CONFIG_LS is not set\nCONFIG_EXTRA_CFLAGS=\"-Os\"\n",
        );
        let out = apply_fragments(config, &req, Path::new(".config")).unwrap();
        assert_eq!(
            out,
            "#\n# Busybox version: 1.35.0\n#\nCONFIG_STATIC=y\n# CONFIG_TC is not set\nCONFIG_EXTRA_CFLAGS=\"-Os\"\n# CONFIG_LS is not set\nCONFIG_NEW=y\n"
        );
    }

    #[test]
    fn lost_options_name_symbol_asked_and_final() {
        let req = entries("CONFIG_STATIC=y\n# CONFIG_TC is not set\nCONFIG_FEATURE_X=y\nCONFIG_PIE=y\n# CONFIG_PIE is not set\n");
        let fin = kconfig::parse("CONFIG_STATIC=y\nCONFIG_TC=y\n", Path::new(".config")).unwrap();
        assert_eq!(
            lost_options(&req, &fin),
            ["CONFIG_TC: asked n (static.config:2), final y", "CONFIG_FEATURE_X: asked y (static.config:3), final absent"]
        );
        let fin = kconfig::parse("CONFIG_STATIC=y\n# CONFIG_TC is not set\nCONFIG_FEATURE_X=y\n", Path::new(".config")).unwrap();
        assert!(lost_options(&req, &fin).is_empty());
    }

    /// A build directory whose stamp matches its inputs runs no make: the fake source tree's
    /// Makefile fails on every target, so reaching make is an error.
    #[test]
    fn unchanged_inputs_skip_make() {
        let dir = scratch("busybox-noop");
        let (src, build_dir) = (dir.join("src"), dir.join("build"));
        std::fs::create_dir_all(src.join("applets")).unwrap();
        std::fs::create_dir_all(&build_dir).unwrap();
        std::fs::write(src.join("Makefile"), "%:\n\tfalse\n").unwrap();
        std::fs::write(src.join("Config.in"), "").unwrap();
        std::fs::write(build_dir.join(".config"), "CONFIG_STATIC=y\n").unwrap();
        std::fs::write(build_dir.join("busybox"), fixture_elf(&[1], "")).unwrap();
        let frag = dir.join("static.config");
        std::fs::write(&frag, "CONFIG_STATIC=y\n").unwrap();
        let frags = [frag.clone()];
        let sh = Shell::new().unwrap();
        let inputs =
            BuildInputs { tarball_sha256: "ab12", recipe: BUILD_STEPS, fragments: &frags, patches: &[], base: ConfigBase::Defconfig };
        let stamp = kbuild::inputs_stamp(&sh, &build_dir, &inputs, None, 7, &kbuild::prefix_maps(&src, &build_dir)).unwrap();
        std::fs::write(build_dir.join(kbuild::INPUTS_STAMP), stamp).unwrap();

        // make would fail (the Makefile runs `false`): the binary comes back without it.
        assert_eq!(build(&sh, &src, &build_dir, None, &frags, "ab12", &two_jobs(), 7).unwrap(), build_dir.join("busybox"));

        // A different tarball or epoch reaches make (defconfig), which fails here.
        let e = format!("{:#}", build(&sh, &src, &build_dir, None, &frags, "cd34", &two_jobs(), 7).unwrap_err());
        assert!(e.contains("make defconfig failed") && e.contains("configure.log"), "{e}");
        assert!(!build_dir.join(kbuild::INPUTS_STAMP).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn configured_source_tree_is_refused_before_make() {
        let dir = scratch("busybox-configured");
        std::fs::create_dir_all(dir.join("applets")).unwrap();
        for f in ["Makefile", "Config.in", ".config"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let sh = Shell::new().unwrap();
        let e = format!("{:#}", build(&sh, &dir, &dir.join("out"), None, &[], "", &two_jobs(), 0).unwrap_err());
        assert!(e.contains("has a .config") && e.contains("mrproper"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// On a real tree, an option whose dependency is off (PIE needs !STATIC) and a misspelt one
    /// fail after `make oldconfig`, naming both, before any compilation.
    #[test]
    #[ignore]
    fn real_busybox_lost_options_fail_configure() {
        let src = PathBuf::from(
            std::env::var("KERNEL_LAB_TEST_BUSYBOX_SRC").expect("set KERNEL_LAB_TEST_BUSYBOX_SRC to an extracted busybox tree"),
        );
        let dir = scratch("busybox-lost");
        let frag = dir.join("bad.config");
        std::fs::write(&frag, "CONFIG_STATIC=y\nCONFIG_PIE=y\nCONFIG_NSLOOKUPP=y\n").unwrap();
        let sh = Shell::new().unwrap();
        let e = format!("{:#}", build(&sh, &src, &dir.join("out"), None, &[frag], "test", &two_jobs(), 1761782400).unwrap_err());
        eprintln!("{e}");
        assert!(e.contains("CONFIG_PIE: asked y (") && e.contains("bad.config:2), final not set"), "{e}");
        assert!(e.contains("bad.config:3), final absent"), "{e}");
        assert!(e.contains("CONFIG_NSLOOKUPP: asked y ("), "{e}");
        assert!(!dir.join("out/build.log").exists(), "make ran after a failed configure");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The slow check on a real source tree (KERNEL_LAB_TEST_BUSYBOX_SRC, an extracted
    /// busybox-1.35.0): builds configs/busybox/lab.applets with static.config, checks the binary
    /// runs, is static and has exactly those applets, then that a rerun skips make.
    /// KERNEL_LAB_TEST_BUSYBOX_BUILD overrides the build dir.
    #[test]
    #[ignore]
    fn real_busybox_build() {
        let src = PathBuf::from(
            std::env::var("KERNEL_LAB_TEST_BUSYBOX_SRC").expect("set KERNEL_LAB_TEST_BUSYBOX_SRC to an extracted busybox tree"),
        );
        let build_dir = std::env::var("KERNEL_LAB_TEST_BUSYBOX_BUILD").map(PathBuf::from).unwrap_or_else(|_| scratch("busybox-real"));
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/busybox");
        let frags = [configs.join("static.config")];
        let list = configs.join("lab.applets");
        let sh = Shell::new().unwrap();
        let t = Instant::now();
        let bin = build(&sh, &src, &build_dir, Some(&list), &frags, "test", &two_jobs(), 1761782400).unwrap();
        let size = std::fs::metadata(&bin).unwrap().len();
        eprintln!("busybox build: {:?}, {} bytes at {}", t.elapsed(), size, bin.display());
        assert_eq!(elf_interpreter(&std::fs::read(&bin).unwrap()).unwrap(), None);
        let out = cmd!(sh, "{bin}").quiet().ignore_status().output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(help.contains("BusyBox v1.35.0 (2025-10-30 00:00:00"), "{help}");
        let applets = cmd!(sh, "{bin} --list").quiet().read().unwrap();
        let listed = std::fs::read_to_string(&list).unwrap();
        // `--list` names every applet but itself.
        let mut wanted: Vec<&str> =
            listed.lines().flat_map(|l| l.split('#').next().unwrap().split_whitespace()).filter(|a| *a != "busybox").collect();
        wanted.sort_unstable();
        let mut built: Vec<&str> = applets.lines().collect();
        built.sort_unstable();
        assert_eq!(built, wanted, "busybox --list against {}", list.display());
        // Only the stamp can skip make now: a rerun must not touch the binary.
        let mtime = std::fs::metadata(&bin).unwrap().modified().unwrap();
        build(&sh, &src, &build_dir, Some(&list), &frags, "test", &two_jobs(), 1761782400).unwrap();
        assert_eq!(std::fs::metadata(&bin).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn applet_lines_give_names_and_options() {
        let parse = |l: &str| parse_applet_line(l).map(|d| (d.name, [vec![d.option], d.conditions].concat().join(" ")));
        assert_eq!(parse("//applet:IF_CAT(APPLET_NOFORK(cat, cat, BB_DIR_BIN, BB_SUID_DROP, cat))"), Some(("cat".into(), "CAT".into())));
        assert_eq!(
            parse("//applet:IF_SH_IS_ASH(  APPLET_ODDNAME(sh,   ash, BB_DIR_BIN, BB_SUID_DROP, ash))"),
            Some(("sh".into(), "SH_IS_ASH".into()))
        );
        assert_eq!(
            parse("//applet:IF_TEST1(APPLET_NOFORK([,   test, BB_DIR_USR_BIN, BB_SUID_DROP, test))"),
            Some(("[".into(), "TEST1".into()))
        );
        assert_eq!(parse("//applet:IF_A(IF_B_2(APPLET(x, ...)))"), Some(("x".into(), "A B_2".into())));
        for other in
            ["//applet:APPLET(always, ...)", "//applet:#if ENABLE_X", "//config:config CAT", "//applet:IF_cat(APPLET(c,", "// applet"]
        {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    fn decl(name: &str, options: &[&str]) -> AppletDecl {
        AppletDecl {
            name: name.to_string(),
            option: options[0].to_string(),
            conditions: options[1..].iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn applet_selection_keeps_the_listed_and_turns_the_rest_off() {
        let dir = scratch("busybox-applets");
        let table = [
            decl("sh", &["SH_IS_HUSH"]),
            decl("sh", &["SH_IS_ASH"]),
            decl("ash", &["ASH"]),
            decl("cat", &["CAT"]),
            decl("httpd", &["HTTPD"]),
            decl("nc", &["NC"]),
            decl("insmod", &["INSMOD", "NOT_MODPROBE_SMALL"]),
            decl("insmod", &["INSMOD", "MODPROBE_SMALL"]),
            decl("busybox", &["BUSYBOX", "FEATURE_SH_STANDALONE", "FEATURE_TAB_COMPLETION"]),
        ];
        let defconfig = entries(
            "CONFIG_ASH=y\nCONFIG_SH_IS_ASH=y\n# CONFIG_SH_IS_HUSH is not set\nCONFIG_CAT=y\nCONFIG_HTTPD=y\n# CONFIG_NC is not set\n\
             CONFIG_INSMOD=y\nCONFIG_MODPROBE_SMALL=y\nCONFIG_BUSYBOX=y\nCONFIG_FEATURE_TAB_COMPLETION=y\nCONFIG_SHELL_ASH=y\nCONFIG_SHELL_HUSH=y\n",
        );
        let list = dir.join("lab.applets");
        std::fs::write(&list, "# the shell\nsh ash  # and the other name\n\ncat insmod busybox\n").unwrap();
        let (keep, off) = applet_selection(&table, &defconfig, &list).unwrap();
        let names = |es: &[Entry]| es.iter().map(|e| format!("{}={}@{}", e.symbol, e.value, e.line)).collect::<Vec<_>>().join(" ");
        // The multiplexer always; insmod as modprobe-small, as defconfig has it.
        assert_eq!(names(&keep), "ASH=y@2 BUSYBOX=y@0 CAT=y@4 INSMOD=y@4 MODPROBE_SMALL=y@4 SH_IS_ASH=y@2");
        // Only applets defconfig had on are turned off (NC stays as it was), never a feature
        // an applet line merely mentions (FEATURE_TAB_COMPLETION).
        // hush's engine goes with hush; ash's stays with ash.
        assert_eq!(names(&off), "HTTPD=n@0 SHELL_HUSH=n@0");

        std::fs::write(&list, "cat\nsh catt\n").unwrap();
        let e = format!("{:#}", applet_selection(&table, &defconfig, &list).unwrap_err());
        assert!(e.contains("lab.applets:2: busybox has no applet \"catt\""), "{e}");
        std::fs::write(&list, "nc\n").unwrap();
        let e = format!("{:#}", applet_selection(&table, &defconfig, &list).unwrap_err());
        assert!(
            e.contains("lab.applets:1: applet \"nc\" is off in busybox's defconfig (it needs CONFIG_NC)") && e.contains("fragment"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn check_applets_names_unknown_and_missing_guest_applets() {
        let dir = scratch("busybox-check-applets");
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("coreutils")).unwrap();
        let decls: String = GUEST_NEEDS
            .iter()
            .chain(&["vi"])
            .map(|n| format!("//applet:IF_X{}(APPLET({n}, BB_DIR_BIN, BB_SUID_DROP))\n", n.len()))
            .collect();
        std::fs::write(src.join("coreutils/all.c"), decls).unwrap();
        let list = dir.join("mine.applets");
        std::fs::write(&list, format!("{}\nvi # an editor\n", GUEST_NEEDS.join(" "))).unwrap();
        check_applets(&src, &list).unwrap();
        std::fs::write(&list, format!("{}\nvim\n", GUEST_NEEDS.join(" "))).unwrap();
        let e = format!("{:#}", check_applets(&src, &list).unwrap_err());
        assert!(e.contains("mine.applets:2: busybox has no applet \"vim\""), "{e}");
        let without: Vec<&str> = GUEST_NEEDS.iter().copied().filter(|n| !["setsid", "cttyhack"].contains(n)).collect();
        std::fs::write(&list, without.join(" ")).unwrap();
        let e = format!("{:#}", check_applets(&src, &list).unwrap_err());
        assert!(e.contains("lacks applets the lab's /init, boot self-test or exec runner call: setsid cttyhack"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_shipped_applets_file_keeps_what_the_guest_scripts_call() {
        let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/busybox/lab.applets");
        let names: Vec<String> = read_applets(&list).unwrap().into_iter().map(|(n, _)| n).collect();
        for n in GUEST_NEEDS {
            assert!(names.iter().any(|m| m == n), "lab.applets lacks {n}");
        }
    }
}
