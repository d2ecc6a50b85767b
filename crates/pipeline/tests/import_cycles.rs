//! No two source files of the workspace import each other, directly or through others: every
//! `use crate::…`, `use super::…`, `use self::…` and inline `crate::…` path outside test modules
//! is resolved to the file that defines its module, and the resulting file graph of each crate
//! under crates/*/src must have no cycle. (A parent's `mod child;` and its bare `child::…` paths
//! are the module tree, not imports.)

use std::collections::{BTreeMap, BTreeSet};

/// Cycles reported rather than failed on (none today); any other cycle fails the test.
const KNOWN: &[&str] = &[];
use std::path::{Path, PathBuf};

/// Module path → file, for every .rs file under `src`.
fn module_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            // A binary's main.rs and a library's lib.rs would both be the root: keep the first.
            files.entry(module).or_insert(path);
        }
    }
    files
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(|item| {
            expand(item)
                .into_iter()
                .map(move |p| format!("{prefix}{p}"))
        })
        .collect()
}

/// The paths one file imports (test modules left out).
fn imported_paths(source: &str) -> Vec<String> {
    let source = match source.find("#[cfg(test)]") {
        Some(at) => &source[..at],
        None => source,
    };
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        let tree: String = after[..end].split_whitespace().collect();
        if ["crate::", "super::", "self::"]
            .iter()
            .any(|p| tree.starts_with(p))
        {
            paths.extend(expand(&tree));
        }
    }
    // Inline paths (`Box<crate::compare::CompareArgs>`).
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with("use ") || code[..at].ends_with('$') {
            continue;
        }
        let path: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(path);
    }
    paths
}

/// The file defining the longest module prefix of `path`, seen from module `here`.
fn resolve<'a>(
    path: &str,
    here: &[String],
    files: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a PathBuf> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut module: Vec<String> = match segments.first() {
        Some(&"crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some(&"self") => {
            segments.remove(0);
            here.to_vec()
        }
        _ => here.to_vec(),
    };
    while segments.first() == Some(&"super") {
        segments.remove(0);
        module.pop();
    }
    let mut best = files.get(&module);
    for segment in segments {
        module.push(segment.to_string());
        match files.get(&module) {
            Some(file) => best = Some(file),
            None => break,
        }
    }
    best
}

/// Every cycle of `graph`, each listed once from its smallest file.
fn cycles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    fn walk(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<PathBuf>,
        found: &mut BTreeSet<Vec<PathBuf>>,
    ) {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            let smallest = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap();
            cycle.rotate_left(smallest);
            found.insert(cycle);
            return;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, path, found);
        }
        path.pop();
    }
    let mut found = BTreeSet::new();
    for node in graph.keys() {
        walk(node, graph, &mut Vec::new(), &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn no_source_files_import_each_other_in_a_circle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let files = module_files(&src);
        let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (module, file) in &files {
            let source = std::fs::read_to_string(file).unwrap();
            let targets = graph.entry(file.clone()).or_default();
            for path in imported_paths(&source) {
                if let Some(target) = resolve(&path, module, &files) {
                    if target != file {
                        targets.insert(target.clone());
                    }
                }
            }
            checked += 1;
        }
        for cycle in cycles(&graph) {
            let names: Vec<String> = cycle
                .iter()
                .map(|p| p.strip_prefix(&crates).unwrap().display().to_string())
                .collect();
            report.push(names.join(" -> "));
        }
    }
    assert!(checked > 20, "only {checked} files found under {crates:?}");
    let (known, new): (Vec<String>, Vec<String>) = report
        .into_iter()
        .partition(|c| KNOWN.contains(&c.as_str()));
    for cycle in &known {
        println!("known, not yet fixed: {cycle}");
    }
    assert!(
        new.is_empty(),
        "files importing each other:\n{}",
        new.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle() {
    let files: BTreeMap<Vec<String>, PathBuf> = [
        (vec![], PathBuf::from("lib.rs")),
        (vec!["a".to_string()], PathBuf::from("a.rs")),
        (vec!["b".to_string()], PathBuf::from("b.rs")),
    ]
    .into_iter()
    .collect();
    let a = imported_paths("use crate::b::{Thing, other::{X}};\nfn f() {}");
    assert_eq!(a, ["crate::b::Thing", "crate::b::other::X"]);
    let b =
        imported_paths("fn g(x: Box<crate::a::Y>) {}\n#[cfg(test)]\nmod tests { use crate::b; }");
    assert_eq!(b, ["crate::a::Y"]);
    let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = [("a", &a, "a.rs"), ("b", &b, "b.rs")]
        .into_iter()
        .map(|(m, paths, file)| {
            let here = vec![m.to_string()];
            let targets = paths
                .iter()
                .filter_map(|p| resolve(p, &here, &files).cloned())
                .collect();
            (PathBuf::from(file), targets)
        })
        .collect();
    assert_eq!(
        cycles(&graph),
        vec![vec![PathBuf::from("a.rs"), PathBuf::from("b.rs")]]
    );
}
