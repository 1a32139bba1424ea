//! Explains why requested Kconfig options did not survive and finds a fragment, verified by olddefconfig, that makes them survive.
//!
//! The flat index in `kconfig` only knows each symbol's own lines. Here the tree is read the way
//! Kconfig reads it: from the top-level `Kconfig`, following `source` lines with the `if`, `menu`
//! and `choice` blocks still open, so a driver inherits the `if SCSI` of the file that sources
//! its directory. Besides dependencies the model keeps prompts, `select`/`imply` edges, defaults,
//! ranges and choice membership: everything needed to name why a value was dropped.
//!
//! This is our own parser rather than kconfiglib: no Python on the host, and the check runs
//! inside every configure. What the model simplifies (int defaults, `visible if`, macros) the
//! kernel's own `olddefconfig` catches: a fragment is only called verified after it ran.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kconfig::{self, Entry, SymbolIndex, Value};

/// The architecture the labs build for (`SRCARCH` in `source "arch/$(SRCARCH)/Kconfig"`).
pub const SRCARCH: &str = "x86";

// ---------------------------------------------------------------------------------------------
// Expressions

/// A Kconfig expression. Comparison operands stay as written (symbol names or literals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Sym(String),
    /// `y`, `m` or `n` as a constant.
    Const(u8),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, String, String),
    /// `$(...)` evaluated by Kconfig's preprocessor; we cannot, so it counts as met.
    Macro(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

const N: u8 = 0;
const M: u8 = 1;
const Y: u8 = 2;

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] as char != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push(s[start..i].to_string());
        } else if c == '$' && b.get(i + 1) == Some(&b'(') {
            let start = i;
            let mut depth = 0;
            while i < b.len() {
                match b[i] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            out.push(s[start..i].to_string());
        } else if let Some(op) = ["&&", "||", "!=", "<=", ">="].iter().find(|op| s[i..].starts_with(**op)) {
            out.push(op.to_string());
            i += 2;
        } else if "!()=<>".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else {
            let start = i;
            while i < b.len() && !(b[i] as char).is_whitespace() && !"!()=<>&|\"'".contains(b[i] as char) {
                i += 1;
            }
            if i == start {
                i += 1;
                continue;
            }
            out.push(s[start..i].to_string());
        }
    }
    out
}

/// Parses a Kconfig expression; `None` when it is malformed (the entry then keeps no condition).
pub fn parse_expr(s: &str) -> Option<Expr> {
    let toks = tokenize(s);
    let mut pos = 0;
    let e = parse_or(&toks, &mut pos)?;
    (pos == toks.len()).then_some(e)
}

fn parse_or(t: &[String], pos: &mut usize) -> Option<Expr> {
    let mut l = parse_and(t, pos)?;
    while t.get(*pos).map(String::as_str) == Some("||") {
        *pos += 1;
        l = Expr::Or(Box::new(l), Box::new(parse_and(t, pos)?));
    }
    Some(l)
}

fn parse_and(t: &[String], pos: &mut usize) -> Option<Expr> {
    let mut l = parse_unary(t, pos)?;
    while t.get(*pos).map(String::as_str) == Some("&&") {
        *pos += 1;
        l = Expr::And(Box::new(l), Box::new(parse_unary(t, pos)?));
    }
    Some(l)
}

fn parse_unary(t: &[String], pos: &mut usize) -> Option<Expr> {
    let tok = t.get(*pos)?.as_str();
    *pos += 1;
    match tok {
        "!" => Some(Expr::Not(Box::new(parse_unary(t, pos)?))),
        "(" => {
            let e = parse_or(t, pos)?;
            (t.get(*pos).map(String::as_str) == Some(")")).then(|| *pos += 1)?;
            Some(e)
        }
        _ => {
            let op = match t.get(*pos).map(String::as_str) {
                Some("=") => Some(CmpOp::Eq),
                Some("!=") => Some(CmpOp::Ne),
                Some("<") => Some(CmpOp::Lt),
                Some("<=") => Some(CmpOp::Le),
                Some(">") => Some(CmpOp::Gt),
                Some(">=") => Some(CmpOp::Ge),
                _ => None,
            };
            if let Some(op) = op {
                *pos += 1;
                let rhs = t.get(*pos)?.clone();
                *pos += 1;
                return Some(Expr::Cmp(op, tok.to_string(), rhs));
            }
            Some(atom(tok))
        }
    }
}

fn atom(tok: &str) -> Expr {
    match tok.trim_matches(|c| c == '"' || c == '\'') {
        _ if tok.starts_with("$(") => Expr::Macro(tok.to_string()),
        "y" => Expr::Const(Y),
        "m" => Expr::Const(M),
        "n" => Expr::Const(N),
        // Kconfig treats any other literal in a boolean position as n.
        _ if tok.starts_with('"') || tok.starts_with('\'') => Expr::Const(N),
        _ => Expr::Sym(tok.to_string()),
    }
}

/// The top-level `&&` operands of `e`.
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::And(a, b) => {
            let mut v = conjuncts(a);
            v.extend(conjuncts(b));
            v
        }
        e => vec![e],
    }
}

fn alternatives(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Or(a, b) => {
            let mut v = alternatives(a);
            v.extend(alternatives(b));
            v
        }
        e => vec![e],
    }
}

// ---------------------------------------------------------------------------------------------
// The tree model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Bool,
    Tristate,
    Int,
    Hex,
    Str,
    Unknown,
}

/// Where a condition came from: the symbol's own `depends on`, or an enclosing block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `depends on`, `if`, `menu "..." depends on`, `choice depends on`.
    pub origin: &'static str,
    pub expr: Expr,
    /// `file:line` of the `depends on` or the block.
    pub at: String,
}

/// One definition of a symbol (a symbol may be defined in several places).
#[derive(Debug, Clone)]
pub struct SymDef {
    pub file: PathBuf,
    pub line: usize,
    pub ty: Type,
    /// The prompt text and its `if` condition, if the symbol is user-visible.
    pub prompt: Option<(String, Option<Expr>)>,
    /// Own `depends on`, then the enclosing blocks from the innermost out.
    pub deps: Vec<Cond>,
    /// `default value [if cond]`, including `def_bool`/`def_tristate`.
    pub defaults: Vec<(Expr, Option<Expr>)>,
    /// `range min max [if cond]`.
    pub ranges: Vec<(String, String, Option<Expr>)>,
    /// Index into `Tree::choices` when the symbol is a choice member.
    pub choice: Option<usize>,
}

/// A `select` (or `imply`) edge: `selector` selects `target` when `cond` holds.
#[derive(Debug, Clone)]
pub struct Select {
    pub selector: String,
    pub cond: Option<Expr>,
    pub imply: bool,
    pub at: String,
}

/// A `choice` block: its members in order.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    pub at: String,
    pub members: Vec<String>,
}

/// The Kconfig tree as Kconfig itself reads it for `SRCARCH`.
#[derive(Debug, Default)]
pub struct Tree {
    pub symbols: HashMap<String, Vec<SymDef>>,
    /// Target symbol -> the edges that select or imply it.
    pub selected_by: HashMap<String, Vec<Select>>,
    pub choices: Vec<Choice>,
    pub files: usize,
    /// The source tree it was read from.
    pub root: PathBuf,
}

enum Block {
    If(Cond),
    Menu(Vec<Cond>),
    Choice(usize, Vec<Cond>),
}

enum Cur {
    None,
    Sym(String),
    Menu,
    Choice,
}

/// Reads the tree rooted at `src/Kconfig` for `arch`, following `source` lines.
pub fn load(src: &Path, arch: &str) -> Result<Tree> {
    let mut tree = Tree { root: src.to_path_buf(), ..Tree::default() };
    let mut blocks = Vec::new();
    let mut seen = HashSet::new();
    read_file(src, Path::new("Kconfig"), arch, &mut blocks, &mut tree, &mut seen, 0)
        .with_context(|| format!("read the Kconfig tree of {} (is it a kernel source tree?)", src.display()))?;
    Ok(tree)
}

