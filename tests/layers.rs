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

/// Every `crate::a::b` path a file names, cut to its first two segments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        // Lower-case segments are modules; a type or function ends the module path.
        let modules: Vec<&str> = segments
            .iter()
            .take_while(|s| s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .take(2)
            .copied()
            .collect();
        if !modules.is_empty() {
            found.insert(modules.join("::"));
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for used in uses(&text) {
            // A module naming its own children (or itself) is not a dependency.
            if used != module && !used.starts_with(&format!("{module}::")) {
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
            // A parent module (`engine`) is the folder, not a dependency of its children.
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
    assert!(layer("commands::cli") > layer("spec"));
}
