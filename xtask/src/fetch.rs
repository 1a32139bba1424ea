//! Fetch stage: request -> lock -> verified tarballs in the cache -> extracted source trees.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{
    download, extract, hash,
    layout::{self, Layout},
    lock::{self, Lock, LockedBusybox, LockedKernel},
    recipe::LoadedRecipe,
    releases::{self, Request},
    source::{self, Mirror},
    verify,
};

/// Everything the fetch stage needs to know, decided by the command line and the recipe.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    pub recipe: LoadedRecipe,
    pub request: Request,
    pub mirror: Mirror,
    /// A user-supplied signing key (binary or armored); `None` means kernel.org's autosigner via WKD.
    pub keyring: Option<PathBuf>,
    pub locked: bool,
    /// Accept unsigned or wrongly signed checksums (the loud opt-out).
    pub insecure_skip_signature: bool,
    /// Key that signs busybox tarballs: when given, the detached `.sig` must verify too.
    pub busybox_keyring: Option<PathBuf>,
}

impl FetchPlan {
    /// The recipe's own channel from `mirror`, with kernel.org's pinned signer and no opt-outs.
    pub fn new(recipe: LoadedRecipe, mirror: Mirror) -> FetchPlan {
        FetchPlan {
            request: recipe.request(),
            recipe,
            mirror,
            keyring: None,
            locked: false,
            insecure_skip_signature: false,
            busybox_keyring: None,
        }
    }
}

/// Verified, extracted sources.
#[derive(Debug, Clone)]
pub struct Sources {
    pub lock: Lock,
    pub kernel_tarball: PathBuf,
    pub busybox_tarball: PathBuf,
    pub kernel_src: PathBuf,
    pub busybox_src: PathBuf,
}

/// What resolving fetched, kept so `mirror` can republish it byte for byte (signatures intact).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub releases_json: Option<Vec<u8>>,
    pub sums_asc: Option<Vec<u8>>,
    pub busybox_sums: Option<Vec<u8>>,
}

pub fn run(layout: &Layout, plan: &FetchPlan) -> Result<Sources> {
    let (lock, _) = lock_for(layout, plan)?;
    download_and_extract(layout, &lock, &plan.mirror, plan.busybox_keyring.as_deref())
}

/// Reads the lock (`--locked`) or resolves afresh and updates the lock when it changed.
pub fn lock_for(layout: &Layout, plan: &FetchPlan) -> Result<(Lock, Metadata)> {
    let lock_path = plan.recipe.lock_path();
    let old = lock::read(&lock_path)?;
    if plan.locked {
        let Some(old) = old else {
            bail!("--locked: no lock file {}; run once without --locked to create it", lock_path.display());
        };
        let mut stale = Vec::new();
        if old.request != plan.request {
            stale.push(format!("request: {} -> {}", old.request, plan.request));
        }
        let want_bb = &plan.recipe.recipe.busybox.version;
        if &old.busybox.version != want_bb {
            stale.push(format!("busybox: {} -> {want_bb}", old.busybox.version));
        }
        if !stale.is_empty() {
            bail!(
                "--locked: lock {} is stale; running without --locked would change:\n  {}",
                lock_path.display(),
                stale.join("\n  ")
            );
        }
        if !old.kernel.verified && !plan.insecure_skip_signature {
            bail!(
                "--locked: lock {} records an unverified kernel tarball (made with --insecure-skip-signature); \
                 pass that flag again to accept it, or re-resolve without it",
                lock_path.display()
            );
        }
        return Ok((old, Metadata::default()));
    }
    let (new, meta) = resolve(layout, plan)?;
    match &old {
        Some(old) if *old == new => {}
        Some(old) => {
            lock::write(&lock_path, &new)?;
            eprintln!("updated {}:\n  {}", lock_path.display(), lock::diff(old, &new).join("\n  "));
        }
        None => {
            lock::write(&lock_path, &new)?;
            eprintln!("wrote {}", lock_path.display());
        }
    }
    Ok((new, meta))
}