fn read_file(
    src: &Path,
    rel: &Path,
    arch: &str,
    blocks: &mut Vec<Block>,
    tree: &mut Tree,
    seen: &mut HashSet<PathBuf>,
    depth: usize,
) -> Result<()> {
    if depth > 40 {
        bail!("{}: `source` nested more than 40 deep: is there a cycle?", rel.display());
    }
    let path = src.join(rel);
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    seen.insert(rel.to_path_buf());
    tree.files += 1;
    let text = String::from_utf8_lossy(&bytes);
    let base_depth = blocks.len();
    let mut cur = Cur::None;
    for (lineno, line) in kconfig::logical_lines(&text) {
        let stripped = strip_comment(&line);
        let (kw, rest) = match stripped.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (stripped, ""),
        };
        let at = format!("{}:{lineno}", rel.display());
        let (body, cond) = split_if(rest);
        match kw {
            "config" | "menuconfig" => {
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                let mut deps = Vec::new();
                let mut choice = None;
                for b in blocks.iter().rev() {
                    match b {
                        Block::If(c) => deps.push(c.clone()),
                        Block::Menu(cs) => deps.extend(cs.iter().cloned()),
                        Block::Choice(idx, cs) => {
                            choice.get_or_insert(*idx);
                            deps.extend(cs.iter().cloned())
                        }
                    }
                }
                if let Some(idx) = choice {
                    tree.choices[idx].members.push(name.clone());
                }
                let def = SymDef {
                    file: rel.to_path_buf(),
                    line: lineno,
                    ty: Type::Unknown,
                    prompt: None,
                    deps,
                    defaults: Vec::new(),
                    ranges: Vec::new(),
                    choice,
                };
                tree.symbols.entry(name.clone()).or_default().push(def);
                cur = Cur::Sym(name);
            }
            "bool" | "tristate" | "int" | "hex" | "string" | "def_bool" | "def_tristate" | "prompt" => {
                if let Cur::Sym(name) = &cur {
                    let def = tree.symbols.get_mut(name).and_then(|v| v.last_mut()).expect("current symbol");
                    let ty = match kw {
                        "bool" | "def_bool" => Type::Bool,
                        "tristate" | "def_tristate" => Type::Tristate,
                        "int" => Type::Int,
                        "hex" => Type::Hex,
                        "string" => Type::Str,
                        _ => def.ty,
                    };
                    def.ty = ty;
                    let cond = cond.as_deref().and_then(parse_expr);
                    if kw.starts_with("def_") {
                        if let Some(v) = parse_expr(body) {
                            def.defaults.push((v, cond));
                        }
                    } else if !body.is_empty() {
                        def.prompt = Some((body.trim_matches('"').to_string(), cond));
                    }
                }
            }
            "default" => {
                if let (Cur::Sym(name), Some(v)) = (&cur, parse_expr(body)) {
                    let def = tree.symbols.get_mut(name).and_then(|v| v.last_mut()).expect("current symbol");
                    def.defaults.push((v, cond.as_deref().and_then(parse_expr)));
                }
            }
            "range" => {
                if let Cur::Sym(name) = &cur {
                    let mut parts = body.split_whitespace();
                    if let (Some(lo), Some(hi)) = (parts.next(), parts.next()) {
                        let def = tree.symbols.get_mut(name).and_then(|v| v.last_mut()).expect("current symbol");
                        def.ranges.push((lo.to_string(), hi.to_string(), cond.as_deref().and_then(parse_expr)));
                    }
                }
            }
            "select" | "imply" => {
                if let Cur::Sym(name) = &cur {
                    let target = body.split_whitespace().next().unwrap_or("").to_string();
                    let edge = Select { selector: name.clone(), cond: cond.as_deref().and_then(parse_expr), imply: kw == "imply", at };
                    tree.selected_by.entry(target).or_default().push(edge);
                }
            }
            "depends" => {
                let expr = rest.strip_prefix("on").map(str::trim).unwrap_or(rest);
                if let Some(expr) = parse_expr(expr) {
                    let c = Cond { origin: "depends on", expr, at };
                    match &cur {
                        Cur::Sym(name) => {
                            let def = tree.symbols.get_mut(name).and_then(|v| v.last_mut()).expect("current symbol");
                            // Own dependencies come first, before the inherited ones.
                            let own = def.deps.iter().take_while(|d| d.origin == "depends on").count();
                            def.deps.insert(own, c);
                        }
                        Cur::Menu | Cur::Choice => match blocks.last_mut() {
                            Some(Block::Menu(cs)) => cs.push(Cond { origin: "menu depends on", ..c }),
                            Some(Block::Choice(_, cs)) => cs.push(Cond { origin: "choice depends on", ..c }),
                            _ => {}
                        },
                        Cur::None => {}
                    }
                }
            }
            "visible" => {
                // `visible if` hides prompts of a menu; for dependencies it is irrelevant.
            }
            "if" => {
                let expr = parse_expr(rest).unwrap_or(Expr::Const(Y));
                blocks.push(Block::If(Cond { origin: "if", expr, at }));
                cur = Cur::None;
            }
            "menu" => {
                blocks.push(Block::Menu(Vec::new()));
                cur = Cur::Menu;
            }
            "choice" => {
                tree.choices.push(Choice { at, members: Vec::new() });
                blocks.push(Block::Choice(tree.choices.len() - 1, Vec::new()));
                cur = Cur::Choice;
            }
            "endif" | "endmenu" | "endchoice" => {
                if blocks.len() > base_depth {
                    blocks.pop();
                }
                cur = Cur::None;
            }
            "source" | "rsource" | "osource" | "orsource" => {
                cur = Cur::None;
                // `$SRCARCH` is how kernels before 4.18 spelled it.
                let name = rest.trim_matches('"').replace("$(SRCARCH)", arch).replace("$(HEADER_ARCH)", arch).replace("$SRCARCH", arch);
                let target = if kw.starts_with("or") || kw == "rsource" {
                    rel.parent().unwrap_or(Path::new("")).join(&name)
                } else {
                    PathBuf::from(&name)
                };
                // Kconfig itself fails on a missing non-optional file, and olddefconfig ran before
                // this: what is missing here is a macro we do not expand, so it is skipped.
                if name.contains('$') || !src.join(&target).is_file() {
                    continue;
                }
                read_file(src, &target, arch, blocks, tree, seen, depth + 1).with_context(|| format!("sourced at {at}"))?;
            }
            "comment" | "mainmenu" => cur = Cur::None,
            _ => {}
        }
    }
    // A file that leaves blocks open (a syntax error Kconfig would report) must not leak them.
    blocks.truncate(base_depth);
    Ok(())
}

/// Strips a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('#', None) => return line[..i].trim(),
            _ => {}
        }
    }
    line.trim()
}

/// Splits `value if cond` at a top-level ` if ` outside quotes.
fn split_if(rest: &str) -> (&str, Option<String>) {
    let mut quote = None;
    let b = rest.as_bytes();
    for (i, c) in rest.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            (_, None)
                if rest[i..].starts_with("if")
                    && (i == 0 || b[i - 1].is_ascii_whitespace())
                    && b.get(i + 2).is_some_and(|c| c.is_ascii_whitespace()) =>
            {
                return (rest[..i].trim(), Some(rest[i + 2..].trim().to_string()));
            }
            _ => {}
        }
    }
    (rest.trim(), None)
}

// ---------------------------------------------------------------------------------------------
// Evaluation against a configuration

/// A tree together with the values of one `.config` and the flat index of every Kconfig file.
pub struct Analysis<'a> {
    pub tree: &'a Tree,
    pub flat: &'a SymbolIndex,
    pub values: HashMap<String, Value>,
}

impl<'a> Analysis<'a> {
    pub fn new(tree: &'a Tree, flat: &'a SymbolIndex, config: &[Entry]) -> Analysis<'a> {
        Analysis { tree, flat, values: config.iter().map(|e| (e.symbol.clone(), e.value.clone())).collect() }
    }

    fn tri(&self, sym: &str) -> u8 {
        let v = match self.values.get(sym) {
            Some(Value::Yes) => Y,
            Some(Value::Module) => M,
            _ => N,
        };
        // Without MODULES every `m` reads as `y`, as in Kconfig's sym_calc_value.
        if v == M && !self.modules() {
            Y
        } else {
            v
        }
    }

    fn modules(&self) -> bool {
        self.values.get("MODULES") == Some(&Value::Yes)
    }

    fn shown(&self, sym: &str) -> String {
        match self.values.get(sym) {
            Some(Value::No) | None => "n".into(),
            Some(v) => v.to_string(),
        }
    }

    fn operand(&self, tok: &str) -> String {
        if tok.starts_with('"') || tok.starts_with('\'') {
            tok.trim_matches(|c| c == '"' || c == '\'').to_string()
        } else if self.tree.symbols.contains_key(tok) {
            match self.values.get(tok) {
                Some(Value::Str(s)) => s.clone(),
                Some(Value::No) | None => "n".into(),
                Some(v) => v.to_string(),
            }
        } else {
            tok.to_string()
        }
    }

    pub fn eval(&self, e: &Expr) -> u8 {
        match e {
            Expr::Sym(s) => self.tri(s),
            Expr::Const(v) => *v,
            Expr::Not(a) => Y - self.eval(a),
            Expr::And(a, b) => self.eval(a).min(self.eval(b)),
            Expr::Or(a, b) => self.eval(a).max(self.eval(b)),
            Expr::Macro(_) => Y,
            Expr::Cmp(op, l, r) => {
                let (a, b) = (self.operand(l), self.operand(r));
                let num = |s: &str| s.strip_prefix("0x").map_or_else(|| s.parse::<i64>().ok(), |h| i64::from_str_radix(h, 16).ok());
                let ord = match (num(&a), num(&b)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    _ => tri_rank(&a).cmp(&tri_rank(&b)).then_with(|| a.cmp(&b)),
                };
                let holds = match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::Ne => !ord.is_eq(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::Le => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::Ge => ord.is_ge(),
                };
                if holds {
                    Y
                } else {
                    N
                }
            }
        }
    }

    /// `e` with every symbol's current value: `SCSI [=n] && (PCI [=y] || ACPI [=n])`.
    pub fn show(&self, e: &Expr) -> String {
        self.show_prec(e, 0)
    }

    fn show_prec(&self, e: &Expr, prec: u8) -> String {
        match e {
            Expr::Sym(s) => format!("{s} [={}]", self.shown(s)),
            Expr::Const(v) => ["n", "m", "y"][*v as usize].to_string(),
            Expr::Macro(m) => m.clone(),
            Expr::Not(a) => format!("!{}", self.show_prec(a, 3)),
            Expr::Cmp(op, l, r) => {
                let side = |t: &str| if self.tree.symbols.contains_key(t) { format!("{t} [={}]", self.shown(t)) } else { t.to_string() };
                format!("{} {} {}", side(l), op.as_str(), side(r))
            }
            Expr::And(a, b) => {
                let s = format!("{} && {}", self.show_prec(a, 2), self.show_prec(b, 2));
                if prec > 2 {
                    format!("({s})")
                } else {
                    s
                }
            }
            Expr::Or(a, b) => {
                let s = format!("{} || {}", self.show_prec(a, 1), self.show_prec(b, 1));
                if prec > 1 {
                    format!("({s})")
                } else {
                    s
                }
            }
        }
    }

    /// The definitions Kconfig uses for `SRCARCH`, or none.
    fn defs(&self, sym: &str) -> &'a [SymDef] {
        self.tree.symbols.get(sym).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The effective dependency of one definition: every condition, own and inherited.
    fn deps_value(&self, def: &SymDef) -> u8 {
        def.deps.iter().map(|c| self.eval(&c.expr)).min().unwrap_or(Y)
    }

    /// The prompt shows in menuconfig: its `if` holds and so do the definition's dependencies.
    fn prompt_shows(&self, def: &SymDef) -> bool {
        self.prompt_visible(def) && self.deps_value(def) > N
    }

    fn prompt_visible(&self, def: &SymDef) -> bool {
        match &def.prompt {
            Some((_, None)) => true,
            Some((_, Some(c))) => self.eval(c) > N,
            None => false,
        }
    }

    /// Selectors of `sym` that currently force it on (value and condition both hold).
    fn active_selectors(&self, sym: &str) -> Vec<&'a Select> {
        self.tree
            .selected_by
            .get(sym)
            .map(|v| {
                v.iter().filter(|s| !s.imply && self.tri(&s.selector) > N && s.cond.as_ref().is_none_or(|c| self.eval(c) > N)).collect()
            })
            .unwrap_or_default()
    }
}

fn tri_rank(s: &str) -> u8 {
    match s {
        "y" => Y,
        "m" => M,
        _ => N,
    }
}

// ---------------------------------------------------------------------------------------------
// Problems

/// Why a requested value did not survive, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No Kconfig file defines the symbol; maybe a typo of `suggest`.
    Undefined { suggest: Option<String> },
    /// Only other architectures define it.
    OtherArch { arches: Vec<String>, at: Vec<String> },
    /// Defined only in Kconfig files no architecture's tree sources.
    NotSourced { at: Vec<String> },
    /// Some conjunct of the effective dependency is not met.
    UnmetDependency,
    /// No prompt (or its `if` is false): only `select` or a default can set it.
    NoPrompt,
    /// Asked `m` but MODULES is off, so the option was built in (or dropped).
    ModuleWithoutModules,
    /// An `int`/`hex` value outside the range in force.
    OutOfRange { lo: String, hi: String },
    /// Another member of the same `choice` is selected.
    ChoiceLost { winner: String },
    /// A `select` elsewhere forces it higher than asked.
    ForcedBySelect { selectors: Vec<String> },
    /// None of the above explains it.
    Unknown,
}

