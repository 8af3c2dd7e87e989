//! The module graph of `src/`: imports run one way,
//! `startup -> api -> actors -> storage -> (config, metrics, fault) -> domain`,
//! and no two modules import each other, directly or round a loop.
//!
//! The graph is read from the source text: every `crate::`, `super::` and
//! `self::` path (in `use` trees and inline), resolved to the file that
//! defines what it names, following `pub use` re-exports (a `mod.rs` that
//! re-exports its children is their table of contents, not a dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`["storage", "orders"]`) of every file under `src/` but the
/// binaries, with its source split into the code and its `#[cfg(test)]` tail.
type Sources = BTreeMap<Vec<String>, (String, String)>;

fn read_sources(root: &Path) -> Sources {
    fn walk(dir: &Path, prefix: &[String], out: &mut Sources) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "bin" && name != "migrations" {
                    let mut p = prefix.to_vec();
                    p.push(name);
                    walk(&path, &p, out);
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            let module = match stem {
                "mod" | "lib" => prefix.to_vec(),
                "main" if prefix.is_empty() => continue,
                _ => [prefix, &[stem.to_string()]].concat(),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(module, split_tests(&strip_comments(&text)));
        }
    }
    let mut out = Sources::new();
    walk(root, &[], &mut out);
    out
}

/// The text without `//` comments (whole-line and trailing, outside strings).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                match bytes[i] {
                    b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                    b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
                    _ => {}
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code before the file's inline test module (`#[cfg(test)]` then
/// `mod NAME {`), and that module with whatever follows it. A test module
/// in a file of its own (`mod fixtures;`) is a module like any other.
fn split_tests(text: &str) -> (String, String) {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let after = text[start + 12..].trim_start();
        if let Some(rest) = after.strip_prefix("mod ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if rest[name.len()..].trim_start().starts_with('{') {
                return (text[..start].to_string(), text[start..].to_string());
            }
        }
        at = start + 12;
    }
    (text.to_string(), String::new())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The paths a `use` tree names: `a::{b, c::{d as e}, f::*}` -> `a::b`,
