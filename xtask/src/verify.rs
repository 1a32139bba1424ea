//! Trust checks: sha256sum lists, OpenPGP signatures through gpgv, keys pinned by fingerprint.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// "Kernel.org checksum autosigner": signs `sha256sums.asc` on kernel.org.
pub const KERNEL_ORG_AUTOSIGNER: &str = "B8868C80BA62A1FFFAF5FDA9632D3A06589DA6B1";
/// Where the autosigner key is published over WKD.
pub const KERNEL_ORG_AUTOSIGNER_EMAIL: &str = "autosigner@kernel.org";

const SIGNED_MESSAGE_HEADER: &str = "-----BEGIN PGP SIGNED MESSAGE-----";

/// Finds `file_name` in `sha256sum` output (`<hex>  <name>` or `<hex> *<name>`, as in kernel.org's
/// sha256sums.asc and busybox's `.sha256`) and returns its lowercase hash.
pub fn sums_lookup(sums_text: &str, file_name: &str) -> Option<String> {
    sums_text.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        let (hash, rest) = line.split_once(' ')?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        // One space then a mode character: ' ' for text, '*' for binary.
        let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*')).unwrap_or(rest);
        let name = name.strip_prefix("./").unwrap_or(name);
        (name == file_name).then(|| hash.to_ascii_lowercase())
    })
}

