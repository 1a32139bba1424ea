//! kernel.org's `releases.json`: parsing and picking a version for a channel.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Releases {
    pub latest_stable: LatestStable,
    pub releases: Vec<Release>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LatestStable {
    pub version: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Release {
    pub iseol: bool,
    pub version: String,
    /// mainline, stable, longterm or linux-next.
    pub moniker: String,
    /// Absolute tarball URL; null for linux-next.
    pub source: Option<String>,
    /// Absolute signature URL; null for -rc snapshots, which are not signed.
    pub pgp: Option<String>,
    pub released: Released,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Released {
    pub timestamp: i64,
    pub isodate: String,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "channel", content = "value")]
pub enum Request {
    Longterm(Option<String>),
    Stable,
    Mainline,
    Exact(String),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Longterm(None) => write!(f, "--lts"),
            Request::Longterm(Some(s)) => write!(f, "--lts {s}"),
            Request::Stable => write!(f, "--stable"),
            Request::Mainline => write!(f, "--mainline"),
            Request::Exact(v) => write!(f, "--version {v}"),
        }
    }
}

pub fn parse(json: &[u8]) -> Result<Releases> {
    serde_json::from_slice(json).context("parse releases.json (expected kernel.org's format)")
}

/// Picks the release that answers `request`.
pub fn resolve<'a>(releases: &'a Releases, request: &Request) -> Result<&'a Release> {
    let found = match request {
        Request::Longterm(series) => {
            let mut candidates: Vec<&Release> = releases
                .releases
                .iter()
                .filter(|r| r.moniker == "longterm" && !r.iseol)
                .filter(|r| series.as_deref().is_none_or(|s| series_of(&r.version) == s))
                .collect();
            candidates.sort_by_key(|r| version_key(&r.version));
            match (candidates.last(), series) {
                (Some(r), _) => *r,
                (None, Some(s)) => {
                    let eol = releases.releases.iter().any(|r| r.moniker == "longterm" && series_of(&r.version) == s);
                    let known: Vec<String> = releases
                        .releases
                        .iter()
                        .filter(|r| r.moniker == "longterm" && !r.iseol)
                        .map(|r| series_of(&r.version).to_string())
                        .collect();
                    if eol {
                        bail!("longterm series {s} is end-of-life in releases.json; supported series: {}", known.join(", "))
                    }
                    bail!("no longterm series {s} in releases.json; supported series: {}", known.join(", "))
                }
                (None, None) => bail!("releases.json lists no longterm release that is not end-of-life"),
            }
        }
        Request::Stable => {
            let v = &releases.latest_stable.version;
            releases
                .releases
                .iter()
                .find(|r| &r.version == v)
                .with_context(|| format!("releases.json names latest_stable {v} but has no release entry for it"))?
        }
        Request::Mainline => {
            releases.releases.iter().find(|r| r.moniker == "mainline").context("releases.json lists no mainline release")?
        }
        Request::Exact(v) => match releases.releases.iter().find(|r| &r.version == v) {
            Some(r) => r,
            // Older point releases drop off releases.json but stay on the mirror; the caller
            // builds the URL from the version.
            None => return Err(NotListed(v.clone()).into()),
        },
    };
    if found.source.is_none() {
        bail!("release {} ({}) has no source tarball in releases.json", found.version, found.moniker);
    }
    Ok(found)
}

/// An exact version that releases.json does not list (it only lists the newest of each series).
#[derive(Debug)]
pub struct NotListed(pub String);

impl std::fmt::Display for NotListed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version {} is not listed in releases.json", self.0)
    }
}

impl std::error::Error for NotListed {}

/// "6.12.117" -> "6.12"; "6.13-rc1" -> "6.13".
pub fn series_of(version: &str) -> &str {
    let base = version.split('-').next().unwrap_or(version);
    match base.match_indices('.').nth(1) {
        Some((i, _)) => &base[..i],
        None => base,
    }
}

