//! No import cycles among nfqmark's modules (issue 14), and the leaf module `types` imports
//! nothing from the crate.
//!
//! This test reads every `src/**/*.rs` (and the lab crate's, `crates/lab/src`) with no extra
//! tools and no parser crate: it blanks comments and literals, and collects every `crate::…`,
//! `super::…` and `self::…` path, in `use` lines and in code. A reference from module `a::x` to
//! `a::y::z` is an edge `x -> y` among the children of `a`: so the check covers the top-level
//! modules (`engine -> pairing`) and, the same way, the submodules of `rules/`, `nfnl/`, `dns/`,
//! `metrics/` and any other directory. A child using its parent is not an edge; a name the
//! parent imports from another child (`use super::Token` where `mod.rs` has `use lex::Token`)
//! is followed to that child. Code under `#[cfg(test)]` is left out of the cycle check (a test
//! may use any module, e.g. engine's tests count with `stats`, which reads engine's
//! `Decision`), but not out of the leaf check. It fails naming each cycle and, per edge, one
//! line that makes it. The last tests run the checker on made-up sources: they show it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type ModPath = Vec<String>;

/// One source file: its module path (`[]` for the crate root), its name for messages, its text.
struct Source {
    module: ModPath,
    file: String,
    text: String,
}

/// Where an edge comes from: a file, a line and that line's text.
#[derive(Clone)]
struct Place {
    file: String,
    line: usize,
    text: String,
}

/// Edges per scope (the parent module): from child to child, with one place each.
type Graph = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Place>>>;

/// The module path of a file under `src/`, or `None` for a binary's root (`main.rs`, `bin/`).
fn module_of(rel: &Path) -> Option<ModPath> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let (last, dirs) = parts.split_last()?;
    if dirs.first().is_some_and(|d| d == "bin") {
        return None;
    }
    let mut module: ModPath = dirs.to_vec();
    match last.as_str() {
        "main.rs" if dirs.is_empty() => return None,
        "lib.rs" if dirs.is_empty() => {}
        "mod.rs" => {}
        other => module.push(other.strip_suffix(".rs")?.to_string()),
    }
    Some(module)
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            if let Some(module) = module_of(rel) {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push(Source {
                    module,
                    file: format!("src/{}", rel.display()),
                    text,
                });
            }
        }
    }
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether a raw string (`r"…"`, `r#"…"#`, `br"…"`) starts at the `r` at `i`.
fn raw_string_at(c: &[char], i: usize) -> bool {
    let at = |k: Option<usize>| k.and_then(|k| c.get(k)).copied().unwrap_or('\0');
    let before = at(i.checked_sub(1));
    let starts_word = !word_char(before) || (before == 'b' && !word_char(at(i.checked_sub(2))));
    let next = at(Some(i + 1));
    starts_word && (next == '"' || (next == '#' && matches!(at(Some(i + 2)), '"' | '#')))
}