/// Asks the mirror which versions answer the request and what their verified hashes are.
pub fn resolve(layout: &Layout, plan: &FetchPlan) -> Result<(Lock, Metadata)> {
    let mirror = &plan.mirror;
    let url = mirror.releases_json();
    let json = download::get_small(&url).with_context(|| format!("resolve {}", plan.request))?;
    let rels = releases::parse(&json).with_context(|| format!("read {url}"))?;
    let (version, tar_path, signed, released) = match releases::resolve(&rels, &plan.request) {
        Ok(r) => {
            let src = r.source.as_deref().unwrap_or_default();
            (r.version.clone(), source::url_path(src)?, r.pgp.is_some(), r.released.timestamp)
        }
        Err(e) if e.downcast_ref::<releases::NotListed>().is_some() => {
            // releases.json lists only the newest release of each series; older point releases
            // live at the usual place and are listed in the signed sums file.
            let Request::Exact(v) = &plan.request else { return Err(e) };
            releases::check_version(v)?;
            let path = format!("{}/linux-{v}.tar.xz", releases::kernel_dir(v)?);
            (v.clone(), path, true, 0)
        }
        Err(e) => return Err(e.context(format!("resolve {} from {url}", plan.request))),
    };
    // releases.json is not signed: its version names directories here, and only the signed sums
    // tie a file to a hash, so the file must be exactly the one the version names.
    releases::check_version(&version).with_context(|| format!("version in {url}"))?;
    let file = tar_path.rsplit('/').next().unwrap_or(&tar_path).to_string();
    if signed {
        let expected = format!("{}/linux-{version}.tar.xz", releases::kernel_dir(&version)?);
        if tar_path != expected {
            bail!("{url}: release {version} points at {tar_path}, expected {expected}: refusing a mismatched tarball");
        }
    }
    let mut meta = Metadata { releases_json: Some(json), ..Default::default() };

    let verified;
    let (sums_path, sha256) = if signed {
        let dir = tar_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let sums_path = format!("{dir}/sha256sums.asc");
        let sums_url = mirror.kernel_org(&sums_path);
        let asc = download::get_small(&sums_url)?;
        let (text, ok) = verified_sums(layout, plan, &asc).with_context(|| format!("verify {sums_url}"))?;
        verified = ok;
        let sha = verify::sums_lookup(&text, &file)
            .with_context(|| format!("{sums_url} has no sha256 line for {file}: the mirror is incomplete"))?;
        meta.sums_asc = Some(asc);
        (Some(sums_path), sha)
    } else {
        if !plan.insecure_skip_signature {
            bail!(
                "{version} is an unsigned snapshot (no pgp signature and no line in sha256sums.asc); \
                 pass --insecure-skip-signature to accept it unverified, or use --lts/--stable"
            );
        }
        eprintln!("WARNING: {version} is unsigned; --insecure-skip-signature: trusting the first download");
        verified = false;
        let url = mirror.kernel_org(&tar_path);
        let blob = download::fetch_unverified(layout, &url, &file)?;
        (None, hash::sha256_file(&blob)?)
    };

    let bb = &plan.recipe.recipe.busybox.version;
    let bb_file = format!("busybox-{bb}.tar.bz2");
    let bb_path = format!("busybox/{bb_file}");
    let bb_sums_url = mirror.busybox(&format!("{bb_path}.sha256"));
    let bb_sums = download::get_small(&bb_sums_url)?;
    let bb_sha = verify::sums_lookup(&String::from_utf8_lossy(&bb_sums), &bb_file)
        .with_context(|| format!("{bb_sums_url} has no sha256 line for {bb_file}"))?;
    meta.busybox_sums = Some(bb_sums);

    let lock = Lock {
        request: plan.request.clone(),
        kernel: LockedKernel { version, file, path: tar_path, sums_path, sha256, released, verified },
        busybox: LockedBusybox { version: bb.clone(), file: bb_file, path: bb_path, sha256: bb_sha },
    };
    Ok((lock, meta))
}

