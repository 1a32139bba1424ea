//! Where bytes come from: kernel.org and busybox.net, or one mirror in kernel.org's layout.

use anyhow::{bail, Result};

/// Upstream defaults, used only when no mirror is set.
const KERNEL_ORG: &str = "https://cdn.kernel.org/";
const RELEASES_JSON: &str = "https://www.kernel.org/releases.json";
const BUSYBOX_NET: &str = "https://busybox.net/downloads/";
/// kernel.org publishes keys through the advanced WKD method on this host.
const KERNEL_ORG_WKD: &str = "https://openpgpkey.kernel.org/.well-known/openpgpkey/kernel.org";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Base URL ending in '/', or `None` for the upstream hosts.
    base: Option<String>,
}

impl Mirror {
    pub fn upstream() -> Mirror {
        Mirror { base: None }
    }

    pub fn new(url: &str) -> Result<Mirror> {
        let ok = ["http://", "https://", "file://"].iter().any(|s| url.starts_with(s));
        if !ok {
            bail!("mirror {url:?} is not an http://, https:// or file:// URL (e.g. http://127.0.0.1:8000/ or file:///srv/mirror/)");
        }
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Mirror { base: Some(base) })
    }

    pub fn describe(&self) -> String {
        self.base.clone().unwrap_or_else(|| "kernel.org + busybox.net".to_string())
    }

    pub fn releases_json(&self) -> String {
        match &self.base {
            Some(b) => format!("{b}releases.json"),
            None => RELEASES_JSON.to_string(),
        }
    }

    /// URL of a kernel.org path such as `pub/linux/kernel/v6.x/linux-6.12.117.tar.xz`.
    pub fn kernel_org(&self, path: &str) -> String {
        format!("{}{}", self.base.as_deref().unwrap_or(KERNEL_ORG), path.trim_start_matches('/'))
    }

    /// URL of a busybox path relative to the mirror root (`busybox/busybox-X.tar.bz2`).
    pub fn busybox(&self, path: &str) -> String {
        match &self.base {
            Some(b) => format!("{b}{path}"),
            None => format!("{BUSYBOX_NET}{}", path.trim_start_matches("busybox/")),
        }
    }

    /// WKD base for the signing key: the mirror root (direct method), else kernel.org's
    /// advanced-method host.
    pub fn wkd_base(&self) -> String {
        match &self.base {
            Some(b) => b.clone(),
            None => KERNEL_ORG_WKD.to_string(),
        }
    }
}

/// The path part of an absolute URL from releases.json, which is what a mirror serves it under:
/// `https://cdn.kernel.org/pub/linux/x.tar.xz` -> `pub/linux/x.tar.xz`.
pub fn url_path(url: &str) -> Result<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => Ok(path.to_string()),
        _ => bail!("URL {url:?} in releases.json has no path to map onto the mirror"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_maps_paths() {
        let m = Mirror::new("http://127.0.0.1:8000").unwrap();
        assert_eq!(m.releases_json(), "http://127.0.0.1:8000/releases.json");
        assert_eq!(m.kernel_org("pub/linux/kernel/v6.x/a.tar.xz"), "http://127.0.0.1:8000/pub/linux/kernel/v6.x/a.tar.xz");
        assert_eq!(m.busybox("busybox/busybox-1.35.0.tar.bz2"), "http://127.0.0.1:8000/busybox/busybox-1.35.0.tar.bz2");
        let up = Mirror::upstream();
        assert_eq!(up.busybox("busybox/busybox-1.35.0.tar.bz2"), "https://busybox.net/downloads/busybox-1.35.0.tar.bz2");
        assert_eq!(up.kernel_org("pub/x"), "https://cdn.kernel.org/pub/x");
        assert!(Mirror::new("ftp://x").is_err());
        assert_eq!(
            url_path("https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.1.tar.xz").unwrap(),
            "pub/linux/kernel/v6.x/linux-6.12.1.tar.xz"
        );
        assert_eq!(url_path("https://git.kernel.org/torvalds/t/linux-6.18-rc2.tar.gz").unwrap(), "torvalds/t/linux-6.18-rc2.tar.gz");
    }
}