/// Checks a clearsigned file (kernel.org's sha256sums.asc) against `keyring` and returns only the
/// signed text as gpgv emits it, so unsigned lines around the signature can never be read.
///
/// `expected_fpr` must be the fingerprint of the primary key of the signing key.
pub fn verify_clearsigned(keyring: &Path, signed: &[u8], expected_fpr: &str) -> Result<String> {
    let text = String::from_utf8_lossy(signed);
    let headers = text.lines().filter(|l| l.trim_end() == SIGNED_MESSAGE_HEADER).count();
    if headers == 0 {
        bail!(
            "the checksum file is unsigned (no `{SIGNED_MESSAGE_HEADER}` line); refusing it \
             (pass --insecure-skip-signature to trust it anyway)"
        );
    }
    if headers > 1 {
        bail!("the checksum file holds {headers} signed messages, expected exactly one: refusing it");
    }
    let keyring = absolute(keyring)?;
    let sh = Shell::new().context("create a shell to run gpgv")?;
    // Status lines go to stderr so stdout carries nothing but the signed content.
    let out = cmd!(sh, "gpgv --status-fd 2 --keyring {keyring} --output - -")
        .stdin(signed)
        .quiet()
        .ignore_status()
        .output()
        .context("run gpgv (install gnupg / gpgv)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check_status(&stderr, out.status.success(), Some(expected_fpr), &keyring)?;
    String::from_utf8(out.stdout).context("signed content is not UTF-8")
}

/// Checks a detached signature (busybox's `.tar.bz2.sig`) of `data_path` against `keyring`;
/// with `expected_fpr`, the signing key's primary key must have that fingerprint.
pub fn verify_detached(keyring: &Path, data_path: &Path, sig_path: &Path, expected_fpr: Option<&str>) -> Result<()> {
    let keyring = absolute(keyring)?;
    let sh = Shell::new().context("create a shell to run gpgv")?;
    let out = cmd!(sh, "gpgv --status-fd 2 --keyring {keyring} {sig_path} {data_path}")
        .quiet()
        .ignore_status()
        .output()
        .context("run gpgv (install gnupg / gpgv)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check_status(&stderr, out.status.success(), expected_fpr, &keyring)
        .with_context(|| format!("verify {} with {}", data_path.display(), sig_path.display()))
}

/// Requires a successful gpgv run with exactly one GOODSIG and one VALIDSIG and no sign of a
/// revoked or expired key or signature; with `expected_fpr`, the primary-key fingerprint of the
/// VALIDSIG line (field 10 in gnupg's doc/DETAILS) must be that pin.
///
/// gpgv exits 0 for a good signature by a revoked (REVKEYSIG) or expired (EXPKEYSIG) key, so the
/// exit status alone is not enough: the status lines decide.
fn check_status(stderr: &str, success: bool, expected_fpr: Option<&str>, keyring: &Path) -> Result<()> {
    let status: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("[GNUPG:] ")).collect();
    let human: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("[GNUPG:] ")).collect();
    let keyword_fields = |keyword: &str| -> Vec<Vec<&str>> {
        status.iter().filter(|l| l.split_whitespace().next() == Some(keyword)).map(|l| l.split_whitespace().skip(1).collect()).collect()
    };
    // A good signature that must still be refused: say which problem, not just "bad".
    let revoked_hint = "the signer revoked it: pin the signer's new key (KERNEL_LAB_SIGNER_FPR or --keyring FILE)";
    let expired_hint = format!(
        "if the signer has extended the key since it was cached, remove {} to fetch it again, or pass --keyring FILE",
        keyring.display()
    );
    for (keyword, what, hint) in [
        ("REVKEYSIG", "is revoked", revoked_hint),
        ("EXPKEYSIG", "has expired", expired_hint.as_str()),
        ("REVSIG", "revoked this signature", revoked_hint),
    ] {
        if let Some(fields) = keyword_fields(keyword).first() {
            // Name the primary key (the pin) when gpgv reported it, else the key id of the status line.
            let validsig = keyword_fields("VALIDSIG");
            let key = validsig.first().and_then(|v| v.get(9).or(v.first())).or(fields.first()).copied().unwrap_or("?");
            bail!("signing key {key} {what} ({keyword}): refusing the file (keyring {}); {hint}", keyring.display());
        }
    }
    if !keyword_fields("EXPSIG").is_empty() {
        bail!("the signature has expired (EXPSIG): refusing the file (keyring {})", keyring.display());
    }
    let validsigs = keyword_fields("VALIDSIG");
    let goodsigs = keyword_fields("GOODSIG");
    let bad = status.iter().any(|l| l.starts_with("BADSIG") || l.starts_with("ERRSIG"));
    if !success || bad || validsigs.is_empty() {
        bail!(
            "bad or unverifiable signature (keyring {}): {}",
            keyring.display(),
            if human.is_empty() { "gpgv printed nothing".to_string() } else { human.join("; ") }
        );
    }
    if validsigs.len() != 1 || goodsigs.len() != 1 {
        bail!(
            "gpgv reported {} VALIDSIG and {} GOODSIG lines, expected exactly one of each: refusing the file",
            validsigs.len(),
            goodsigs.len()
        );
    }
    if let Some(expected) = expected_fpr {
        let Some(primary) = validsigs[0].get(9) else {
            bail!("gpgv's VALIDSIG line has no primary-key fingerprint to compare with {expected}: update gnupg");
        };
        if !primary.eq_ignore_ascii_case(expected) {
            bail!("signed by key {primary}, expected {expected}: refusing the file");
        }
    }
    Ok(())
}

/// gpgv reads a keyring path without a slash relative to its home directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("make {} an absolute path", path.display()))
}

/// Returns a binary OpenPGP key block, decoding ASCII armor if the input has it.
pub fn dearmor_if_needed(key_bytes: &[u8]) -> Result<Vec<u8>> {
    let start = key_bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(key_bytes.len());
    let trimmed = &key_bytes[start..];
    if trimmed.starts_with(b"-----BEGIN PGP") {
        let text = std::str::from_utf8(trimmed).context("armored key is not ASCII")?;
        return dearmor(text);
    }
    // Binary OpenPGP packets always have the high bit of the first byte set.
    match key_bytes.first() {
        Some(b) if b & 0x80 != 0 => Ok(key_bytes.to_vec()),
        _ => bail!("not an OpenPGP key (neither ASCII-armored nor binary): check the key file or URL"),
    }
}