/// The signed text of a clearsigned sums file and `true`; with the opt-out, the unverified text
/// and `false`; otherwise an error.
fn verified_sums(layout: &Layout, plan: &FetchPlan, asc: &[u8]) -> Result<(String, bool)> {
    let result = (|| -> Result<String> {
        let (keyring, fprs) = keyring(layout, plan)?;
        let mut last = None;
        for fpr in &fprs {
            match verify::verify_clearsigned(&keyring, asc, fpr) {
                Ok(text) => return Ok(text),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("keyring {} holds no key", keyring.display())))
    })();
    match result {
        Ok(text) => Ok((text, true)),
        Err(e) if plan.insecure_skip_signature => {
            eprintln!("WARNING: --insecure-skip-signature: using unverified checksums ({e:#})");
            Ok((String::from_utf8_lossy(asc).into_owned(), false))
        }
        Err(e) => Err(e),
    }
}

/// The keyring to check signatures with and the fingerprints it may sign with.
fn keyring(layout: &Layout, plan: &FetchPlan) -> Result<(PathBuf, Vec<String>)> {
    if let Some(file) = &plan.keyring {
        return user_keyring(layout, file);
    }
    // The pin can be moved for a mirror that publishes its own key over WKD.
    let fpr = std::env::var("KERNEL_LAB_SIGNER_FPR").unwrap_or_else(|_| verify::KERNEL_ORG_AUTOSIGNER.to_string());
    let email = verify::KERNEL_ORG_AUTOSIGNER_EMAIL;
    let path = wkd_keyring(layout, &plan.mirror.wkd_base(), email, &fpr)
        .with_context(|| format!("get the signing key {fpr} ({email}); or pass --keyring FILE"))?;
    Ok((path, vec![fpr]))
}

/// A binary keyring holding `email`'s key, fetched once over WKD and cached by fingerprint.
/// The key is refused unless one of its primary keys has `expected_fpr`.
fn wkd_keyring(layout: &Layout, base: &str, email: &str, expected_fpr: &str) -> Result<PathBuf> {
    let expected = expected_fpr.to_ascii_uppercase();
    let path = layout.cache_key(&expected);
    if path.is_file() {
        return Ok(path);
    }
    let bytes = download::wkd_key(base, email)?;
    let url = download::wkd_url(base, email);
    let key = verify::key_with_fingerprint(&bytes, &expected).with_context(|| format!("read the key from {url}"))?;
    layout::write_atomic(&path, &key).with_context(|| format!("cache the key of {email}"))?;
    Ok(path)
}

/// A user's key file (binary or armored) as a binary keyring gpgv can read, with its fingerprints.
fn user_keyring(layout: &Layout, file: &Path) -> Result<(PathBuf, Vec<String>)> {
    let bytes = std::fs::read(file).with_context(|| format!("read keyring {}", file.display()))?;
    let key = verify::dearmor_if_needed(&bytes).with_context(|| format!("keyring {}", file.display()))?;
    let fprs = verify::key_fingerprints(&key).with_context(|| format!("keyring {}", file.display()))?;
    let path = layout.cache.join("keys").join(format!("user-{}.gpg", hash::sha256_bytes(&key)));
    if !path.is_file() {
        layout::write_atomic(&path, &key)?;
    }
    Ok((path, fprs))
}

