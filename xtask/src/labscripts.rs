//! Lab scripts: renders run.sh, gdb.sh, debug.gdb and README.md for a lab (`lab::assemble` writes them).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::lab::{self, TextFile};
use crate::mitigations::{self, Item, Mitigations};
use crate::recipe::{QemuSpec, UserName};

const RUN_SH: &str = include_str!("../templates/lab/run.sh");
const GDB_SH: &str = include_str!("../templates/lab/gdb.sh");
const DEBUG_GDB: &str = include_str!("../templates/lab/debug.gdb");
const README_MD: &str = include_str!("../templates/lab/README.md");

/// What the lab scripts and README need to know about a lab.
#[derive(Debug, Clone)]
pub struct LabInfo {
    /// Recipe name, e.g. `lts`.
    pub recipe: String,
    /// Kernel release as `uname -r` prints it, e.g. `6.12.117`.
    pub kernel_version: String,
    /// Busybox version, e.g. `1.35.0`.
    pub busybox_version: String,
    /// The unprivileged guest user.
    pub user: UserName,
    /// Its uid.
    pub uid: u32,
    /// Password of the user and of root.
    pub password: String,
    /// How QEMU starts the lab; run.sh's defaults.
    pub qemu: QemuSpec,
    /// Kernel source tree on this host; gdb.sh uses it for source lines if it exists then.
    pub source_dir: Option<PathBuf>,
    /// Kernel build tree (generated sources) on this host; same rule.
    pub build_dir: Option<PathBuf>,
    /// The recipe's modules: (`.ko` file name, loaded at boot).
    pub modules: Vec<(String, bool)>,
    /// Where the modules' sources are in the lab (`inputs/recipes/<dir>`), for gdb's source path.
    pub module_sources: Vec<String>,
    /// Guest paths of the recipe's programs.
    pub programs: Vec<String>,
    /// Names of the recipe's boot-test checks.
    pub checks: Vec<String>,
    /// The mitigation profile run.sh boots by default.
    pub mitigations: Mitigations,
    /// Items this lab's kernel cannot turn on, with the option it lacks (run.sh refuses them).
    pub kernel_lacks: Vec<(Item, &'static str)>,
}

/// Renders every generated file; pure, so the golden tests see exactly what a lab gets.
pub fn render(info: &LabInfo) -> Result<Vec<TextFile>> {
    check(info)?;
    let q = &info.qemu;
    let topology: String =
        [("cores", q.cores), ("threads", q.threads)].iter().filter_map(|(k, v)| v.map(|v| format!(",{k}={v}"))).collect();
    let smp_desc = if topology.is_empty() {
        q.smp.get().to_string()
    } else {
        format!("{} ({})", q.smp, topology.trim_start_matches(',').replace(',', ", "))
    };
    let extra_args: Vec<String> = q.extra_args.iter().map(|a| shell_quote(a)).collect();
    let vars: Vec<(&str, String)> = vec![
        ("RECIPE", info.recipe.clone()),
        ("KERNEL_VERSION", info.kernel_version.clone()),
        ("BUSYBOX_VERSION", info.busybox_version.clone()),
        ("USER", info.user.to_string()),
        ("UID", info.uid.to_string()),
        ("PASSWORD", info.password.clone()),
        ("MEMORY", q.memory.clone()),
        ("SMP", q.smp.get().to_string()),
        ("SMP_DESC", smp_desc),
        ("SMP_TOPOLOGY", shell_quote(&topology)),
        ("NIC", q.nic.qemu_model().to_string()),
        ("APPEND", shell_quote(&q.append)),
        ("EXTRA_ARGS", extra_args.join(" ")),
        ("GDB_PORT", q.gdb_port.get().to_string()),
        ("MODULES_GDB", modules_gdb(info)),
        ("EXERCISE", exercise_readme(info)),
        ("MITIGATIONS", shell_quote(&info.mitigations.spec)),
        ("MAX_SPEC", mitigations::MAX_SPEC.to_string()),
        ("MITIGATION_TABLE", mitigations::run_sh_table(&info.kernel_lacks)),
        ("MITIGATIONS_README", mitigations_readme(info)),
    ];
    // run.sh gets shell-quoted values for everything a recipe can set freely.
    let mut run_vars = vars.clone();
    for (key, value) in run_vars.iter_mut() {
        if *key == "MEMORY" {
            *value = shell_quote(value);
        }
    }
    let mut files = vec![
        TextFile { name: lab::RUN_SH, mode: 0o755, text: fill("templates/lab/run.sh", RUN_SH, &run_vars)? },
        TextFile { name: lab::GDB_SH, mode: 0o755, text: fill("templates/lab/gdb.sh", GDB_SH, &vars)? },
        TextFile { name: lab::DEBUG_GDB, mode: 0o644, text: fill("templates/lab/debug.gdb", DEBUG_GDB, &vars)? },
        TextFile { name: lab::README, mode: 0o644, text: fill("templates/lab/README.md", README_MD, &vars)? },
    ];
    let dirs: Vec<&PathBuf> = info.source_dir.iter().chain(info.build_dir.iter()).collect();
    if !dirs.is_empty() {
        let mut text = String::from("# Kernel source and build trees on the build host; gdb.sh uses those that exist.\n");
        for dir in dirs {
            let dir = dir.to_str().with_context(|| format!("kernel tree path {} is not UTF-8: move it", dir.display()))?;
            text.push_str(dir);
            text.push('\n');
        }
        files.push(TextFile { name: lab::SOURCE_LIST, mode: 0o644, text });
    }
    Ok(files)
}

/// debug.gdb's `klab-modules` command, for labs with modules (empty otherwise).
fn modules_gdb(info: &LabInfo) -> String {
    if info.modules.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "# Module symbols: `klab-modules` runs lx-symbols on this lab's modules/ directory. It loads the\n\
         # symbols of every loaded module found there, and of each one that loads later.\n\
         define klab-modules\n  lx-symbols modules\nend\n\
         document klab-modules\nLoad the symbols of this lab's modules (lx-symbols modules), now and whenever one loads.\nend\n\
         # The modules' sources, copied into the lab with its inputs.\n",
    );
    for dir in &info.module_sources {
        s.push_str(&format!("directory {dir}\n"));
    }
    s
}

