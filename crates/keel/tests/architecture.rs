//! The dependency rule of `crates/keel/src`, checked on the source itself:
//!
//! platform ← area cores ← app ← web ← each area's handlers and `jobs.rs` ←
//! `routes.rs`; between areas one way only (knowledge → tenants, tasks →
//! tenants, tenants → ops, webhooks → knowledge/tasks/answers, answers →
//! knowledge/tenants, sources → knowledge/tasks).
//!
//! Every `crate::` and `super::` path outside test modules (in `use` lines
//! and inline) is resolved to the node it names; each `<area>/handlers.rs`
//! and `jobs.rs` is a node of its own. A path against the rule, or any cycle
//! between nodes, fails the test with the file, line and path named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const AREAS: &[&str] = &[
    "ops",
    "tenants",
    "knowledge",
    "tasks",
    "webhooks",
    "answers",
    "sources",
];

/// Which areas an area's core may use directly (the closure is taken).
const AREA_EDGES: &[(&str, &str)] = &[
    ("knowledge", "tenants"),
    ("tasks", "tenants"),
    ("tenants", "ops"),
    ("webhooks", "knowledge"),
    ("webhooks", "tasks"),
    ("webhooks", "answers"),
    ("answers", "knowledge"),
    ("answers", "tenants"),
    ("sources", "knowledge"),
    ("sources", "tasks"),
];

/// A node of the dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Platform,
    Area(String),
    App,
    Web,
    Handlers(String),
    Jobs,
    Routes,
    Root,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Platform => write!(f, "platform"),
            Node::Area(area) => write!(f, "{area}"),
            Node::App => write!(f, "app"),
            Node::Web => write!(f, "web"),
            Node::Handlers(area) => write!(f, "{area}/handlers"),
            Node::Jobs => write!(f, "jobs"),
            Node::Routes => write!(f, "routes"),
            Node::Root => write!(f, "lib"),
        }
    }
}

/// The node a module path (`["knowledge", "store"]`) belongs to.
fn node_of(module: &[String]) -> Option<Node> {
    let first = module.first()?.as_str();
    Some(match first {
        "platform" => Node::Platform,
        "app" | "App" => Node::App,
        "web" | "ApiError" => Node::Web,
        "jobs" => Node::Jobs,
        "routes" | "openapi" => Node::Routes,
        area if AREAS.contains(&area) => {
            if module.get(1).map(String::as_str) == Some("handlers") {
                Node::Handlers(area.to_owned())
            } else {
                Node::Area(area.to_owned())
            }
        }
        _ => return None,
    })
}

fn area_reaches(from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from];
    while let Some(area) = stack.pop() {
        for (a, b) in AREA_EDGES {
            if *a == area && seen.insert(*b) {
                stack.push(b);
            }
        }
    }
    seen.contains(to)
}

/// Whether code in `from` may name something in `to`.
fn allowed(from: &Node, to: &Node) -> bool {
    use Node::*;
    if from == to {
        return true;
    }
    let below_app = |n: &Node| matches!(n, Platform | Area(_));
    match from {
        Root => true,
        Platform => false,
        Area(area) => match to {
            Platform => true,
            Area(other) => area_reaches(area, other),
            _ => false,
        },
        App => below_app(to),
        Web => below_app(to) || *to == App,
        Handlers(_) | Jobs => below_app(to) || matches!(to, App | Web),
        Routes => !matches!(to, Root),
    }
}

/// The module path of a source file: `knowledge/mod.rs` → `knowledge`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every `crate::`/`super::` path in `source` (test modules and comments
/// skipped), with its line number, as absolute module paths. Grouped imports
/// (`crate::{a, b::c}`) yield each member.
fn paths_in(source: &str, module: &[String]) -> Vec<(usize, String, Vec<String>)> {
    let mut found = Vec::new();
    for (number, code) in logical_lines(source) {
        let mut rest = code.as_str();
        while let Some(start) = find_path_start(rest) {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path = tail[..end].trim_end_matches(':');
            let mut targets = Vec::new();
            if tail[end..].starts_with('{') {
                let group_end = tail.find('}').unwrap_or(tail.len());
                for member in tail[end + 1..group_end].split(',') {
                    let member = member.trim();
                    let member = member.split_whitespace().next().unwrap_or_default();
                    if !member.is_empty() && member != "self" {
                        targets.push(format!("{path}::{member}"));
                    } else if member == "self" {
                        targets.push(path.to_owned());
                    }
                }
            } else {
                targets.push(path.to_owned());
            }
            for target in targets {
                if let Some(resolved) = resolve(&target, module) {
                    found.push((number, target, resolved));
                }
            }
            rest = &tail[end.max(1)..];
        }
    }
    found
}