/// Numeric sort key: "6.12.117" -> [6, 12, 117]; an -rc sorts before its release.
pub fn version_key(version: &str) -> Vec<u64> {
    let (base, rc) = match version.split_once("-rc") {
        Some((b, rc)) => (b, rc.parse::<u64>().unwrap_or(0)),
        None => (version, u64::MAX),
    };
    let mut key: Vec<u64> = base.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    key.resize(3, 0);
    key.push(rc);
    key
}

/// `pub/linux/kernel/v6.x/` for any 6.y version: where kernel.org keeps tarballs and sums.
pub fn kernel_dir(version: &str) -> Result<String> {
    let major = version.split('.').next().filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()));
    match major {
        Some(m) => Ok(format!("pub/linux/kernel/v{m}.x")),
        None => bail!("kernel version {version:?} does not start with a major number (expected e.g. 6.12.117)"),
    }
}

/// Validates a version string the user typed.
pub fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && version.chars().next().is_some_and(|c| c.is_ascii_digit());
    if !ok {
        bail!("{version:?} is not a kernel version (expected e.g. 6.12.117 or 6.13-rc1)");
    }
    Ok(())
}

/// Where a kernel tarball lives, the only form `fetch` uses or a lock may hold: signed releases
/// at `pub/linux/kernel/vN.x/linux-V.tar.xz`, unsigned -rc snapshots where git.kernel.org serves
/// them (`torvalds/t/linux-V.tar.gz`).
pub fn kernel_tarball(version: &str, signed: bool) -> Result<String> {
    check_version(version)?;
    if signed {
        Ok(format!("{}/linux-{version}.tar.xz", kernel_dir(version)?))
    } else {
        Ok(format!("torvalds/t/linux-{version}.tar.gz"))
    }
}

/// The signed sums file that lists a signed release's tarball.
pub fn kernel_sums(version: &str) -> Result<String> {
    Ok(format!("{}/sha256sums.asc", kernel_dir(version)?))
}

/// A mirror's clearsigned list of its busybox tarballs (`cargo xtask mirror --sign-key` writes it).
pub const BUSYBOX_SUMS: &str = "busybox/sha256sums.asc";

/// Validates a busybox version: dot-separated numbers, e.g. 1.36.1.
pub fn check_busybox_version(version: &str) -> Result<()> {
    let ok = !version.is_empty() && version.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if !ok {
        bail!("{version:?} is not a busybox version (expected dot-separated numbers, e.g. 1.36.1)");
    }
    Ok(())
}

