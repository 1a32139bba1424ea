//! Kconfig fragments and `.config` files: parsing, and a flat symbol index of every Kconfig file (typos, other architectures).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The value of one option, as written in a fragment or `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Yes,
    Module,
    /// `CONFIG_X=n` or `# CONFIG_X is not set`.
    No,
    /// A quoted string, unescaped.
    Str(String),
    /// A decimal or hex number, kept as written (hex in lowercase) so it round-trips.
    Num(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("n"),
            Value::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Value::Num(n) => f.write_str(n),
        }
    }
}

/// One `SYMBOL=value` line and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Symbol name without the `CONFIG_` prefix, as Kconfig files spell it.
    pub symbol: String,
    pub value: Value,
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

/// Reads and parses a fragment or `.config` file.
pub fn parse_file(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read kconfig file {} (check the fragment name in the recipe)", path.display()))?;
    parse(&text, path)
}

/// Parses fragment or `.config` text into entries in file order; `file` only labels the entries and errors.
pub fn parse(text: &str, file: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = || format!("{}:{}", file.display(), i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            // `# CONFIG_X is not set` is how Kconfig writes `n`; every other comment is prose.
            let comment = comment.trim();
            if let Some(sym) = comment.strip_prefix("CONFIG_").and_then(|c| c.strip_suffix(" is not set")) {
                if !is_symbol(sym) {
                    bail!("{}: {raw:?} is not a valid symbol name: use `# CONFIG_NAME is not set` with A-Z, 0-9, _", at());
                }
                out.push(Entry { symbol: sym.to_string(), value: Value::No, file: file.to_path_buf(), line: i + 1 });
            }
            continue;
        }
        let Some((lhs, rhs)) = line.split_once('=') else {
            bail!("{}: {raw:?} is neither `CONFIG_NAME=value` nor a `#` comment: add `=y` or comment it out", at());
        };
        let Some(sym) = lhs.strip_prefix("CONFIG_") else {
            bail!("{}: {lhs:?} does not start with CONFIG_: write `CONFIG_{lhs}`", at());
        };
        if !is_symbol(sym) {
            bail!("{}: {lhs:?} is not a valid symbol name: use only A-Z, a-z, 0-9 and _ without spaces", at());
        }
        let value = parse_value(rhs).with_context(at)?;
        out.push(Entry { symbol: sym.to_string(), value, file: file.to_path_buf(), line: i + 1 });
    }
    Ok(out)
}

fn is_symbol(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_value(rhs: &str) -> Result<Value> {
    match rhs {
        "y" => return Ok(Value::Yes),
        "m" => return Ok(Value::Module),
        "n" => return Ok(Value::No),
        "" => bail!("empty value: write y, m, n, a number or a quoted string (\"\" for empty)"),
        _ => {}
    }
    if let Some(body) = rhs.strip_prefix('"') {
        let mut s = String::new();
        let mut chars = body.chars();
        loop {
            match chars.next() {
                None => bail!("unterminated string {rhs}: add the closing '\"'"),
                Some('\\') => match chars.next() {
                    Some(c) => s.push(c),
                    None => bail!("unterminated string {rhs}: add the closing '\"'"),
                },
                Some('"') => break,
                Some(c) => s.push(c),
            }
        }
        let rest: String = chars.collect();
        if !rest.trim().is_empty() {
            bail!("text {rest:?} after the closing quote of {rhs}: remove it or escape the quote as \\\"");
        }
        return Ok(Value::Str(s));
    }
    let digits = rhs.strip_prefix('-').unwrap_or(rhs);
    if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Value::Num(rhs.to_ascii_lowercase()));
        }
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Value::Num(rhs.to_string()));
    }
    bail!("value {rhs:?} is not y, m, n, a number or a quoted string: quote strings like \"{rhs}\"")
}

/// Renders `(symbol, value)` pairs as fragment lines (`n` as `# CONFIG_X is not set`).
pub fn render(options: &[(String, Value)]) -> String {
    let mut out = String::new();
    for (sym, value) in options {
        match value {
            Value::No => out.push_str(&format!("# CONFIG_{sym} is not set\n")),
            v => out.push_str(&format!("CONFIG_{sym}={v}\n")),
        }
    }
    out
}

/// Where a symbol is defined and what it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Path relative to the indexed source tree.
    pub file: PathBuf,
    pub line: usize,
    /// `depends on` expressions of its own block.
    pub depends: Vec<String>,
    /// Conditions inherited from enclosing `if`, `menu` and `choice` blocks of the same file
    /// (an `if` around a `source` line in another file is not followed; `kexplain` follows it).
    pub inherited: Vec<String>,
}

