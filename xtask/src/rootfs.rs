//! The lab's initramfs: busybox, device nodes, users, `/init` and the boot self-test, as a `cpio::Archive`.
//!
//! With `lab.test=1` on the kernel command line, `/init` runs `/etc/kernel-lab/boot-test.sh`
//! instead of the user shell: the guest half of the boot test, whose marker lines are rendered
//! from `boottest::Check::MARKERS` (the contract lives there), then `poweroff -f`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256, Sha512};

use crate::boottest;
use crate::cpio::{Archive, Entry, Kind};
use crate::recipe::{CheckSpec, ExtraFile, Nic, RootfsSpec};

const INIT_TEMPLATE: &str = include_str!("../templates/init.sh");
const BOOT_TEST_TEMPLATE: &str = include_str!("../templates/boot-test.sh");
const RUN_FUNCTION_TEMPLATE: &str = include_str!("../templates/klab-run.sh");

/// Where `/init` finds the self-test; also named in the marker contract above.
/// The setuid copy of busybox behind `SUID_APPLETS`.
const SUID_BUSYBOX: &str = "bin/busybox-suid";
/// Applets that need root privileges to work for the user (`su`, `passwd user`).
const SUID_APPLETS: &[&str] = &["su", "passwd"];

pub const BOOT_TEST_PATH: &str = "etc/kernel-lab/boot-test.sh";
/// The `klab_run` shell function, sourced by the self-test and by `exec` runs.
pub const RUN_FUNCTION_PATH: &str = "etc/kernel-lab/klab-run.sh";

/// Everything the rootfs is made from.
pub struct RootfsInput<'a> {
    pub spec: &'a RootfsSpec,
    /// Directory of the recipe file; `spec.files[].host` is relative to it.
    pub recipe_dir: &'a Path,
    /// The static busybox binary's bytes.
    pub busybox: &'a [u8],
    /// Output of `busybox --list-full`, e.g. "bin/ls", "usr/sbin/chroot" (see `applets`).
    pub applets: Vec<String>,
    /// Kernel version the archive is built for (shown in the generated scripts).
    pub kernel_version: &'a str,
    /// The NIC whose driver the self-test looks for.
    pub nic: Nic,
    /// Programs and modules built for the guest, added after the recipe's files.
    pub built: &'a [GuestFile],
    /// /init lines that load modules (`modules::insmod_lines`), run before anything else.
    pub insmod: &'a str,
    /// The recipe's boot-test checks.
    pub checks: &'a [CheckSpec],
}

/// A file built for the guest: a compiled program or a module.
#[derive(Debug, Clone)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub data: Vec<u8>,
}

/// Lists busybox's applets with their install paths by running `busybox --list-full`.
pub fn applets(busybox: &Path) -> Result<Vec<String>> {
    let sh = xshell::Shell::new().context("create shell")?;
    let out = xshell::cmd!(sh, "{busybox} --list-full").quiet().read().with_context(|| {
        format!("run {} --list-full: it must be a busybox binary that runs on this host (static x86_64)", busybox.display())
    })?;
    let list: Vec<String> = out.lines().map(|l| l.trim().trim_start_matches('/').to_string()).filter(|l| !l.is_empty()).collect();
    ensure!(!list.is_empty(), "{} --list-full printed no applets: is it really busybox?", busybox.display());
    Ok(list)
}

