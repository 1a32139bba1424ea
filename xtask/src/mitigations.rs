//! Mitigation profiles: one table that says, for each item (KASLR, SMEP, SMAP, KPTI, the other
//! CPU-bug mitigations, kptr_restrict, dmesg_restrict), what each profile asks for, which kernel
//! option it needs, how run.sh switches it at boot, and how the boot test proves it from inside
//! the guest.
//!
//! A spec is `PROFILE[,ITEM=on|off|auto]...` or only overrides (`kaslr=on,smap=off`), which apply
//! on top of a base (the recipe's profile, or the lab's). run.sh gets the same table rendered as
//! shell (`run_sh_table`), so the host's expectation and the boot arguments cannot disagree.

use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

/// A switchable mitigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Kaslr,
    Smep,
    Smap,
    Pti,
    /// Every other CPU-bug mitigation (Spectre v1/v2, MDS, Retbleed, ...), as `mitigations=` switches them.
    Spectre,
    KptrRestrict,
    DmesgRestrict,
}

impl Item {
    pub const ALL: [Item; 7] = [Item::Kaslr, Item::Smep, Item::Smap, Item::Pti, Item::Spectre, Item::KptrRestrict, Item::DmesgRestrict];

    pub fn name(self) -> &'static str {
        match self {
            Item::Kaslr => "kaslr",
            Item::Smep => "smep",
            Item::Smap => "smap",
            Item::Pti => "pti",
            Item::Spectre => "spectre",
            Item::KptrRestrict => "kptr_restrict",
            Item::DmesgRestrict => "dmesg_restrict",
        }
    }

    fn of_name(name: &str) -> Option<Item> {
        Item::ALL.into_iter().find(|i| i.name() == name)
    }

    /// The kernel option `on` needs, when the kernel decides it (SMEP and SMAP need only the CPU),
    /// by its current name (`kconfig::RENAMED` has the older ones).
    pub fn needs(self) -> Option<&'static str> {
        match self {
            Item::Kaslr => Some("CONFIG_RANDOMIZE_BASE=y"),
            Item::Pti => Some("CONFIG_MITIGATION_PAGE_TABLE_ISOLATION=y"),
            Item::Spectre => Some("CONFIG_CPU_MITIGATIONS=y"),
            Item::Smep | Item::Smap | Item::KptrRestrict | Item::DmesgRestrict => None,
        }
    }

    /// Kernel command-line word for `setting`, if any.
    fn cmdline(self, setting: Setting) -> Option<&'static str> {
        match (self, setting) {
            (_, Setting::Auto) => None,
            (Item::Kaslr, Setting::Off) => Some("nokaslr"),
            (Item::Kaslr, Setting::On) => None,
            (Item::Pti, Setting::On) => Some("pti=on"),
            (Item::Pti, Setting::Off) => Some("pti=off"),
            (Item::Spectre, Setting::Off) => Some("mitigations=off"),
            (Item::Spectre, Setting::On) => None,
            // Applied by the kernel before /init runs (do_sysctl_args).
            (Item::KptrRestrict, Setting::On) => Some("sysctl.kernel.kptr_restrict=2"),
            (Item::KptrRestrict, Setting::Off) => Some("sysctl.kernel.kptr_restrict=0"),
            (Item::DmesgRestrict, Setting::On) => Some("sysctl.kernel.dmesg_restrict=1"),
            (Item::DmesgRestrict, Setting::Off) => Some("sysctl.kernel.dmesg_restrict=0"),
            (Item::Smep | Item::Smap, _) => None,
        }
    }

    /// QEMU `-cpu` feature suffix for `setting` (`+smep`, `-smap`), if any.
    fn cpu_flag(self, setting: Setting) -> Option<String> {
        match (self, setting) {
            (Item::Smep | Item::Smap, Setting::On) => Some(format!("+{}", self.name())),
            (Item::Smep | Item::Smap, Setting::Off) => Some(format!("-{}", self.name())),
            _ => None,
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a spec asks of one item. `Auto` leaves it to the kernel and the CPU: reported, not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    On,
    Off,
    Auto,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::On => "on",
            Setting::Off => "off",
            Setting::Auto => "auto",
        }
    }
}