/// The README's section on mitigation profiles: the table, what this lab boots by default, and
/// what its kernel cannot give.
fn mitigations_readme(info: &LabInfo) -> String {
    let mut s = format!(
        "## Mitigations\n\n\
         This lab boots the mitigation profile `{}` by default; `./run.sh --mitigations SPEC` picks\n\
         another for one boot: a profile, and/or `item=on|off|auto` overrides, comma-separated\n\
         (`hardened,smap=off`; overrides alone apply on top of the default, e.g. `kaslr=on`). One\n\
         kernel serves every profile: the options are built in and switched at boot, on the kernel\n\
         command line and in QEMU's CPU model. `auto` leaves an item to the kernel and the CPU.\n\n\
         | item | none | default | hardened | switched by |\n\
         |------|------|---------|----------|-------------|\n",
        info.mitigations.spec
    );
    for row in mitigations::readme_rows() {
        s.push_str(&row);
        s.push('\n');
    }
    s.push_str(
        "\nSMEP and SMAP are CPU features: QEMU's default CPU under TCG has neither, so run.sh uses\n\
         `-cpu max` under TCG and `-cpu host` under KVM, plus `+smep`/`-smep` and `+smap`/`-smap`\n\
         from the profile (under KVM, only what the host CPU has can be turned on). Under TCG the\n\
         `max` CPU says AuthenticAMD, which the kernel counts as not affected by Meltdown: there\n\
         `/sys/devices/system/cpu/vulnerabilities/meltdown` reads `Not affected` even with KPTI on,\n\
         and the `pti` flag in `/proc/cpuinfo` is what shows KPTI. `spectre=off` passes\n\
         `mitigations=off`, which turns KPTI off too, so `pti=on` needs `spectre=auto` or `on`.\n\n\
         `dmesg_restrict` keeps `dmesg` from the user; kernel messages still reach the serial console\n\
         (this terminal), since /init sets the console log level to 7.\n\n\
         The guest's banner shows the profile (`mitigations: ...`). With `kptr_restrict` on, even\n\
         root sees zeros in `/proc/kallsyms`; `/init` lifts it for a moment to make `/tmp/kallsyms`,\n\
         which is then readable by root only. `cargo xtask boot-test --lab DIR --mitigations SPEC`\n\
         (from a kernel-lab checkout) proves each item from inside the guest and reports it in\n\
         `boot-report.json` under `mitigations`: a profile that does not hold is the verdict\n\
         `check-failed:mitigation:<item>`.\n\n",
    );
    if !info.kernel_lacks.is_empty() {
        let lacks: Vec<String> = info.kernel_lacks.iter().map(|(i, o)| format!("`{i}=on` (needs {o})")).collect();
        s.push_str(&format!(
            "This lab's kernel cannot give {}: run.sh refuses them. Rebuild with `mitigations.config` in\n\
             the recipe's `config.fragments`.\n\n",
            lacks.join(", ")
        ));
    }
    s.push_str(
        "### gdb with KASLR on\n\n\
         When gdb.sh connects to a running kernel, debug.gdb reads the KASLR offset from the CPU: the\n\
         divide-error handler's address in the IDT (at its fixed address, 0xfffffe0000000000) minus\n\
         its address in `System.map`. It then loads vmlinux's symbols moved by that offset (the\n\
         per-CPU section stays at 0, as in the kernel) and says `kernel-lab: KASLR offset 0x...`.\n\
         Breakpoints (`hbreak`, `break`), `lx-version`, `$lx_current()` and `lx-symbols` then work as\n\
         without KASLR. `klab-kaslr` reads the offset again, e.g. after the guest rebooted.\n\n\
         `./run.sh --debug` stops the CPU before the kernel has chosen its offset, so vmlinux's\n\
         addresses are right only with `kaslr=off` (the `none` profile): there `break start_kernel`\n\
         works as usual. With KASLR on, `continue`, let the guest boot, press Ctrl-C, run\n\
         `klab-kaslr`, then set breakpoints; or start the lab without `--debug` and attach `./gdb.sh`\n\
         once it runs. Early boot code can only be debugged with `kaslr=off`.\n\n",
    );
    s
}

