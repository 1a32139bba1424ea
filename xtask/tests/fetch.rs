//! `cargo xtask fetch` (and `kernel --configure-only`, which fetches first) end to end against a
//! generated kernel.org-layout mirror on loopback (served by `cargo xtask serve`), with a throwaway
//! gpg key. No network beyond 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_xtask");
/// WKD hash (z-base-32 of SHA-1) of the local part "autosigner".
const AUTOSIGNER_WKD_HASH: &str = "ew8uiogxwri7d3fuioqgt7u1d5sngorx";

/// A top Makefile that declares `version` the way kernel and busybox Makefiles do.
fn makefile(what: &str, version: &str) -> String {
    let mut parts = version.split('.');
    let (v, p, sub) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or("0"));
    format!("# {what} {version}\nVERSION = {v}\nPATCHLEVEL = {p}\nSUBLEVEL = {sub}\nEXTRAVERSION =\n")
}

/// The kernel trees' Makefile: the version lines, and the two Kconfig targets `kernel
/// --configure-only` runs, standing in for kbuild's: tinyconfig starts an empty `.config`,
/// olddefconfig drops CONFIG_LOST (an option with an unmet dependency, for kernel-lab to explain).
fn linux_makefile(version: &str) -> String {
    let targets = "tinyconfig:\n\t@echo '# tinyconfig' > $(O)/.config\nolddefconfig:\n\t@sed -i '/^CONFIG_LOST=/d' $(O)/.config\n";
    format!("{}{targets}", makefile("Linux", version))
}

/// The Kconfig symbols the configure-only test requests: the generated ones (debug info, exact
/// version, the e1000 driver) and the fragment's.
const LINUX_KCONFIG: &str = "config DEBUG_KERNEL\n\tbool \"debug\"\nconfig DEBUG_INFO_DWARF5\n\tbool \"dwarf5\"\n\
config LOCALVERSION_AUTO\n\tbool \"auto\"\nconfig LOCALVERSION\n\tstring \"local\"\nconfig NET_VENDOR_INTEL\n\tbool \"intel\"\n\
config E1000\n\ttristate \"e1000\"\nconfig KEPT\n\tbool \"kept\"\nconfig LOST\n\tbool \"lost\"\n\tdepends on NEVER\nconfig NEVER\n\tbool\n";

/// merge_config.sh as kbuild calls it (`-m -O DIR BASE FRAGMENT...`): the base, then each fragment.
const MERGE_CONFIG: &str = "dir=$3\nshift 3\ncat \"$@\" > \"$dir/.config.merged\" && mv \"$dir/.config.merged\" \"$dir/.config\"\n";