/// A request that did not survive and everything known about why.
#[derive(Debug, Clone)]
pub struct Lost {
    pub request: Entry,
    /// What the final `.config` says, `None` when the option is absent.
    pub got: Option<Value>,
    pub problems: Vec<Problem>,
}

/// Whether the request survived into `fin` (last request of a symbol counts; absent means `n`).
pub fn survived(want: &Value, fin: Option<&Value>) -> bool {
    match (want, fin) {
        (Value::No, None | Some(Value::No)) => true,
        (want, Some(got)) => want == got,
        (_, None) => false,
    }
}

/// The last request of each symbol, in fragment order.
pub fn effective_requests(requested: &[Entry]) -> Vec<Entry> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in requested.iter().enumerate() {
        last.insert(e.symbol.as_str(), i);
    }
    requested.iter().enumerate().filter(|(i, e)| last[e.symbol.as_str()] == *i).map(|(_, e)| e.clone()).collect()
}

/// Every request that did not survive into the analysed configuration, with its problems.
pub fn lost(an: &Analysis<'_>, requested: &[Entry]) -> Vec<Lost> {
    let mut out = Vec::new();
    for req in effective_requests(requested) {
        let got = an.values.get(&req.symbol).cloned();
        if an.tree.symbols.contains_key(&req.symbol) && survived(&req.value, got.as_ref()) {
            continue;
        }
        // `n` for a symbol this architecture does not have is what it gets: nothing to report.
        if req.value == Value::No && got.is_none() && !an.tree.symbols.contains_key(&req.symbol) {
            continue;
        }
        // Asking `m` of a bool gives `y`, which Kconfig has always done and nobody means to catch.
        if req.value == Value::Module && got == Some(Value::Yes) && an.modules() && an.defs(&req.symbol).iter().all(|d| d.ty == Type::Bool)
        {
            continue;
        }
        let problems = diagnose(an, &req.symbol, &req.value, got.as_ref());
        out.push(Lost { request: req, got, problems });
    }
    out
}

/// Names what keeps `sym` from being `want`, given its current value `got`.
pub fn diagnose(an: &Analysis<'_>, sym: &str, want: &Value, got: Option<&Value>) -> Vec<Problem> {
    let defs = an.defs(sym);
    if defs.is_empty() {
        return match an.flat.get(sym) {
            Some(flat) => {
                let at: Vec<String> = flat.iter().map(|d| format!("{}:{}", d.file.display(), d.line)).collect();
                // A driver directory outside arch/ may still belong to other architectures: only
                // their Kconfig sources it (coresight from arch/arm64/Kconfig.debug).
                let mut arches: Vec<String> = flat
                    .iter()
                    .flat_map(|d| arch_of(&d.file).map(|a| vec![a]).unwrap_or_else(|| sourced_by_arches(&an.tree.root, &d.file)))
                    .collect();
                arches.sort();
                arches.dedup();
                if arches.is_empty() {
                    // Defined in a file nothing sources for any architecture (kconfig's own tests, docs).
                    vec![Problem::NotSourced { at }]
                } else {
                    vec![Problem::OtherArch { arches, at }]
                }
            }
            None => vec![Problem::Undefined { suggest: an.flat.suggest(sym).map(str::to_string) }],
        };
    }
    let mut out = Vec::new();
    let got_tri = match got {
        Some(Value::Yes) => Y,
        Some(Value::Module) => M,
        _ => N,
    };
    let want_tri = match want {
        Value::Yes => Y,
        Value::Module => M,
        _ => N,
    };
    if *want == Value::Module && !an.modules() {
        out.push(Problem::ModuleWithoutModules);
    }
    let selectors = an.active_selectors(sym);
    if want_tri < got_tri && !selectors.is_empty() {
        let mut names: Vec<String> = selectors.iter().map(|s| s.selector.clone()).collect();
        names.dedup();
        out.push(Problem::ForcedBySelect { selectors: names });
    }
    // A dependency at `m` caps a tristate at `m`: asking `y` needs every conjunct at `y`.
    let deps_met = defs.iter().any(|d| an.deps_value(d) >= want_tri.max(M));
    if want_tri > N && !deps_met {
        out.push(Problem::UnmetDependency);
    }
    let visible = defs.iter().any(|d| an.prompt_visible(d));
    let wrong_value = match want {
        Value::No => got_tri > N,
        Value::Yes | Value::Module => got_tri < want_tri,
        _ => got != Some(want),
    };
    if !visible && wrong_value && !matches!(out.last(), Some(Problem::ForcedBySelect { .. })) && (deps_met || want_tri == N) {
        out.push(Problem::NoPrompt);
    }
    if let Value::Num(n) = want {
        for d in defs {
            if let Some((lo, hi, _)) = d.ranges.iter().find(|(_, _, c)| c.as_ref().is_none_or(|c| an.eval(c) > N)) {
                let val = |s: &str| {
                    let s = an.operand(s);
                    s.strip_prefix("0x").map_or_else(|| s.parse::<i64>().ok(), |h| i64::from_str_radix(h, 16).ok())
                };
                if let (Some(v), Some(l), Some(h)) = (val(n), val(lo), val(hi)) {
                    if v < l || v > h {
                        out.push(Problem::OutOfRange { lo: an.operand(lo), hi: an.operand(hi) });
                    }
                }
            }
        }
    }
    if want_tri == Y && got_tri < Y && deps_met {
        if let Some(idx) = defs.iter().find_map(|d| d.choice) {
            if let Some(w) = an.tree.choices[idx].members.iter().find(|m| *m != sym && an.tri(m) == Y) {
                out.push(Problem::ChoiceLost { winner: w.clone() });
            }
        }
    }
    if out.is_empty() {
        out.push(Problem::Unknown);
    }
    out
}

