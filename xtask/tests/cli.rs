//! The command line as a user meets it: help listing, rootfs editing commands, bad input.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_xtask");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn no_arguments_lists_every_subcommand() {
    let out = run(&[]);
    // clap's arg_required_else_help: the help goes to stderr and the exit status is 2 (usage error).
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "help must not go to stdout: {}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("Usage: cargo xtask <COMMAND>"), "{text}");
    for sub in ["kernel", "fetch", "mirror", "serve", "rootfs", "boot-test", "doctor", "e2e", "config"] {
        assert!(text.contains(&format!("  {sub} ")), "`{sub}` missing from:\n{text}");
    }
}

#[test]
fn rootfs_list_unpack_repack_round_trip_and_bad_archive() {
    let dir = common::scratch("cli-rootfs");
    std::fs::create_dir_all(dir.join("tree/bin")).unwrap();
    std::fs::write(dir.join("tree/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    // Build an archive with GNU cpio, unpack it with ours, repack twice: same bytes both times.
    let gnu = Command::new("sh")
        .arg("-c")
        .arg("cd tree && printf 'bin\\nbin/hello\\n' | cpio -o -H newc --quiet > ../gnu.cpio")
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(gnu.success());
    let gnu_cpio = dir.join("gnu.cpio");
    let out = run(&["rootfs", "list", gnu_cpio.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bin/hello"));
    let unpacked = dir.join("unpacked");
    assert!(run(&["rootfs", "unpack", gnu_cpio.to_str().unwrap(), unpacked.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(unpacked.join("bin/hello")).unwrap(), "#!/bin/sh\necho hi\n");
    let a = dir.join("a.cpio");
    let b = dir.join("b.cpio");
    assert!(run(&["rootfs", "repack", unpacked.to_str().unwrap(), a.to_str().unwrap()]).status.success());
    assert!(run(&["rootfs", "repack", unpacked.to_str().unwrap(), b.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // A truncated archive: clear error naming the file, nothing written.
    let bytes = std::fs::read(&a).unwrap();
    let bad = dir.join("bad.cpio");
    std::fs::write(&bad, &bytes[..150]).unwrap();
    let out = run(&["rootfs", "list", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cpio") && err.contains("truncated"), "{err}");
    let target = dir.join("never");
    let out = run(&["rootfs", "unpack", bad.to_str().unwrap(), target.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!target.exists(), "unpack of a bad archive left {}", target.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_recipe_names_file_line_and_field() {
    let dir = common::scratch("cli-recipe");
    let recipe = dir.join("typo.yaml");
    std::fs::write(
        &recipe,
        "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragmnts: [lab.config]\n",
    )
    .unwrap();
    let out = run(&["kernel", "--dry-run", "--recipe", recipe.to_str().unwrap(), "--mirror", "http://127.0.0.1:9/"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("error: recipe {}\n", recipe.display())), "{err}");
    // The position must be the misspelt key's own: line 7, column 3 (after the two-space indent).
    assert!(err.contains("line 7 column 3: unknown field `fragmnts`, expected one of base, fragments"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `config explain` and `config fix` against a configured fixture tree (KERNEL_LAB_ARTIFACTS):
/// the inherited `if` from the sourcing file with values, the named problem, and a fragment
/// written by `fix`. The fixture's Makefile stands in for Kconfig's olddefconfig (keeps the
/// `.config` as given, so the appended fix wins).
#[test]
fn config_explain_and_fix_read_the_recipes_configured_tree() {
    let dir = common::scratch("cli-config");
    let art = dir.join("artifacts");
    let src = art.join("src/linux-9.9.9");
    let build = art.join("build/linux-9.9.9-mini");
    for d in [src.join("drivers"), build.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(src.join("Makefile"), "olddefconfig:\n\t@true\n").unwrap();
    std::fs::write(
        src.join("Kconfig"),
        "config BLOCK\n\tbool \"block\"\nconfig MODULES\n\tbool \"modules\"\nif BLOCK\nsource \"drivers/Kconfig\"\nendif\n",
    )
    .unwrap();
    std::fs::write(src.join("drivers/Kconfig"), "config SCSI\n\ttristate \"scsi\"\n\tdepends on PCI || MODULES\n").unwrap();
    std::fs::write(build.join(".config"), "# CONFIG_BLOCK is not set\n").unwrap();
    std::fs::write(build.join("kernel-lab-generated.config"), "# generated\n").unwrap();
    let lts = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/lts.yaml")).unwrap();
    let recipe = dir.join("mini.yaml");
    std::fs::write(
        &recipe,
        lts.replace("[lab.config, smp.config, netns.config, debug.config, mitigations.config, lean.config]", "[mini.config]"),
    )
    .unwrap();
    std::fs::write(dir.join("mini.config"), "# mini\nCONFIG_SCSI=y\n").unwrap();

    let run_env = |args: &[&str]| Command::new(BIN).args(args).env("KERNEL_LAB_ARTIFACTS", &art).stdin(Stdio::null()).output().unwrap();
    let r = recipe.to_str().unwrap();
    let out = run_env(&["config", "explain", "SCSI", "--recipe", r, "--version", "9.9.9"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("problem: unmet dependency"), "{text}");
    assert!(text.contains("UNMET BLOCK [=n]   (if Kconfig:5)"), "{text}");
    // PCI is defined nowhere in this tree, so MODULES is the alternative taken.
    assert!(text.contains("UNMET one of: PCI [=n]  |  MODULES [=n]"), "{text}");
    assert!(text.contains("verified with olddefconfig") && text.contains("\nCONFIG_MODULES=y\nCONFIG_BLOCK=y\n"), "{text}");

    let fix = dir.join("fix.config");
    let out = run_env(&["config", "fix", "--recipe", r, "--version", "9.9.9", "--out", fix.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&fix).unwrap();
    assert!(written.starts_with("# kernel-lab fix for recipe mini: verified"), "{written}");
    assert!(written.ends_with("\nCONFIG_MODULES=y\nCONFIG_BLOCK=y\n"), "{written}");

    // An unconfigured version: the error names the missing .config and what to run.
    let out = run_env(&["config", "explain", "SCSI", "--recipe", r, "--version", "1.0.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("linux-1.0.0-mini/.config is missing") && err.contains("cargo xtask kernel"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