/// Builds the whole initramfs tree.
pub fn build(input: &RootfsInput) -> Result<Archive> {
    let spec = input.spec;
    let v = input.kernel_version;
    ensure!(
        !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c)),
        "kernel version {v:?} has characters that do not belong in a version string"
    );
    let (user, uid) = (spec.user.as_str(), spec.uid);
    let mut a = Archive::new();

    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc/kernel-lab", "proc", "sys", "dev/pts", "mnt", "run", "var"] {
        a.add_dir_all(dir, 0o755, 0, 0)?;
    }
    a.add_dir_all("tmp", 0o1777, 0, 0)?;
    a.add_dir_all("root", 0o700, 0, 0)?;
    a.add_dir_all(&format!("home/{user}"), 0o755, uid, uid)?;

    // Only the applets that need root get it, through a setuid copy: a setuid /bin/busybox would
    // make every process of the user non-dumpable (its /proc files root's), unlike a real system.
    a.add_file("bin/busybox", 0o755, 0, 0, input.busybox.to_vec())?;
    a.add_file(SUID_BUSYBOX, 0o4755, 0, 0, input.busybox.to_vec())?;
    for applet in &input.applets {
        let path = applet.trim_start_matches('/');
        if path == "bin/busybox" {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        let target = if SUID_APPLETS.contains(&name) { "/bin/busybox-suid" } else { "/bin/busybox" };
        a.add_symlink(path, target).with_context(|| format!("busybox applet {applet:?}"))?;
    }

    // In the archive itself because the kernel opens /dev/console for init before anything can
    // mount devtmpfs; the others keep a shell usable if devtmpfs is missing from the config.
    a.add_char_dev("dev/console", 0o600, 0, 0, 5, 1)?;
    a.add_char_dev("dev/null", 0o666, 0, 0, 1, 3)?;
    a.add_char_dev("dev/tty", 0o666, 0, 0, 5, 0)?;
    a.add_char_dev("dev/ttyS0", 0o660, 0, 5, 4, 64)?;

    a.add_file("etc/passwd", 0o644, 0, 0, passwd(spec).into_bytes())?;
    a.add_file("etc/group", 0o644, 0, 0, group(spec).into_bytes())?;
    a.add_file("etc/shadow", 0o600, 0, 0, shadow(spec, input.kernel_version).into_bytes())?;
    a.add_file("etc/hostname", 0o644, 0, 0, format!("{}\n", spec.hostname).into_bytes())?;
    a.add_file("etc/hosts", 0o644, 0, 0, hosts(spec).into_bytes())?;
    a.add_file("etc/profile", 0o644, 0, 0, PROFILE.as_bytes().to_vec())?;
    a.add_file("init", 0o755, 0, 0, init_script(spec, input.kernel_version, input.insmod)?.into_bytes())?;
    a.add_file(BOOT_TEST_PATH, 0o755, 0, 0, boot_test_script(spec, input.kernel_version, input.nic, input.checks)?.into_bytes())?;
    a.add_file(RUN_FUNCTION_PATH, 0o644, 0, 0, run_function(spec)?.into_bytes())?;

    // Last, so a recipe can replace any generated file (its own /etc/profile, say).
    for file in &spec.files {
        add_extra_file(&mut a, input.recipe_dir, file)
            .with_context(|| format!("rootfs.files: {} -> {}", file.host.display(), file.guest))?;
    }
    for f in input.built {
        add_guest_file(&mut a, f)?;
    }
    Ok(a)
}

/// Adds a built file, creating its missing parent directories (root's, 0755).
pub fn add_guest_file(a: &mut Archive, f: &GuestFile) -> Result<()> {
    let path = f.path.trim_start_matches('/');
    if let Some((parent, _)) = path.rsplit_once('/') {
        a.add_dir_all(parent, 0o755, 0, 0)?;
    }
    a.add(Entry { path: path.to_string(), mode: f.mode, uid: f.uid, gid: f.gid, kind: Kind::File(f.data.clone()) })
        .with_context(|| format!("add {} to the rootfs", f.path))
}

const PROFILE: &str = r#"# /etc/profile of the kernel-lab initramfs (generated by `cargo xtask`).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='\u@\h:\w\$ '
"#;

pub fn passwd(spec: &RootfsSpec) -> String {
    let (u, id) = (&spec.user, spec.uid);
    format!("root:x:0:0:root:/root:/bin/sh\n{u}:x:{id}:{id}:{u}:/home/{u}:/bin/sh\n")
}