/// `a::c::d`, `a::f` (a rename imports what it renames; a glob, the module).
fn expand_use(tree: &str) -> Vec<String> {
    fn go(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        match tree.find('{') {
            None => {
                let path = tree.split(" as ").next().unwrap().trim();
                let path: String = path.split_whitespace().collect();
                out.push(format!("{prefix}{}", path.trim_end_matches("::*")));
            }
            Some(open) => {
                let head: String = tree[..open].split_whitespace().collect();
                let inner = &tree[open + 1..tree.rfind('}').unwrap()];
                let mut depth = 0;
                let mut last = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            go(&format!("{prefix}{head}"), &inner[last..i], out);
                            last = i + 1;
                        }
                        _ => {}
                    }
                }
                if !inner[last..].trim().is_empty() {
                    go(&format!("{prefix}{head}"), &inner[last..], out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go("", tree, &mut out);
    out.into_iter()
        .map(|p| p.trim_end_matches("::self").to_string())
        .filter(|p| !p.is_empty() && p != "*" && !p.ends_with("::"))
        .collect()
}

/// A module's `use` statements (`pub`: re-exports) and its inline
/// `crate::`/`super::`/`self::` paths.
struct Uses {
    uses: Vec<(bool, String)>,
    inline: Vec<String>,
}

fn uses_of(code: &str) -> Uses {
    let mut uses = Vec::new();
    let mut outside_use = String::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let key = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .into_iter()
            .find(|k| trimmed.starts_with(k));
        let Some(key) = key else {
            outside_use.push_str(line);
            outside_use.push('\n');
            continue;
        };
        // The statement runs to its `;`, over as many lines as it takes.
        let mut statement = trimmed[key.len()..].to_string();
        while !statement.contains(';') {
            match lines.next() {
                Some(more) => {
                    statement.push(' ');
                    statement.push_str(more);
                }
                None => break,
            }
        }
        let tree = statement.split(';').next().unwrap();
        let public = key.starts_with("pub");
        for path in expand_use(tree) {
            uses.push((public, path));
        }
    }
    let mut inline = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut at = 0;
        while let Some(i) = outside_use[at..].find(start) {
            let i = at + i;
            let before = outside_use[..i].chars().last();
            at = i + start.len();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = outside_use[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            inline.push(path.trim_end_matches(':').to_string());
        }
    }
    Uses { uses, inline }
}

struct Graph {
    modules: BTreeSet<Vec<String>>,
    /// Names a module re-exports, and the path each stands for.
    reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
}

impl Graph {
    /// `path` as written in `module` (where `self` and `super` start from
    /// `self_module`: the module itself, or its `mod tests`), as absolute
    /// segments; `None` for an external crate or a local name.
    fn absolute(
        &self,
        module: &[String],
        self_module: &[String],
        path: &str,
    ) -> Option<Vec<String>> {
        let segs: Vec<&str> = path.split("::").collect();
        let mut base: Vec<String>;
        let mut rest = &segs[..];
        match segs[0] {
            "crate" => {
                base = Vec::new();
                rest = &segs[1..];
            }
            "self" => {
                base = self_module.to_vec();
                rest = &segs[1..];
            }
            "super" => {
                base = self_module.to_vec();
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            first => {
                // Relative to the module when it names a child module.
                let child = [module, &[first.to_string()]].concat();
                if !self.modules.contains(&child) {
                    return None;
                }
                base = module.to_vec();
            }
        }
        base.extend(rest.iter().filter(|s| is_ident(s)).map(|s| s.to_string()));
        Some(base)
    }

    /// The module whose file defines what `path` names.
    fn defining_module(&self, path: &[String], depth: usize) -> Vec<String> {
        let mut module = Vec::new();
        for (i, seg) in path.iter().enumerate() {
            let child = [module.as_slice(), std::slice::from_ref(seg)].concat();
            if self.modules.contains(&child) {
                module = child;
                continue;
            }
            if let Some(target) = self.reexports.get(&module).and_then(|r| r.get(seg))
                && depth < 8
            {
                let rest = &path[i + 1..];
                return self.defining_module(&[target.as_slice(), rest].concat(), depth + 1);
            }
            break;
        }
        module
    }
}

/// Module -> the modules it imports (code only, or code and tests).
fn edges(sources: &Sources, with_tests: bool) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = sources.keys().cloned().collect();
    let mut graph = Graph {
        modules,
        reexports: BTreeMap::new(),
    };
    // Re-exports first: names in a module that stand for a path elsewhere.
    for (module, (code, _)) in sources {
        for (public, path) in uses_of(code).uses {
            if !public {
                continue;
            }
            if let Some(abs) = graph.absolute(module, module, &path) {
                let name = abs.last().unwrap().clone();
                graph
                    .reexports
                    .entry(module.clone())
                    .or_default()
                    .insert(name, abs);
            }
        }
    }
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, (code, tests)) in sources {
        // A re-export of the module's own child is its table of contents,
        // not a dependency of the module on the child.
        let own_child = |path: &str| {
            let first = path.strip_prefix("self::").unwrap_or(path);
            let first = first.split("::").next().unwrap_or_default();
            graph
                .modules
                .contains(&[module.as_slice(), &[first.to_string()]].concat())
        };
        let mut add = |text: &str, self_module: &[String]| {
            let uses = uses_of(text);
            let paths = uses
                .uses
                .into_iter()
                .filter(|(public, path)| !(*public && own_child(path)))
                .map(|(_, p)| p)
                .chain(uses.inline);
            for path in paths {
                let Some(abs) = graph.absolute(module, self_module, &path) else {
                    continue;
                };
                let to = graph.defining_module(&abs, 0);
                if to != *module && !to.is_empty() {
                    out.entry(module.clone()).or_default().insert(to);
                }
            }
        };
        add(code, module);
        if with_tests && !tests.is_empty() {
            // Inside `mod tests`, `super` is the file's own module.
            let inner = [module.as_slice(), &["tests".to_string()]].concat();
            add(tests, &inner);
        }
        out.entry(module.clone()).or_default();
    }
    out
}

/// Where a module sits: it may import only modules of its rank or lower.
fn rank(module: &[String]) -> Option<u8> {
    Some(match module.first()?.as_str() {
        "domain" => 0,
        "config" | "metrics" | "fault" | "telemetry" => 1,
        "storage" | "relay" => 2,
        "actors" => 3,
        "api" => 4,
        "startup" | "cli" => 5,
        other => panic!("src/{other}: add the new top-level module to `rank`"),
    })
}

fn name(module: &[String]) -> String {
    module.join("::")
}

