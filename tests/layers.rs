//! The crate's layering (docs/architecture.md) holds: each top-level module uses only the
//! layers below it, and no two modules import each other, directly or through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first; a layer may use itself and those before it.
const LAYERS: [&str; 7] = [
    "spec", "plumbing", "store", "status", "engine", "api", "commands",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/engine/statement/fence.rs` → `engine::statement` (a file belongs to its module; a
/// folder's children to the folder's module, which is the unit a cycle is judged at).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "tests") {
        parts.pop();
    }
    parts.truncate(2);
    parts.join("::")
}

/// Every module path a file names, as written: `crate::a::b…`, `super::b…` (from inside
/// module `a`), and `x::b…` after `use crate::x;` (an alias for a whole layer).
fn paths(text: &str, module: &str) -> Vec<Vec<String>> {
    let segments_after = |rest: &str| -> Vec<String> {
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut found = Vec::new();
    let mut aliases = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let segments = segments_after(&text[at + "crate::".len()..]);
        if segments.len() == 1 && text[at..].starts_with(&format!("crate::{};", segments[0])) {
            aliases.push(segments[0].clone());
        }
        found.push(segments);
    }
    let parent: Vec<String> = module.split("::").map(str::to_string).collect();
    if parent.len() == 2 {
        for (at, _) in text.match_indices("super::") {
            let mut segments = vec![parent[0].clone()];
            segments.extend(segments_after(&text[at + "super::".len()..]));
            found.push(segments);
        }
    }
    for alias in aliases {
        let prefix = format!("{alias}::");
        for (at, _) in text.match_indices(&prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut segments = vec![alias.clone()];
            segments.extend(segments_after(&text[at + prefix.len()..]));
            found.push(segments);
        }
    }
    found
}

/// A path as the module it reaches: its first two segments when they name a module, else its
/// first (a function or type of a layer's own `mod.rs`).
fn module_reached(segments: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let top = segments.first()?;
    if let Some(second) = segments.get(1) {
        let both = format!("{top}::{second}");
        if modules.contains(&both) {
            return Some(both);
        }
    }
    Some(top.clone())
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let files: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            (
                module_of(&src, file),
                std::fs::read_to_string(file).unwrap(),
            )
        })
        .filter(|(module, _)| module != "lib" && module != "main")
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let edges = graph.entry(module.clone()).or_default();
        for path in paths(text, module) {
            let Some(used) = module_reached(&path, &modules) else {
                continue;
            };
            // A module naming itself, or a folder module naming its children, is no
            // dependency.
            if used != *module && !used.starts_with(&format!("{module}::")) {
                edges.insert(used);
            }
        }
    }
    graph
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("module {module} is in no layer; add its folder to LAYERS"))
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let mut upward = Vec::new();
    for (module, edges) in graph() {
        for used in edges {
            if layer(&used) > layer(&module) {
                upward.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports: {upward:#?}");
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = graph();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for next in graph.get(module).into_iter().flatten() {
            if graph.contains_key(next) {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_scanner_sees_imports() {
    // The checks above pass vacuously if nothing is found: make sure the graph is real.
    let graph = graph();
    assert!(
        graph["engine::batch"].contains("engine::statement"),
        "{graph:#?}"
    );
    assert!(graph["api::jobs"].contains("status::view"), "{graph:#?}");
    // Through an alias (`use crate::commands;` then `commands::run::…`) and through `super::`.
    assert!(
        graph["commands::cli"].contains("commands::run"),
        "{graph:#?}"
    );
    assert!(graph["commands::run"].contains("commands"), "{graph:#?}");
    assert!(layer("commands::cli") > layer("spec"));
}

/// Every statement the daemon sends is built by `plumbing::db::{query, query_as, query_scalar}`,
/// which make it unnamed, so a transaction pooler never carries a named statement of ours to
/// another client (docs/architecture.md, "Connections"). The batch statement is the exception
/// its module documents: kept prepared on the worker's session, unless the pool mode says
/// sessions do not last.
#[test]
fn every_statement_is_built_unnamed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = [
        "plumbing/pool.rs",
        "engine/batch.rs",
        "engine/statement/tests.rs",
    ];
    let mut named = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if allowed.contains(&relative.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if ["sqlx::query(", "sqlx::query_as", "sqlx::query_scalar"]
                .iter()
                .any(|builder| line.contains(builder))
            {
                named.push(format!("src/{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        named.is_empty(),
        "use plumbing::db::query* instead:\n{}",
        named.join("\n")
    );
}