/// The named profiles, in the order `--help` lists them.
pub const PROFILES: [&str; 3] = ["none", "default", "hardened"];

/// A profile's setting of every item (in `Item::ALL` order).
fn profile(name: &str) -> Option<[Setting; 7]> {
    use Setting::{Auto, Off, On};
    match name {
        // Everything off: the classic learning lab.
        "none" => Some([Off; 7]),
        // What the kernel does by itself on this CPU model: SMEP and SMAP are enabled whenever the
        // CPU has them (run.sh's model does), the rest is the kernel's own default.
        "default" => Some([Auto, On, On, Auto, Auto, Auto, Auto]),
        "hardened" => Some([On; 7]),
        _ => None,
    }
}

/// A resolved spec: the text it came from and every item's setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mitigations {
    /// Canonical text: the profile, then every override as given (after the base's own, when the
    /// spec had overrides alone), e.g. `none,kaslr=on`; repeated overrides stay, the last one wins.
    pub spec: String,
    settings: [Setting; 7],
}

/// The longest profile text (with overrides) run.sh puts on the kernel command line.
pub const MAX_SPEC: usize = 256;

/// Characters a spec may hold: it lands on the kernel command line and in run.sh's arguments.
fn check_chars(spec: &str) -> Result<()> {
    if spec.is_empty() || !spec.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '=' || c == ',') {
        bail!(
            "mitigations {spec:?} is not a profile spec: use a profile ({}) and/or item=on|off|auto overrides, comma-separated, e.g. hardened,smap=off",
            PROFILES.join(", ")
        );
    }
    Ok(())
}

impl Mitigations {
    /// Parses `spec`; overrides without a profile apply on top of `base` (a spec itself).
    pub fn parse(spec: &str, base: &str) -> Result<Mitigations> {
        check_chars(spec)?;
        let words: Vec<&str> = spec.split(',').collect();
        let (start, overrides) = if words[0].contains('=') { (None, &words[..]) } else { (Some(words[0]), &words[1..]) };
        let (mut settings, mut canonical) = match start {
            Some(p) => {
                let s = profile(p).ok_or_else(|| {
                    anyhow::anyhow!(
                        "mitigations {spec:?}: unknown profile {p:?}: use one of {} (or item=on|off|auto overrides)",
                        PROFILES.join(", ")
                    )
                })?;
                (s, p.to_string())
            }
            // The base always starts with a profile, so this recursion is one level deep.
            None if base.split(',').next().is_some_and(|w| !w.contains('=')) => {
                let b = Mitigations::parse(base, "none")?;
                (b.settings, b.spec)
            }
            None => bail!("mitigations base {base:?} must start with a profile ({})", PROFILES.join(", ")),
        };
        for word in overrides {
            let Some((name, value)) = word.split_once('=') else {
                bail!("mitigations {spec:?}: {word:?} is neither an override (item=on|off|auto) nor, in first place, a profile");
            };
            let item = Item::of_name(name).ok_or_else(|| {
                let names: Vec<&str> = Item::ALL.iter().map(|i| i.name()).collect();
                anyhow::anyhow!("mitigations {spec:?}: unknown item {name:?}: use one of {}", names.join(", "))
            })?;
            let setting = match value {
                "on" => Setting::On,
                "off" => Setting::Off,
                "auto" => Setting::Auto,
                _ => bail!("mitigations {spec:?}: {name}={value:?}: use on, off or auto"),
            };
            let at = Item::ALL.iter().position(|i| *i == item).expect("item is in ALL");
            settings[at] = setting;
            canonical.push_str(&format!(",{name}={value}"));
        }
        // It lands on a kernel command line of at most 2048 bytes, beside lab.test=1.
        if canonical.len() > MAX_SPEC {
            bail!("mitigations {spec:?}: the profile with its overrides is longer than {MAX_SPEC} characters; give each item once");
        }
        let m = Mitigations { spec: canonical, settings };
        if m.get(Item::Pti) == Setting::On && m.get(Item::Spectre) == Setting::Off {
            bail!(
                "mitigations {spec:?}: pti=on cannot hold with spectre=off, because the kernel's mitigations=off turns KPTI off too: add spectre=auto"
            );
        }
        Ok(m)
    }