/// Downloads (or finds in the cache) both tarballs and extracts them.
pub fn download_and_extract(layout: &Layout, lock: &Lock, mirror: &Mirror, busybox_keyring: Option<&Path>) -> Result<Sources> {
    let k = &lock.kernel;
    let kernel_tarball = download::fetch_verified(layout, &mirror.kernel_org(&k.path), &k.sha256, &k.file)
        .with_context(|| format!("fetch linux-{}", k.version))?;
    let b = &lock.busybox;
    let busybox_tarball = download::fetch_verified(layout, &mirror.busybox(&b.path), &b.sha256, &b.file)
        .with_context(|| format!("fetch busybox-{}", b.version))?;
    if let Some(file) = busybox_keyring {
        let sig_url = mirror.busybox(&format!("{}.sig", b.path));
        let sig = download::get_small(&sig_url)?;
        let sig_path = layout.cache.join("keys").join(format!("{}.sig", b.sha256));
        layout::write_atomic(&sig_path, &sig)?;
        let (keyring, _) = user_keyring(layout, file)?;
        verify::verify_detached(&keyring, &busybox_tarball, &sig_path, None)
            .with_context(|| format!("verify {sig_url} with {}", file.display()))?;
    }
    let kernel_src = layout.kernel_src(&k.version);
    extract::extract(&kernel_tarball, &k.sha256, &kernel_src, &k.file)
        .with_context(|| format!("extract {} into {}", k.file, kernel_src.display()))?;
    let busybox_src = layout.busybox_src(&b.version);
    extract::extract(&busybox_tarball, &b.sha256, &busybox_src, &b.file)
        .with_context(|| format!("extract {} into {}", b.file, busybox_src.display()))?;
    Ok(Sources { lock: lock.clone(), kernel_tarball, busybox_tarball, kernel_src, busybox_src })
}

/// SOURCE_DATE_EPOCH for a build: the release date, or for versions releases.json did not list,
/// the newest mtime of the top-level Makefile (tar keeps it, so it is stable too).
pub fn release_epoch(lock: &Lock, kernel_src: &Path) -> Result<u64> {
    if lock.kernel.released > 0 {
        return Ok(lock.kernel.released as u64);
    }
    let meta = std::fs::metadata(kernel_src.join("Makefile"))
        .with_context(|| format!("read {}/Makefile", kernel_src.display()))?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?;
    Ok(mtime.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::TestKey;

    #[test]
    fn wkd_keyring_fetches_once_and_checks_the_fingerprint() {
        let key = TestKey::new("Wkd Signer");
        let dir = crate::testutil::scratch("fetch-wkd");
        let mirror = dir.join("mirror");
        let email = "Auto.Signer@example.org";
        let url_path = download::wkd_url("", email);
        let rel = url_path.split('?').next().unwrap().trim_start_matches('/');
        std::fs::create_dir_all(mirror.join(rel).parent().unwrap()).unwrap();
        std::fs::write(mirror.join(rel), &key.armored).unwrap();
        let server = crate::serve::spawn(mirror, "127.0.0.1:0").unwrap();
        let layout = Layout { root: dir.clone(), artifacts: dir.join("artifacts"), cache: dir.join("cache") };
        let base = server.url("");

        let err = format!("{:#}", wkd_keyring(&layout, &base, email, verify::KERNEL_ORG_AUTOSIGNER).unwrap_err());
        let refused = format!("has fingerprint {}, expected {}: refusing it", key.fpr, verify::KERNEL_ORG_AUTOSIGNER);
        assert!(err.contains(&format!("read the key from {base}/.well-known/openpgpkey/hu/")) && err.contains(&refused), "{err}");
        assert!(!layout.cache_key(verify::KERNEL_ORG_AUTOSIGNER).exists());

        let path = wkd_keyring(&layout, &base, email, &key.fpr.to_lowercase()).unwrap();
        assert_eq!(path, layout.cache_key(&key.fpr));
        assert_eq!(std::fs::read(&path).unwrap(), key.public, "cached key is stored binary");
        let requests = server.requests().len();
        assert_eq!(wkd_keyring(&layout, &base, email, &key.fpr).unwrap(), path);
        assert_eq!(server.requests().len(), requests, "a cached key needs no request");
        assert!(server.requests()[0].starts_with("GET /.well-known/openpgpkey/hu/"));

        let sums = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  linux-6.12.117.tar.xz\n";
        assert_eq!(verify::verify_clearsigned(&path, &key.clearsign(sums), &key.fpr).unwrap(), sums);
        drop(server);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
