//! The modules of `src/` form layers: no import cycle. Read from the
//! source as text (`crate::X` paths outside comments and test modules), so
//! a new cycle fails here before a reader meets it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name to the modules it names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect(&src, &mut files);
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src").to_string_lossy().into_owned();
        let module = rel.trim_end_matches(".rs").split('/').next().unwrap_or_default().to_owned();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code = without_tests(&text);
        let uses = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    graph.values_mut().for_each(|uses| uses.retain(|u| known.contains(u)));
    graph
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "tests") {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text before an inline `#[cfg(test)] mod tests {`.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests {").map_or(text, |i| &text[..i])
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.to_owned()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn the_modules_form_layers_without_an_import_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "too few modules found: {:?}", graph.keys());
    assert!(graph["switcher"].contains("machine"), "the reader must see real imports: {:?}", graph["switcher"]);
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The machine is a leaf: no tokio, no hooks, no clock but its own.
    let machine: Vec<&String> =
        graph["machine"].iter().filter(|m| !["clock", "config"].contains(&m.as_str())).collect();
    assert!(machine.is_empty(), "the machine imports {machine:?}");
    let mut files = Vec::new();
    collect(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/machine"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for io in ["tokio", "Instant", "std::process", "std::net", "parking_lot", "SystemTime"] {
            assert!(!without_tests(&text).contains(io), "{} uses {io}: the machine does no I/O", file.display());
        }
    }
}