/// busybox's tarball file name and its path relative to the mirror root.
pub fn busybox_tarball(version: &str) -> (String, String) {
    let file = format!("busybox-{version}.tar.bz2");
    let path = format!("busybox/{file}");
    (file, path)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A releases.json in kernel.org's shape: mainline rc, stable, several longterm series
    /// (one EOL) and linux-next.
    pub const FIXTURE: &str = r#"{
  "latest_stable": {"version": "6.17.3"},
  "releases": [
    {"iseol": false, "version": "6.18-rc2", "moniker": "mainline",
     "source": "https://git.kernel.org/torvalds/t/linux-6.18-rc2.tar.gz", "pgp": null,
     "released": {"timestamp": 1760900000, "isodate": "2025-10-19"}},
    {"iseol": false, "version": "6.17.3", "moniker": "stable",
     "source": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.17.3.tar.xz",
     "pgp": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.17.3.tar.sign",
     "released": {"timestamp": 1760500000, "isodate": "2025-10-15"}},
    {"iseol": false, "version": "6.12.117", "moniker": "longterm",
     "source": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.117.tar.xz",
     "pgp": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.117.tar.sign",
     "released": {"timestamp": 1761782400, "isodate": "2025-10-30"}},
    {"iseol": false, "version": "6.6.9", "moniker": "longterm",
     "source": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.6.9.tar.xz",
     "pgp": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.6.9.tar.sign",
     "released": {"timestamp": 1760000000, "isodate": "2025-10-09"}},
    {"iseol": true, "version": "6.13.12", "moniker": "longterm",
     "source": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.13.12.tar.xz",
     "pgp": "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.13.12.tar.sign",
     "released": {"timestamp": 1750000000, "isodate": "2025-06-15"}},
    {"iseol": false, "version": "5.15.190", "moniker": "longterm",
     "source": "https://cdn.kernel.org/pub/linux/kernel/v5.x/linux-5.15.190.tar.xz",
     "pgp": "https://cdn.kernel.org/pub/linux/kernel/v5.x/linux-5.15.190.tar.sign",
     "released": {"timestamp": 1759000000, "isodate": "2025-09-27"}},
    {"iseol": false, "version": "next-20251020", "moniker": "linux-next",
     "source": null, "pgp": null,
     "released": {"timestamp": 1760950000, "isodate": "2025-10-20"}}
  ]
}"#;

    fn pick(req: Request) -> Result<String> {
        let r = parse(FIXTURE.as_bytes()).unwrap();
        resolve(&r, &req).map(|r| r.version.clone())
    }

    #[test]
    fn lts_picks_newest_non_eol_longterm() {
        // 6.13.12 is newer but EOL; 6.12.117 wins by version, not by list order.
        assert_eq!(pick(Request::Longterm(None)).unwrap(), "6.12.117");
    }

    #[test]
    fn lts_series() {
        assert_eq!(pick(Request::Longterm(Some("6.6".into()))).unwrap(), "6.6.9");
        assert_eq!(pick(Request::Longterm(Some("5.15".into()))).unwrap(), "5.15.190");
        let eol = pick(Request::Longterm(Some("6.13".into()))).unwrap_err().to_string();
        assert!(eol.contains("end-of-life") && eol.contains("6.12"), "{eol}");
        let missing = pick(Request::Longterm(Some("4.4".into()))).unwrap_err().to_string();
        assert!(missing.contains("no longterm series 4.4"), "{missing}");
    }

    #[test]
    fn stable_and_mainline() {
        assert_eq!(pick(Request::Stable).unwrap(), "6.17.3");
        assert_eq!(pick(Request::Mainline).unwrap(), "6.18-rc2");
        let r = parse(FIXTURE.as_bytes()).unwrap();
        assert!(resolve(&r, &Request::Mainline).unwrap().pgp.is_none());
    }

    #[test]
    fn exact() {
        assert_eq!(pick(Request::Exact("6.6.9".into())).unwrap(), "6.6.9");
        let err = pick(Request::Exact("6.6.1".into())).unwrap_err();
        assert!(err.downcast_ref::<NotListed>().is_some());
    }

    #[test]
    fn version_helpers() {
        assert_eq!(series_of("6.12.117"), "6.12");
        assert_eq!(series_of("6.18-rc2"), "6.18");
        assert_eq!(series_of("6.18"), "6.18");
        assert!(version_key("6.18-rc2") < version_key("6.18"));
        assert!(version_key("6.12.9") < version_key("6.12.117"));
        assert_eq!(kernel_dir("6.12.117").unwrap(), "pub/linux/kernel/v6.x");
        assert!(kernel_dir("next-2025").is_err());
        assert!(check_version("6.12.117").is_ok());
        assert!(check_version("6.12;rm").is_err());
    }

    #[test]
    fn paths_are_the_ones_the_version_names() {
        assert_eq!(kernel_tarball("6.12.117", true).unwrap(), "pub/linux/kernel/v6.x/linux-6.12.117.tar.xz");
        assert_eq!(kernel_tarball("6.18-rc2", false).unwrap(), "torvalds/t/linux-6.18-rc2.tar.gz");
        assert_eq!(kernel_sums("5.15.190").unwrap(), "pub/linux/kernel/v5.x/sha256sums.asc");
        assert!(kernel_tarball("6.12.117/../../x", true).is_err());
        assert!(check_busybox_version("1.36.1").is_ok());
        for bad in ["", "1..2", "1.36.1/../x", "1.36.1-rc", ".1"] {
            assert!(check_busybox_version(bad).is_err(), "{bad:?} passed");
        }
        assert_eq!(busybox_tarball("1.36.1"), ("busybox-1.36.1.tar.bz2".to_string(), "busybox/busybox-1.36.1.tar.bz2".to_string()));
    }
}