/// Every `config`/`menuconfig` symbol of a source tree.
#[derive(Debug, Default)]
pub struct SymbolIndex {
    /// A symbol may be defined several times (per architecture, or twice with different `depends on`).
    pub symbols: HashMap<String, Vec<Definition>>,
    /// How many Kconfig files were read.
    pub files: usize,
}

impl SymbolIndex {
    pub fn get(&self, symbol: &str) -> Option<&[Definition]> {
        self.symbols.get(symbol).map(|v| v.as_slice())
    }

    /// The defined symbol nearest to `symbol` by edit distance, if any is close enough to be a typo.
    pub fn suggest(&self, symbol: &str) -> Option<&str> {
        let max = (symbol.len() / 3).max(2);
        self.symbols
            .keys()
            // The distance is at least the length difference: skip the quadratic work for those.
            .filter(|k| k.len().abs_diff(symbol.len()) <= max)
            .map(|k| (edit_distance(symbol, k), k))
            .filter(|(d, _)| *d <= max)
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
            .map(|(_, k)| k.as_str())
    }
}

/// Indexes every file named `Kconfig*` under `src`, skipping `.git` and `skip` (a build directory
/// inside the tree would otherwise be walked too).
pub fn index(src: &Path, skip: Option<&Path>) -> Result<SymbolIndex> {
    let mut idx = SymbolIndex::default();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!("read directory {} while indexing Kconfig files (is {} a kernel tree?)", dir.display(), src.display())
        })?;
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            let ty = entry.file_type().with_context(|| format!("stat {}", path.display()))?;
            let name = entry.file_name();
            if ty.is_dir() {
                if name == ".git" || skip.is_some_and(|s| s == path) {
                    continue;
                }
                stack.push(path);
            } else if ty.is_file() && name.to_string_lossy().starts_with("Kconfig") {
                let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
                let rel = path.strip_prefix(src).unwrap_or(&path).to_path_buf();
                index_file(&String::from_utf8_lossy(&text), &rel, &mut idx.symbols);
                idx.files += 1;
            }
        }
    }
    Ok(idx)
}

enum Block {
    If(String),
    Menu(Vec<String>),
    Choice(Vec<String>),
}

enum Current {
    None,
    /// The definition last pushed for this symbol.
    Config(String),
    /// The innermost `menu`/`choice` just opened, before its first entry.
    Block,
}

pub(crate) fn indent_width(line: &str) -> usize {
    let mut w = 0;
    for c in line.chars() {
        match c {
            ' ' => w += 1,
            '\t' => w = (w / 8 + 1) * 8,
            _ => break,
        }
    }
    w
}

/// The logical lines of a Kconfig file with their 1-based numbers: backslash continuations
/// joined, and help texts skipped (their prose often starts lines with "if" or "config"). Both
/// the flat index here and kexplain's tree read Kconfig through it.
pub(crate) struct LogicalLines<'a> {
    lines: Vec<&'a str>,
    i: usize,
    in_help: bool,
    help_indent: Option<usize>,
}

pub(crate) fn logical_lines(text: &str) -> LogicalLines<'_> {
    LogicalLines { lines: text.lines().collect(), i: 0, in_help: false, help_indent: None }
}

impl<'a> Iterator for LogicalLines<'a> {
    type Item = (usize, std::borrow::Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.i < self.lines.len() {
            let lineno = self.i + 1;
            let mut line = std::borrow::Cow::Borrowed(self.lines[self.i]);
            self.i += 1;
            if self.in_help {
                if line.trim().is_empty() {
                    continue;
                }
                let w = indent_width(&line);
                match self.help_indent {
                    None if w > 0 => {
                        self.help_indent = Some(w);
                        continue;
                    }
                    Some(h) if w >= h => continue,
                    _ => self.in_help = false,
                }
            }
            while line.ends_with('\\') && self.i < self.lines.len() {
                let joined = line.to_mut();
                joined.pop();
                joined.push_str(self.lines[self.i]);
                self.i += 1;
            }
            let keyword = line.split('#').next().unwrap_or("").split_whitespace().next();
            if matches!(keyword, Some("help" | "---help---")) {
                self.in_help = true;
                self.help_indent = None;
            }
            return Some((lineno, line));
        }
        None
    }
}