/// Every cycle's modules (strongly connected components with more than one).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the graph has a hundred nodes.
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on_stack: BTreeSet<&'a [String]>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a [String]) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_slice();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(name(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_slice()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn violations(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut found = Vec::new();
    for (from, tos) in graph {
        for to in tos {
            if let (Some(a), Some(b)) = (rank(from), rank(to))
                && b > a
            {
                found.push(format!("{} imports {}", name(from), name(to)));
            }
        }
    }
    found
}

fn src() -> Sources {
    read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn module(path: &str) -> Vec<String> {
    path.split("::").map(String::from).collect()
}

#[test]
fn imports_run_one_way_down_the_layers() {
    let graph = edges(&src(), true);
    let bad = violations(&graph);
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_modules_import_each_other() {
    let graph = edges(&src(), false);
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles (put what both need in a third module):\n{found:#?}"
    );
}

/// The reader sees the imports it must: were it blind, the two tests above
/// would pass on anything.
#[test]
fn the_graph_has_the_edges_the_code_has() {
    let graph = edges(&src(), false);
    for (from, to) in [
        ("api::orders", "actors::dispatcher::messages"), // `use crate::actors::dispatcher::{...}`: a re-export
        ("api::orders", "domain::reads"),                // `crate::domain::UserCursor`: a re-export
        ("storage::orders", "storage::outbox"), // `use super::outbox;` then `outbox::write_created`
        ("storage::updates", "domain::apply"),
        ("actors::unit::handlers", "actors::unit::actor"),
        ("startup", "api::auth"), // `crate::api::AdminToken`: a re-export
        ("storage::sequence", "metrics"), // inline `crate::metrics::SEGMENT_FETCHES`
    ] {
        assert!(
            graph
                .get(&module(from))
                .is_some_and(|t| t.contains(&module(to))),
            "{from} -> {to} not seen; {from} imports {:?}",
            graph.get(&module(from))
        );
    }
}

#[test]
fn a_cycle_and_a_wrong_way_import_are_found() {
    let mut sources = Sources::new();
    let code = |s: &str| (s.to_string(), String::new());
    sources.insert(module("domain"), code("pub mod a;\n"));
    sources.insert(
        module("domain::a"),
        code("use crate::storage::{x::Y, Z};\n"),
    );
    sources.insert(module("storage"), code("mod x;\npub use x::Z;\n"));
    sources.insert(
        module("storage::x"),
        code("fn f() { crate::domain::a::g() }\n"),
    );
    let graph = edges(&sources, false);
    assert_eq!(
        cycles(&graph),
        [vec!["domain::a".to_string(), "storage::x".to_string()]]
    );
    assert_eq!(violations(&graph), ["domain::a imports storage::x"]);
}

/// Renames, globs, indented and multi-line `use`s and a `#[cfg(test)]`
/// module in a file of its own are all seen.
#[test]
fn every_form_of_import_is_seen() {
    let mut sources = Sources::new();
    let code = |s: &str| split_tests(s);
    sources.insert(
        module("storage"),
        code("#[cfg(test)]\nmod fixtures;\nmod a;\nmod b;\nmod c;\nmod d;\n"),
    );
    sources.insert(module("storage::fixtures"), code(""));
    sources.insert(module("storage::a"), code("use crate::actors as http;\n"));
    sources.insert(module("storage::b"), code("use crate::api::x::*;\n"));
    sources.insert(
        module("storage::c"),
        code("fn f() {\n        use crate::actors::{\n            u::V,\n        };\n}\n"),
    );
    sources.insert(module("storage::d"), code("use super::a as other;\n"));
    sources.insert(module("actors"), code("pub mod u;\n"));
    sources.insert(module("actors::u"), code("use crate::storage::d;\n"));
    sources.insert(module("api"), code("pub mod x;\n"));
    sources.insert(module("api::x"), code(""));
    let graph = edges(&sources, false);
    let mut bad = violations(&graph);
    bad.sort();
    assert_eq!(
        bad,
        [
            "storage::a imports actors",
            "storage::b imports api::x",
            "storage::c imports actors::u",
        ]
    );
    assert!(graph[&module("storage::d")].contains(&module("storage::a")));
    // storage::c -> actors::u -> storage::d -> storage::a -> actors: no loop.
    assert!(cycles(&graph).is_empty(), "{:?}", cycles(&graph));
}