fn dearmor(text: &str) -> Result<Vec<u8>> {
    let mut lines = text.lines().map(str::trim_end).skip(1);
    // Armor headers ("Comment: ...") end at the first blank line.
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
    }
    let mut b64 = String::new();
    for line in lines {
        if line.starts_with("-----END PGP") || (line.starts_with('=') && line.len() == 5) {
            break;
        }
        b64.push_str(line);
    }
    let bytes = base64_decode(&b64).context("decode the armored key: bad base64")?;
    if bytes.is_empty() {
        bail!("armored key holds no data");
    }
    Ok(bytes)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Primary-key fingerprints (uppercase hex) in a key block, read by gpg in a throwaway home.
pub fn key_fingerprints(key_bytes: &[u8]) -> Result<Vec<String>> {
    let home = TempHome::new()?;
    let sh = Shell::new().context("create a shell to run gpg")?;
    let home_path = &home.0;
    let out = cmd!(sh, "gpg --batch --no-autostart --with-colons --import-options show-only --import")
        .env("GNUPGHOME", home_path)
        .stdin(key_bytes)
        .quiet()
        .ignore_status()
        .output()
        .context("run gpg (install gnupg)")?;
    let fprs = parse_primary_fprs(&String::from_utf8_lossy(&out.stdout));
    if fprs.is_empty() {
        bail!("gpg found no public key in the key data: {}", String::from_utf8_lossy(&out.stderr).lines().collect::<Vec<_>>().join("; "));
    }
    Ok(fprs)
}

fn parse_primary_fprs(colons: &str) -> Vec<String> {
    let mut fprs = Vec::new();
    let mut after_pub = false;
    for line in colons.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[0] {
            "pub" => after_pub = true,
            "fpr" if after_pub => {
                if let Some(fpr) = fields.get(9).filter(|f| !f.is_empty()) {
                    fprs.push(fpr.to_ascii_uppercase());
                }
                after_pub = false;
            }
            "sub" | "sec" | "ssb" => after_pub = false,
            _ => {}
        }
    }
    fprs
}

/// A `GNUPGHOME` for one gpg call, removed on drop.
struct TempHome(PathBuf);