/// The text with comments and the contents of string and char literals replaced by spaces
/// (newlines kept, so line numbers stay right).
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let keep_lines = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    while i < c.len() {
        let ch = at(i);
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && at(i) != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep_lines(at(i)));
                    i += 1;
                }
            }
        } else if ch == 'r' && raw_string_at(&c, i) {
            // A raw string: r"…", r#"…"#.
            let mut hashes = 0;
            i += 1;
            out.push(' ');
            while at(i) == '#' {
                hashes += 1;
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
            while i < c.len() {
                if at(i) == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(keep_lines(at(i)));
                i += 1;
            }
        } else if ch == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && at(i) != '"' {
                if at(i) == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(keep_lines(at(i)));
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if ch == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('a', '\n', '\''); a lifetime ('a) has no closing quote.
            out.push(' ');
            i += 1;
            if at(i) == '\\' {
                out.push_str("  ");
                i += 2;
            }
            while i < c.len() && at(i) != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

/// Identifiers, `::`, braces, commas, `*`, and any other character on its own, with the line.
fn tokens(blanked: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = blanked.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while let Some(&ch) = c.get(i) {
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while c.get(i).is_some_and(|x| x.is_alphanumeric() || *x == '_') {
                i += 1;
            }
            let word: String = c.get(start..i).unwrap_or_default().iter().collect();
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            while c.get(i).is_some_and(|x| x.is_alphanumeric() || *x == '_') {
                i += 1;
            }
            out.push((Tok::Other('0'), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Colons, line));
            i += 2;
        } else {
            let tok = match ch {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                other => Tok::Other(other),
            };
            out.push((tok, line));
            i += 1;
        }
    }
    out
}

/// A path read from the tokens, as written (`super::lex::{self, Token}` gives two), with the name
/// it binds (the last segment, or the `as` name).
#[derive(Debug, Clone, PartialEq)]
struct Written {
    segments: Vec<String>,
    binds: Option<String>,
}

fn ident(toks: &[(Tok, usize)], i: usize) -> Option<&str> {
    match toks.get(i) {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Read a path or a use tree at `i` with `prefix` already read; returns the paths and the index
/// after them.
fn read_tree_at(toks: &[(Tok, usize)], mut i: usize, prefix: &[String]) -> (Vec<Written>, usize) {
    let mut segments = prefix.to_vec();
    loop {
        match toks.get(i) {
            Some((Tok::Ident(s), _)) if s != "as" => {
                segments.push(s.clone());
                i += 1;
            }
            Some((Tok::Open, _)) => {
                // A group: `{a, b::c, self}`.
                i += 1;
                let mut all = Vec::new();
                loop {
                    match toks.get(i) {
                        None => return (all, i),
                        Some((Tok::Close, _)) => return (all, i + 1),
                        Some((Tok::Comma, _)) => i += 1,
                        _ => {
                            let (paths, next) = read_tree_at(toks, i, &segments);
                            all.extend(paths);
                            i = next.max(i + 1);
                        }
                    }
                }
            }
            Some((Tok::Star, _)) => {
                return (
                    vec![Written {
                        segments,
                        binds: None,
                    }],
                    i + 1,
                );
            }
            _ => break,
        }
        if toks.get(i).map(|t| &t.0) == Some(&Tok::Colons) {
            i += 1;
        } else {
            break;
        }
    }
    let mut binds = segments.last().cloned();
    if binds.as_deref() == Some("self") {
        segments.pop();
        binds = segments.last().cloned();
    }
    if ident(toks, i) == Some("as") {
        binds = ident(toks, i + 1).map(str::to_string);
        i += 2;
    }
    (vec![Written { segments, binds }], i)
}

/// A path as the module it is written in sees it, resolved to the crate root; `None` when it does
/// not start at the crate (an external crate, a local name).
fn resolve(written: &[String], here: &[String], children: &BTreeSet<ModPath>) -> Option<ModPath> {
    let (first, rest) = written.split_first()?;
    let mut base: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut b = here.to_vec();
            b.pop()?;
            b
        }
        name => {
            // In a `use`, a path may start with a child module of the module it is in.
            let mut child = here.to_vec();
            child.push(name.to_string());
            if !children.contains(&child) {
                return None;
            }
            child.extend(rest.iter().cloned());
            return Some(child);
        }
    };
    let mut rest = rest;
    while let Some((s, more)) = rest.split_first() {
        if s != "super" {
            break;
        }
        base.pop()?;
        rest = more;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// A reference from module `from` (file and inline modules) to a crate path.
struct Reference {
    from: ModPath,
    to: ModPath,
    /// In code under `#[cfg(test)]`.
    test: bool,
    place: Place,
}

/// Everything the sources say: the modules that exist, the names each module's `use` lines
/// bring in (to follow re-exports), and every reference.
struct Crate {
    modules: BTreeSet<ModPath>,
    imports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
    references: Vec<Reference>,
}

fn read_crate(sources: &[Source]) -> Crate {
    // Pass 1: the modules (files and inline `mod name {`).
    let mut modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut test_modules: BTreeSet<ModPath> = BTreeSet::new();
    let lexed: Vec<Vec<(Tok, usize)>> = sources.iter().map(|s| tokens(&blank(&s.text))).collect();
    for (source, toks) in sources.iter().zip(&lexed) {
        walk(toks, &source.module, |here, toks, i, test| {
            modules.insert(here.to_vec());
            // `#[cfg(test)] mod name;`: a whole file of test code.
            if test
                && ident(toks, i) == Some("mod")
                && let Some(name) = ident(toks, i + 1)
                && toks.get(i + 2).map(|t| &t.0) == Some(&Tok::Other(';'))
            {
                let mut m = here.to_vec();
                m.push(name.to_string());
                test_modules.insert(m);
            }
        });
    }
    // Pass 2: paths.
    let mut imports: BTreeMap<ModPath, BTreeMap<String, ModPath>> = BTreeMap::new();
    let mut references = Vec::new();
    for (source, toks) in sources.iter().zip(&lexed) {
        let lines: Vec<&str> = source.text.lines().collect();
        let test_file = test_modules.iter().any(|m| source.module.starts_with(m));
        walk(toks, &source.module, |here, toks, i, test| {
            let prev = i.checked_sub(1).and_then(|p| toks.get(p)).map(|t| &t.0);
            let word = ident(toks, i);
            let is_use = word == Some("use");
            let starts_path = matches!(word, Some("crate" | "super" | "self"))
                && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Colons)
                && prev != Some(&Tok::Colons)
                && prev != Some(&Tok::Other('$'))
                && !matches!(i.checked_sub(1).and_then(|p| ident(toks, p)), Some("use"));
            if !is_use && !starts_path {
                return;
            }
            let start = if is_use { i + 1 } else { i };
            let (paths, _) = read_tree_at(toks, start, &[]);
            let line = toks.get(i).map_or(0, |t| t.1);
            for w in paths {
                let Some(to) = resolve(&w.segments, here, &modules) else {
                    continue;
                };
                if is_use && let Some(name) = &w.binds {
                    imports
                        .entry(here.to_vec())
                        .or_default()
                        .insert(name.clone(), to.clone());
                }
                references.push(Reference {
                    from: here.to_vec(),
                    to,
                    test: test || test_file,
                    place: Place {
                        file: source.file.clone(),
                        line,
                        text: lines
                            .get(line.saturating_sub(1))
                            .map_or(String::new(), |l| l.trim().to_string()),
                    },
                });
            }
        });
    }
    Crate {
        modules,
        imports,
        references,
    }
}

/// Call `f(module, tokens, index, test)` for each token, with the module it sits in (the file's
/// module plus any inline `mod name { … }` around it) and whether it belongs to an item under
/// `#[cfg(test)]` (or a file under `#![cfg(test)]`).
fn walk(
    toks: &[(Tok, usize)],
    file_module: &[String],
    mut f: impl FnMut(&[String], &[(Tok, usize)], usize, bool),
) {
    let mut here: ModPath = file_module.to_vec();
    // Brace depth at which each inline module opened.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    // The last token of the `#[cfg(test)]` item being read.
    let mut test_until: Option<usize> = None;
    for i in 0..toks.len() {
        if test_until.is_none_or(|end| i > end) {
            test_until = cfg_test_at(toks, i);
        }
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Open) => {
                depth += 1;
                if i >= 2
                    && ident(toks, i - 2) == Some("mod")
                    && let Some(name) = ident(toks, i - 1)
                {
                    here.push(name.to_string());
                    inline.push(depth);
                }
            }
            Some(Tok::Close) => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                    here.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        f(&here, toks, i, test_until.is_some_and(|end| i <= end));
    }
}

/// If `#[cfg(test)]` starts at `i`, the index of the last token of the item it applies to (the
/// `;` of `mod x;` or `use …;`, the brace closing a body); for `#![cfg(test)]`, the last token.
fn cfg_test_at(toks: &[(Tok, usize)], i: usize) -> Option<usize> {
    let is = |k: usize, t: &Tok| toks.get(k).map(|x| &x.0) == Some(t);
    if !is(i, &Tok::Other('#')) {
        return None;
    }
    let inner = is(i + 1, &Tok::Other('!'));
    let a = if inner { i + 2 } else { i + 1 };
    let shape = is(a, &Tok::Other('['))
        && ident(toks, a + 1) == Some("cfg")
        && is(a + 2, &Tok::Other('('))
        && ident(toks, a + 3) == Some("test")
        && is(a + 4, &Tok::Other(')'))
        && is(a + 5, &Tok::Other(']'));
    if !shape {
        return None;
    }
    if inner {
        return Some(toks.len());
    }
    let mut k = a + 6;
    // Further attributes on the same item.
    while is(k, &Tok::Other('#')) && is(k + 1, &Tok::Other('[')) {
        let mut brackets = 0;
        while let Some((t, _)) = toks.get(k) {
            k += 1;
            match t {
                Tok::Other('[') => brackets += 1,
                Tok::Other(']') => {
                    brackets -= 1;
                    if brackets == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let mut j = k;
    if ident(toks, j) == Some("pub") {
        j += 1;
        if is(j, &Tok::Other('(')) {
            while toks.get(j).is_some_and(|t| t.0 != Tok::Other(')')) {
                j += 1;
            }
            j += 1;
        }
    }
    let is_use = ident(toks, j) == Some("use");
    let mut braces = 0usize;
    while let Some((t, _)) = toks.get(k) {
        match t {
            Tok::Other(';') if braces == 0 => return Some(k),
            Tok::Open => braces += 1,
            Tok::Close => {
                braces = braces.saturating_sub(1);
                if braces == 0 && !is_use {
                    return Some(k);
                }
            }
            _ => {}
        }
        k += 1;
    }
    Some(k)
}

/// The edges: a reference from `a::x…` to `a::y…` is `x -> y` in scope `a`. A target that is not
/// a module but a name its scope imports from a child is followed there.
fn graph(krate: &Crate) -> Graph {
    let mut g: Graph = BTreeMap::new();
    for r in krate.references.iter().filter(|r| !r.test) {
        let mut to = r.to.clone();
        // Follow imports a few times (a parent re-exporting a child's re-export).
        for _ in 0..4 {
            let k = common_prefix(&r.from, &to);
            let Some(target) = to.get(k) else { break };
            let mut child = to[..k].to_vec();
            child.push(target.clone());
            if krate.modules.contains(&child) {
                break;
            }
            match krate.imports.get(&to[..k]).and_then(|m| m.get(target)) {
                Some(real) if real != &to => {
                    let mut next = real.clone();
                    next.extend(to[k + 1..].iter().cloned());
                    to = next;
                }
                _ => break,
            }
        }
        let k = common_prefix(&r.from, &to);
        let (Some(a), Some(b)) = (r.from.get(k), to.get(k)) else {
            continue;
        };
        let scope = r.from[..k].to_vec();
        let mut child = scope.clone();
        child.push(b.clone());
        if !krate.modules.contains(&child) {
            continue;
        }
        g.entry(scope)
            .or_default()
            .entry(a.clone())
            .or_default()
            .entry(b.clone())
            .or_insert_with(|| r.place.clone());
    }
    g
}

fn common_prefix(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Every elementary cycle found by a depth-first search, each once (rotated to start at its
/// smallest module), as the list of modules.
fn cycles(edges: &BTreeMap<String, BTreeMap<String, Place>>) -> Vec<Vec<String>> {
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    let nodes: Vec<&String> = edges.keys().collect();
    for start in nodes {
        // Paths from `start` through nodes greater than it, back to `start`.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&node).into_iter().flat_map(|m| m.keys()) {
                if next == start {
                    found.insert(path.clone());
                } else if next > start && !path.contains(next) && path.len() < 12 {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found.into_iter().collect()
}

fn describe(
    scope: &[String],
    cycle: &[String],
    edges: &BTreeMap<String, BTreeMap<String, Place>>,
) -> String {
    let name = |m: &str| {
        if scope.is_empty() {
            m.to_string()
        } else {
            format!("{}::{m}", scope.join("::"))
        }
    };
    let mut ring: Vec<String> = cycle.iter().map(|m| name(m)).collect();
    ring.push(name(&cycle[0]));
    let mut out = format!("import cycle: {}\n", ring.join(" -> "));
    for (i, a) in cycle.iter().enumerate() {
        let b = &cycle[(i + 1) % cycle.len()];
        if let Some(p) = edges.get(a).and_then(|m| m.get(b)) {
            out.push_str(&format!(
                "    {} -> {}: {}:{}: {}\n",
                name(a),
                name(b),
                p.file,
                p.line,
                p.text
            ));
        }
    }
    out
}

fn problems(sources: &[Source]) -> Vec<String> {
    let krate = read_crate(sources);
    let g = graph(&krate);
    let mut out = Vec::new();
    for (scope, edges) in &g {
        for cycle in cycles(edges) {
            out.push(describe(scope, &cycle, edges));
        }
    }
    out
}

/// What `types` (the leaf of shared types) takes from the rest of the crate: nothing allowed.
fn leaf_imports(sources: &[Source], leaf: &str) -> Vec<String> {
    let krate = read_crate(sources);
    krate
        .references
        .iter()
        .filter(|r| r.from.first().is_some_and(|m| m == leaf))
        .filter(|r| r.to.first().is_none_or(|m| m != leaf))
        .map(|r| format!("{}:{}: {}", r.place.file, r.place.line, r.place.text))
        .collect()
}

/// The sources under `dir` (relative to the package), at least `expected` files of them.
fn crate_sources(dir: &str, expected: usize) -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut sources = Vec::new();
    read_tree(&root, &root, &mut sources);
    assert!(
        sources.len() >= expected,
        "read only {} files under {}",
        sources.len(),
        root.display()
    );
    sources
}

#[test]
fn no_import_cycles_among_modules() {
    let found = problems(&crate_sources("src", 40));
    assert!(
        found.is_empty(),
        "{} module import cycle(s) in src/ (a module may use only modules below it; move the \
         shared part into a module both may use, such as `types`):\n{}",
        found.len(),
        found.join("")
    );
}

#[test]
fn no_import_cycles_in_the_lab() {
    let found = problems(&crate_sources("crates/lab/src", 5));
    assert!(
        found.is_empty(),
        "{} module import cycle(s) in crates/lab/src:\n{}",
        found.len(),
        found.join("")
    );
}

/// The graph itself, for the README's Layout section:
/// `cargo test --test module_graph -- --ignored --nocapture`.
#[test]
#[ignore = "prints the module graph; asserts nothing"]
fn print_module_graph() {
    let g = graph(&read_crate(&crate_sources("src", 40)));
    for (scope, edges) in &g {
        println!(
            "in {}:",
            if scope.is_empty() {
                "src/".to_string()
            } else {
                scope.join("::")
            }
        );
        for (from, to) in edges {
            let to: Vec<&str> = to.keys().map(String::as_str).collect();
            println!("    {from} -> {}", to.join(" "));
        }
    }
}

#[test]
fn types_imports_nothing_from_the_crate() {
    let found = leaf_imports(&crate_sources("src", 40), "types");
    assert!(
        found.is_empty(),
        "src/types.rs is the leaf every module may use; it must use nothing from the crate:\n{}",
        found.join("\n")
    );
}

// The checker itself, on made-up sources: the control that shows it can fail.

fn fake(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(file, text)| Source {
            module: module_of(Path::new(file)).expect("a library file"),
            file: format!("src/{file}"),
            text: (*text).to_string(),
        })
        .collect()
}

#[test]
fn checker_finds_a_cycle_through_use_lines_and_paths_in_code() {
    let sources = fake(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "use crate::{b::{self, Thing}};\nfn f() {}"),
        ("b.rs", "fn g() { crate::c::h(); }"),
        (
            "c.rs",
            "// use crate::a; (a comment)\nfn h() { let s = \"crate::a::x\"; }",
        ),
    ]);
    assert!(problems(&sources).is_empty(), "{:?}", problems(&sources));
    let mut sources = sources;
    sources[3]
        .text
        .push_str("\nfn i() -> crate::a::Unit { todo!() }\n");
    let found = problems(&sources);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("import cycle: a -> b -> c -> a"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("src/c.rs:3: fn i() -> crate::a::Unit"),
        "{}",
        found[0]
    );
}

#[test]
fn checker_sees_submodules_re_exports_and_test_modules() {
    let sources = fake(&[
        ("lib.rs", "pub mod rules; mod types;"),
        (
            "types.rs",
            "pub struct Hook;\n#[cfg(test)]\nmod tests { use super::*; }",
        ),
        (
            "rules/mod.rs",
            "mod lex; mod syntax; pub use lex::Token;\nuse syntax::parse;",
        ),
        (
            "rules/lex.rs",
            "use super::Token as T;\npub(super) fn f() -> super::syntax::X { }",
        ),
        (
            "rules/syntax.rs",
            "use super::lex::{self};\npub fn parse() {}",
        ),
    ]);
    let found = problems(&sources);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("rules::lex -> rules::syntax -> rules::lex"),
        "{}",
        found[0]
    );
    assert!(leaf_imports(&sources, "types").is_empty());
    let mut sources = sources;
    sources[1].text.push_str("\nuse crate::rules::Token;\n");
    assert_eq!(leaf_imports(&sources, "types").len(), 1);
}

#[test]
fn checker_leaves_out_test_code() {
    let sources = fake(&[
        (
            "lib.rs",
            "pub mod engine; pub mod stats;\n#[cfg(test)]\nmod testdata;",
        ),
        ("stats.rs", "use crate::engine::Decision;"),
        (
            "engine.rs",
            "#[cfg(test)]\n#[allow(dead_code)]\npub(crate) use crate::stats::Stats;\n\
             #[cfg(test)]\nmod tests { fn t() { let s = crate::stats::Stats; } }\n\
             #[cfg(test)]\nfn helper() { crate::testdata::x(); }",
        ),
        ("testdata.rs", "use crate::engine; use crate::stats;"),
    ]);
    assert!(problems(&sources).is_empty(), "{:?}", problems(&sources));
    let mut sources = sources;
    sources[2]
        .text
        .push_str("\nfn count() { crate::stats::Stats::new(); }\n");
    let found = problems(&sources);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("src/engine.rs:8: fn count()"),
        "{}",
        found[0]
    );
}

#[test]
fn blanking_keeps_lines_and_drops_comments_and_literals() {
    let text = "a // crate::x\n/* crate::y\n */ b 'c' '\\'' r#\"crate::z\"# \"q\\\"crate::w\" 'l x";
    let b = blank(text);
    assert_eq!(b.lines().count(), text.lines().count());
    assert!(!b.contains("crate"), "{b}");
    assert!(
        b.contains('a') && b.contains('b') && b.contains("'l x"),
        "{b}"
    );
}