    pub fn get(&self, item: Item) -> Setting {
        self.settings[Item::ALL.iter().position(|i| *i == item).expect("item is in ALL")]
    }

    /// The kernel options this spec needs that `config` (a `.config`'s text) lacks, with the item.
    pub fn missing_options(&self, config: &str) -> Vec<(Item, &'static str)> {
        Item::ALL
            .into_iter()
            .filter(|i| self.get(*i) == Setting::On)
            .filter_map(|i| i.needs().map(|o| (i, o)))
            .filter(|(_, o)| {
                // An older kernel has the option under its old name.
                let old = crate::kconfig::RENAMED
                    .iter()
                    .find(|(now, _, _)| o.strip_prefix("CONFIG_").and_then(|r| r.strip_suffix("=y")) == Some(now));
                let names: Vec<String> = std::iter::once(o.to_string()).chain(old.map(|(_, was, _)| format!("CONFIG_{was}=y"))).collect();
                !config.lines().any(|l| names.iter().any(|n| l.trim() == n))
            })
            .collect()
    }

    /// Kernel command-line words, in `Item::ALL` order: what run.sh must add (its rendered table
    /// does the switching; tests hold the two together).
    #[cfg(test)]
    pub fn cmdline(&self) -> Vec<&'static str> {
        Item::ALL.into_iter().filter_map(|i| i.cmdline(self.get(i))).collect()
    }

    /// `-cpu` feature suffixes: what run.sh must append to the CPU model.
    #[cfg(test)]
    pub fn cpu_flags(&self) -> Vec<String> {
        Item::ALL.into_iter().filter_map(|i| i.cpu_flag(self.get(i))).collect()
    }
}