impl TempHome {
    fn new() -> Result<TempHome> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kernel-lab-gnupg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("create temporary GNUPGHOME {}", dir.display()))?;
        Ok(TempHome(dir))
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary form of `key_bytes` (binary or armored), refused unless one of its primary keys has
/// `expected_fpr`: a key fetched from anywhere is trusted only through its pinned fingerprint.
pub fn key_with_fingerprint(key_bytes: &[u8], expected_fpr: &str) -> Result<Vec<u8>> {
    let key = dearmor_if_needed(key_bytes)?;
    let fprs = key_fingerprints(&key)?;
    if !fprs.iter().any(|f| f.eq_ignore_ascii_case(expected_fpr)) {
        bail!("key has fingerprint {}, expected {}: refusing it", fprs.join(", "), expected_fpr.to_ascii_uppercase());
    }
    Ok(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::scratch;

    /// A throwaway signing key in its own GNUPGHOME, removed on drop.
    pub(crate) struct TestKey {
        pub home: PathBuf,
        pub fpr: String,
        /// Binary export of the public key.
        pub public: Vec<u8>,
        pub armored: Vec<u8>,
    }

    impl TestKey {
        pub(crate) fn new(name: &str) -> TestKey {
            TestKey::generate(name, &[], "never")
        }

        /// A key made with extra gpg options (e.g. `--faked-system-time` to create it in the past)
        /// that expires after `expire` (`never`, `1d`...).
        pub(crate) fn generate(name: &str, gpg_args: &[&str], expire: &str) -> TestKey {
            let home = scratch("testkey");
            std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            let sh = Shell::new().unwrap();
            let uid = format!("{name} <{}@example.org>", name.to_lowercase().replace(' ', "."));
            let empty = "";
            cmd!(sh, "gpg --batch {gpg_args...} --pinentry-mode loopback --passphrase {empty} --quick-gen-key {uid} ed25519 sign {expire}")
                .env("GNUPGHOME", &home)
                .quiet()
                .ignore_stderr()
                .run()
                .unwrap();
            let public = cmd!(sh, "gpg --batch --export").env("GNUPGHOME", &home).output().unwrap().stdout;
            let armored = cmd!(sh, "gpg --batch --armor --export").env("GNUPGHOME", &home).output().unwrap().stdout;
            let fpr = key_fingerprints(&public).unwrap().remove(0);
            TestKey { home, fpr, public, armored }
        }

        pub(crate) fn clearsign(&self, text: &str) -> Vec<u8> {
            self.clearsign_with(text, &[])
        }

        /// Clearsigns with extra gpg options (`--faked-system-time`, `--default-sig-expire`).
        pub(crate) fn clearsign_with(&self, text: &str, gpg_args: &[&str]) -> Vec<u8> {
            let sh = Shell::new().unwrap();
            let empty = "";
            cmd!(sh, "gpg --batch {gpg_args...} --pinentry-mode loopback --passphrase {empty} --clearsign")
                .env("GNUPGHOME", &self.home)
                .stdin(text)
                .quiet()
                .ignore_stderr()
                .output()
                .unwrap()
                .stdout
        }

        /// Imports the revocation certificate gpg made with the key, so `public` is now revoked.
        pub(crate) fn revoke(&mut self) {
            let cert = self.home.join("openpgp-revocs.d").join(format!("{}.rev", self.fpr));
            // gpg prefixes the armor line with `:` so the certificate is not imported by accident.
            let cert = std::fs::read_to_string(&cert).unwrap().replace(":-----BEGIN", "-----BEGIN");
            let sh = Shell::new().unwrap();
            cmd!(sh, "gpg --batch --import").env("GNUPGHOME", &self.home).stdin(cert).quiet().ignore_stderr().run().unwrap();
            self.public = cmd!(sh, "gpg --batch --export").env("GNUPGHOME", &self.home).output().unwrap().stdout;
        }

        pub(crate) fn detach_sign(&self, data: &Path, sig: &Path) {
            let sh = Shell::new().unwrap();
            let empty = "";
            cmd!(sh, "gpg --batch --yes --pinentry-mode loopback --passphrase {empty} --detach-sign -o {sig} {data}")
                .env("GNUPGHOME", &self.home)
                .quiet()
                .ignore_stderr()
                .run()
                .unwrap();
        }
    }

    impl Drop for TestKey {
        fn drop(&mut self) {
            let sh = Shell::new().unwrap();
            // The agent started for signing would outlive the test otherwise.
            let _ = cmd!(sh, "gpgconf --kill gpg-agent").env("GNUPGHOME", &self.home).quiet().ignore_stderr().run();
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }

    const SUMS: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  linux-6.12.117.tar.xz\n\
                        FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210 *busybox-1.35.0.tar.bz2\n";

    #[test]
    fn sums_lookup_reads_both_modes() {
        assert_eq!(sums_lookup(SUMS, "linux-6.12.117.tar.xz").unwrap(), "0123456789abcdef".repeat(4));
        assert_eq!(sums_lookup(SUMS, "busybox-1.35.0.tar.bz2").unwrap(), "fedcba9876543210".repeat(4));
        assert_eq!(sums_lookup(SUMS, "linux-6.12.117.tar"), None);
        assert_eq!(sums_lookup("not a sums file\n", "x"), None);
    }

    #[test]
    fn clearsigned_sums_are_checked() {
        let key = TestKey::new("Test Signer");
        let other = TestKey::new("Other Signer");
        let dir = scratch("verify-clearsign");
        let binary = dir.join("binary.gpg");
        std::fs::write(&binary, dearmor_if_needed(&key.public).unwrap()).unwrap();
        let from_armor = dir.join("armored.gpg");
        std::fs::write(&from_armor, dearmor_if_needed(&key.armored).unwrap()).unwrap();
        assert_eq!(dearmor_if_needed(&key.armored).unwrap(), key.public);
        assert_eq!(key_fingerprints(&key.armored).unwrap(), vec![key.fpr.clone()]);
        assert_eq!(key.fpr.len(), 40);

        let signed = key.clearsign(SUMS);
        for keyring in [&binary, &from_armor] {
            assert_eq!(verify_clearsigned(keyring, &signed, &key.fpr.to_lowercase()).unwrap(), SUMS);
        }

        // Text outside the signature must not reach the caller.
        let mut wrapped = b"6666666666666666666666666666666666666666666666666666666666666666  evil.tar.xz\n".to_vec();
        wrapped.extend_from_slice(&signed);
        wrapped.extend_from_slice(b"7777777777777777777777777777777777777777777777777777777777777777  evil2.tar.xz\n");
        let body = verify_clearsigned(&binary, &wrapped, &key.fpr).unwrap();
        assert_eq!(body, SUMS);
        assert_eq!(sums_lookup(&body, "evil.tar.xz"), None);

        let tampered = String::from_utf8(signed.clone()).unwrap().replace("0123", "9123");
        let err = format!("{:#}", verify_clearsigned(&binary, tampered.as_bytes(), &key.fpr).unwrap_err());
        assert!(err.contains("bad or unverifiable signature"), "{err}");

        let err = format!("{:#}", verify_clearsigned(&binary, SUMS.as_bytes(), &key.fpr).unwrap_err());
        assert!(err.contains("unsigned") && err.contains("--insecure-skip-signature"), "{err}");

        // Signed by a key that is not in the keyring.
        let err = format!("{:#}", verify_clearsigned(&binary, &other.clearsign(SUMS), &key.fpr).unwrap_err());
        assert!(err.contains("bad or unverifiable signature"), "{err}");

        // Valid signature, but not from the expected signer.
        let both = dir.join("both.gpg");
        std::fs::write(&both, [key.public.clone(), other.public.clone()].concat()).unwrap();
        let err = format!("{:#}", verify_clearsigned(&both, &other.clearsign(SUMS), &key.fpr).unwrap_err());
        assert!(err.contains("expected") && err.contains(&key.fpr), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn detached_signatures_are_checked() {
        let key = TestKey::new("Busybox Signer");
        let dir = scratch("verify-detached");
        let keyring = dir.join("k.gpg");
        std::fs::write(&keyring, &key.public).unwrap();
        let data = dir.join("busybox.tar.bz2");
        std::fs::write(&data, b"tarball bytes").unwrap();
        let sig = dir.join("busybox.tar.bz2.sig");
        key.detach_sign(&data, &sig);
        verify_detached(&keyring, &data, &sig, Some(&key.fpr)).unwrap();
        verify_detached(&keyring, &data, &sig, None).unwrap();
        let err = verify_detached(&keyring, &data, &sig, Some(KERNEL_ORG_AUTOSIGNER)).unwrap_err();
        assert!(format!("{err:#}").contains(KERNEL_ORG_AUTOSIGNER));
        std::fs::write(&data, b"tarball bytes, tampered").unwrap();
        assert!(verify_detached(&keyring, &data, &sig, Some(&key.fpr)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Verifies `signed` against `key`'s exported public key, pinned to its fingerprint.
    fn verify_with(key: &TestKey, signed: &[u8]) -> Result<String> {
        let dir = scratch("verify-status");
        let keyring = dir.join("k.gpg");
        std::fs::write(&keyring, &key.public).unwrap();
        let result = verify_clearsigned(&keyring, signed, &key.fpr);
        std::fs::remove_dir_all(dir).unwrap();
        result
    }

    /// gpgv exits 0 for a good signature by a revoked key (REVKEYSIG + VALIDSIG).
    #[test]
    fn revoked_key_is_refused() {
        let mut key = TestKey::new("Revoked Signer");
        let signed = key.clearsign(SUMS);
        assert_eq!(verify_with(&key, &signed).unwrap(), SUMS, "good before the revocation");
        key.revoke();
        let err = format!("{:#}", verify_with(&key, &signed).unwrap_err());
        assert!(err.contains(&format!("signing key {} is revoked (REVKEYSIG)", key.fpr)) && err.contains("refusing"), "{err}");
    }

    /// gpgv exits 0 for a signature made while the key was valid by a key that has expired since
    /// (EXPKEYSIG + VALIDSIG): the key and the signature are made in 2020, the key expires a day later.
    #[test]
    fn expired_key_is_refused() {
        let past = ["--faked-system-time", "20200101T000000"];
        let key = TestKey::generate("Expired Signer", &past, "1d");
        let signed = key.clearsign_with(SUMS, &["--faked-system-time", "20200101T010000"]);
        let err = format!("{:#}", verify_with(&key, &signed).unwrap_err());
        assert!(err.contains(&format!("signing key {} has expired (EXPKEYSIG)", key.fpr)) && err.contains("refusing"), "{err}");

        // A signature that itself expired, by a key that never does.
        let key = TestKey::generate("Expiring Signature", &past, "never");
        let signed = key.clearsign_with(SUMS, &["--faked-system-time", "20200101T010000", "--default-sig-expire", "1d"]);
        let err = format!("{:#}", verify_with(&key, &signed).unwrap_err());
        assert!(err.contains("the signature has expired (EXPSIG)"), "{err}");
    }

    const VALIDSIG_SUB: &str = "[GNUPG:] VALIDSIG 1111111111111111111111111111111111111111 2024-01-01 1704067200 0 4 0 22 8 01 2222222222222222222222222222222222222222\n";

    /// The status lines gpgv prints for a signature by subkey 1111.. of primary key 2222...
    fn status(extra: &str) -> String {
        format!("[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1111111111111111 Signer\n{extra}{VALIDSIG_SUB}")
    }

    #[test]
    fn status_needs_one_goodsig_and_the_pinned_primary_key() {
        let keyring = Path::new("/k.gpg");
        let primary = "2222222222222222222222222222222222222222";
        check_status(&status(""), true, Some(primary), keyring).unwrap();
        check_status(&status(""), true, None, keyring).unwrap();
        // The pin names the primary key; the signing subkey's fingerprint is not the pin.
        let err = format!("{:#}", check_status(&status(""), true, Some(&"1".repeat(40)), keyring).unwrap_err());
        assert!(err.contains(&format!("signed by key {primary}, expected {}", "1".repeat(40))), "{err}");
        // VALIDSIG without GOODSIG (an EXPSIG or REVKEYSIG line takes its place).
        let no_good = status("").replace("[GNUPG:] GOODSIG 1111111111111111 Signer\n", "");
        let err = format!("{:#}", check_status(&no_good, true, Some(primary), keyring).unwrap_err());
        assert!(err.contains("1 VALIDSIG and 0 GOODSIG"), "{err}");
        let twice = format!("{}{}", status(""), status(""));
        let err = format!("{:#}", check_status(&twice, true, Some(primary), keyring).unwrap_err());
        assert!(err.contains("2 VALIDSIG and 2 GOODSIG"), "{err}");
        // Old gpgv without the primary-key field cannot be matched against the pin.
        let short = status("").replace(" 01 2222222222222222222222222222222222222222", " 01");
        let err = format!("{:#}", check_status(&short, true, Some(primary), keyring).unwrap_err());
        assert!(err.contains("no primary-key fingerprint"), "{err}");
        let err = format!("{:#}", check_status(&status("[GNUPG:] REVSIG 1111111111111111 Signer\n"), true, None, keyring).unwrap_err());
        assert!(err.contains("REVSIG"), "{err}");
    }

    #[test]
    fn not_a_key_is_rejected() {
        assert!(dearmor_if_needed(b"hello").is_err());
        assert!(key_fingerprints(b"\x99garbage").is_err());
    }

    #[test]
    fn key_is_pinned_by_fingerprint() {
        let key = TestKey::new("Pinned Signer");
        assert_eq!(key_with_fingerprint(&key.armored, &key.fpr.to_lowercase()).unwrap(), key.public);
        assert_eq!(key_with_fingerprint(&key.public, &key.fpr).unwrap(), key.public);
        let err = format!("{:#}", key_with_fingerprint(&key.armored, KERNEL_ORG_AUTOSIGNER).unwrap_err());
        assert_eq!(err, format!("key has fingerprint {}, expected {KERNEL_ORG_AUTOSIGNER}: refusing it", key.fpr));
        assert!(key_with_fingerprint(b"hello", &key.fpr).is_err());
    }
}