/// Indexes one Kconfig file. A full Kconfig parser is not needed: only entry starts, block
/// boundaries and `depends on` matter, but help texts must be skipped because their prose often
/// starts lines with "if" or "config".
fn index_file(text: &str, rel: &Path, symbols: &mut HashMap<String, Vec<Definition>>) {
    let mut blocks: Vec<Block> = Vec::new();
    let mut current = Current::None;
    for (lineno, line) in logical_lines(text) {
        let stripped = line.split('#').next().unwrap_or("").trim();
        let (kw, rest) = match stripped.split_once(|c: char| c.is_whitespace()) {
            Some((k, r)) => (k, r.trim()),
            None => (stripped, ""),
        };
        match kw {
            "config" | "menuconfig" => {
                let sym = rest.split_whitespace().next().unwrap_or("").to_string();
                let inherited = blocks
                    .iter()
                    .flat_map(|b| match b {
                        Block::If(e) => vec![format!("if {e}")],
                        Block::Menu(d) => d.iter().map(|e| format!("menu depends on {e}")).collect(),
                        Block::Choice(d) => d.iter().map(|e| format!("choice depends on {e}")).collect(),
                    })
                    .collect();
                symbols.entry(sym.clone()).or_default().push(Definition {
                    file: rel.to_path_buf(),
                    line: lineno,
                    depends: Vec::new(),
                    inherited,
                });
                current = Current::Config(sym);
            }
            "depends" => {
                let expr = rest.strip_prefix("on").map(str::trim).unwrap_or(rest).to_string();
                match &current {
                    Current::Config(sym) => {
                        if let Some(def) = symbols.get_mut(sym).and_then(|v| v.last_mut()) {
                            def.depends.push(expr);
                        }
                    }
                    Current::Block => match blocks.last_mut() {
                        Some(Block::Menu(d)) | Some(Block::Choice(d)) => d.push(expr),
                        _ => {}
                    },
                    Current::None => {}
                }
            }
            "if" => {
                blocks.push(Block::If(rest.to_string()));
                current = Current::None;
            }
            "menu" => {
                blocks.push(Block::Menu(Vec::new()));
                current = Current::Block;
            }
            "choice" => {
                blocks.push(Block::Choice(Vec::new()));
                current = Current::Block;
            }
            "endif" | "endmenu" | "endchoice" => {
                blocks.pop();
                current = Current::None;
            }
            "comment" | "source" | "rsource" | "osource" | "orsource" | "mainmenu" => current = Current::None,
            _ => {}
        }
    }
}

/// Levenshtein distance over bytes (symbol names are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `(major, minor)` of a kernel version; an unparsable one counts as newest.
fn major_minor(version: &str) -> (u32, u32) {
    let mut nums = version.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
    let major = nums.next().flatten().unwrap_or(u32::MAX);
    (major, nums.next().flatten().unwrap_or(0))
}

/// Kconfig symbols our fragments use under their current name, with the name older kernels
/// knew them by and the release that renamed them (6.9 gave the x86 mitigations one prefix).
pub const RENAMED: [(&str, &str, (u32, u32)); 2] =
    [("CPU_MITIGATIONS", "SPECULATION_MITIGATIONS", (6, 9)), ("MITIGATION_PAGE_TABLE_ISOLATION", "PAGE_TABLE_ISOLATION", (6, 9))];

/// The name `symbol` has in Linux `version`, when that kernel predates its rename.
pub fn older_name(symbol: &str, version: &str) -> Option<&'static str> {
    RENAMED.iter().find(|(now, _, since)| *now == symbol && major_minor(version) < *since).map(|(_, old, _)| *old)
}