/// The README's section on what the recipe added (empty for a plain lab).
fn exercise_readme(info: &LabInfo) -> String {
    if info.modules.is_empty() && info.programs.is_empty() && info.checks.is_empty() {
        return String::new();
    }
    let mut s = String::from("## This lab's exercise\n\n");
    if !info.programs.is_empty() {
        s.push_str("Programs compiled from the recipe (`cc -static -O2`), owned by the lab user:\n\n");
        for p in &info.programs {
            s.push_str(&format!("    {p}\n"));
        }
        s.push('\n');
    }
    if !info.modules.is_empty() {
        s.push_str(&format!(
            "Modules built against this kernel, in `modules/` here (with debug info) and in\n\
             `/lib/modules/{}/extra/` in the guest:\n\n",
            info.kernel_version
        ));
        for (file, load) in &info.modules {
            let when = if *load { "loaded by /init at boot" } else { "load it with `insmod`" };
            s.push_str(&format!("    {file}    ({when})\n"));
        }
        let first = info.modules[0].0.trim_end_matches(".ko");
        s.push_str(&format!(
            "\nBreak in a module: start `./run.sh --debug` and `./gdb.sh`, then\n\n\
             \x20      (gdb) klab-modules             # lx-symbols modules: symbols now and at every load\n\
             \x20      (gdb) continue\n\
             \x20      ... once the guest has booted, Ctrl-C in gdb ...\n\
             \x20      (gdb) info functions {first}_  # the module's functions, at their load addresses\n\
             \x20      (gdb) break {first}_write      # for example\n\
             \x20      (gdb) continue\n\n\
             and use the module in the guest. `lx-lsmod` lists the loaded modules with their addresses.\n\n"
        ));
    }
    if !info.checks.is_empty() {
        s.push_str(&format!(
            "The boot test (`cargo xtask boot-test --lab DIR`, from a kernel-lab checkout, DIR being this\n\
             directory) also runs the recipe's checks: {}. Each is reported in boot-report.json under\n\
             `checks`. Run your own program in this lab, N boots in a row, with\n\
             `cargo xtask exec --lab DIR --runs N PROGRAM` (a static binary or a C source).\n\n",
            info.checks.join(", ")
        ));
    }
    s
}