/// The architectures (other than `SRCARCH`) whose Kconfig tree reaches `file` through `source`
/// lines, directly (coresight from arch/arm64/Kconfig.debug) or through other files
/// (drivers/sh/intc from drivers/sh/Kconfig from arch/sh/Kconfig). Walks every Kconfig file, so
/// it only runs for a symbol the tree does not define.
fn sourced_by_arches(root: &Path, file: &Path) -> Vec<String> {
    let mut parents: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(p);
                }
                continue;
            }
            if !e.file_name().to_string_lossy().starts_with("Kconfig") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                let line = line.trim();
                if let Some(rest) = ["source", "osource", "rsource", "orsource"].iter().find_map(|k| line.strip_prefix(k)) {
                    let target = rest.trim().trim_matches('"');
                    let target = if line.starts_with("rsource") || line.starts_with("orsource") {
                        rel.parent().unwrap_or(Path::new("")).join(target)
                    } else {
                        PathBuf::from(target)
                    };
                    parents.entry(target).or_default().push(rel.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![file.to_path_buf()];
    while let Some(f) = queue.pop() {
        for p in parents.get(&f).into_iter().flatten() {
            if !seen.insert(p.clone()) {
                continue;
            }
            match arch_of(p) {
                Some(a) => out.push(a),
                None => queue.push(p.clone()),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `Some("arm64")` for a path under `arch/arm64/`, unless it is `SRCARCH`'s own directory.
fn arch_of(file: &Path) -> Option<String> {
    let mut parts = file.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    if parts.next().as_deref() != Some("arch") {
        return None;
    }
    match parts.next() {
        // arch/x86/um/ is User-Mode Linux's x86 part, sourced only by arch/um.
        Some(a) if a == SRCARCH => (parts.next().as_deref() == Some("um")).then(|| "um".to_string()),
        a => a,
    }
}

// ---------------------------------------------------------------------------------------------
// Fix search

/// One `CONFIG_X=v` line of a suggested fragment.
pub type Assign = (String, Value);

/// Searches the smallest set of assignments that lets requests survive, following unmet
/// dependencies, `select`-only symbols and MODULES recursively.
pub struct Solver<'s, 'a> {
    an: &'s Analysis<'a>,
    /// What the user asked for: a fix never contradicts a request.
    requested: HashMap<String, Value>,
    memo: HashMap<(String, u8), Result<Vec<Assign>, String>>,
    visiting: HashSet<String>,
}

const MAX_DEPTH: usize = 10;

impl<'s, 'a> Solver<'s, 'a> {
    pub fn new(an: &'s Analysis<'a>, requested: &[Entry]) -> Self {
        let requested = effective_requests(requested).into_iter().map(|e| (e.symbol, e.value)).collect();
        Solver { an, requested, memo: HashMap::new(), visiting: HashSet::new() }
    }

    /// Assignments that make `sym` take `want`; `Err` says why no fix exists.
    pub fn fix_request(&mut self, sym: &str, want: &Value) -> Result<Vec<Assign>, String> {
        let an = self.an;
        match want {
            Value::Yes | Value::Module => {
                let mut out = Vec::new();
                if *want == Value::Module && !an.modules() {
                    out = self.enable("MODULES", Y, 0)?;
                }
                let need = if *want == Value::Module { M } else { Y };
                let mut rest = self.enable_inner(sym, need, 0, true)?;
                rest.retain(|(s, _)| s != sym);
                Ok(merge(out, rest))
            }
            Value::No => {
                let sels = an.active_selectors(sym);
                if sels.is_empty() {
                    // The request itself turns it off once its prompt shows.
                    return match self.reveal_prompt(sym, 0) {
                        Some(Ok(reveal)) => Ok(reveal),
                        Some(Err(e)) => Err(format!("{sym}'s prompt stays hidden ({e}) and its default turns it on")),
                        None => Err(format!("{sym} has no prompt and its default turns it on; nothing can turn it off")),
                    };
                }
                let mut out = Vec::new();
                for s in sels {
                    out = merge(out, self.disable(&s.selector, 0)?);
                }
                Ok(out)
            }
            Value::Num(_) | Value::Str(_) => {
                let defs = an.defs(sym);
                let mut best: Option<Vec<Assign>> = None;
                let mut why = String::new();
                for d in defs {
                    let mut fix = Vec::new();
                    for c in &d.deps {
                        match self.satisfy(&c.expr, true, M, 0) {
                            Ok(f) => fix = merge(fix, f),
                            Err(e) => {
                                why = e;
                                fix.clear();
                                break;
                            }
                        }
                    }
                    if let (Value::Num(n), true) = (want, why.is_empty()) {
                        // A value outside the range in force may fit another range whose condition we can meet.
                        if !d.ranges.is_empty() && !d.ranges.iter().any(|(lo, hi, c)| in_range(an, n, lo, hi) && c.is_none()) {
                            match d.ranges.iter().find(|(lo, hi, _)| in_range(an, n, lo, hi)) {
                                Some((_, _, Some(c))) => fix = merge(fix, self.satisfy(c, true, Y, 0)?),
                                Some((_, _, None)) => {}
                                None => {
                                    let (lo, hi, _) = &d.ranges[0];
                                    // Bounds that are symbols (NR_CPUS_RANGE_END) come from their own defaults.
                                    let computed: Vec<&str> = [lo, hi]
                                        .into_iter()
                                        .filter(|b| an.tree.symbols.contains_key(b.as_str()))
                                        .map(|b| b.as_str())
                                        .collect();
                                    let how = if computed.is_empty() {
                                        String::new()
                                    } else {
                                        format!(
                                            ", bounds computed by {}: see `cargo xtask config explain {}`",
                                            computed.join(" and "),
                                            computed.join(" ")
                                        )
                                    };
                                    return Err(format!(
                                        "{n} is outside the range {}..{} of {sym}{how}; pick a value in range",
                                        an.operand(lo),
                                        an.operand(hi)
                                    ));
                                }
                            }
                        }
                    }
                    if why.is_empty() && best.as_ref().is_none_or(|b| fix.len() < b.len()) {
                        best = Some(fix);
                    }
                }
                best.ok_or(why)
            }
        }
    }

    fn enable(&mut self, sym: &str, want: u8, depth: usize) -> Result<Vec<Assign>, String> {
        self.enable_inner(sym, want, depth, false)
    }

    /// Assignments that make `sym` at least `want`. `requested` is true for the user's own
    /// request, which is already in the fragment and must not be refused as a conflict.
    fn enable_inner(&mut self, sym: &str, want: u8, depth: usize, requested: bool) -> Result<Vec<Assign>, String> {
        let an = self.an;
        if an.tri(sym) >= want && !requested {
            return Ok(Vec::new());
        }
        if !requested && self.requested.get(sym) == Some(&Value::No) {
            return Err(format!("needs {sym}, which the fragments ask to be off (conflicting requests)"));
        }
        if depth > MAX_DEPTH {
            return Err(format!("dependency chain through {sym} is longer than {MAX_DEPTH}"));
        }
        let key = (sym.to_string(), want);
        if let Some(r) = self.memo.get(&key) {
            return r.clone();
        }
        if !self.visiting.insert(sym.to_string()) {
            return Err(format!("{sym} depends on itself through the chain"));
        }
        let r = self.enable_uncached(sym, want, depth);
        self.visiting.remove(sym);
        self.memo.insert(key, r.clone());
        r
    }

    fn enable_uncached(&mut self, sym: &str, want: u8, depth: usize) -> Result<Vec<Assign>, String> {
        let an = self.an;
        let defs = an.defs(sym);
        if defs.is_empty() {
            return Err(match diagnose(an, sym, &Value::Yes, None).first() {
                Some(Problem::OtherArch { arches, .. }) => format!("{sym} exists only on {}", arches.join(", ")),
                _ => format!("{sym} is not defined in this kernel"),
            });
        }
        let mut best: Option<Vec<Assign>> = None;
        let mut why = String::new();
        for d in defs {
            let mut fix = Vec::new();
            let mut ok = true;
            for c in &d.deps {
                match self.satisfy(&c.expr, true, want, depth + 1) {
                    Ok(f) => fix = merge(fix, f),
                    Err(e) => {
                        why = e;
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let value = if want == M && d.ty == Type::Tristate && an.modules() { Value::Module } else { Value::Yes };
            // Ways to set it: its prompt, a default, or a selector; take the cheapest.
            let mut ways: Vec<Vec<Assign>> = Vec::new();
            let assign = vec![(sym.to_string(), value.clone())];
            if let Some((_, cond)) = &d.prompt {
                match cond.as_ref().map(|c| self.satisfy(c, true, Y, depth + 1)).unwrap_or(Ok(Vec::new())) {
                    Ok(f) => ways.push(merge(f, assign.clone())),
                    Err(e) => why = e,
                }
            }
            // A default decides only while no prompt is visible: a `# CONFIG_X is not set` written
            // under a visible prompt (tinyconfig writes many) beats `default y`. The explicit line
            // stays in the fragment so a later visible prompt keeps the value too.
            if !an.prompt_visible(d) {
                for (v, cond) in &d.defaults {
                    if matches!(v, Expr::Const(N)) {
                        continue;
                    }
                    let f = self.satisfy(v, true, want, depth + 1).and_then(|f| match cond {
                        Some(c) => Ok(merge(f, self.satisfy(c, true, want, depth + 1)?)),
                        None => Ok(f),
                    });
                    match f {
                        Ok(f) if d.prompt.is_some() => ways.push(merge(f, assign.clone())),
                        Ok(f) => ways.push(f),
                        Err(e) => why = e,
                    }
                }
            }
            if ways.iter().all(|w| !w.is_empty()) {
                let mut edges: Vec<Select> = an.tree.selected_by.get(sym).cloned().unwrap_or_default();
                edges.retain(|e| !e.imply);
                // Selectors named like the symbol (VIRTIO_PCI for VIRTIO) are its natural
                // providers; try them first, then alphabetically.
                edges.sort_by_key(|e| (!e.selector.starts_with(sym), e.selector.clone()));
                for e in edges {
                    let f = self.enable(&e.selector, Y, depth + 1).and_then(|f| match &e.cond {
                        Some(c) => Ok(merge(f, self.satisfy(c, true, Y, depth + 1)?)),
                        None => Ok(f),
                    });
                    // An already-active selector forcing it on would have made it survive.
                    match f {
                        Ok(f) if !f.is_empty() => ways.push(f),
                        Ok(_) => {}
                        Err(e) => {
                            if why.is_empty() {
                                why = e
                            }
                        }
                    }
                    // A one-line fix cannot be beaten; stop scanning hundreds of selectors.
                    if ways.iter().any(|w| w.len() == 1) {
                        break;
                    }
                }
                if d.prompt.is_none() && ways.is_empty() && why.is_empty() {
                    why = format!("{sym} has no prompt and nothing that selects it can be turned on");
                }
            }
            if let Some(w) = ways.into_iter().min_by_key(|w| w.len()) {
                let full = merge(fix, w);
                if best.as_ref().is_none_or(|b| full.len() < b.len()) {
                    best = Some(full);
                }
            }
        }
        best.ok_or_else(|| if why.is_empty() { format!("nothing can turn {sym} on") } else { why })
    }

    fn disable(&mut self, sym: &str, depth: usize) -> Result<Vec<Assign>, String> {
        let an = self.an;
        if an.tri(sym) == N {
            return Ok(Vec::new());
        }
        if matches!(self.requested.get(sym), Some(Value::Yes | Value::Module)) {
            return Err(format!("needs {sym} off, which the fragments ask to be on (conflicting requests)"));
        }
        if depth > MAX_DEPTH {
            return Err(format!("chain through {sym} is longer than {MAX_DEPTH}"));
        }
        let mut out = Vec::new();
        for s in an.active_selectors(sym) {
            if s.selector == sym {
                continue;
            }
            out = merge(out, self.disable(&s.selector, depth + 1)?);
        }
        if an.defs(sym).iter().any(|d| an.prompt_shows(d)) {
            return Ok(merge(out, vec![(sym.to_string(), Value::No)]));
        }
        if !out.is_empty() {
            // Its selectors off may be enough; if a default keeps it on, the verify round says so.
            return Ok(out);
        }
        match self.reveal_prompt(sym, depth) {
            Some(Ok(reveal)) => Ok(merge(reveal, vec![(sym.to_string(), Value::No)])),
            Some(Err(e)) => Err(format!("{sym}'s prompt stays hidden ({e}) and its default keeps it on")),
            None => Err(format!("{sym} has no prompt; its default keeps it on")),
        }
    }

    /// Assignments that make a prompt of `sym` show, so a fragment line can set it: none when one
    /// shows already, else the cheapest that meets a prompt's `if` and its definition's
    /// dependencies (PROCESSOR_SELECT=y, which needs EXPERT=y, for CPU_SUP_HYGON). `None` when
    /// no definition has a prompt.
    fn reveal_prompt(&mut self, sym: &str, depth: usize) -> Option<Result<Vec<Assign>, String>> {
        let an = self.an;
        let defs = an.defs(sym);
        if defs.iter().any(|d| an.prompt_shows(d)) {
            return Some(Ok(Vec::new()));
        }
        let mut best: Option<Result<Vec<Assign>, String>> = None;
        for d in defs {
            let Some((_, cond)) = &d.prompt else { continue };
            let mut got = Ok(Vec::new());
            for e in d.deps.iter().map(|c| &c.expr).chain(cond) {
                got = got.and_then(|f| Ok(merge(f, self.satisfy(e, true, M, depth + 1)?)));
            }
            best = match (best, got) {
                (Some(Ok(b)), Ok(g)) => Some(Ok(if g.len() < b.len() { g } else { b })),
                (Some(Ok(b)), Err(_)) => Some(Ok(b)),
                (_, got) => Some(got),
            };
        }
        best
    }

    /// Assignments that make `e` at least `want` (`positive`) or `n` (not `positive`).
    fn satisfy(&mut self, e: &Expr, positive: bool, want: u8, depth: usize) -> Result<Vec<Assign>, String> {
        let an = self.an;
        let v = an.eval(e);
        if (positive && v >= want) || (!positive && v == N) {
            return Ok(Vec::new());
        }
        match (e, positive) {
            (Expr::Sym(s), true) => self.enable(s, want, depth),
            (Expr::Sym(s), false) => self.disable(s, depth),
            (Expr::Not(a), p) => self.satisfy(a, !p, Y, depth),
            (Expr::And(a, b), true) | (Expr::Or(a, b), false) => {
                let fa = self.satisfy(a, positive, want, depth)?;
                let fb = self.satisfy(b, positive, want, depth)?;
                Ok(merge(fa, fb))
            }
            (Expr::Or(_, _), true) | (Expr::And(_, _), false) => {
                let parts = if positive { alternatives(e) } else { conjuncts(e) };
                let mut best: Option<Vec<Assign>> = None;
                let mut why = String::new();
                for p in parts {
                    match self.satisfy(p, positive, want, depth) {
                        Ok(f) if best.as_ref().is_none_or(|b| f.len() < b.len()) => best = Some(f),
                        Ok(_) => {}
                        Err(e) => why = e,
                    }
                }
                best.ok_or(why)
            }
            (Expr::Const(c), _) => Err(format!("the condition is the constant {}", ["n", "m", "y"][*c as usize])),
            (Expr::Macro(m), _) => Err(format!("{m} is decided by the compiler or host, not by a fragment")),
            (Expr::Cmp(op, l, r), p) => {
                let sym_side = [l, r].into_iter().find(|t| an.tree.symbols.contains_key(t.as_str()));
                let lit = if sym_side == Some(l) { r } else { l };
                let (target, eq) = match (op, p) {
                    (CmpOp::Eq, true) | (CmpOp::Ne, false) => (lit.trim_matches('"'), true),
                    (CmpOp::Ne, true) | (CmpOp::Eq, false) => (lit.trim_matches('"'), false),
                    _ => return Err(format!("{} needs a numeric value we do not choose", an.show(e))),
                };
                let Some(s) = sym_side else { return Err(format!("{} compares constants", an.show(e))) };
                match (target, eq) {
                    ("y", true) | ("n", false) => self.enable(s, Y, depth),
                    ("m", true) => self.enable(s, M, depth),
                    ("n", true) | ("y", false) => self.disable(s, depth),
                    _ => Err(format!("{} needs a value we do not choose", an.show(e))),
                }
            }
        }
    }
}

fn in_range(an: &Analysis<'_>, n: &str, lo: &str, hi: &str) -> bool {
    let val = |s: &str| {
        let s = an.operand(s);
        s.strip_prefix("0x").map_or_else(|| s.parse::<i64>().ok(), |h| i64::from_str_radix(h, 16).ok())
    };
    matches!((val(n), val(lo), val(hi)), (Some(v), Some(l), Some(h)) if l <= v && v <= h)
}

/// Appends `b` to `a`, keeping the first assignment of each symbol except that `y` beats `m`.
fn merge(mut a: Vec<Assign>, b: Vec<Assign>) -> Vec<Assign> {
    for (s, v) in b {
        match a.iter_mut().find(|(x, _)| *x == s) {
            Some((_, old)) if *old == Value::Module && v == Value::Yes => *old = v,
            Some(_) => {}
            None => a.push((s, v)),
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Report

/// The suggested fragment for a set of lost requests, and which requests it cannot save.
#[derive(Debug, Clone, Default)]
pub struct Suggestion {
    /// Extra assignments, dependencies first.
    pub fragment: Vec<Assign>,
    /// Requests no fragment can save, with the reason.
    pub unfixable: Vec<(String, String)>,
}

/// Finds the fix for every lost request.
pub fn suggest(an: &Analysis<'_>, requested: &[Entry], lost: &[Lost]) -> Suggestion {
    let mut solver = Solver::new(an, requested);
    let mut s = Suggestion::default();
    for l in lost {
        let r = &l.request;
        let fix = match l.problems.first() {
            Some(Problem::Undefined { suggest: Some(t) }) => Err(format!("not defined; did you mean CONFIG_{t}?")),
            Some(Problem::Undefined { suggest: None }) => Err("not defined in this kernel".to_string()),
            Some(Problem::OtherArch { arches, .. }) => Err(format!("exists only on {}, the labs build {SRCARCH}", arches.join(", "))),
            Some(Problem::NotSourced { .. }) => Err("defined only in a file no architecture sources".to_string()),
            _ if l
                .problems
                .iter()
                .any(|p| matches!(p, Problem::ChoiceLost { winner } if solver.requested.get(winner) == Some(&Value::Yes))) =>
            {
                Err("conflicting requests: another member of the same choice is requested too; keep one".to_string())
            }
            _ => solver.fix_request(&r.symbol, &r.value),
        };
        match fix {
            Ok(f) => {
                let f = f.into_iter().filter(|(sym, _)| !solver.requested.contains_key(sym)).collect();
                s.fragment = merge(std::mem::take(&mut s.fragment), f);
            }
            Err(why) => s.unfixable.push((r.symbol.clone(), why)),
        }
    }
    s
}

/// Text for one lost request: where it was asked, its definition, the named problems and the
/// effective dependency with every symbol's value.
pub fn explain(an: &Analysis<'_>, l: &Lost) -> String {
    let r = &l.request;
    let got = match &l.got {
        Some(Value::No) => "not set".to_string(),
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    };
    let mut out = format!("CONFIG_{}: asked {} ({}:{}), final {got}\n", r.symbol, r.value, r.file.display(), r.line);
    out.push_str(&describe(an, &r.symbol, &l.problems));
    out
}

/// The analysis of one symbol (without a request): definitions, problems and dependencies.
pub fn describe(an: &Analysis<'_>, sym: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for p in problems {
        let _ = writeln!(out, "    problem: {}", problem_text(an, sym, p));
    }
    for d in an.defs(sym) {
        let ty = format!("{:?}", d.ty).to_lowercase();
        let prompt = match &d.prompt {
            Some((t, None)) => format!("prompt \"{t}\""),
            Some((t, Some(c))) => format!("prompt \"{t}\" if {}", an.show(c)),
            None => "no prompt".to_string(),
        };
        let _ = writeln!(out, "    defined at {}:{} ({ty}, {prompt})", d.file.display(), d.line);
        if d.deps.is_empty() {
            out.push_str("      no dependencies\n");
        } else {
            let _ = writeln!(out, "      effective dependency [={}]:", ["n", "m", "y"][an.deps_value(d) as usize]);
        }
        for c in &d.deps {
            for part in conjuncts(&c.expr) {
                let v = an.eval(part);
                // `m` satisfies the dependency of a module but caps the symbol at `m`.
                let mark = ["UNMET", "m-cap", "ok   "][v as usize];
                let alts = alternatives(part);
                let text = if alts.len() > 1 {
                    format!("one of: {}", alts.iter().map(|a| an.show(a)).collect::<Vec<_>>().join("  |  "))
                } else {
                    an.show(part)
                };
                let _ = writeln!(out, "      {mark} {text}   ({} {})", c.origin, c.at);
            }
        }
        for (lo, hi, cond) in &d.ranges {
            let c = cond.as_ref().map(|c| format!(" if {}", an.show(c))).unwrap_or_default();
            let bound = |b: &str| if an.tree.symbols.contains_key(b) { format!("{b} [={}]", an.operand(b)) } else { b.to_string() };
            let _ = writeln!(out, "      range {} {}{c}", bound(lo), bound(hi));
        }
    }
    let sels: Vec<&Select> = an.tree.selected_by.get(sym).map(|v| v.iter().filter(|s| !s.imply).collect()).unwrap_or_default();
    let forced = problems.iter().any(|p| matches!(p, Problem::ForcedBySelect { .. }));
    if !sels.is_empty() && (forced || problems.iter().any(|p| matches!(p, Problem::NoPrompt))) {
        // Those that are on come first, then the cheapest to turn on; the rest are summarised.
        let mut solver = Solver::new(an, &[]);
        let mut rows: Vec<(u8, usize, String)> = sels
            .iter()
            .map(|s| {
                let cond = s.cond.as_ref().map(|c| format!(" if {}", an.show(c))).unwrap_or_default();
                let active = an.tri(&s.selector) > N && s.cond.as_ref().is_none_or(|c| an.eval(c) > N);
                let (rank, cost, can) = if active {
                    (0, 0, "on, forces it".to_string())
                } else if an.tri(&s.selector) > N {
                    (1, 0, "on, but its condition is not".to_string())
                } else {
                    match solver.enable(&s.selector, Y, 0) {
                        Ok(f) => (2, f.len(), format!("can be turned on with {} assignment(s)", f.len())),
                        Err(e) => (3, 0, format!("cannot be turned on: {e}")),
                    }
                };
                (rank, cost, format!("      {} [={}]{cond} ({}): {can}", s.selector, an.shown(&s.selector), s.at))
            })
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        let _ = writeln!(out, "    selected by ({}):", sels.len());
        for (_, _, row) in rows.iter().take(12) {
            let _ = writeln!(out, "{row}");
        }
        if rows.len() > 12 {
            let _ = writeln!(out, "      ... and {} more", rows.len() - 12);
        }
    }
    out
}

fn problem_text(an: &Analysis<'_>, sym: &str, p: &Problem) -> String {
    match p {
        Problem::Undefined { suggest: Some(s) } => format!("no Kconfig file defines {sym}; did you mean CONFIG_{s}? fix the name"),
        Problem::Undefined { suggest: None } => format!("no Kconfig file defines {sym}; remove the line or check the kernel version"),
        Problem::OtherArch { arches, at } => format!(
            "other architecture: {sym} is defined only for {} ({}); the labs build {SRCARCH}, drop the line",
            arches.join(", "),
            at.join(", ")
        ),
        Problem::NotSourced { at } => format!(
            "{sym} is defined only in {}, which no architecture's Kconfig sources (a test or documentation file); drop the line",
            at.join(", ")
        ),
        Problem::UnmetDependency => "unmet dependency (conjuncts marked UNMET below)".to_string(),
        Problem::NoPrompt => match an.defs(sym).iter().find_map(|d| d.prompt.as_ref().and_then(|(_, c)| c.as_ref())) {
            Some(c) => {
                format!("prompt hidden: {sym}'s prompt is conditional on {} and only a `select` or its default sets it now", an.show(c))
            }
            None => format!("no prompt: {sym} cannot be set by a fragment, only by a `select` or its default"),
        },
        Problem::ModuleWithoutModules => {
            format!("asked m but MODULES [={}]: without modules Kconfig builds it in or drops it", an.shown("MODULES"))
        }
        Problem::OutOfRange { lo, hi } => format!("value out of range: the range in force is {lo}..{hi}"),
        Problem::ChoiceLost { winner } => {
            let at = an.defs(sym).iter().find_map(|d| d.choice).map(|i| an.tree.choices[i].at.clone()).unwrap_or_default();
            format!("choice member lost: {winner} [=y] is the selected member of the same choice ({at}); request only one of them")
        }
        Problem::ForcedBySelect { selectors } => format!("forced on by select from {}", selectors.join(", ")),
        Problem::Unknown => "Kconfig changed the value for a reason this analysis does not model".to_string(),
    }
}

/// The outcome of a fix verified with the real Kconfig tool.
#[derive(Debug, Clone)]
pub struct Verified {
    pub suggestion: Suggestion,
    /// Requests still lost after olddefconfig with the fragment, empty when verified.
    pub still_lost: Vec<String>,
    pub rounds: usize,
}

/// Suggests a fragment and verifies it with `olddefconfig`: `run` applies assignments to a
/// copy of the configured tree and returns the resulting `.config`. When the result still
/// loses fixable requests, the analysis runs again on it (dependencies of dependencies that
/// only show once the first ones are on), up to three rounds.
pub fn verified_fix(
    tree: &Tree,
    flat: &SymbolIndex,
    config: &[Entry],
    requested: &[Entry],
    run: &mut dyn FnMut(&[Assign]) -> Result<Vec<Entry>>,
) -> Result<Verified> {
    let an = Analysis::new(tree, flat, config);
    let first_lost = lost(&an, requested);
    if first_lost.is_empty() {
        return Ok(Verified { suggestion: Suggestion::default(), still_lost: Vec::new(), rounds: 0 });
    }
    let mut sug = suggest(&an, requested, &first_lost);
    let reqs: Vec<Assign> = effective_requests(requested).into_iter().map(|e| (e.symbol, e.value)).collect();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut all = reqs.clone();
        all.extend(sug.fragment.iter().cloned());
        let result = run(&all)?;
        let an = Analysis::new(tree, flat, &result);
        let unfixable: HashSet<&str> = sug.unfixable.iter().map(|(s, _)| s.as_str()).collect();
        let again: Vec<Lost> = lost(&an, requested).into_iter().filter(|l| !unfixable.contains(l.request.symbol.as_str())).collect();
        if again.is_empty() || rounds == 3 {
            return Ok(Verified { still_lost: again.iter().map(|l| l.request.symbol.clone()).collect(), suggestion: sug, rounds });
        }
        let more = suggest(&an, requested, &again);
        let before = sug.fragment.len();
        sug.fragment = merge(std::mem::take(&mut sug.fragment), more.fragment);
        for u in more.unfixable {
            if !sug.unfixable.iter().any(|(s, _)| *s == u.0) {
                sug.unfixable.push(u);
            }
        }
        if sug.fragment.len() == before {
            let still: Vec<String> = again.iter().map(|l| l.request.symbol.clone()).collect();
            return Ok(Verified { still_lost: still, suggestion: sug, rounds });
        }
    }
}

/// Renders the verified fix: the fragment ready to paste, and what no fragment can save.
pub fn render_fix(v: &Verified) -> String {
    let mut out = String::new();
    let s = &v.suggestion;
    if s.fragment.is_empty() && s.unfixable.is_empty() && v.still_lost.is_empty() {
        return out;
    }
    if !s.fragment.is_empty() {
        let mark = if v.still_lost.is_empty() {
            format!("verified with olddefconfig in {} round(s): every fixable request survives", v.rounds)
        } else {
            format!("NOT verified: olddefconfig still drops {}", v.still_lost.join(", "))
        };
        let _ = writeln!(out, "suggested fragment ({mark}):");
        out.push_str(&kconfig::render(&s.fragment));
    } else if !v.still_lost.is_empty() {
        let _ = writeln!(out, "no fragment found: olddefconfig still drops {}", v.still_lost.join(", "));
    }
    for (sym, why) in &s.unfixable {
        let _ = writeln!(out, "no fix for CONFIG_{sym}: {why}");
    }
    out
}

/// The suggested fragment in a rendered report (`render_fix`), exactly as a user would paste it.
pub fn fragment_in(report: &str) -> String {
    report
        .lines()
        .skip_while(|l| !l.starts_with("suggested fragment"))
        .skip(1)
        .take_while(|l| l.starts_with("CONFIG_") || l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Applies `assign` to a copy of `build/.config` in `scratch` and runs the kernel's own
/// `olddefconfig` there; returns the resulting `.config`. `scratch` is removed afterwards.
pub fn olddefconfig_with(sh: &Shell, src: &Path, build: &Path, scratch: &Path, assign: &[Assign]) -> Result<Vec<Entry>> {
    remove_dead_scratch(scratch);
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).with_context(|| format!("create scratch directory {}", scratch.display()))?;
    let result = (|| {
        let config = build.join(".config");
        let mut text = std::fs::read_to_string(&config)
            .with_context(|| format!("read {} (configure the tree first: cargo xtask kernel)", config.display()))?;
        text.push_str("\n# kernel-lab: requests and suggested fix, verified below\n");
        text.push_str(&kconfig::render(assign));
        std::fs::write(scratch.join(".config"), text).with_context(|| format!("write {}/.config", scratch.display()))?;
        let o = crate::kbuild::make_out_arg(scratch);
        let out = cmd!(sh, "make -C {src} {o} olddefconfig").quiet().ignore_status().output().context("run make olddefconfig")?;
        if !out.status.success() {
            bail!(
                "make olddefconfig in {} failed ({}): {}",
                scratch.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).lines().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        kconfig::parse_file(&scratch.join(".config"))
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Everything `configure` prints when options were lost: each explanation, then the verified fix.
pub fn failure_report(
    tree: &Tree,
    flat: &SymbolIndex,
    config: &[Entry],
    requested: &[Entry],
    run: &mut dyn FnMut(&[Assign]) -> Result<Vec<Entry>>,
) -> Result<Option<String>> {
    let an = Analysis::new(tree, flat, config);
    let lost = lost(&an, requested);
    if lost.is_empty() {
        return Ok(None);
    }
    let mut out =
        format!("{} requested option(s) did not survive olddefconfig; Kconfig drops options whose dependencies are unmet:\n", lost.len());
    for l in &lost {
        out.push_str("  ");
        out.push_str(&explain(&an, l));
    }
    let v = verified_fix(tree, flat, config, requested, run)?;
    out.push_str(&render_fix(&v));
    if !v.suggestion.fragment.is_empty() {
        out.push_str("save it with `cargo xtask config fix --recipe <recipe> --out FILE` and add FILE to the recipe's config.fragments\n");
    }
    Ok(Some(out))
}

/// Parses `SYMBOL`, `CONFIG_SYMBOL` or `SYMBOL=value` from the command line (default `y`).
pub fn parse_request(arg: &str) -> Result<Entry> {
    let name = arg.split('=').next().unwrap_or(arg);
    if name.len() > 100 || arg.contains(|c: char| c.is_control()) {
        bail!("symbol argument {:?}...: not a Kconfig symbol (at most 100 characters, one line)", arg.chars().take(40).collect::<String>());
    }
    let line = if arg.contains('=') { arg.to_string() } else { format!("{arg}=y") };
    let line = if line.starts_with("CONFIG_") { line } else { format!("CONFIG_{line}") };
    let mut e = kconfig::parse(&line, Path::new("command line"))
        .with_context(|| format!("symbol argument {arg:?}: write SYMBOL or SYMBOL=value"))?;
    e.pop().with_context(|| format!("symbol argument {arg:?} is empty: write SYMBOL or SYMBOL=value"))
}

/// Removes `.NAME.verify-PID` siblings of `scratch` whose run was killed (its pid is gone).
fn remove_dead_scratch(scratch: &Path) {
    let (Some(parent), Some(name)) = (scratch.parent(), scratch.file_name().and_then(|n| n.to_str())) else { return };
    let Some((prefix, _)) = name.rsplit_once('-') else { return };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = file.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A symbol's value in `config` as `config explain` prints it.
pub fn current_value(config: &[Entry], sym: &str) -> String {
    match config.iter().rev().find(|e| e.symbol == sym).map(|e| &e.value) {
        Some(Value::No) | None => "n (not set)".to_string(),
        Some(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_argument_is_one_short_symbol() {
        assert_eq!(parse_request("NET_NS").unwrap().symbol, "NET_NS");
        assert_eq!(parse_request("CONFIG_E1000=m").unwrap().value, Value::Module);
        let long = "A".repeat(20_000);
        let t = std::time::Instant::now();
        assert!(format!("{:#}", parse_request(&long).unwrap_err()).contains("at most 100 characters"));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert!(parse_request("NET_NS\nMODULES").is_err());
    }

    /// A scratch kernel tree from `(path, text)` pairs, loaded both ways.
    struct Fixture {
        dir: PathBuf,
        tree: Tree,
        flat: SymbolIndex,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(files: &[(&str, &str)]) -> Fixture {
        let dir = crate::testutil::scratch("kexplain");
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let tree = load(&dir, SRCARCH).unwrap();
        let flat = kconfig::index(&dir, None).unwrap();
        Fixture { dir, tree, flat }
    }

    fn entries(file: &str, text: &str) -> Vec<Entry> {
        kconfig::parse(text, Path::new(file)).unwrap()
    }

    /// Explanation and unverified suggestion for `requests` against `config`.
    fn analyse(f: &Fixture, config: &str, requests: &str) -> (Vec<Lost>, String, Suggestion) {
        let config = entries(".config", config);
        let req = entries("lab.config", requests);
        let an = Analysis::new(&f.tree, &f.flat, &config);
        let lost = lost(&an, &req);
        let text: String = lost.iter().map(|l| explain(&an, l)).collect();
        let sug = suggest(&an, &req, &lost);
        (lost, text, sug)
    }

    fn assigns(pairs: &[(&str, Value)]) -> Vec<Assign> {
        pairs.iter().map(|(s, v)| (s.to_string(), v.clone())).collect()
    }

    const DRIVERS: &str = "\
menu \"SCSI device support\"
config SCSI
\ttristate \"SCSI device support\"
\tdepends on BLOCK
\thelp
\t  if you are unsure
\t  config lines in help are prose
menuconfig SCSI_LOWLEVEL
\tbool \"SCSI low-level drivers\"
\tdepends on SCSI
\tdefault y
if SCSI_LOWLEVEL && SCSI
config SCSI_VIRTIO
\ttristate \"virtio-scsi support\"
\tdepends on VIRTIO
endif
endmenu
";

    const ROOT: &str = "\
mainmenu \"Fixture\"
config BLOCK
\tbool \"Block layer\"
config MODULES
\tbool \"Modules\"
config BROKEN
\tbool
config PCI
\tbool \"PCI\"
config VIRTIO
\ttristate
config VIRTIO_PCI
\ttristate \"virtio pci\"
\tdepends on PCI
\tselect VIRTIO
config RPROC_DSP
\tbool \"remote DSP\"
\tdepends on BROKEN
\tselect VIRTIO
source \"drivers/Kconfig\"
source \"arch/$(SRCARCH)/Kconfig\"
";

    fn tree_with_drivers() -> Fixture {
        fixture(&[
            ("Kconfig", ROOT),
            ("drivers/Kconfig", "if BLOCK\nsource \"drivers/scsi/Kconfig\"\nendif\n"),
            ("drivers/scsi/Kconfig", DRIVERS),
            ("arch/x86/Kconfig", "config X86\n\tdef_bool y\n"),
            ("arch/arm64/Kconfig", "config ARM64_VA_BITS_48\n\tbool \"48-bit\"\nsource \"drivers/coresight/Kconfig\"\n"),
            ("drivers/coresight/Kconfig", "config CORESIGHT\n\tbool \"coresight\"\n"),
            ("scripts/kconfig/tests/Kconfig", "config TEST_ONLY\n\tbool \"t\"\n"),
        ])
    }

    #[test]
    fn expressions_parse_and_evaluate_with_values() {
        let e = parse_expr("A && (B || !C) && D != \"x\" && $(cc-option,-foo)").unwrap();
        assert_eq!(conjuncts(&e).len(), 4);
        assert!(matches!(conjuncts(&e)[3], Expr::Macro(_)));
        let f = fixture(&[(
            "Kconfig",
            "config A\n\tbool \"a\"\nconfig B\n\ttristate \"b\"\nconfig C\n\tbool \"c\"\nconfig D\n\tstring \"d\"\n",
        )]);
        let cfg = entries(".config", "CONFIG_A=y\nCONFIG_B=m\nCONFIG_MODULES=y\nCONFIG_C=y\nCONFIG_D=\"x\"\n");
        let an = Analysis::new(&f.tree, &f.flat, &cfg);
        // B=m, so B || !C is m; D != "x" is false.
        assert_eq!(an.eval(&parse_expr("A && (B || !C)").unwrap()), M);
        assert_eq!(an.eval(&e), N);
        assert_eq!(an.show(&parse_expr("A && (B || !C)").unwrap()), "A [=y] && (B [=m] || !C [=y])");
        assert_eq!(parse_expr("A && && B"), None);
    }

    #[test]
    fn nested_if_across_source_is_inherited_with_values_and_fixed() {
        let f = tree_with_drivers();
        let def = &f.tree.symbols["SCSI_VIRTIO"][0];
        let origins: Vec<(&str, &str)> = def.deps.iter().map(|c| (c.origin, c.at.as_str())).collect();
        assert_eq!(origins, [("depends on", "drivers/scsi/Kconfig:15"), ("if", "drivers/scsi/Kconfig:12"), ("if", "drivers/Kconfig:1"),]);
        // The help text's "if"/"config" prose opened no block and defined no symbol.
        assert!(!f.tree.symbols.contains_key("lines"));
        let (lost, text, sug) = analyse(&f, "CONFIG_PCI=y\n# CONFIG_BLOCK is not set\n", "CONFIG_SCSI_VIRTIO=y\n");
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].problems, [Problem::UnmetDependency]);
        assert!(text.contains("CONFIG_SCSI_VIRTIO: asked y (lab.config:1), final absent"), "{text}");
        assert!(text.contains("UNMET VIRTIO [=n]   (depends on drivers/scsi/Kconfig:15)"), "{text}");
        assert!(text.contains("UNMET SCSI_LOWLEVEL [=n]   (if drivers/scsi/Kconfig:12)"), "{text}");
        assert!(text.contains("UNMET BLOCK [=n]   (if drivers/Kconfig:1)"), "{text}");
        // VIRTIO has no prompt, so its provider VIRTIO_PCI is turned on; SCSI_LOWLEVEL is default y
        // once SCSI is on, but kept explicit.
        assert_eq!(
            sug.fragment,
            assigns(&[("VIRTIO_PCI", Value::Yes), ("BLOCK", Value::Yes), ("SCSI", Value::Yes), ("SCSI_LOWLEVEL", Value::Yes)])
        );
        assert!(sug.unfixable.is_empty());
    }

    #[test]
    fn a_module_dependency_caps_a_request_for_y() {
        let f = tree_with_drivers();
        let cfg = "CONFIG_MODULES=y\nCONFIG_BLOCK=y\nCONFIG_PCI=y\nCONFIG_SCSI=m\nCONFIG_SCSI_LOWLEVEL=y\nCONFIG_VIRTIO=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_SCSI_VIRTIO=m\n";
        let (lost, text, sug) = analyse(&f, cfg, "CONFIG_SCSI_VIRTIO=y\n");
        assert_eq!(lost[0].problems, [Problem::UnmetDependency]);
        assert!(text.contains("m-cap SCSI [=m]   (if drivers/scsi/Kconfig:12)"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("SCSI", Value::Yes)]));
        // Asking m is satisfied by the same tree.
        let (lost, _, _) = analyse(&f, cfg, "CONFIG_SCSI_VIRTIO=m\n");
        assert!(lost.is_empty(), "{lost:?}");
    }

    #[test]
    fn select_only_symbol_lists_selectors_and_which_can_be_turned_on() {
        let f = tree_with_drivers();
        let (lost, text, sug) = analyse(&f, "CONFIG_PCI=y\n", "CONFIG_VIRTIO=y\n");
        assert_eq!(lost[0].problems, [Problem::NoPrompt]);
        assert!(text.contains("no prompt: VIRTIO cannot be set by a fragment"), "{text}");
        assert!(text.contains("VIRTIO_PCI [=n] (Kconfig:15): can be turned on with 1 assignment(s)\n      RPROC_DSP"), "{text}");
        assert!(text.contains("RPROC_DSP [=n] (Kconfig:19): cannot be turned on: BROKEN has no prompt"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("VIRTIO_PCI", Value::Yes)]));
    }

    #[test]
    fn depends_on_broken_has_no_fix() {
        let f = tree_with_drivers();
        let (lost, _, sug) = analyse(&f, "", "CONFIG_RPROC_DSP=y\n");
        assert_eq!(lost[0].problems, [Problem::UnmetDependency]);
        assert!(sug.fragment.is_empty());
        assert_eq!(sug.unfixable.len(), 1);
        assert!(sug.unfixable[0].1.contains("BROKEN"), "{:?}", sug.unfixable);
    }

    #[test]
    fn other_architecture_is_named_and_unfixable() {
        let f = tree_with_drivers();
        let (lost, text, sug) = analyse(&f, "", "CONFIG_ARM64_VA_BITS_48=y\nCONFIG_SCSI_VIRTUO=y\n");
        assert_eq!(lost[0].problems, [Problem::OtherArch { arches: vec!["arm64".into()], at: vec!["arch/arm64/Kconfig:1".into()] }]);
        assert!(text.contains("other architecture: ARM64_VA_BITS_48 is defined only for arm64 (arch/arm64/Kconfig:1)"), "{text}");
        // A typo is still told apart from another architecture.
        assert!(text.contains("did you mean CONFIG_SCSI_VIRTIO?"), "{text}");
        assert_eq!(sug.unfixable.len(), 2);
        assert!(sug.unfixable[0].1.contains("only on arm64"), "{:?}", sug.unfixable);
        // A driver outside arch/ that only arm64 sources belongs to arm64; a file nobody sources is named.
        let (lost, text, sug) = analyse(&f, "", "CONFIG_CORESIGHT=y\nCONFIG_TEST_ONLY=y\n");
        assert_eq!(lost[0].problems, [Problem::OtherArch { arches: vec!["arm64".into()], at: vec!["drivers/coresight/Kconfig:1".into()] }]);
        assert_eq!(lost[1].problems, [Problem::NotSourced { at: vec!["scripts/kconfig/tests/Kconfig:1".into()] }]);
        assert!(text.contains("no architecture's Kconfig sources"), "{text}");
        assert_eq!(sug.unfixable.len(), 2);
        // x86's own symbols come from the sourced arch/x86 file.
        assert!(f.tree.symbols.contains_key("X86"));
    }

    #[test]
    fn module_without_modules_is_reported_and_fixed_by_modules() {
        let f = tree_with_drivers();
        let (lost, text, sug) = analyse(&f, "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO=y\n", "CONFIG_VIRTIO_PCI=m\n");
        assert_eq!(lost[0].problems, [Problem::ModuleWithoutModules]);
        assert!(text.contains("asked m but MODULES [=n]"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("MODULES", Value::Yes)]));
        // With MODULES on, m -> y of a bool is what everyone expects and is not reported.
        let (lost, _, _) = analyse(&f, "CONFIG_MODULES=y\nCONFIG_PCI=y\n", "CONFIG_PCI=m\n");
        assert!(lost.is_empty(), "{lost:?}");
    }

    #[test]
    fn or_alternatives_are_shown_and_the_cheapest_is_chosen() {
        let f = fixture(&[(
            "Kconfig",
            "config PCI\n\tbool \"PCI\"\nconfig EXPERT\n\tbool \"expert\"\nconfig ACPI\n\tbool \"ACPI\"\n\tdepends on EXPERT\nconfig NIC\n\tbool \"nic\"\n\tdepends on ACPI || PCI\n",
        )]);
        let (lost, text, sug) = analyse(&f, "", "CONFIG_NIC=y\n");
        assert_eq!(lost[0].problems, [Problem::UnmetDependency]);
        assert!(text.contains("UNMET one of: ACPI [=n]  |  PCI [=n]"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("PCI", Value::Yes)]));
        // A request for PCI off rules that alternative out and the other one is taken.
        let (_, _, sug) = analyse(&f, "", "CONFIG_NIC=y\n# CONFIG_PCI is not set\n");
        assert_eq!(sug.fragment, assigns(&[("EXPERT", Value::Yes), ("ACPI", Value::Yes)]));
    }

    #[test]
    fn choice_member_that_lost_names_the_winner() {
        let f = fixture(&[(
            "Kconfig",
            "config DEBUG_KERNEL\n\tbool \"debug\"\nchoice\n\tprompt \"Debug info\"\n\tdepends on DEBUG_KERNEL\nconfig DWARF4\n\tbool \"dwarf4\"\nconfig DWARF5\n\tbool \"dwarf5\"\nendchoice\n",
        )]);
        assert_eq!(f.tree.choices[0].members, ["DWARF4", "DWARF5"]);
        let def = &f.tree.symbols["DWARF5"][0];
        assert_eq!((def.deps[0].origin, def.deps[0].at.as_str()), ("choice depends on", "Kconfig:5"));
        let (lost, text, _) = analyse(&f, "CONFIG_DEBUG_KERNEL=y\nCONFIG_DWARF4=y\n", "CONFIG_DWARF5=y\n");
        assert_eq!(lost[0].problems, [Problem::ChoiceLost { winner: "DWARF4".into() }]);
        assert!(text.contains("DWARF4 [=y] is the selected member of the same choice (Kconfig:3)"), "{text}");
        // Asking for both members is a conflict no fragment can solve.
        let (_, _, sug) = analyse(&f, "CONFIG_DEBUG_KERNEL=y\nCONFIG_DWARF4=y\n", "CONFIG_DWARF5=y\nCONFIG_DWARF4=y\n");
        assert!(sug.unfixable[0].1.contains("conflicting requests"), "{:?}", sug.unfixable);
        // Without DEBUG_KERNEL the choice itself is hidden: an unmet dependency, fixed by it.
        let (lost, _, sug) = analyse(&f, "", "CONFIG_DWARF5=y\n");
        assert_eq!(lost[0].problems, [Problem::UnmetDependency]);
        assert_eq!(sug.fragment, assigns(&[("DEBUG_KERNEL", Value::Yes)]));
    }

    /// A prompt behind `if` (CPU_SUP_HYGON's `if PROCESSOR_SELECT`): the option cannot be turned
    /// off until the condition shows the prompt, and the fix says so.
    #[test]
    fn a_hidden_prompt_is_revealed_to_turn_an_option_off() {
        let f = fixture(&[(
            "Kconfig",
            "config EXPERT\n\tbool \"expert\"\nconfig PROCESSOR_SELECT\n\tbool \"select\" if EXPERT\nconfig CPU_SUP_HYGON\n\tbool \"hygon\" if PROCESSOR_SELECT\n\tdefault y\nconfig FIXED\n\tbool\n\tdefault y\n",
        )]);
        let cfg = "CONFIG_CPU_SUP_HYGON=y\nCONFIG_FIXED=y\n";
        let (lost, _, sug) = analyse(&f, cfg, "# CONFIG_CPU_SUP_HYGON is not set\n");
        assert_eq!(lost[0].problems, [Problem::NoPrompt]);
        // The prompt's condition, and what that condition's own prompt needs.
        assert_eq!(sug.fragment, assigns(&[("EXPERT", Value::Yes), ("PROCESSOR_SELECT", Value::Yes)]), "{:?}", sug.unfixable);
        assert!(sug.unfixable.is_empty(), "{:?}", sug.unfixable);
        // Asking for the condition off too is a conflict, named as one.
        let (_, _, sug) = analyse(&f, cfg, "# CONFIG_CPU_SUP_HYGON is not set\n# CONFIG_PROCESSOR_SELECT is not set\n");
        assert!(sug.unfixable.iter().any(|(_, why)| why.contains("conflicting requests")), "{:?}", sug.unfixable);
        // Without any prompt nothing can turn it off.
        let (_, _, sug) = analyse(&f, "CONFIG_CPU_SUP_HYGON=y\nCONFIG_FIXED=y\n", "# CONFIG_FIXED is not set\n");
        assert!(sug.fragment.is_empty());
        assert!(sug.unfixable[0].1.contains("FIXED has no prompt and its default turns it on"), "{:?}", sug.unfixable);
    }

    #[test]
    fn value_out_of_range_finds_the_range_that_allows_it() {
        let f = fixture(&[(
            "Kconfig",
            "config BIGSMP\n\tbool \"big\"\nconfig NR_CPUS\n\tint \"cpus\"\n\trange 2 8 if !BIGSMP\n\trange 2 512 if BIGSMP\n\tdefault 8\n",
        )]);
        let (lost, text, sug) = analyse(&f, "CONFIG_NR_CPUS=8\n", "CONFIG_NR_CPUS=64\n");
        assert_eq!(lost[0].problems, [Problem::OutOfRange { lo: "2".into(), hi: "8".into() }]);
        assert!(text.contains("value out of range: the range in force is 2..8"), "{text}");
        assert!(text.contains("range 2 512 if BIGSMP [=n]"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("BIGSMP", Value::Yes)]));
        let (_, _, sug) = analyse(&f, "CONFIG_NR_CPUS=8\n", "CONFIG_NR_CPUS=4096\n");
        assert!(sug.fragment.is_empty());
        assert!(sug.unfixable[0].1.contains("4096 is outside the range 2..8 of NR_CPUS; pick"), "{:?}", sug.unfixable);
    }

    #[test]
    fn forced_by_select_names_the_selector_and_turns_it_off() {
        let f = tree_with_drivers();
        let cfg = "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO=y\n";
        let (lost, text, sug) = analyse(&f, cfg, "# CONFIG_VIRTIO is not set\n");
        assert_eq!(lost[0].problems, [Problem::ForcedBySelect { selectors: vec!["VIRTIO_PCI".into()] }]);
        assert!(text.contains("forced on by select from VIRTIO_PCI"), "{text}");
        assert!(text.contains("selected by (2):\n      VIRTIO_PCI [=y] (Kconfig:15): on, forces it\n"), "{text}");
        assert_eq!(sug.fragment, assigns(&[("VIRTIO_PCI", Value::No)]));
        // Unless the selector is requested too: conflicting requests, no fix.
        let (_, _, sug) = analyse(&f, cfg, "CONFIG_VIRTIO_PCI=y\n# CONFIG_VIRTIO is not set\n");
        assert!(sug.unfixable[0].1.contains("conflicting requests"), "{:?}", sug.unfixable);
    }

    #[test]
    fn survivors_and_overridden_requests_are_not_reported() {
        let f = tree_with_drivers();
        let cfg = "CONFIG_PCI=y\nCONFIG_BLOCK=y\n";
        // The later request (n) overrides the earlier one (y), as in merge_config.sh.
        let (lost, _, _) = analyse(&f, cfg, "CONFIG_PCI=y\nCONFIG_SCSI=y\n# CONFIG_SCSI is not set\n# CONFIG_MODULES is not set\n");
        assert!(lost.is_empty(), "{lost:?}");
        // Even a final config that happens to contain an undefined symbol does not pass it.
        let (lost, _, _) = analyse(&f, "CONFIG_NO_SUCH=y\n", "CONFIG_NO_SUCH=y\n");
        assert_eq!(lost[0].problems, [Problem::Undefined { suggest: None }]);
    }

    #[test]
    fn fix_is_verified_and_rerun_on_what_olddefconfig_gives() {
        let f = tree_with_drivers();
        let config = entries(".config", "CONFIG_PCI=y\n");
        let req = entries("lab.config", "CONFIG_SCSI_VIRTIO=y\nCONFIG_ARM64_VA_BITS_48=y\n");
        // Round 1 pretends olddefconfig turned PCI off (say, through a choice we do not model), which
        // hides VIRTIO_PCI; round 2 must see that in the new .config and add PCI.
        let mut calls = Vec::new();
        let mut run = |a: &[Assign]| -> Result<Vec<Entry>> {
            calls.push(a.to_vec());
            let text = if a.iter().any(|(s, _)| s == "PCI") {
                "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO=y\nCONFIG_BLOCK=y\nCONFIG_SCSI=y\nCONFIG_SCSI_LOWLEVEL=y\nCONFIG_SCSI_VIRTIO=y\n"
            } else {
                "# CONFIG_PCI is not set\nCONFIG_BLOCK=y\nCONFIG_SCSI=y\nCONFIG_SCSI_LOWLEVEL=y\n"
            };
            Ok(entries(".config", text))
        };
        let v = verified_fix(&f.tree, &f.flat, &config, &req, &mut run).unwrap();
        assert_eq!(calls.len(), 2);
        // Each run gets the requests first, then the fix.
        assert_eq!(calls[0][0], ("SCSI_VIRTIO".to_string(), Value::Yes));
        assert!(v.still_lost.is_empty(), "{v:?}");
        assert_eq!(v.rounds, 2);
        let text = render_fix(&v);
        assert!(text.contains("verified with olddefconfig in 2 round(s)"), "{text}");
        assert!(text.contains("CONFIG_VIRTIO_PCI=y\n") && text.contains("CONFIG_PCI=y\n"), "{text}");
        assert!(text.contains("no fix for CONFIG_ARM64_VA_BITS_48: exists only on arm64"), "{text}");
        // A tool that never keeps the option: reported as not verified, naming it.
        let mut never = |_: &[Assign]| -> Result<Vec<Entry>> { Ok(entries(".config", "CONFIG_PCI=y\n")) };
        let v = verified_fix(&f.tree, &f.flat, &config, &req, &mut never).unwrap();
        assert_eq!(v.still_lost, ["SCSI_VIRTIO"]);
        assert!(render_fix(&v).contains("NOT verified: olddefconfig still drops SCSI_VIRTIO"), "{}", render_fix(&v));
    }

    /// The tree read through `source` (for x86) against the flat walk of every Kconfig file: every
    /// symbol outside `arch/` that some file defines is reached, and the SCSI driver inherits the
    /// `if` of its sourcing file. KERNEL_LAB_LINUX_SRC overrides the tree.
    #[test]
    #[ignore]
    fn real_tree_model_reaches_every_symbol_outside_arch() {
        let src = PathBuf::from(
            std::env::var("KERNEL_LAB_LINUX_SRC")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../artifacts/src/linux-6.12.118").to_string()),
        );
        let t = std::time::Instant::now();
        let tree = load(&src, SRCARCH).unwrap();
        eprintln!("tree: {} files, {} symbols, {} choices in {:?}", tree.files, tree.symbols.len(), tree.choices.len(), t.elapsed());
        let flat = kconfig::index(&src, None).unwrap();
        let mut missing: Vec<String> = flat
            .symbols
            .iter()
            .filter(|(name, defs)| !tree.symbols.contains_key(*name) && defs.iter().any(|d| arch_of(&d.file).is_none()))
            .map(|(name, defs)| format!("{name} ({})", defs[0].file.display()))
            .collect();
        missing.sort();
        eprintln!("{} symbols outside arch/ not reached: {missing:?}", missing.len());
        // Kconfig files nothing sources for x86 (other architectures' helpers, um) are all that is allowed.
        let flat_at = |m: &String| {
            let file = m.split(" (").nth(1).unwrap().trim_end_matches(')');
            arch_of(Path::new(file)).is_some()
                || !sourced_by_arches(&src, Path::new(file)).is_empty()
                || file.starts_with("scripts/kconfig/tests/")
                || file.starts_with("Documentation/")
        };
        let unexplained: Vec<&String> = missing.iter().filter(|m| !flat_at(m)).collect();
        assert!(unexplained.is_empty(), "reached by no source line and not another architecture's: {unexplained:?}");
        let deps: Vec<&str> = tree.symbols["SCSI_VIRTIO"][0].deps.iter().map(|c| c.at.as_str()).collect();
        assert!(deps.iter().any(|d| d.starts_with("drivers/scsi/Kconfig:")), "{deps:?}");
        assert!(tree.selected_by["VIRTIO"].iter().any(|s| s.selector == "VIRTIO_PCI"));
    }

    #[test]
    fn failure_report_explains_every_lost_request_then_the_fix() {
        let f = tree_with_drivers();
        let config = entries(".config", "CONFIG_PCI=y\nCONFIG_VIRTIO=y\nCONFIG_VIRTIO_PCI=y\n");
        let mut req = entries("configs/lab.config", "CONFIG_PCI=y\nCONFIG_SCSI=y\nCONFIG_VIRTIO_PCI=m\n");
        req.extend(entries("configs/arm.config", "CONFIG_ARM64_VA_BITS_48=y\n"));
        let mut runs = 0;
        let mut run = |a: &[Assign]| -> Result<Vec<Entry>> {
            runs += 1;
            Ok(entries(".config", &kconfig::render(a)))
        };
        let text = failure_report(&f.tree, &f.flat, &config, &req, &mut run).unwrap().unwrap();
        assert_eq!(runs, 1);
        assert!(text.starts_with("3 requested option(s) did not survive"), "{text}");
        for line in [
            "CONFIG_SCSI: asked y (configs/lab.config:2), final absent",
            "CONFIG_VIRTIO_PCI: asked m (configs/lab.config:3), final y",
            "CONFIG_ARM64_VA_BITS_48: asked y (configs/arm.config:1), final absent",
            "suggested fragment (verified with olddefconfig in 1 round(s)",
            "\nCONFIG_BLOCK=y\nCONFIG_MODULES=y\n",
            "no fix for CONFIG_ARM64_VA_BITS_48",
            "cargo xtask config fix",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("CONFIG_PCI:"), "{text}");
        // Nothing lost: no report and no olddefconfig run.
        let fine = entries("configs/lab.config", "CONFIG_PCI=y\n");
        let mut never = |_: &[Assign]| -> Result<Vec<Entry>> { panic!("olddefconfig must not run when nothing was lost") };
        assert!(failure_report(&f.tree, &f.flat, &config, &fine, &mut never).unwrap().is_none());
    }

    #[test]
    fn command_line_requests_default_to_y() {
        let e = parse_request("SCSI").unwrap();
        assert_eq!((e.symbol.as_str(), e.value), ("SCSI", Value::Yes));
        let e = parse_request("CONFIG_E1000=m").unwrap();
        assert_eq!((e.symbol.as_str(), e.value), ("E1000", Value::Module));
        assert!(format!("{:#}", parse_request("A B").unwrap_err()).contains("SYMBOL or SYMBOL=value"));
    }
}