impl fmt::Display for Mitigations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// run.sh's mitigation table, rendered from the one above: a function per profile and one that
/// turns an `item=setting` into kernel words (`KWORDS`) and CPU flags (`CPU_FLAGS`). `lacks` names
/// the items this lab's kernel cannot turn on, with the option it lacks.
pub fn run_sh_table(lacks: &[(Item, &'static str)]) -> String {
    let mut s = String::from(
        "# Rendered from xtask/src/mitigations.rs: each profile's settings, in item order.\nprofile_settings() {\n    case \"$1\" in\n",
    );
    for p in PROFILES {
        let settings = profile(p).expect("listed profiles exist");
        let words: Vec<String> = Item::ALL.iter().zip(settings).map(|(i, s)| format!("{}={}", i.name(), s.name())).collect();
        s.push_str(&format!("        {p}) echo \"{}\" ;;\n", words.join(" ")));
    }
    s.push_str("        *) return 1 ;;\n    esac\n}\n\n");
    s.push_str(
        "# item=setting -> kernel command-line words and -cpu flags; unknown items and values fail.\nswitch_item() {\n    case \"$1\" in\n",
    );
    for item in Item::ALL {
        for setting in [Setting::On, Setting::Off, Setting::Auto] {
            let mut body = Vec::new();
            if setting == Setting::On {
                if let Some((_, option)) = lacks.iter().find(|(i, _)| *i == item) {
                    body.push(format!(
                        "die_usage \"{}=on needs {option} in the kernel, and this lab's kernel lacks it: rebuild the lab with mitigations.config in config.fragments, or pick {}=off\"",
                        item.name(),
                        item.name()
                    ));
                }
            }
            if let Some(w) = item.cmdline(setting) {
                body.push(format!("KWORDS=\"${{KWORDS:+$KWORDS }}{w}\""));
            }
            if let Some(f) = item.cpu_flag(setting) {
                body.push(format!("CPU_FLAGS=\"$CPU_FLAGS,{f}\""));
            }
            if body.is_empty() {
                body.push(":".to_string());
            }
            s.push_str(&format!("        {}={}) {} ;;\n", item.name(), setting.name(), body.join("; ")));
        }
    }
    s.push_str("        *) return 1 ;;\n    esac\n}\n");
    s
}

/// The lab README's table rows: each item's setting per profile and how run.sh switches it.
pub fn readme_rows() -> Vec<String> {
    let settings: Vec<[Setting; 7]> = PROFILES.iter().map(|p| profile(p).expect("listed profiles exist")).collect();
    Item::ALL
        .iter()
        .enumerate()
        .map(|(at, item)| {
            let mut how: Vec<String> = Vec::new();
            for setting in [Setting::On, Setting::Off] {
                if let Some(w) = item.cmdline(setting) {
                    how.push(format!("{}: `{w}`", setting.name()));
                }
                if let Some(f) = item.cpu_flag(setting) {
                    how.push(format!("{}: `-cpu ...,{f}`", setting.name()));
                }
            }
            if let Some(option) = item.needs() {
                how.push(format!("needs {option}"));
            }
            let cols: Vec<&str> = settings.iter().map(|s| s[at].name()).collect();
            format!("| {} | {} | {} |", item.name(), cols.join(" | "), how.join("; "))
        })
        .collect()
}

/// What the guest reported about its mitigations (`KLAB:mit:<key>=<value>` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub values: Vec<(String, String)>,
}

/// The keys the guest prints, in the order templates/boot-test.sh prints them.
pub const OBSERVED_KEYS: [&str; 7] = ["text", "phys", "flags", "meltdown", "spectre_v2", "kptr_restrict", "dmesg_restrict"];

/// Where the kernel's code starts in physical memory without KASLR when System.map is unknown
/// (LOAD_PHYSICAL_ADDR, x86_64 default).
const LOAD_PHYSICAL_ADDR: u64 = 0x100_0000;
/// x86_64's __START_KERNEL_map: a non-relocated kernel's `_text` is this plus its physical address.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

impl Observed {
    /// Records a `key=value` after `KLAB:mit:`; the first value of a key wins.
    pub fn push(&mut self, rest: &str) {
        if let Some((key, value)) = rest.split_once('=') {
            if OBSERVED_KEYS.contains(&key) && self.get(key).is_none() {
                self.values.push((key.to_string(), value.to_string()));
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn hex(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    }
}

/// One item of a mitigation report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemOutcome {
    pub item: Item,
    pub wanted: Setting,
    /// `on`, `off`, or `unknown` when the guest did not say.
    pub seen: &'static str,
    /// What the guest showed, e.g. `flags: smep smap` or `kptr_restrict=2`.
    pub evidence: String,
    pub held: bool,
}

/// The `mitigations` part of boot-report.json.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub spec: String,
    /// The running `_text` minus System.map's, when both were known.
    pub kaslr_offset: Option<String>,
    pub meltdown: Option<String>,
    pub spectre_v2: Option<String>,
    pub items: Vec<ItemOutcome>,
}

impl Report {
    /// The first item that did not hold.
    pub fn first_failure(&self) -> Option<&ItemOutcome> {
        self.items.iter().find(|o| !o.held)
    }
}

/// Judges what the guest showed against `want`; `link_text` is `_text` in System.map.
pub fn judge(want: &Mitigations, seen: &Observed, link_text: Option<u64>) -> Report {
    let flags: Vec<&str> = seen.get("flags").map(|f| f.split_whitespace().collect()).unwrap_or_default();
    let flag = |name: &str| -> (Option<bool>, String) {
        match seen.get("flags") {
            Some(_) => {
                (Some(flags.contains(&name)), format!("cpuinfo flags: {}", if flags.is_empty() { "-".into() } else { flags.join(" ") }))
            }
            None => (None, "no KLAB:mit:flags= line".into()),
        }
    };
    let text = seen.hex("text").filter(|t| *t != 0);
    let offset = match (text, link_text) {
        (Some(t), Some(l)) => Some(t.wrapping_sub(l)),
        _ => None,
    };
    let phys = seen.hex("phys");
    // Without KASLR the kernel runs where it was linked (CONFIG_PHYSICAL_START, whatever it is).
    let unmoved_phys = link_text.map_or(LOAD_PHYSICAL_ADDR, |l| l.wrapping_sub(START_KERNEL_MAP));
    let items = Item::ALL
        .into_iter()
        .map(|item| {
            let (on, evidence) = match item {
                Item::Kaslr => match (offset, phys) {
                    // Either one moved: both stay put only without KASLR (both random with it, so
                    // both unmoved by chance is about one boot in a million).
                    (Some(o), Some(p)) => (Some(o != 0 || p != unmoved_phys), format!("offset {o:#x}, kernel code at physical {p:#x}")),
                    _ => (None, "the guest's _text or kernel code address is missing (is the kallsyms copy made?)".into()),
                },
                Item::Smep | Item::Smap | Item::Pti => flag(item.name()),
                Item::Spectre => match seen.get("spectre_v2") {
                    Some(v) if v.starts_with("Not affected") => (None, format!("spectre_v2: {v}")),
                    Some(v) => (Some(v.starts_with("Mitigation")), format!("spectre_v2: {v}")),
                    None => (None, "no KLAB:mit:spectre_v2= line".into()),
                },
                Item::KptrRestrict | Item::DmesgRestrict => match seen.get(item.name()).map(str::parse::<u32>) {
                    Some(Ok(n)) => (Some(n != 0), format!("{}={n}", item.name())),
                    _ => (None, format!("no number in KLAB:mit:{}=", item.name())),
                },
            };
            let wanted = want.get(item);
            let held = match (wanted, on) {
                (Setting::Auto, _) => true,
                (Setting::On, Some(v)) => v,
                (Setting::Off, Some(v)) => !v,
                // A CPU without the bug has nothing to mitigate: neither on nor off is wrong.
                (_, None) if item == Item::Spectre && seen.get("spectre_v2").is_some() => true,
                (_, None) => false,
            };
            let seen_text = match on {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            };
            ItemOutcome { item, wanted, seen: seen_text, evidence, held }
        })
        .collect();
    Report {
        spec: want.spec.clone(),
        kaslr_offset: offset.map(|o| format!("{o:#x}")),
        meltdown: seen.get("meltdown").map(str::to_string),
        spectre_v2: seen.get("spectre_v2").map(str::to_string),
        items,
    }
}

/// `_text`'s link address from a System.map's text.
pub fn link_text(system_map: &str) -> Option<u64> {
    system_map.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (addr, _, name) = (w.next()?, w.next()?, w.next()?);
        (name == "_text").then(|| u64::from_str_radix(addr, 16).ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(spec: &str) -> Mitigations {
        Mitigations::parse(spec, "none").unwrap()
    }

    #[test]
    fn profiles_switch_each_item_at_boot() {
        let none = m("none");
        assert_eq!(
            none.cmdline(),
            ["nokaslr", "pti=off", "mitigations=off", "sysctl.kernel.kptr_restrict=0", "sysctl.kernel.dmesg_restrict=0"]
        );
        assert_eq!(none.cpu_flags(), ["-smep", "-smap"]);
        let hard = m("hardened");
        assert_eq!(hard.cmdline(), ["pti=on", "sysctl.kernel.kptr_restrict=2", "sysctl.kernel.dmesg_restrict=1"]);
        assert_eq!(hard.cpu_flags(), ["+smep", "+smap"]);
        let default = m("default");
        assert!(default.cmdline().is_empty(), "{:?}", default.cmdline());
        assert_eq!(default.cpu_flags(), ["+smep", "+smap"]);
    }

    #[test]
    fn overrides_apply_on_top_of_a_profile_or_the_base() {
        let x = m("hardened,smap=off,kaslr=off");
        assert_eq!(x.spec, "hardened,smap=off,kaslr=off");
        assert_eq!((x.get(Item::Smap), x.get(Item::Kaslr), x.get(Item::Smep)), (Setting::Off, Setting::Off, Setting::On));
        assert!(x.cmdline().contains(&"nokaslr") && x.cpu_flags().contains(&"-smap".to_string()));
        // Only overrides: on top of the base spec (the recipe's or the lab's).
        let y = Mitigations::parse("kaslr=on", "none,smep=on").unwrap();
        assert_eq!(y.spec, "none,smep=on,kaslr=on");
        assert_eq!((y.get(Item::Kaslr), y.get(Item::Smep), y.get(Item::Smap)), (Setting::On, Setting::On, Setting::Off));
        assert!(!y.cmdline().contains(&"nokaslr"));
    }

    #[test]
    fn bad_specs_name_the_word_and_the_fix() {
        for (spec, needle) in [
            ("harden", "unknown profile \"harden\""),
            ("none,smepp=on", "unknown item \"smepp\""),
            ("none,smep=yes", "smep=\"yes\": use on, off or auto"),
            ("none,hardened", "neither an override"),
            ("none; reboot", "is not a profile spec"),
            ("", "is not a profile spec"),
            ("none,pti=on", "add spectre=auto"),
        ] {
            let err = format!("{:#}", Mitigations::parse(spec, "none").unwrap_err());
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
        assert!(Mitigations::parse("none,pti=on,spectre=auto", "none").is_ok());
        // The spec lands on the kernel command line: bounded, whatever the repetition.
        let long = format!("none{}", ",kaslr=on".repeat(40));
        let err = format!("{:#}", Mitigations::parse(&long, "none").unwrap_err());
        assert!(err.contains("longer than 256 characters"), "{err}");
    }

    #[test]
    fn missing_options_name_what_a_profile_needs() {
        let config = "CONFIG_RANDOMIZE_BASE=y\n# CONFIG_MITIGATION_PAGE_TABLE_ISOLATION is not set\nCONFIG_CPU_MITIGATIONS=y\n";
        assert_eq!(m("hardened").missing_options(config), [(Item::Pti, "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION=y")]);
        assert!(m("none").missing_options("").is_empty());
        // A 6.6 kernel has KPTI and the mitigations menu under their old names.
        let old = "CONFIG_RANDOMIZE_BASE=y\nCONFIG_PAGE_TABLE_ISOLATION=y\nCONFIG_SPECULATION_MITIGATIONS=y\n";
        assert!(m("hardened").missing_options(old).is_empty());
        assert!(m("default").missing_options("").is_empty());
    }

    fn observed(lines: &[&str]) -> Observed {
        let mut o = Observed::default();
        for l in lines {
            o.push(l);
        }
        o
    }

    const LINK: u64 = 0xffff_ffff_8100_0000;

    #[test]
    fn a_hardened_guest_is_judged_item_by_item() {
        let seen = observed(&[
            "text=ffffffff9e000000",
            "phys=000000002c000000",
            "flags=smep smap pti",
            "meltdown=Not affected",
            "spectre_v2=Mitigation: Retpolines",
            "kptr_restrict=2",
            "dmesg_restrict=1",
            "kptr_restrict=0",
        ]);
        let r = judge(&m("hardened"), &seen, Some(LINK));
        assert!(r.first_failure().is_none(), "{r:#?}");
        assert_eq!(r.kaslr_offset.as_deref(), Some("0x1d000000"));
        // The same guest under `none`: the first item that does not hold names the verdict.
        let r = judge(&m("none"), &seen, Some(LINK));
        assert_eq!(r.first_failure().unwrap().item, Item::Kaslr);
        let r = judge(&m("hardened,kaslr=auto"), &observed(&["flags=smap pti"]), Some(LINK));
        let f = r.first_failure().unwrap();
        assert_eq!((f.item, f.seen), (Item::Smep, "off"));
        assert!(f.evidence.contains("smap pti"), "{f:?}");
    }

    #[test]
    fn kaslr_off_needs_both_addresses_unmoved_and_missing_evidence_fails() {
        let unmoved = observed(&["text=ffffffff81000000", "phys=1000000"]);
        let r = judge(&m("none,smep=auto,smap=auto,pti=auto,spectre=auto,kptr_restrict=auto,dmesg_restrict=auto"), &unmoved, Some(LINK));
        assert!(r.first_failure().is_none(), "{r:#?}");
        assert_eq!(r.kaslr_offset.as_deref(), Some("0x0"));
        // A kernel linked elsewhere (CONFIG_PHYSICAL_START=0x2000000) is unmoved at its own address.
        let other = observed(&["text=ffffffff82000000", "phys=2000000"]);
        assert_eq!(judge(&m("none"), &other, Some(0xffff_ffff_8200_0000)).items[0].seen, "off");
        assert_eq!(judge(&m("none"), &other, Some(LINK)).items[0].seen, "on");
        // Physical moved alone still means KASLR ran.
        let r = judge(&m("none"), &observed(&["text=ffffffff81000000", "phys=5000000"]), Some(LINK));
        assert_eq!(r.items[0].seen, "on");
        // A zeroed _text (kptr_restrict hid it) is no evidence either way.
        let r = judge(&m("hardened"), &observed(&["text=0000000000000000", "phys=5000000"]), Some(LINK));
        assert_eq!((r.items[0].held, r.items[0].seen), (false, "unknown"));
        // auto is reported, never a failure.
        assert!(judge(&m("default"), &observed(&["flags=smep smap"]), None).first_failure().is_none());
    }

    /// Garbled or hostile evidence is no evidence: an item it would decide stays unknown, so a
    /// profile that wants it on or off fails.
    #[test]
    fn garbled_evidence_decides_nothing() {
        for text in ["-1", "1ffffffff81000000", "0x", "", "ffffffff81000000 extra", "none"] {
            let seen = observed(&[&format!("text={text}"), "phys=1000000"]);
            let r = judge(&m("none"), &seen, Some(LINK));
            assert_eq!((r.items[0].seen, r.items[0].held), ("unknown", false), "text={text:?}");
        }
        let huge = format!("kptr_restrict={}", "9".repeat(100_000));
        let r = judge(&m("hardened"), &observed(&[&huge, "dmesg_restrict=-1", "bogus=1", "flags"]), Some(LINK));
        let by_item = |i: Item| r.items.iter().find(|o| o.item == i).unwrap().clone();
        assert_eq!(by_item(Item::KptrRestrict).seen, "unknown");
        assert_eq!(by_item(Item::DmesgRestrict).seen, "unknown");
        assert_eq!(by_item(Item::Smep).seen, "unknown");
        assert!(r.first_failure().is_some());
    }

    #[test]
    fn run_sh_table_refuses_what_the_kernel_lacks() {
        let table = run_sh_table(&[(Item::Kaslr, "CONFIG_RANDOMIZE_BASE=y")]);
        assert!(
            table.contains("none) echo \"kaslr=off smep=off smap=off pti=off spectre=off kptr_restrict=off dmesg_restrict=off\""),
            "{table}"
        );
        assert!(table.contains("kaslr=on) die_usage \"kaslr=on needs CONFIG_RANDOMIZE_BASE=y"), "{table}");
        assert!(table.contains("kaslr=off) KWORDS=\"${KWORDS:+$KWORDS }nokaslr\""), "{table}");
        assert!(table.contains("smap=off) CPU_FLAGS=\"$CPU_FLAGS,-smap\""), "{table}");
        assert!(!run_sh_table(&[]).contains("die_usage"));
    }

    #[test]
    fn link_text_reads_system_map() {
        assert_eq!(link_text("ffffffff81000000 T _stext\nffffffff81000000 T _text\n"), Some(LINK));
        assert_eq!(link_text("ffffffff81000000 T _stext\n"), None);
    }
}