/// Recipe values were checked when the recipe was loaded; the host paths were not, and they
/// land in file lines, where a newline would split them.
fn check(info: &LabInfo) -> Result<()> {
    for dir in &info.module_sources {
        if dir.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("module source directory {dir:?} has a space or control character: rename it");
        }
    }
    for dir in info.source_dir.iter().chain(info.build_dir.iter()) {
        let text = dir.to_string_lossy();
        if text.chars().any(|c| c.is_control()) {
            bail!("kernel tree path {text:?} contains a control character (newline?): move the artifacts directory");
        }
    }
    if info.kernel_version.is_empty() || info.kernel_version.contains(|c: char| c.is_whitespace() || c.is_control()) {
        bail!("kernel version {:?} must be one non-empty word", info.kernel_version);
    }
    Ok(())
}

/// Replaces every `{{KEY}}`; a placeholder left over is a template bug and fails loudly.
fn fill(name: &str, template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_string();
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = text.find("{{") {
        let rest = &text[start..];
        let end = rest.find("}}").map_or(rest.len().min(40), |e| e + 2);
        bail!("{name}: unknown placeholder {}: add it to labscripts::render", &rest[..end]);
    }
    Ok(text)
}

/// Quotes a value as one bash word; plain words stay readable in the generated script.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "_./:=,+-@%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU16, NonZeroU32};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output};

    use crate::recipe::Nic;

    fn write_file(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn fixed_info() -> LabInfo {
        LabInfo {
            recipe: "lts".to_string(),
            kernel_version: "6.12.117".to_string(),
            busybox_version: "1.35.0".to_string(),
            user: "user".to_string().try_into().unwrap(),
            uid: 1000,
            password: "kernel-lab".to_string(),
            qemu: QemuSpec {
                memory: "4G".to_string(),
                smp: NonZeroU32::new(4).unwrap(),
                cores: NonZeroU32::new(2),
                threads: None,
                nic: Nic::E1000,
                append: "loglevel=7 quiet's".to_string(),
                extra_args: vec!["-rtc".to_string(), "base=utc".to_string()],
                gdb_port: NonZeroU16::new(1234).unwrap(),
            },
            source_dir: Some(PathBuf::from("/work/src/linux-6.12.117")),
            build_dir: Some(PathBuf::from("/work/build/lts")),
            modules: Vec::new(),
            module_sources: Vec::new(),
            programs: Vec::new(),
            checks: Vec::new(),
            mitigations: Mitigations::parse("none", "none").unwrap(),
            kernel_lacks: Vec::new(),
        }
    }

    /// A fresh directory under the system temp dir, unique per test.
    fn scratch(name: &str) -> PathBuf {
        crate::testutil::scratch(&format!("labscripts-{name}"))
    }

    /// A lab with placeholder kernel files, for tests that never start a real QEMU.
    fn fake_lab(dir: &Path, info: &LabInfo) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(lab::BZIMAGE), b"").unwrap();
        std::fs::write(dir.join(lab::ROOTFS), b"").unwrap();
        for f in render(info).unwrap() {
            write_file(&dir.join(f.name), &f.text, f.mode);
        }
    }

    /// Puts an executable `name` that prints its argv (one per line), cwd and port env first in PATH.
    fn fake_bin(dir: &Path, name: &str) -> String {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = "#!/bin/sh\necho \"cwd=$(pwd)\"\necho \"env KLAB_GDB_PORT=${KLAB_GDB_PORT:-}\"\nfor a in \"$0\" \"$@\"; do printf 'arg=%s\\n' \"$a\"; done\n";
        write_file(&bin.join(name), script, 0o755);
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
    }

    fn run(script: &Path, args: &[&str], path_env: Option<&str>) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(script).args(args).env_remove("KLAB_GDB_PORT");
        if let Some(p) = path_env {
            cmd.env("PATH", p);
        }
        cmd.output().unwrap()
    }

    fn args_of(out: &Output) -> Vec<String> {
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().filter_map(|l| l.strip_prefix("arg=")).map(str::to_string).collect()
    }

    /// True when `args` holds `flag` immediately followed by `value`.
    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn golden_files() {
        let files = render(&fixed_info()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        assert_eq!(names, [lab::RUN_SH, lab::GDB_SH, lab::DEBUG_GDB, lab::README, lab::SOURCE_LIST]);
        for file in files {
            // Dot files are easy to miss in a review, so the golden copy drops the dot.
            crate::golden::check("lab", file.name.trim_start_matches('.'), &file.text);
        }
    }

    /// A lab with programs, a module and checks gets the klab-modules command and the README's
    /// exercise section; the plain lab above has neither.
    #[test]
    fn exercise_lab_golden_files() {
        let mut info = fixed_info();
        info.modules = vec![("klab.ko".into(), true)];
        info.module_sources = vec!["inputs/recipes/modules/klab".into()];
        info.programs = vec!["/usr/bin/klab-hello".into()];
        info.checks = vec!["syscall".into()];
        let files = render(&info).unwrap();
        let get = |n: &str| files.iter().find(|f| f.name == n).unwrap().text.clone();
        crate::golden::check("lab", "debug.gdb-exercise", &get(lab::DEBUG_GDB));
        crate::golden::check("lab", "README.md-exercise", &get(lab::README));
        let plain = render(&fixed_info()).unwrap();
        let plain_gdb = &plain.iter().find(|f| f.name == lab::DEBUG_GDB).unwrap().text;
        assert!(!plain_gdb.contains("klab-modules") && get(lab::DEBUG_GDB).contains("lx-symbols modules"));
    }

    #[test]
    fn rendered_files_mention_the_recipe_values() {
        let files = render(&fixed_info()).unwrap();
        let get = |n: &str| files.iter().find(|f| f.name == n).unwrap().text.clone();
        let run_sh = get("run.sh");
        assert!(run_sh.contains("RECIPE_APPEND='loglevel=7 quiet'\\''s'"), "{run_sh}");
        assert!(run_sh.contains("SMP_TOPOLOGY=,cores=2\n"), "{run_sh}");
        let readme = get("README.md");
        for needle in ["6.12.117", "1.35.0", "`user` (uid 1000)", "`kernel-lab`", "4 (cores=2)", "port 1234"] {
            assert!(readme.contains(needle), "README lacks {needle:?}");
        }
        assert!(get("debug.gdb").contains("\"KLAB_GDB_PORT\", \"1234\""));
        assert!(!get("debug.gdb").contains("/work"), "debug.gdb must not bake in absolute paths");
    }

    #[test]
    fn newline_in_a_host_path_is_rejected() {
        // Recipe values are checked at load (recipe.rs); host paths are checked here.
        let mut info = fixed_info();
        info.build_dir = Some(PathBuf::from("/work/a\nb"));
        let err = format!("{:#}", render(&info).unwrap_err());
        assert!(err.contains("kernel tree path") && err.contains("a\\nb"), "{err}");
    }

    #[test]
    fn unknown_placeholder_is_an_error() {
        let err = format!("{:#}", fill("t", "a {{NOPE}} b", &[]).unwrap_err());
        assert!(err.contains("{{NOPE}}"), "{err}");
    }

    #[test]
    fn run_sh_parses_and_handles_help_and_bad_options() {
        let dir = scratch("help");
        fake_lab(&dir, &fixed_info());
        let run_sh = dir.join("run.sh");
        let mode = std::fs::metadata(&run_sh).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o755);
        let syntax = Command::new("bash").arg("-n").arg(&run_sh).output().unwrap();
        assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));

        let help = run(&run_sh, &["--help"], None);
        assert_eq!(help.status.code(), Some(0));
        let text = String::from_utf8_lossy(&help.stdout);
        for opt in ["usage: ./run.sh", "--debug", "--kvm", "--no-kvm", "--smp", "--mem", "--append", "--gdb-port"] {
            assert!(text.contains(opt), "help lacks {opt}: {text}");
        }

        let bogus = run(&run_sh, &["--bogus"], None);
        assert_eq!(bogus.status.code(), Some(2));
        let err = String::from_utf8_lossy(&bogus.stderr);
        assert!(err.contains("unknown option '--bogus'") && err.contains("usage:"), "{err}");

        for bad in [&["--smp", "0"][..], &["--smp", "x"], &["--gdb-port", "70000"], &["--smp"]] {
            let out = run(&run_sh, bad, None);
            assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_sh_builds_the_qemu_command_line() {
        let dir = scratch("qemu");
        // Written in one place and run from another: the lab must be relocatable.
        let built = dir.join("built");
        fake_lab(&built, &fixed_info());
        let lab = dir.join("moved lab");
        std::fs::rename(&built, &lab).unwrap();
        let path = fake_bin(&dir, "qemu-system-x86_64");

        let out = run(
            &lab.join("run.sh"),
            &[
                "--debug",
                "--no-kvm",
                "--smp",
                "4",
                "--gdb-port",
                "4321",
                "--append",
                "lab.test=1 panic=-1",
                "--append=oops=panic",
                "--",
                "-snapshot",
                "a b",
            ],
            Some(&path),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let args = args_of(&out);
        assert!(args[0].ends_with("/bin/qemu-system-x86_64"), "{args:?}");
        let lab_s = lab.to_str().unwrap();
        assert!(has_pair(&args, "-kernel", &format!("{lab_s}/bzImage")), "{args:?}");
        assert!(has_pair(&args, "-initrd", &format!("{lab_s}/rootfs.cpio")), "{args:?}");
        // --smp drops the recipe's cores=2, which would no longer multiply out.
        assert!(has_pair(&args, "-smp", "4"), "{args:?}");
        assert!(has_pair(&args, "-m", "4G"), "{args:?}");
        assert!(args.contains(&"-S".to_string()), "{args:?}");
        assert!(has_pair(&args, "-gdb", "tcp:127.0.0.1:4321"), "{args:?}");
        assert!(has_pair(&args, "-device", "e1000,netdev=net0,romfile="), "{args:?}");
        assert!(has_pair(&args, "-netdev", "user,id=net0"), "{args:?}");
        assert!(has_pair(&args, "-accel", "tcg"), "{args:?}");
        assert!(
            has_pair(
                &args,
                "-append",
                "console=ttyS0 nokaslr pti=off mitigations=off sysctl.kernel.kptr_restrict=0 sysctl.kernel.dmesg_restrict=0 lab.mitigations=none loglevel=7 quiet's lab.test=1 panic=-1 oops=panic"
            ),
            "{args:?}"
        );
        for flag in ["-nographic", "-no-reboot"] {
            assert!(args.contains(&flag.to_string()), "{flag} missing: {args:?}");
        }
        // Recipe extra args first, then the ones after --, each kept as one argument.
        let tail: Vec<&str> = args[args.len() - 4..].iter().map(String::as_str).collect();
        assert_eq!(tail, ["-rtc", "base=utc", "-snapshot", "a b"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("waiting for gdb on port 4321: run ./gdb.sh --port 4321"), "{err}");

        // Defaults: the recipe's topology, no -S, the recipe's port.
        let out = run(&lab.join("run.sh"), &["--no-kvm"], Some(&path));
        let args = args_of(&out);
        assert!(has_pair(&args, "-smp", "4,cores=2"), "{args:?}");
        // `tcp::PORT` (and -s) would listen on every interface, IPv4 and IPv6.
        assert!(has_pair(&args, "-gdb", "tcp:127.0.0.1:1234"), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("tcp::") || a == "-s"), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("WARNING"));
        assert!(!args.contains(&"-S".to_string()), "{args:?}");

        // A remote stub only when asked, with a warning; a bad address is a usage error.
        let out = run(&lab.join("run.sh"), &["--no-kvm", "--gdb-listen", "0.0.0.0"], Some(&path));
        assert!(has_pair(&args_of(&out), "-gdb", "tcp:0.0.0.0:1234"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING: the gdb stub listens on 0.0.0.0:1234"));
        let out = run(&lab.join("run.sh"), &["--no-kvm", "--gdb-listen", "1.2.3.4,server=on"], Some(&path));
        assert_eq!(out.status.code(), Some(2));
        assert!(
            has_pair(
                &args,
                "-append",
                "console=ttyS0 nokaslr pti=off mitigations=off sysctl.kernel.kptr_restrict=0 sysctl.kernel.dmesg_restrict=0 lab.mitigations=none loglevel=7 quiet's"
            ),
            "{args:?}"
        );

        // --dry-run prints instead of running.
        let out = run(&lab.join("run.sh"), &["--dry-run", "--no-kvm", "--mem", "512M"], Some(&path));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("qemu-system-x86_64 ") && text.contains("-m 512M"), "{text}");
        assert!(!text.contains("arg="), "--dry-run ran QEMU: {text}");

        // The printed command is meant to be pasted into a shell: running it as shell code must
        // give QEMU exactly the arguments run.sh gives it (quotes and spaces included).
        let opts = ["--no-kvm", "--append", "it's \"odd\" $HOME", "--", "-name", "a b"];
        let direct = args_of(&run(&lab.join("run.sh"), &opts, Some(&path)));
        let dry_opts: Vec<&str> = std::iter::once("--dry-run").chain(opts).collect();
        let printed = String::from_utf8(run(&lab.join("run.sh"), &dry_opts, Some(&path)).stdout).unwrap();
        let pasted = Command::new("bash").arg("-c").arg(printed.trim()).env("PATH", &path).output().unwrap();
        assert_eq!(args_of(&pasted), direct, "{printed}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// run.sh's rendered table and mitigations.rs switch every profile and override alike: the
    /// kernel words and CPU flags run.sh gives QEMU are the ones the host expects.
    #[test]
    fn run_sh_switches_mitigations_as_the_host_expects() {
        let dir = scratch("mitigations");
        let mut info = fixed_info();
        info.qemu.append = String::new();
        info.mitigations = Mitigations::parse("default", "none").unwrap();
        fake_lab(&dir, &info);
        let path = fake_bin(&dir, "qemu-system-x86_64");
        for (flag, spec) in [
            ("none", "none"),
            ("default", "default"),
            ("hardened", "hardened"),
            ("hardened,smap=off,kaslr=off", "hardened,smap=off,kaslr=off"),
            // Overrides alone apply on top of the lab's default.
            ("pti=on,kptr_restrict=on", "default,pti=on,kptr_restrict=on"),
            ("none,pti=on,spectre=auto", "none,pti=on,spectre=auto"),
        ] {
            let want = Mitigations::parse(flag, "default").unwrap();
            assert_eq!(want.spec, spec);
            let out = run(&dir.join("run.sh"), &["--no-kvm", "--mitigations", flag], Some(&path));
            assert!(out.status.success(), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
            let args = args_of(&out);
            assert!(
                has_pair(&args, "-cpu", &format!("max{}", want.cpu_flags().iter().map(|f| format!(",{f}")).collect::<String>())),
                "{flag}: {args:?}"
            );
            let words: Vec<&str> = std::iter::once("console=ttyS0").chain(want.cmdline()).collect();
            assert!(has_pair(&args, "-append", &format!("{} lab.mitigations={spec}", words.join(" "))), "{flag}: {args:?}");
        }
        // Bad specs are usage errors naming the problem; a lab kernel without KASLR refuses kaslr=on.
        for (bad, needle) in [
            ("harden", "unknown profile 'harden'"),
            ("none,smepp=on", "'smepp=on' is not an item"),
            ("none,smep=yes", "smep=yes: use on, off or auto"),
            ("none,pti=on", "add spectre=auto"),
            ("none;reboot", "wants a profile"),
            ("none,,kaslr=on", "'' is not an item"),
            // read drops a trailing empty word; a value is checked even when a later one replaces it.
            ("none,kaslr=on,", "'' is not an item"),
            ("none,kaslr=bogus,kaslr=on", "kaslr=bogus: use on, off or auto"),
        ] {
            let out = run(&dir.join("run.sh"), &["--no-kvm", "--dry-run", "--mitigations", bad], Some(&path));
            assert_eq!(out.status.code(), Some(2), "{bad}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{bad}: {err}");
        }
        info.kernel_lacks = vec![(Item::Kaslr, "CONFIG_RANDOMIZE_BASE=y")];
        fake_lab(&dir, &info);
        let out = run(&dir.join("run.sh"), &["--no-kvm", "--dry-run", "--mitigations", "hardened"], Some(&path));
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("kaslr=on needs CONFIG_RANDOMIZE_BASE=y"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(run(&dir.join("run.sh"), &["--no-kvm", "--dry-run", "--mitigations", "hardened,kaslr=off"], Some(&path)).status.success());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// run.sh's bash parser and `Mitigations::parse` agree on many specs: the same ones are
    /// refused, and the accepted ones give the same kernel words, CPU flags and profile text.
    #[test]
    fn run_sh_and_mitigations_rs_parse_specs_alike() {
        let dir = scratch("mitigations-diff");
        let mut info = fixed_info();
        info.qemu.append = String::new();
        info.qemu.extra_args = Vec::new();
        // A default with an override of its own: overrides alone apply on top of all of it.
        let base = "default,kaslr=on";
        info.mitigations = Mitigations::parse(base, "none").unwrap();
        fake_lab(&dir, &info);
        let path = fake_bin(&dir, "qemu-system-x86_64");
        let mut words: Vec<String> = mitigations::PROFILES.iter().map(|p| p.to_string()).collect();
        for item in Item::ALL {
            for v in ["on", "off", "auto"] {
                words.push(format!("{item}={v}"));
            }
        }
        words.extend(["", "x", "=on", "kaslr=", "kaslr=yes", "kaslr=on=off", "none=on", "smepp=on"].map(String::from));
        let mut specs: Vec<String> = words.iter().filter(|w| !w.is_empty()).cloned().collect();
        // Pairs, and a third word after some of them; trailing commas now and then.
        let mut n = 0usize;
        for a in &words {
            for b in &words {
                n += 1;
                if !n.is_multiple_of(3) {
                    continue;
                }
                specs.push(format!("{a},{b}"));
                if n.is_multiple_of(7) {
                    specs.push(format!("{a},{b},{}", words[n % words.len()]));
                }
                if n.is_multiple_of(11) {
                    specs.push(format!("{a},{b},"));
                }
            }
        }
        let mut mismatches = Vec::new();
        for spec in &specs {
            let rust = Mitigations::parse(spec, base);
            let out = run(&dir.join("run.sh"), &["--no-kvm", "--mitigations", spec], Some(&path));
            match (&rust, out.status.success()) {
                (Err(_), false) => {}
                (Ok(m), true) => {
                    let args = args_of(&out);
                    let words: Vec<&str> = std::iter::once("console=ttyS0").chain(m.cmdline()).collect();
                    let append = format!("{} lab.mitigations={}", words.join(" "), m.spec);
                    let cpu = format!("max{}", m.cpu_flags().iter().map(|f| format!(",{f}")).collect::<String>());
                    if !has_pair(&args, "-append", &append) || !has_pair(&args, "-cpu", &cpu) {
                        mismatches.push(format!("{spec:?}: run.sh gives {args:?}, mitigations.rs {append:?} {cpu:?}"));
                    }
                }
                (Ok(m), false) => mismatches.push(format!(
                    "{spec:?}: mitigations.rs gives {}, run.sh refuses: {}",
                    m.spec,
                    String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
                )),
                (Err(e), true) => mismatches.push(format!("{spec:?}: run.sh accepts, mitigations.rs refuses: {e:#}")),
            }
        }
        assert!(mismatches.is_empty(), "{} of {} specs differ:\n{}", mismatches.len(), specs.len(), mismatches.join("\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_sh_reports_missing_kernel() {
        let dir = scratch("missing");
        fake_lab(&dir, &fixed_info());
        std::fs::remove_file(dir.join("bzImage")).unwrap();
        let path = fake_bin(&dir, "qemu-system-x86_64");
        let out = run(&dir.join("run.sh"), &["--no-kvm"], Some(&path));
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("bzImage is missing"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gdb_sh_starts_gdb_in_the_lab_with_debug_gdb() {
        let dir = scratch("gdb");
        let lab = dir.join("lab");
        let mut info = fixed_info();
        let src = dir.join("linux-src");
        std::fs::create_dir_all(&src).unwrap();
        info.source_dir = Some(src.clone());
        info.build_dir = Some(dir.join("build-gone"));
        fake_lab(&lab, &info);
        let path = fake_bin(&dir, "gdb");

        let out = run(&lab.join("gdb.sh"), &["--port", "4321", "-batch", "-ex", "info registers"], Some(&path));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let lab_s = lab.to_str().unwrap();
        assert!(text.contains(&format!("cwd={lab_s}\n")), "{text}");
        assert!(text.contains("env KLAB_GDB_PORT=4321\n"), "{text}");
        let args = args_of(&out);
        assert!(has_pair(&args, "-iex", &format!("add-auto-load-safe-path {lab_s}")), "{args:?}");
        assert!(has_pair(&args, "-iex", &format!("directory {}", src.display())), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("build-gone")), "missing tree passed to gdb: {args:?}");
        // The user's commands run after debug.gdb has connected.
        let tail: Vec<&str> = args[args.len() - 5..].iter().map(String::as_str).collect();
        assert_eq!(tail, ["-x", "debug.gdb", "-batch", "-ex", "info registers"]);

        let help = run(&lab.join("gdb.sh"), &["--help"], Some(&path));
        assert_eq!(help.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&help.stdout).contains("usage: ./gdb.sh"));
        let bad = run(&lab.join("gdb.sh"), &["--port", "nope"], Some(&path));
        assert_eq!(bad.status.code(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