/// Options every lab kernel gets, depending on the kernel version: debug info at the right
/// knob and an empty LOCALVERSION so `uname -r` is exactly `version`.
///
/// An unparsable version is treated as new: the knobs below have existed since 5.18 and every
/// version string kernel.org publishes today parses.
pub fn debug_info_options(version: &str) -> Vec<(String, Value)> {
    let (major, minor) = major_minor(version);
    // The "Debug information" choice (and DEBUG_INFO before it) is only visible with DEBUG_KERNEL.
    let mut out = vec![("DEBUG_KERNEL".to_string(), Value::Yes)];
    if (major, minor) >= (5, 18) {
        // Since 5.18 debug info is a choice and DEBUG_INFO=y alone resolves to DEBUG_INFO_NONE.
        out.push(("DEBUG_INFO_DWARF5".to_string(), Value::Yes));
    } else {
        out.push(("DEBUG_INFO".to_string(), Value::Yes));
    }
    out.push(("LOCALVERSION_AUTO".to_string(), Value::No));
    out.push(("LOCALVERSION".to_string(), Value::Str(String::new())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<Entry> {
        parse(text, Path::new("frag.config")).unwrap()
    }
    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("frag.config")).unwrap_err())
    }

    #[test]
    fn renamed_symbols_get_their_old_name_on_old_kernels() {
        assert_eq!(older_name("CPU_MITIGATIONS", "6.6.63"), Some("SPECULATION_MITIGATIONS"));
        assert_eq!(older_name("MITIGATION_PAGE_TABLE_ISOLATION", "6.1.119"), Some("PAGE_TABLE_ISOLATION"));
        assert_eq!(older_name("CPU_MITIGATIONS", "6.9"), None);
        assert_eq!(older_name("CPU_MITIGATIONS", "6.12.118"), None);
        assert_eq!(older_name("RANDOMIZE_BASE", "5.15.1"), None);
    }

    #[test]
    fn parses_all_value_kinds_in_order() {
        let e = p("# a comment\nCONFIG_A=y\nCONFIG_B=m\n\n# CONFIG_C is not set\nCONFIG_D=n\nCONFIG_E=\"a \\\"q\\\" \\\\ b\"\nCONFIG_F=-12\nCONFIG_G=0xFF\nCONFIG_H=\"\"\n");
        let got: Vec<(&str, Value, usize)> = e.iter().map(|e| (e.symbol.as_str(), e.value.clone(), e.line)).collect();
        assert_eq!(
            got,
            vec![
                ("A", Value::Yes, 2),
                ("B", Value::Module, 3),
                ("C", Value::No, 5),
                ("D", Value::No, 6),
                ("E", Value::Str("a \"q\" \\ b".into()), 7),
                ("F", Value::Num("-12".into()), 8),
                ("G", Value::Num("0xff".into()), 9),
                ("H", Value::Str(String::new()), 10),
            ]
        );
    }

    #[test]
    fn render_round_trips() {
        let opts = vec![
            ("A".to_string(), Value::Yes),
            ("B".to_string(), Value::No),
            ("C".to_string(), Value::Str("x\"y".into())),
            ("D".to_string(), Value::Num("64".into())),
        ];
        let back: Vec<(String, Value)> = p(&render(&opts)).into_iter().map(|e| (e.symbol, e.value)).collect();
        assert_eq!(back, opts);
        assert!(render(&opts).contains("# CONFIG_B is not set\n"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        assert!(err("CONFIG_A=y\nCONFIG_B\n").contains("frag.config:2"), "{}", err("CONFIG_A=y\nCONFIG_B\n"));
        assert!(err("NET=y\n").contains("frag.config:1"));
        assert!(err("NET=y\n").contains("CONFIG_NET"));
        assert!(err("CONFIG_A=\"open\n").contains("unterminated"));
        assert!(err("CONFIG_A=yes please\n").contains("frag.config:1"));
        assert!(err("CONFIG_A=\n").contains("empty value"));
        assert!(err("CONFIG_A B=y\n").contains("not a valid symbol"));
    }

    /// A miniature kernel tree: nested Kconfig files, help text with keyword-looking prose,
    /// `if` and `menu` blocks, and a build directory that must not be indexed.
    fn fixture() -> (PathBuf, SymbolIndex) {
        let dir = crate::testutil::scratch("kconfig");
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::create_dir_all(dir.join("build")).unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(
            dir.join("Kconfig"),
            "mainmenu \"Fixture\"\n\nconfig NET\n\tbool \"Networking\"\n\thelp\n\t  Say Y.\n\n\t  if you are unsure\n\t  config files are fine\n\nconfig NAMESPACES\n\tbool \"Namespaces\"\n\nsource \"net/Kconfig\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("net/Kconfig.ns"),
            "if NAMESPACES\n\nconfig NET_NS\n\tbool \"Network namespace\"\n\tdepends on NET\n\tdepends on !BROKEN\n\tdefault y\n\nendif\n\nmenu \"Drivers\"\n\tdepends on PCI\n\nconfig E1000\n\ttristate \"e1000\"\n\nendmenu\n\nconfig NR_CPUS\n\tint \"cpus\"\n\tdepends on SMP && \\\n\t\t64BIT\n",
        )
        .unwrap();
        std::fs::write(dir.join("build/Kconfig"), "config FROM_BUILD_DIR\n\tbool\n").unwrap();
        std::fs::write(dir.join(".git/Kconfig"), "config FROM_GIT\n\tbool\n").unwrap();
        let idx = index(&dir, Some(&dir.join("build"))).unwrap();
        (dir, idx)
    }

    #[test]
    fn index_records_definitions_and_dependencies() {
        let (dir, idx) = fixture();
        assert_eq!(idx.files, 2);
        let mut names: Vec<&String> = idx.symbols.keys().collect();
        names.sort();
        assert_eq!(names, ["E1000", "NAMESPACES", "NET", "NET_NS", "NR_CPUS"]);
        let ns = &idx.get("NET_NS").unwrap()[0];
        assert_eq!((ns.file.as_path(), ns.line), (Path::new("net/Kconfig.ns"), 3));
        assert_eq!(ns.depends, ["NET", "!BROKEN"]);
        assert_eq!(ns.inherited, ["if NAMESPACES"]);
        assert_eq!(idx.get("E1000").unwrap()[0].inherited, ["menu depends on PCI"]);
        assert_eq!(idx.get("NR_CPUS").unwrap()[0].depends.len(), 1);
        assert!(idx.get("NR_CPUS").unwrap()[0].depends[0].contains("64BIT"));
        // The second definition after the help text was not mistaken for part of it.
        assert_eq!(idx.get("NAMESPACES").unwrap()[0].line, 11);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("NET_NSS", "NET_NS"), 1);
        assert_eq!(edit_distance("", "ABC"), 3);
        assert_eq!(edit_distance("KITTEN", "SITTING"), 3);
    }

    #[test]
    fn debug_info_follows_the_kernel_version() {
        let get = |v: &str| debug_info_options(v).into_iter().collect::<HashMap<_, _>>();
        for v in ["6.12.117", "5.18", "6.13-rc2", "7.0"] {
            let o = get(v);
            assert_eq!(o.get("DEBUG_INFO_DWARF5"), Some(&Value::Yes), "{v}");
            assert!(!o.contains_key("DEBUG_INFO"), "{v}");
        }
        for v in ["5.17.15", "5.15.170", "4.19"] {
            let o = get(v);
            assert_eq!(o.get("DEBUG_INFO"), Some(&Value::Yes), "{v}");
            assert!(!o.contains_key("DEBUG_INFO_DWARF5"), "{v}");
        }
        let o = get("6.12.117");
        assert_eq!(o.get("LOCALVERSION_AUTO"), Some(&Value::No));
        assert_eq!(o.get("LOCALVERSION"), Some(&Value::Str(String::new())));
        assert_eq!(o.get("DEBUG_KERNEL"), Some(&Value::Yes));
    }

    #[test]
    fn shipped_fragments_parse_and_start_with_a_comment() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for name in [
            "lab.config",
            "smp.config",
            "netns.config",
            "debug.config",
            "mitigations.config",
            "lean.config",
            "modules.config",
            "kasan.config",
            "busybox/static.config",
        ] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("# "), "{name} must start with a one-line comment");
            let entries = parse(&text, &path).unwrap();
            assert!(!entries.is_empty(), "{name} is empty");
            // Every group of options sits right under a comment that says what needs it.
            let lines: Vec<&str> = text.lines().collect();
            for e in &entries {
                let above = (0..e.line - 1).rev().map(|i| lines[i]).find(|l| !entries.iter().any(|o| lines[o.line - 1] == *l));
                assert!(
                    above.is_some_and(|l| l.starts_with("# ")),
                    "{name}:{}: CONFIG_{} has no comment above its group",
                    e.line,
                    e.symbol
                );
            }
        }
    }

    /// Indexes the real tree extracted at $KERNEL_LAB_LINUX_SRC and reports how long it takes.
    #[test]
    #[ignore]
    fn index_real_tree() {
        let src = PathBuf::from(std::env::var("KERNEL_LAB_LINUX_SRC").unwrap_or("/work/scratch/linux-6.12.117".into()));
        let t = std::time::Instant::now();
        let idx = index(&src, None).unwrap();
        eprintln!("indexed {} files, {} symbols in {:?}", idx.files, idx.symbols.len(), t.elapsed());
        assert!(idx.get("NET_NS").is_some());
        assert_eq!(idx.suggest("NET_NSS"), Some("NET_NS"));
        let gdb = &idx.get("GDB_SCRIPTS").unwrap()[0];
        eprintln!("GDB_SCRIPTS: {gdb:?}");
    }
}