struct Fixture {
    dir: PathBuf,
    gnupg: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.gnupg).args(["--kill", "gpg-agent"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = common::scratch(&format!("fetch-{name}"));
        let gnupg = dir.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        // gpg refuses to trust a home others can read; create_dir_all leaves it at 0755 (umask 022).
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(std::fs::metadata(&gnupg).unwrap().permissions().mode() & 0o777, 0o700);
        let f = Fixture { dir, gnupg };
        f.gen_key("Mirror Signer <mirror@test.invalid>");
        f.gen_key("Other Signer <other@test.invalid>");
        std::fs::create_dir_all(f.dir.join("recipes")).unwrap();
        std::fs::write(
            f.dir.join("recipes/lts.yaml"),
            "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragments: [lab.config]\n",
        )
        .unwrap();
        f
    }

    fn gen_key(&self, uid: &str) {
        let ok = Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn export(&self, email: &str) -> PathBuf {
        let out = Command::new("gpg").env("GNUPGHOME", &self.gnupg).args(["--batch", "--export", email]).output().unwrap();
        assert!(!out.stdout.is_empty());
        let path = self.dir.join(format!("{email}.gpg"));
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    fn fingerprint(&self, email: &str) -> String {
        let out =
            Command::new("gpg").env("GNUPGHOME", &self.gnupg).args(["--batch", "--with-colons", "--list-keys", email]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().find(|l| l.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_string()
    }

    /// A kernel tarball whose top directory has a Debian-like name, and a busybox tarball.
    fn tarballs(&self) -> (PathBuf, PathBuf, PathBuf) {
        let src = self.dir.join("src");
        for (top, version) in [("linux-source-6.12", "6.12.117"), ("linux-6.6.9", "6.6.9")] {
            let d = src.join(top);
            std::fs::create_dir_all(d.join("kernel")).unwrap();
            std::fs::create_dir_all(d.join("scripts/kconfig")).unwrap();
            std::fs::write(d.join("Makefile"), linux_makefile(version)).unwrap();
            std::fs::write(d.join("Kconfig"), LINUX_KCONFIG).unwrap();
            std::fs::write(d.join("scripts/kconfig/merge_config.sh"), MERGE_CONFIG).unwrap();
            std::fs::write(d.join("kernel/fork.c"), "int fork;\n").unwrap();
        }
        std::fs::create_dir_all(src.join("busybox-1.35.0")).unwrap();
        std::fs::write(src.join("busybox-1.35.0/Makefile"), makefile("busybox", "1.35.0")).unwrap();
        let k1 = self.dir.join("k1.tar.xz");
        let k2 = self.dir.join("k2.tar.xz");
        let bb = self.dir.join("bb.tar.bz2");
        for (out, top, flag) in [(&k1, "linux-source-6.12", "-cJf"), (&k2, "linux-6.6.9", "-cJf"), (&bb, "busybox-1.35.0", "-cjf")] {
            assert!(Command::new("tar").arg("-C").arg(&src).arg(flag).arg(out).arg(top).status().unwrap().success());
        }
        (k1, k2, bb)
    }

    fn mirror(&self, sign: Option<&str>) -> PathBuf {
        let (k1, k2, bb) = self.tarballs();
        let out = self.dir.join("mirror");
        let mut cmd = self.xtask();
        cmd.arg("mirror").arg("--out").arg(&out);
        cmd.arg("--add-kernel").arg(&k1).args(["--version", "6.12.117"]);
        cmd.arg("--add-kernel").arg(&k2).args(["--version", "6.6.9"]);
        cmd.arg("--add-busybox").arg(&bb).args(["--busybox-version", "1.35.0"]);
        if let Some(key) = sign {
            cmd.args(["--sign-key", key]);
        }
        let out_ = cmd.output().unwrap();
        assert!(out_.status.success(), "mirror failed: {}", String::from_utf8_lossy(&out_.stderr));
        out
    }

    fn xtask(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("GNUPGHOME", &self.gnupg)
            .env("KERNEL_LAB_CACHE", self.dir.join("cache"))
            .env("KERNEL_LAB_ARTIFACTS", self.dir.join("artifacts"))
            .env_remove("KERNEL_LAB_MIRROR")
            .env_remove("KERNEL_LAB_KEYRING")
            .env_remove("KERNEL_LAB_SIGNER_FPR")
            .stdin(Stdio::null());
        cmd
    }

    fn fetch(&self, mirror: &str, extra: &[&str]) -> Output {
        let mut cmd = self.xtask();
        cmd.arg("fetch").arg("--recipe").arg(self.dir.join("recipes/lts.yaml")).args(["--mirror", mirror]).args(extra);
        cmd.output().unwrap()
    }

    fn src(&self, version: &str) -> PathBuf {
        self.dir.join("artifacts/src").join(format!("linux-{version}"))
    }
}

/// `cargo xtask serve` on 127.0.0.1:0; killed on drop.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg(dir)
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "unexpected serve banner {line:?}");
    Served { child, url }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn good_fetch_then_cache_hit_without_server_and_locked() {
    let f = Fixture::new("good");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The Debian-style top directory was stripped.
    assert_eq!(std::fs::read_to_string(f.src("6.12.117").join("Makefile")).unwrap(), linux_makefile("6.12.117"));
    assert!(f.dir.join("artifacts/src/busybox-1.35.0/Makefile").is_file());
    let lock = std::fs::read_to_string(f.dir.join("recipes/lts.lock")).unwrap();
    assert!(lock.contains("\"version\": \"6.12.117\"") && lock.contains("pub/linux/kernel/v6.x/linux-6.12.117.tar.xz"), "{lock}");

    // With the server gone, a locked fetch must succeed from the cache: it sends no request.
    drop(served);
    let out = f.fetch("http://127.0.0.1:9/", &["--locked", "--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "cache hit needed the network: {}", stderr(&out));

    // --locked with another request is stale and says what would change.
    let out = f.fetch("http://127.0.0.1:9/", &["--locked", "--lts", "6.6"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("stale") && err.contains("--lts -> --lts 6.6"), "{err}");

    // --locked without a lock file fails and says how to make one.
    std::fs::remove_file(f.dir.join("recipes/lts.lock")).unwrap();
    let out = f.fetch("http://127.0.0.1:9/", &["--locked"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no lock file"), "{}", stderr(&out));
}

#[test]
fn lts_series_and_exact_version() {
    let f = Fixture::new("series");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--lts", "6.6", "--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(f.src("6.6.9").join("Makefile")).unwrap(), linux_makefile("6.6.9"));
    let out = f.fetch(&served.url, &["--lts", "4.4", "--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no longterm series 4.4"), "{}", stderr(&out));

    // --version picks that release even though it is not the newest longterm one.
    std::fs::remove_dir_all(f.dir.join("artifacts")).unwrap();
    let out = f.fetch(&served.url, &["--version", "6.6.9", "--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(f.src("6.6.9").join("Makefile")).unwrap(), linux_makefile("6.6.9"));
    assert!(!f.src("6.12.117").exists());
    let lock = std::fs::read_to_string(f.dir.join("recipes/lts.lock")).unwrap();
    assert!(lock.contains("\"version\": \"6.6.9\"") && lock.contains("v6.x/linux-6.6.9.tar.xz"), "{lock}");
    let out = f.fetch(&served.url, &["--version", "6.6.1", "--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// releases.json lists only the newest release of each series; an exact version it does not list
/// is taken from the usual kernel.org path and must still be in the signed sha256sums.asc.
#[test]
fn exact_version_not_in_releases_json_falls_back_to_the_signed_sums() {
    let f = Fixture::new("unlisted");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let json_path = mirror.join("releases.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let releases = json["releases"].as_array_mut().unwrap();
    let before = releases.len();
    releases.retain(|r| r["version"] != "6.6.9");
    assert_eq!(releases.len(), before - 1, "the mirror listed 6.6.9");
    std::fs::write(&json_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let served = serve(&mirror);
    let k = keyring.to_str().unwrap();

    let out = f.fetch(&served.url, &["--version", "6.6.9", "--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(f.src("6.6.9").join("Makefile")).unwrap(), linux_makefile("6.6.9"));
    let lock: serde_json::Value = serde_json::from_slice(&std::fs::read(f.dir.join("recipes/lts.lock")).unwrap()).unwrap();
    let kernel = &lock["kernel"];
    assert_eq!(kernel["path"], "pub/linux/kernel/v6.x/linux-6.6.9.tar.xz", "{lock}");
    assert_eq!(kernel["sums_path"], "pub/linux/kernel/v6.x/sha256sums.asc", "{lock}");
    assert_eq!(kernel["verified"], true, "{lock}");
    assert_eq!(kernel["released"], 0, "an unlisted version has no release date: {lock}");

    // Neither listed nor in the signed sums: refused, naming the sums file, nothing extracted.
    let out = f.fetch(&served.url, &["--version", "6.6.1", "--keyring", k]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("sha256sums.asc has no sha256 line for linux-6.6.1.tar.xz"), "{err}");
    assert!(!f.src("6.6.1").exists());
}

#[test]
fn wrong_signer_is_refused_and_nothing_extracted() {
    let f = Fixture::new("wrongsig");
    let mirror = f.mirror(Some("other@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("sha256sums.asc"), "{err}");
    assert!(!f.src("6.12.117").exists());
}

#[test]
fn unsigned_sums_refused_unless_opted_out() {
    let f = Fixture::new("unsigned");
    let mirror = f.mirror(None);
    let keyring = f.export("mirror@test.invalid");
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--insecure-skip-signature"), "{}", stderr(&out));
    assert!(!f.src("6.12.117").exists());
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap(), "--insecure-skip-signature"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING"), "{}", stderr(&out));
}

#[test]
fn tampered_tarball_is_refused_and_removed() {
    let f = Fixture::new("tamper");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let tarball = mirror.join("pub/linux/kernel/v6.x/linux-6.12.117.tar.xz");
    let mut file = std::fs::OpenOptions::new().append(true).open(&tarball).unwrap();
    file.write_all(b"evil").unwrap();
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("verify sha256 of linux-6.12.117.tar.xz: expected"), "{err}");
    assert!(!f.src("6.12.117").exists());
    let cached: Vec<_> = std::fs::read_dir(f.dir.join("cache/sha256")).map(|d| d.count()).into_iter().collect();
    assert!(cached.iter().all(|n| *n == 0), "a tampered file stayed in the cache");
    let partial = f.dir.join("cache/partial");
    assert!(!partial.exists() || std::fs::read_dir(&partial).unwrap().count() == 0);
}

#[test]
fn file_mirror_works() {
    let f = Fixture::new("file");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let out = f.fetch(&format!("file://{}", mirror.display()), &["--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(f.src("6.12.117").join("kernel/fork.c").is_file());
}

/// `kernel --configure-only` fetches, configures the recipe's build tree, checks every requested
/// option and stops: no kernel, busybox or lab. An option olddefconfig drops fails it, explained.
#[test]
fn configure_only_checks_every_option_and_builds_nothing() {
    let f = Fixture::new("configure");
    let mirror = format!("file://{}", f.mirror(Some("mirror@test.invalid")).display());
    let keyring = f.export("mirror@test.invalid");
    let recipe = f.dir.join("recipes/mini.yaml");
    std::fs::write(
        &recipe,
        "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragments: [mini.config]\n",
    )
    .unwrap();
    let fragment = f.dir.join("recipes/mini.config");
    std::fs::write(&fragment, "CONFIG_KEPT=y\n").unwrap();
    let configure = || {
        let mut cmd = f.xtask();
        cmd.args(["kernel", "--configure-only", "--recipe"]).arg(&recipe).args(["--mirror", &mirror]).arg("--keyring").arg(&keyring);
        cmd.output().unwrap()
    };
    let out = configure();
    assert!(out.status.success(), "{}", stderr(&out));
    let build = f.dir.join("artifacts/build/linux-6.12.117-mini");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("configured: {} (every requested option survived", build.display())), "{stdout}");
    let config = std::fs::read_to_string(build.join(".config")).unwrap();
    assert!(config.contains("\nCONFIG_KEPT=y\n") && config.contains("\nCONFIG_E1000=y\n"), "{config}");
    // Only the configured tree (and its hidden lock): no busybox build, no kernel, no lab.
    let built: Vec<String> = std::fs::read_dir(f.dir.join("artifacts/build"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(built, ["linux-6.12.117-mini"]);
    assert!(!build.join("vmlinux").exists() && !f.dir.join("artifacts/labs").exists());

    std::fs::write(&fragment, "CONFIG_KEPT=y\nCONFIG_LOST=y\n").unwrap();
    let out = configure();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("1 requested option(s) did not survive") && err.contains("CONFIG_LOST: asked y"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("configured:"));
}

#[test]
fn missing_file_names_the_url() {
    let f = Fixture::new("404");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    std::fs::remove_file(mirror.join("busybox/sha256sums.asc")).unwrap();
    std::fs::remove_file(mirror.join("busybox/busybox-1.35.0.tar.bz2.sha256")).unwrap();
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    // Each way busybox could have been verified names what it missed.
    assert!(err.contains(&format!("{}busybox/sha256sums.asc: 404", served.url)), "{err}");
    assert!(err.contains(&format!("{}busybox/busybox-1.35.0.tar.bz2.sha256: 404", served.url)), "{err}");
}

#[test]
fn wkd_key_is_pinned_by_fingerprint() {
    let f = Fixture::new("wkd");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let key = f.export("mirror@test.invalid");
    let hu = mirror.join(".well-known/openpgpkey/hu");
    std::fs::create_dir_all(&hu).unwrap();
    std::fs::copy(&key, hu.join(AUTOSIGNER_WKD_HASH)).unwrap();
    let served = serve(&mirror);
    // Default pin (kernel.org's autosigner): the mirror's key is refused.
    let out = f.fetch(&served.url, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("expected B8868C80BA62A1FFFAF5FDA9632D3A06589DA6B1: refusing it"), "{err}");
    assert!(!f.src("6.12.117").exists());
    // Pinned to the mirror's fingerprint, the key from WKD verifies the sums.
    let mut cmd = f.xtask();
    cmd.env("KERNEL_LAB_SIGNER_FPR", f.fingerprint("mirror@test.invalid"));
    cmd.arg("fetch").arg("--recipe").arg(f.dir.join("recipes/lts.yaml")).args(["--mirror", &served.url]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn busybox_detached_signature_checked_when_keyring_given() {
    let f = Fixture::new("bbsig");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let good = f.export("mirror@test.invalid");
    let other = f.export("other@test.invalid");
    let served = serve(&mirror);
    let k = good.to_str().unwrap();
    let out = f.fetch(&served.url, &["--keyring", k, "--busybox-keyring", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("busybox-1.35.0.tar.bz2.sig"), "{}", stderr(&out));
    let out = f.fetch(&served.url, &["--keyring", k, "--busybox-keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn mirror_from_upstream_republishes_signed_files() {
    let f = Fixture::new("upstream");
    let upstream = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let served = serve(&upstream);
    let copy = f.dir.join("copy");
    let out = f
        .xtask()
        .arg("mirror")
        .arg("--out")
        .arg(&copy)
        .arg("--from-upstream")
        .arg("--recipe")
        .arg(f.dir.join("recipes/lts.yaml"))
        .args(["--upstream", &served.url])
        .arg("--keyring")
        .arg(&keyring)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let sums = "pub/linux/kernel/v6.x/sha256sums.asc";
    assert_eq!(std::fs::read(copy.join(sums)).unwrap(), std::fs::read(upstream.join(sums)).unwrap());
    drop(served);
    // The copy alone serves a verified fetch (the upstream is gone), with the upstream's key.
    std::fs::remove_dir_all(f.dir.join("cache")).unwrap();
    std::fs::remove_dir_all(f.dir.join("artifacts")).unwrap();
    let out = f.fetch(&format!("file://{}", copy.display()), &["--keyring", keyring.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(f.src("6.12.117").join("Makefile").is_file());
}

#[test]
fn releases_json_pointing_at_another_tarball_is_refused() {
    let f = Fixture::new("mismatch");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    // releases.json is unsigned: make 6.12.117 point at the (signed) 6.6.9 tarball.
    let json = std::fs::read_to_string(mirror.join("releases.json")).unwrap();
    let evil = json.replace("v6.x/linux-6.12.117.tar.xz", "v6.x/linux-6.6.9.tar.xz");
    assert_ne!(json, evil);
    std::fs::write(mirror.join("releases.json"), evil).unwrap();
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", keyring.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refusing a mismatched tarball"), "{}", stderr(&out));
    assert!(!f.src("6.12.117").exists());
}

#[test]
fn insecure_lock_needs_the_opt_out_again() {
    let f = Fixture::new("insecurelock");
    let mirror = f.mirror(None);
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--insecure-skip-signature", "--keyring", f.export("mirror@test.invalid").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = std::fs::read_to_string(f.dir.join("recipes/lts.lock")).unwrap();
    assert!(lock.contains("\"verified\": false"), "{lock}");
    let out = f.fetch(&served.url, &["--locked"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unverified"), "{}", stderr(&out));
    let out = f.fetch(&served.url, &["--locked", "--insecure-skip-signature"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Fixture {
    fn lock_path(&self) -> PathBuf {
        self.dir.join("recipes/lts.lock")
    }

    fn lock(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.lock_path()).unwrap()).unwrap()
    }

    fn edit_lock(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut lock = self.lock();
        edit(&mut lock);
        std::fs::write(self.lock_path(), serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    }

    /// Forgets every download and extracted tree, as a fresh checkout on another machine would.
    fn forget_downloads(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("cache"));
        let _ = std::fs::remove_dir_all(self.dir.join("artifacts"));
    }

    /// A busybox tarball other than the one the mirror signed.
    fn evil_busybox(&self) -> PathBuf {
        let src = self.dir.join("evil-src/busybox-1.35.0");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("Makefile"), makefile("evil busybox", "1.35.0")).unwrap();
        let out = self.dir.join("evil-bb.tar.bz2");
        assert!(Command::new("tar")
            .arg("-C")
            .arg(src.parent().unwrap())
            .arg("-cjf")
            .arg(&out)
            .arg("busybox-1.35.0")
            .status()
            .unwrap()
            .success());
        out
    }
}

/// A lock comes in pull requests: `--locked` must not build a kernel whose hash only the lock vouches for.
#[test]
fn locked_refuses_a_kernel_hash_the_signed_sums_do_not_list() {
    let f = Fixture::new("lockhash");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The mirror serves another tarball under 6.12.117's name, and the lock carries its hash.
    // (The mirror hard-links the fixture's tarballs: replace the file, do not write through it.)
    let dir = mirror.join("pub/linux/kernel/v6.x");
    let good = std::fs::read(dir.join("linux-6.12.117.tar.xz")).unwrap();
    let good_sha = f.lock()["kernel"]["sha256"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.join("linux-6.12.117.tar.xz")).unwrap();
    std::fs::copy(dir.join("linux-6.6.9.tar.xz"), dir.join("linux-6.12.117.tar.xz")).unwrap();
    let evil = sha256_of(&dir.join("linux-6.12.117.tar.xz"));
    f.edit_lock(|l| l["kernel"]["sha256"] = evil.clone().into());
    f.forget_downloads();
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success(), "a hash only the lock vouches for was built");
    let err = stderr(&out);
    assert!(err.contains(&f.lock_path().display().to_string()) && err.contains(&evil) && err.contains("sha256sums.asc"), "{err}");
    assert!(!f.src("6.12.117").exists());

    // The signature is checked again on every --locked run, from the cached sums: another key fails.
    f.edit_lock(|l| l["kernel"]["sha256"] = good_sha.into());
    std::fs::write(dir.join("linux-6.12.117.tar.xz"), good).unwrap();
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(served);
    let other = f.export("other@test.invalid");
    let out = f.fetch("http://127.0.0.1:9/", &["--locked", "--keyring", other.to_str().unwrap()]);
    assert!(!out.status.success(), "--locked did not re-verify the signature");
    assert!(stderr(&out).contains("sha256sums.asc"), "{}", stderr(&out));
    let out = f.fetch("http://127.0.0.1:9/", &["--locked", "--keyring", k]);
    assert!(out.status.success(), "cached signed sums needed the network: {}", stderr(&out));
}

#[test]
fn locked_refuses_a_sha256_that_is_a_path() {
    let f = Fixture::new("lockpath");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let served = serve(&mirror);
    assert!(f.fetch(&served.url, &["--keyring", k]).status.success());
    // An absolute "hash" used to name the cached blob: any tarball on disk, unhashed.
    let evil = f.dir.join("k2.tar.xz").display().to_string();
    f.edit_lock(|l| l["kernel"]["sha256"] = evil.clone().into());
    f.forget_downloads();
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success(), "a path in kernel.sha256 was used");
    let err = stderr(&out);
    assert!(err.contains(&f.lock_path().display().to_string()) && err.contains("kernel.sha256") && err.contains(&evil), "{err}");
    assert!(err.contains("64 lowercase hex"), "{err}");
    assert!(!f.src("6.12.117").exists());
}

#[test]
fn locked_refuses_a_version_that_leaves_the_artifacts_tree() {
    let f = Fixture::new("lockdots");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let served = serve(&mirror);
    assert!(f.fetch(&served.url, &["--keyring", k]).status.success());
    let victim = f.dir.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "mine\n").unwrap();
    // artifacts/src/linux-6.12.117/../../../victim is the victim.
    let evil = "6.12.117/../../../victim";
    f.edit_lock(|l| l["kernel"]["version"] = evil.into());
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&f.lock_path().display().to_string()) && err.contains("kernel.version") && err.contains(evil), "{err}");
    assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "mine\n", "extraction replaced a directory outside artifacts");

    // A path that is not the one the version names is refused too, field by field.
    f.edit_lock(|l| {
        l["kernel"]["version"] = "6.12.117".into();
        l["kernel"]["path"] = "pub/linux/kernel/v6.x/linux-6.6.9.tar.xz".into();
    });
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("kernel.path") && err.contains("pub/linux/kernel/v6.x/linux-6.12.117.tar.xz"), "{err}");
}

#[test]
fn busybox_is_verified_through_the_mirror_signed_sums() {
    let f = Fixture::new("bbsums");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let sums = std::fs::read_to_string(mirror.join("busybox/sha256sums.asc")).unwrap_or_default();
    assert!(sums.contains("-----BEGIN PGP SIGNED MESSAGE-----") && sums.contains("busybox-1.35.0.tar.bz2"), "{sums}");
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = f.lock();
    assert_eq!(lock["busybox"]["verified"], true, "{lock}");
    assert_eq!(lock["busybox"]["check"], "mirror-sums", "{lock}");
    assert_eq!(lock["busybox"]["signer"], f.fingerprint("mirror@test.invalid").as_str(), "{lock}");
    // --locked re-verifies busybox from the cache, offline.
    let out = f.fetch("http://127.0.0.1:9/", &["--locked", "--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The mirror swaps busybox and its unsigned .sha256: the signed sums do not list the new hash.
    let evil = f.evil_busybox();
    std::fs::remove_file(mirror.join("busybox/busybox-1.35.0.tar.bz2")).unwrap();
    std::fs::copy(&evil, mirror.join("busybox/busybox-1.35.0.tar.bz2")).unwrap();
    std::fs::write(mirror.join("busybox/busybox-1.35.0.tar.bz2.sha256"), format!("{}  busybox-1.35.0.tar.bz2\n", sha256_of(&evil)))
        .unwrap();
    std::fs::remove_file(f.lock_path()).unwrap();
    f.forget_downloads();
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(!out.status.success(), "a busybox the mirror's key never signed was accepted");
    assert!(stderr(&out).contains("busybox-1.35.0.tar.bz2"), "{}", stderr(&out));
    assert!(!f.dir.join("artifacts/src/busybox-1.35.0").exists());
}

#[test]
fn busybox_sig_is_checked_against_the_pinned_upstream_key_by_default() {
    let f = Fixture::new("bbpin");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    // Without mirror-signed busybox sums, only busybox's own detached signature can vouch for it,
    // and this one is made by the mirror's key, not by busybox's.
    let _ = std::fs::remove_file(mirror.join("busybox/sha256sums.asc"));
    assert!(mirror.join("busybox/busybox-1.35.0.tar.bz2.sig").is_file());
    let served = serve(&mirror);
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(!out.status.success(), "busybox was accepted on its unsigned .sha256");
    let err = stderr(&out);
    assert!(err.contains("C9E9416F76E610DBD09D040F47B70C55ACC9965B") && err.contains("busybox-1.35.0.tar.bz2.sig"), "{err}");
    assert!(!f.dir.join("artifacts/src/busybox-1.35.0").exists());

    let out = f.fetch(&served.url, &["--keyring", k, "--insecure-skip-signature"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING: --insecure-skip-signature: busybox-1.35.0.tar.bz2 is not verified"), "{}", stderr(&out));
    let lock = f.lock();
    assert_eq!((&lock["kernel"]["verified"], &lock["busybox"]["verified"]), (&true.into(), &false.into()), "{lock}");
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unverified busybox"), "{}", stderr(&out));
}

#[test]
fn lts_refuses_to_downgrade_the_lock_unless_asked() {
    let f = Fixture::new("downgrade");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let served = serve(&mirror);
    assert!(f.fetch(&served.url, &["--keyring", k]).status.success());
    let newer = std::fs::read(f.lock_path()).unwrap();
    // releases.json is unsigned: one that lists only the older longterm must not move the lock.
    let json_path = mirror.join("releases.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    json["releases"].as_array_mut().unwrap().retain(|r| r["version"] != "6.12.117");
    std::fs::write(&json_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(!out.status.success(), "the lock was downgraded");
    let err = stderr(&out);
    let lock = f.lock_path().display().to_string();
    assert!(err.contains(&lock) && err.contains("6.12.117") && err.contains("6.6.9") && err.contains("--allow-downgrade"), "{err}");
    assert_eq!(std::fs::read(f.lock_path()).unwrap(), newer, "the lock changed");
    assert!(!f.src("6.6.9").exists());

    let out = f.fetch(&served.url, &["--keyring", k, "--allow-downgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.lock()["kernel"]["version"], "6.6.9");
    // Asking for the series (or the version) is asking for the downgrade.
    std::fs::write(f.lock_path(), &newer).unwrap();
    let out = f.fetch(&served.url, &["--keyring", k, "--lts", "6.6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.lock()["kernel"]["version"], "6.6.9");
    std::fs::write(f.lock_path(), &newer).unwrap();
    let out = f.fetch(&served.url, &["--keyring", k, "--version", "6.6.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Locks written before busybox verification was recorded: `--locked` says to re-resolve, a
/// fresh resolve rewrites them (and still refuses to downgrade them).
#[test]
fn old_lock_format_is_re_resolved_not_trusted() {
    let f = Fixture::new("legacylock");
    let mirror = f.mirror(Some("mirror@test.invalid"));
    let keyring = f.export("mirror@test.invalid");
    let k = keyring.to_str().unwrap();
    let served = serve(&mirror);
    assert!(f.fetch(&served.url, &["--keyring", k]).status.success());
    f.edit_lock(|l| {
        let bb = l["busybox"].as_object_mut().unwrap();
        for field in ["verified", "check", "signer"] {
            assert!(bb.remove(field).is_some(), "{field}: {bb:?}");
        }
    });
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&f.lock_path().display().to_string()) && err.contains("without --locked to re-resolve"), "{err}");

    let json_path = mirror.join("releases.json");
    let listed = std::fs::read(&json_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    json["releases"].as_array_mut().unwrap().retain(|r| r["version"] != "6.12.117");
    std::fs::write(&json_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(!out.status.success(), "an old-format lock was downgraded");
    assert!(stderr(&out).contains("--allow-downgrade"), "{}", stderr(&out));

    std::fs::write(&json_path, listed).unwrap();
    let out = f.fetch(&served.url, &["--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.lock()["busybox"]["check"], "mirror-sums");
    let out = f.fetch(&served.url, &["--locked", "--keyring", k]);
    assert!(out.status.success(), "{}", stderr(&out));
}