pub fn group(spec: &RootfsSpec) -> String {
    format!("root:x:0:\ntty:x:5:\n{}:x:{}:\n", spec.user, spec.uid)
}

/// Both accounts get spec.password. The salt is derived rather than drawn at random so that two
/// builds of the same recipe give byte-identical archives; it comes from the account, host name
/// and kernel version, never from the password, so the same password hashes differently per lab
/// and a table precomputed for it does not apply.
pub fn shadow(spec: &RootfsSpec, kernel_version: &str) -> String {
    let line = |name: &str| {
        let salt = derived_salt(&[name, spec.hostname.as_str(), kernel_version]);
        let hash = sha512_crypt(spec.password.as_bytes(), &salt, None);
        // Empty "last change" field: 0 would mean "password expired, change at next login".
        format!("{name}:{hash}::0:99999:7:::\n")
    };
    format!("{}{}", line("root"), line(spec.user.as_str()))
}

fn hosts(spec: &RootfsSpec) -> String {
    format!("127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost\n", spec.hostname)
}

fn placeholders(spec: &RootfsSpec, kernel_version: &str) -> Vec<(&'static str, String)> {
    vec![
        ("@USER@", spec.user.to_string()),
        ("@UID@", spec.uid.to_string()),
        ("@HOSTNAME@", spec.hostname.to_string()),
        ("@VERSION@", kernel_version.to_string()),
    ]
}

/// `/init`, from xtask/templates/init.sh, with `insmod` lines for the recipe's modules (the
/// placeholder's line disappears when there are none).
pub fn init_script(spec: &RootfsSpec, kernel_version: &str, insmod: &str) -> Result<String> {
    let template = INIT_TEMPLATE.replace("@MODULES@\n", insmod);
    substitute("templates/init.sh", &template, &placeholders(spec, kernel_version))
}

/// The `klab_run` shell function (templates/klab-run.sh) for the lab's user.
pub fn run_function(spec: &RootfsSpec) -> Result<String> {
    let mut values = placeholders(spec, "");
    values.push(("@RUN_CAP@", boottest::RUN_OUTPUT_CAP.to_string()));
    substitute("templates/klab-run.sh", RUN_FUNCTION_TEMPLATE, &values)
}

/// `/etc/kernel-lab/boot-test.sh`, from xtask/templates/boot-test.sh plus the marker lines the
/// host side renders.
pub fn boot_test_script(spec: &RootfsSpec, kernel_version: &str, nic: Nic, checks: &[CheckSpec]) -> Result<String> {
    let mut values = placeholders(spec, kernel_version);
    values.push(("@NIC_DRIVER@", nic.driver().to_string()));
    values.push(("@RUN_FUNCTION@", format!("# shellcheck source=/dev/null\n. /{RUN_FUNCTION_PATH}")));
    values.push(("@CHECKS@", boottest::guest_checks(checks).trim_end().to_string()));
    substitute("templates/boot-test.sh", BOOT_TEST_TEMPLATE, &values)
}

/// Replaces `@NAME@` placeholders and fails on any left over, so a typo in a template is caught
/// at build time instead of reaching the guest as a literal.
fn substitute(name: &str, template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_string();
    for (key, value) in values {
        text = text.replace(key, value);
    }
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('@') {
        let rest = &bytes[i + 1..];
        let len = rest.iter().take_while(|b| b.is_ascii_uppercase() || **b == b'_').count();
        if len > 0 && rest.get(len) == Some(&b'@') {
            bail!("{name}: unknown placeholder {}: known are {:?}", &text[i..i + len + 2], values.iter().map(|v| v.0).collect::<Vec<_>>());
        }
    }
    Ok(text)
}