/// The code lines before the first test module, comments cut off, with a
/// `use` statement that rustfmt wrapped joined into one line (numbered by
/// its first).
fn logical_lines(source: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in source.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        match pending.as_mut() {
            Some((_, joined)) => joined.push_str(code.trim()),
            None if code.trim_start().contains("use ") && !code.contains(';') => {
                pending = Some((index + 1, code.to_owned()));
            }
            None => lines.push((index + 1, code.to_owned())),
        }
        if code.contains(';')
            && let Some(done) = pending.take()
        {
            lines.push(done);
        }
    }
    lines.extend(pending);
    lines
}

fn find_path_start(text: &str) -> Option<usize> {
    ["crate::", "super::"]
        .iter()
        .filter_map(|needle| {
            text.match_indices(needle)
                .find(|(i, _)| {
                    *i == 0 || {
                        let before = text[..*i].chars().last().unwrap_or(' ');
                        !(before.is_alphanumeric() || before == '_' || before == ':')
                    }
                })
                .map(|(i, _)| i)
        })
        .min()
}

/// `crate::a::b` → `[a, b]`; `super::x` relative to `module`.
fn resolve(path: &str, module: &[String]) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segments.first() {
        Some(&"crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut base = module.to_vec();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop()?;
            }
            base
        }
        _ => return None,
    };
    base.extend(segments.iter().map(|s| s.to_string()));
    Some(base)
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every edge of the source tree, with where it was found.
fn edges(src: &Path) -> Vec<(Node, Node, String)> {
    let mut files = Vec::new();
    source_files(src, &mut files);
    files.sort();
    let mut edges = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let module = module_of(relative);
        let from = if module.is_empty() {
            Node::Root
        } else {
            node_of(&module).unwrap_or_else(|| {
                panic!(
                    "{}: not in any folder of the layout (platform, an area, app, web, routes, jobs)",
                    relative.display()
                )
            })
        };
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, written, target) in paths_in(&source, &module) {
            if let Some(to) = node_of(&target) {
                let place = format!("{}:{line}: `{written}`", relative.display());
                edges.push((from.clone(), to, place));
            }
        }
    }
    edges
}

/// The first cycle in the graph of `edges`, as a list of nodes.
fn find_cycle(edges: &[(Node, Node, String)]) -> Option<Vec<Node>> {
    let mut graph: BTreeMap<&Node, BTreeSet<&Node>> = BTreeMap::new();
    for (from, to, _) in edges {
        if from != to {
            graph.entry(from).or_default().insert(to);
        }
    }
    fn visit<'a>(
        node: &'a Node,
        graph: &BTreeMap<&'a Node, BTreeSet<&'a Node>>,
        stack: &mut Vec<&'a Node>,
        done: &mut BTreeSet<&'a Node>,
    ) -> Option<Vec<Node>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<Node> = stack[at..].iter().map(|n| (*n).clone()).collect();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn violations(src: &Path) -> Vec<String> {
    let edges = edges(src);
    let mut problems: Vec<String> = edges
        .iter()
        .filter(|(from, to, _)| !allowed(from, to))
        .map(|(from, to, place)| format!("{place}: {from} may not depend on {to}"))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(ToString::to_string).collect();
        problems.push(format!("cycle: {}", names.join(" → ")));
    }
    problems
}

#[test]
fn dependencies_point_one_way_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "the dependency rule is broken ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_checker_sees_grouped_relative_and_inline_paths() {
    let module = vec!["knowledge".to_owned(), "documents".to_owned()];
    let source = "use super::{store, Knowledge};\nuse crate::web::{\n    ApiError,\n    ApiRequest,\n};\nfn f() { crate::platform::telemetry::flush(); }\n// crate::routes in a comment\n#[cfg(test)]\nmod tests { use crate::jobs; }\n";
    let found: Vec<(usize, Vec<String>)> = paths_in(source, &module)
        .into_iter()
        .map(|(line, _, target)| (line, target))
        .collect();
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            (1, path(&["knowledge", "store"])),
            (1, path(&["knowledge", "Knowledge"])),
            (2, path(&["web", "ApiError"])),
            (2, path(&["web", "ApiRequest"])),
            (6, path(&["platform", "telemetry", "flush"])),
        ]
    );
    let from = node_of(&module).unwrap();
    assert!(
        !allowed(&from, &node_of(&path(&["web"])).unwrap()),
        "an area core may not name the web layer"
    );
    assert!(allowed(&from, &Node::Area("tenants".into())));
    assert!(allowed(&from, &Node::Area("ops".into())), "through tenants");
    assert!(
        !allowed(&Node::Area("tenants".into()), &from),
        "one way only"
    );
    assert!(allowed(&Node::Handlers("knowledge".into()), &Node::Web));
    assert!(!allowed(&Node::Handlers("knowledge".into()), &Node::Routes));
}

#[test]
fn cycles_are_named() {
    let edge = |a: Node, b: Node| (a, b, String::new());
    let edges = vec![
        edge(Node::Area("knowledge".into()), Node::Area("tenants".into())),
        edge(Node::Area("tenants".into()), Node::Area("knowledge".into())),
    ];
    let cycle: Vec<String> = find_cycle(&edges)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cycle, vec!["knowledge", "tenants", "knowledge"]);
}
