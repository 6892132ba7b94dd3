//! No module of freshen's crates imports, through others, itself.
//!
//! A cycle (`planner` -> `refresh` -> `workload` -> `planner`) means no
//! module can be read, changed or tested on its own; shared things get a
//! home of their own instead (`deployment`, `events`, `ledger`, `failures`,
//! `validation`). This reads each crate's `src/*.rs` (without its tests) for
//! `crate::<module>` paths and fails naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> the sibling modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<_> = std::fs::read_dir(src)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    let modules: BTreeSet<String> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let text = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut uses = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != *module && modules.contains(&name) {
                uses.insert(name);
            }
        }
        // `use crate::{a::X, b::Y}`
        for (i, _) in code.match_indices("crate::{") {
            let group = code[i..].split('}').next().unwrap_or_default();
            for part in group.split([',', '{']) {
                let name = part.trim().split("::").next().unwrap_or_default();
                if name != module && modules.contains(name) {
                    uses.insert(name.to_owned());
                }
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