fn add_extra_file(a: &mut Archive, recipe_dir: &Path, file: &ExtraFile) -> Result<()> {
    let host = recipe_dir.join(&file.host);
    // Follow a symlink given directly in the recipe; links inside a copied directory stay links.
    let meta = fs::metadata(&host).with_context(|| {
        format!(
            "host path {} (rootfs.files[].host {:?}) does not exist or cannot be read: fix it; it is relative to the recipe directory {}",
            host.display(),
            file.host.display(),
            recipe_dir.display()
        )
    })?;
    let mode = file.mode.map(|m| m.0);
    let guest = file.guest.trim_start_matches('/');
    ensure!(!guest.is_empty(), "rootfs.files[].guest {:?} names the root directory: give a path below it", file.guest);
    copy_host(a, &host, &meta, guest, mode, file.uid, file.gid)
}

/// Copies a host file or tree. An explicit mode applies to regular files; directories keep theirs.
fn copy_host(a: &mut Archive, host: &Path, meta: &fs::Metadata, guest: &str, mode: Option<u32>, uid: u32, gid: u32) -> Result<()> {
    let host_mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(host).with_context(|| format!("read symlink {}", host.display()))?;
        let target = target.to_str().with_context(|| format!("symlink {} has a non-UTF-8 target", host.display()))?;
        a.add(Entry { path: guest.to_string(), mode: 0o777, uid, gid, kind: Kind::Symlink(target.to_string()) })
    } else if ft.is_dir() {
        a.add(Entry { path: guest.to_string(), mode: host_mode, uid, gid, kind: Kind::Dir })?;
        let mut names = Vec::new();
        for item in fs::read_dir(host).with_context(|| format!("read directory {}", host.display()))? {
            let item = item.with_context(|| format!("read directory {}", host.display()))?;
            let name = item
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("{}: file name {n:?} is not UTF-8; rename it", host.display()))?;
            names.push(name);
        }
        names.sort();
        for name in names {
            let child = host.join(&name);
            let meta = fs::symlink_metadata(&child).with_context(|| format!("inspect {}", child.display()))?;
            copy_host(a, &child, &meta, &format!("{guest}/{name}"), mode, uid, gid)?;
        }
        Ok(())
    } else if ft.is_file() {
        let data = fs::read(host).with_context(|| format!("read {}", host.display()))?;
        a.add(Entry { path: guest.to_string(), mode: mode.unwrap_or(host_mode), uid, gid, kind: Kind::File(data) })
    } else {
        bail!("{} is not a regular file, directory or symlink: only those can be copied into the rootfs", host.display())
    }
}

const CRYPT_ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn b64_from_24bit(out: &mut String, b2: u8, b1: u8, b0: u8, n: usize) {
    let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
    for _ in 0..n {
        out.push(CRYPT_ALPHABET[(w & 0x3f) as usize] as char);
        w >>= 6;
    }
}

/// 16 salt characters from sha256 of `parts`.
fn derived_salt(parts: &[&str]) -> String {
    let mut hasher = Sha256::new().chain_update(b"kernel-lab shadow salt v2");
    for p in parts {
        hasher.update(b"\0");
        hasher.update(p.as_bytes());
    }
    let digest = hasher.finalize();
    let mut salt = String::new();
    for c in digest[..12].chunks(3) {
        b64_from_24bit(&mut salt, c[0], c[1], c[2], 4);
    }
    salt
}

