//! No module of freshen's crates imports, through others, itself.
//!
//! A cycle (`planner` -> `refresh` -> `workload` -> `planner`) means no
//! module can be read, changed or tested on its own; shared things get a
//! home of their own instead (`runtime::objects`, `runtime::events`,
//! `runtime::ledger`, `validation`). This reads every file of each crate's
//! `src/` (folders too, without their tests) for `crate::<module path>`
//! and fails naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, with its module path (`runtime::cached`
/// for `src/runtime/cached.rs`, `refresh` for `src/refresh.rs`).
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, std::path::PathBuf>) {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    for path in entries {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let name = if prefix.is_empty() {
            stem.to_owned()
        } else {
            format!("{prefix}::{stem}")
        };
        if path.is_dir() {
            modules(&path, &name, out);
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "main" {
            out.insert(name, path);
        }
    }
}

/// The longest module path that `path` (what follows `crate::`) starts
/// with.
fn module_of<'a>(path: &str, known: &'a BTreeMap<String, std::path::PathBuf>) -> Option<&'a str> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find_map(|candidate| known.get_key_value(&candidate).map(|(k, _)| k.as_str()))
}

/// Module -> the modules of the crate it names through `crate::` paths
/// (a module's own children and parent, named through `self::` and
/// `super::`, are its own business).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut known = BTreeMap::new();
    modules(src, "", &mut known);
    let path_chars = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut graph = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut uses = BTreeSet::new();
        let mut add = |path: &str| {
            if let Some(target) = module_of(path.trim_end_matches(':'), &known)
                && target != module
            {
                uses.insert(target.to_owned());
            }
        };
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::X, b::c::Y}`
                let group = group.split('}').next().unwrap_or_default();
                for part in group.split(',') {
                    add(part.trim());
                }
            } else {
                let path: String = rest.chars().take_while(|c| path_chars(*c)).collect();
                add(&path);
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_cycle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in [
        "freshen-core",
        "freshen-registry",
        "freshen-api",
        "freshen-controller",
    ] {
        let graph = graph(&crates.join(name).join("src"));
        assert!(graph.len() > 3, "{name}: no modules read");
        if name == "freshen-controller" {
            // Folders are read too, and paths resolve to the file named.
            let refresh = graph.get("refresh::statefulset");
            assert!(
                refresh.is_some_and(|uses| uses.contains("runtime::cached")),
                "{graph:?}"
            );
        }
        if let Some(found) = cycle(&graph) {
            panic!("{name} has an import cycle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("planner", &["refresh"][..]),
        ("refresh", &["workload"][..]),
        ("workload", &["planner"][..]),
        ("context", &[][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec![
            "planner".to_owned(),
            "refresh".to_owned(),
            "workload".to_owned(),
            "planner".to_owned()
        ])
    );
}