/// SHA-512 crypt (`$6$`), Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512" algorithm.
/// `rounds` None means the default 5000 and no `rounds=` field; given rounds are clamped to
/// 1000..=999999999 as the specification says. The salt is cut to 16 bytes.
pub fn sha512_crypt(key: &[u8], salt: &str, rounds: Option<u32>) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(16)];
    let rounds = rounds.map(|r| r.clamp(1000, 999_999_999));

    let b = Sha512::new().chain_update(key).chain_update(salt).chain_update(key).finalize();
    let mut a = Sha512::new().chain_update(key).chain_update(salt);
    let mut n = key.len();
    while n > 64 {
        a.update(b);
        n -= 64;
    }
    a.update(&b[..n]);
    let mut n = key.len();
    while n > 0 {
        if n & 1 != 0 {
            a.update(b);
        } else {
            a.update(key);
        }
        n >>= 1;
    }
    let a = a.finalize();

    let mut dp = Sha512::new();
    for _ in 0..key.len() {
        dp.update(key);
    }
    let dp = dp.finalize();
    let p: Vec<u8> = dp.iter().copied().cycle().take(key.len()).collect();
    let mut ds = Sha512::new();
    for _ in 0..16 + usize::from(a[0]) {
        ds.update(salt);
    }
    let ds = ds.finalize();
    let s: Vec<u8> = ds.iter().copied().cycle().take(salt.len()).collect();

    let mut c = a;
    for i in 0..rounds.unwrap_or(5000) {
        let mut h = Sha512::new();
        if i & 1 != 0 {
            h.update(&p);
        } else {
            h.update(c);
        }
        if i % 3 != 0 {
            h.update(&s);
        }
        if i % 7 != 0 {
            h.update(&p);
        }
        if i & 1 != 0 {
            h.update(c);
        } else {
            h.update(&p);
        }
        c = h.finalize();
    }

    let mut out = String::from("$6$");
    if let Some(r) = rounds {
        out.push_str(&format!("rounds={r}$"));
    }
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    // The specification's byte order: groups (j, j+21, j+42) rotated by j % 3, then the last byte.
    for j in 0..21 {
        let (x, y, z) = match j % 3 {
            0 => (j, j + 21, j + 42),
            1 => (j + 21, j + 42, j),
            _ => (j + 42, j, j + 21),
        };
        b64_from_24bit(&mut out, c[x], c[y], c[z], 4);
    }
    b64_from_24bit(&mut out, 0, 0, c[63], 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio;
    use crate::cpio::tests::TempDir;
    use crate::recipe::Mode;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    const VERSION: &str = "6.12.117";

    fn check_golden(name: &str, actual: &str) {
        crate::golden::check("rootfs", name, actual);
    }

    #[test]
    fn generated_files_match_golden() {
        let spec = RootfsSpec::default();
        check_golden("init", &init_script(&spec, VERSION, "").unwrap());
        check_golden("boot-test.sh", &boot_test_script(&spec, VERSION, Nic::E1000, &[]).unwrap());
        check_golden("klab-run.sh", &run_function(&spec).unwrap());
        let checks: Vec<crate::recipe::CheckSpec> = crate::recipe::parse(&format!(
            "{}boot_test:\n  checks:\n    - {{name: hello, run: \"klab-hello 20\", stdout: {{exact: \"x\"}}}}\n    - {{name: dmesg, run: \"dmesg | grep 'it''s'\", as: root}}\n",
            crate::recipe::tests::MINIMAL
        ))
        .unwrap()
        .boot_test
        .checks;
        check_golden("boot-test.sh-checks", &boot_test_script(&spec, VERSION, Nic::E1000, &checks).unwrap());
        check_golden("init-modules", &init_script(&spec, VERSION, "insmod /lib/modules/x/extra/klab.ko || echo failed\n").unwrap());
        check_golden("passwd", &passwd(&spec));
        check_golden("group", &group(&spec));
        check_golden("shadow", &shadow(&spec, VERSION));
    }

    #[test]
    fn sha512_crypt_matches_reference_vectors() {
        // From Drepper's specification, each checked against glibc/libxcrypt via Python's crypt.crypt.
        let cases: [(&str, &str, Option<u32>, &str); 7] = [
            (
                "Hello world!",
                "saltstring",
                None,
                "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            ),
            (
                "Hello world!",
                "saltstringsaltstring",
                Some(10000),
                "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
            ),
            (
                "This is just a test",
                "toolongsaltstring",
                Some(5000),
                "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
            ),
            (
                "a very much longer text to encrypt.  This one even stretches over morethan one line.",
                "anotherlongsaltstring",
                Some(1400),
                "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
            ),
            (
                "we have a short salt string but not a short password",
                "short",
                Some(77777),
                "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
            ),
            (
                "the minimum number is still observed",
                "roundstoolow",
                Some(10),
                "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
            ),
            (
                "",
                "kernel-lab",
                None,
                "$6$kernel-lab$boxgUdFS6MDxG0AaCNNTB9psvNrqz3g0VYrFiFqnRUNoZsJ/gjJq7C9Vr0KevS4vCEz7N1hUhagdFJ04fJGqj0",
            ),
        ];
        for (key, salt, rounds, expected) in cases {
            assert_eq!(sha512_crypt(key.as_bytes(), salt, rounds), expected, "key {key:?}");
        }
    }

    #[test]
    fn shadow_salts_are_stable_and_differ_per_account() {
        let spec = RootfsSpec::default();
        let text = shadow(&spec, VERSION);
        assert_eq!(text, shadow(&spec, VERSION));
        let hashes: Vec<&str> = text.lines().map(|l| l.split(':').nth(1).unwrap()).collect();
        assert_eq!(hashes.len(), 2);
        assert_ne!(hashes[0], hashes[1]);
        for h in &hashes {
            let salt = h.split('$').nth(2).unwrap();
            assert_eq!(salt.len(), 16);
            assert_eq!(*h, sha512_crypt(spec.password.as_bytes(), salt, None), "hash must verify with the password");
        }
        let other = RootfsSpec { password: "other".into(), ..RootfsSpec::default() };
        assert_ne!(shadow(&other, VERSION), text);
        // The salt does not depend on the password (no precomputation per password), but on the
        // lab: another kernel version or host name salts differently.
        let salt_of = |t: &str| t.lines().next().unwrap().split('$').nth(2).unwrap().to_string();
        assert_eq!(salt_of(&shadow(&other, VERSION)), salt_of(&text));
        assert_ne!(salt_of(&shadow(&spec, "6.12.118")), salt_of(&text));
        let renamed = RootfsSpec { hostname: "box".to_string().try_into().unwrap(), ..RootfsSpec::default() };
        assert_ne!(salt_of(&shadow(&renamed, VERSION)), salt_of(&text));
    }

    #[test]
    fn substitute_rejects_unknown_placeholders() {
        let ok = substitute("t", "a @USER@ b user@host $@", &[("@USER@", "me".into())]).unwrap();
        assert_eq!(ok, "a me b user@host $@");
        let e = format!("{:#}", substitute("t", "x @USRE@ y", &[("@USER@", "me".into())]).unwrap_err());
        assert!(e.contains("unknown placeholder @USRE@"), "{e}");
    }

    #[test]
    fn scripts_use_the_recipe_values() {
        let spec = RootfsSpec {
            user: "alice".to_string().try_into().unwrap(),
            uid: 1234,
            hostname: "box".to_string().try_into().unwrap(),
            ..RootfsSpec::default()
        };
        let init = init_script(&spec, "6.1.2", "").unwrap();
        assert!(init.starts_with("#!/bin/sh\n"));
        assert!(init.contains("setsid cttyhack setuidgid 1234 sh -l"));
        assert!(init.contains("cd /home/alice || cd /\n"));
        assert!(init.contains("hostname box\n"));
        assert!(init.contains("exec /etc/kernel-lab/boot-test.sh"), "init must run the path we install");
        let test = boot_test_script(&spec, "6.1.2", Nic::E1000, &[]).unwrap();
        assert!(test.contains("setuidgid 1234 id -u"));
        assert!(test.contains("[ \"${driver##*/}\" = e1000 ]"), "{test}");
        assert!(test.contains(&boottest::guest_checks(&[])), "the host's marker lines are in the script");
    }

    struct Fixture {
        tmp: TempDir,
        busybox: Vec<u8>,
        spec: RootfsSpec,
    }

    fn fixture() -> Fixture {
        let tmp = TempDir::new("rootfs");
        let busybox = b"fake busybox\n".to_vec();
        fs::write(tmp.0.join("hello.txt"), "hello\n").unwrap();
        fs::create_dir_all(tmp.0.join("tree/sub")).unwrap();
        fs::write(tmp.0.join("tree/sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(tmp.0.join("tree/sub/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(tmp.0.join("tree"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(tmp.0.join("tree/sub"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("sub/run.sh", tmp.0.join("tree/link")).unwrap();
        let spec = RootfsSpec {
            files: vec![
                ExtraFile { host: "hello.txt".into(), guest: "/opt/lab/hello.txt".into(), mode: Some(Mode(0o700)), uid: 1000, gid: 1000 },
                ExtraFile { host: "tree".into(), guest: "/srv/tree".into(), mode: None, uid: 0, gid: 0 },
            ],
            ..RootfsSpec::default()
        };
        Fixture { tmp, busybox, spec }
    }

    fn build_bytes(f: &Fixture) -> Result<Vec<u8>> {
        let applets =
            ["bin/ash", "bin/busybox", "bin/ls", "bin/su", "usr/bin/passwd", "sbin/ip", "usr/bin/setuidgid", "usr/sbin/chroot", "linuxrc"];
        let input = RootfsInput {
            spec: &f.spec,
            recipe_dir: &f.tmp.0,
            busybox: &f.busybox,
            applets: applets.iter().map(|s| s.to_string()).collect(),
            kernel_version: VERSION,
            nic: Nic::E1000,
            built: &[],
            insmod: "",
            checks: &[],
        };
        cpio::to_bytes(&build(&input)?, 1_761_782_400, f.spec.gzip)
    }

    #[test]
    fn archive_has_the_lab_tree_and_is_reproducible() {
        let f = fixture();
        let bytes = build_bytes(&f).unwrap();
        assert_eq!(bytes, build_bytes(&f).unwrap(), "two builds must be byte-identical");
        let entries: BTreeMap<String, cpio::ReadEntry> =
            cpio::read(&bytes).unwrap().into_iter().map(|r| (r.entry.path.clone(), r)).collect();
        let meta = |p: &str| {
            let e = &entries.get(p).unwrap_or_else(|| panic!("{p} missing from archive")).entry;
            (e.mode, e.uid, e.gid)
        };
        let kind = |p: &str| entries[p].entry.kind.clone();
        assert_eq!(meta("tmp"), (0o1777, 0, 0));
        assert_eq!(meta("root"), (0o700, 0, 0));
        assert_eq!(meta("home/user"), (0o755, 1000, 1000));
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "dev/pts", "mnt", "run", "var"] {
            assert_eq!((meta(d), kind(d)), ((0o755, 0, 0), Kind::Dir), "{d}");
        }
        assert_eq!(meta("bin/busybox"), (0o755, 0, 0));
        assert_eq!(meta("bin/busybox-suid"), (0o4755, 0, 0));
        for applet in ["bin/su", "usr/bin/passwd"] {
            assert_eq!(kind(applet), Kind::Symlink("/bin/busybox-suid".into()), "{applet}");
        }
        assert_eq!(kind("bin/busybox"), Kind::File(b"fake busybox\n".to_vec()));
        for applet in ["bin/ash", "bin/ls", "sbin/ip", "usr/bin/setuidgid", "usr/sbin/chroot", "linuxrc"] {
            assert_eq!(kind(applet), Kind::Symlink("/bin/busybox".into()), "{applet}");
        }
        let dev = |major, minor| Kind::CharDev { major, minor };
        assert_eq!((meta("dev/console"), kind("dev/console")), ((0o600, 0, 0), dev(5, 1)));
        assert_eq!((meta("dev/null"), kind("dev/null")), ((0o666, 0, 0), dev(1, 3)));
        assert_eq!((meta("dev/tty"), kind("dev/tty")), ((0o666, 0, 0), dev(5, 0)));
        assert_eq!((meta("dev/ttyS0"), kind("dev/ttyS0")), ((0o660, 0, 5), dev(4, 64)));
        assert_eq!(meta("etc/shadow"), (0o600, 0, 0));
        assert_eq!(kind("etc/shadow"), Kind::File(shadow(&f.spec, VERSION).into_bytes()));
        assert_eq!(meta("init"), (0o755, 0, 0));
        assert_eq!(kind("init"), Kind::File(init_script(&f.spec, VERSION, "").unwrap().into_bytes()));
        assert_eq!(meta(BOOT_TEST_PATH), (0o755, 0, 0));
        assert_eq!(kind("etc/hostname"), Kind::File(b"kernel-lab\n".to_vec()));
        // Extra files: explicit mode and owner, implicit parents root 0755, trees copied with links.
        assert_eq!(meta("opt/lab/hello.txt"), (0o700, 1000, 1000));
        assert_eq!(meta("opt/lab"), (0o755, 0, 0));
        assert_eq!(meta("srv/tree/sub/run.sh"), (0o750, 0, 0));
        assert_eq!(kind("srv/tree/link"), Kind::Symlink("sub/run.sh".into()));
        assert_eq!(kind("srv/tree/sub"), Kind::Dir);
        assert!(entries.values().all(|r| r.mtime == 1_761_782_400));
    }

    /// Needs a real static busybox: `KERNEL_LAB_TEST_BUSYBOX=/path/to/busybox cargo test -p xtask
    /// rootfs:: -- --ignored`. Writes the archive next to the binary for a look with `cpio -itv`.
    #[test]
    #[ignore]
    fn real_busybox_applets_and_archive() {
        let busybox = PathBuf::from(std::env::var("KERNEL_LAB_TEST_BUSYBOX").expect("set KERNEL_LAB_TEST_BUSYBOX"));
        let list = applets(&busybox).unwrap();
        for needed in ["bin/sh", "usr/bin/setuidgid", "bin/cttyhack", "usr/bin/unshare", "usr/bin/nproc", "sbin/ip"] {
            assert!(list.iter().any(|a| a == needed), "{needed} not in busybox --list-full");
        }
        let spec = RootfsSpec::default();
        let dir = busybox.parent().unwrap();
        let bytes = fs::read(&busybox).unwrap();
        let input = RootfsInput {
            spec: &spec,
            recipe_dir: dir,
            busybox: &bytes,
            applets: list,
            kernel_version: VERSION,
            nic: Nic::E1000,
            built: &[],
            insmod: "",
            checks: &[],
        };
        let archive = build(&input).unwrap();
        cpio::write_file(&archive, 0, false, &dir.join("kernel-lab-rootfs.cpio")).unwrap();
    }

    #[test]
    fn missing_extra_file_names_path_and_field() {
        let mut f = fixture();
        f.spec.files.push(ExtraFile { host: "nope.conf".into(), guest: "/etc/nope.conf".into(), mode: None, uid: 0, gid: 0 });
        let e = format!("{:#}", build_bytes(&f).unwrap_err());
        assert!(e.contains("nope.conf") && e.contains("rootfs.files"), "{e}");
    }

    #[test]
    fn recipe_files_override_generated_ones() {
        let mut f = fixture();
        fs::write(f.tmp.0.join("profile"), "export PS1='# '\n").unwrap();
        f.spec.files.push(ExtraFile { host: "profile".into(), guest: "/etc/profile".into(), mode: Some(Mode(0o644)), uid: 0, gid: 0 });
        let entries = cpio::read(&build_bytes(&f).unwrap()).unwrap();
        let profile = entries.iter().find(|r| r.entry.path == "etc/profile").unwrap();
        assert_eq!(profile.entry.kind, Kind::File(b"export PS1='# '\n".to_vec()));
    }
}
