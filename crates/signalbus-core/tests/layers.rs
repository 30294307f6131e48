//! The core's modules are layers: each imports only from the layers below it, and no two
//! modules import each other, directly or through others. This test reads every `crate::`
//! path in the code (not in comments or unit tests) and fails on an import that runs upward
//! or closes a cycle, so that the rule outlives the change that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first; lib.rs declares the modules in the same order.
const LAYERS: &[&[&str]] = &[
    // model: plain types and errors
    &[
        "contract",
        "delivery",
        "error",
        "ident",
        "inspection",
        "locking",
        "message",
        "metrics",
        "redact",
        "seen",
        "signal",
    ],
    // what talks to the outside: brokers, databases, the consumer side's plumbing
    &["consume", "otel", "publisher", "storage"],
    // the registered signal types; the consumer's inbox
    &["inbox", "registry"],
    // the engine: publish-and-settle, bursts, auto-flush, the relay
    &["engine"],
    // the write path
    &["prepared", "transaction"],
    // atomic blocks
    &["atomic"],
    // the handle users hold
    &["bus"],
    // many databases' relays
    &["fleet"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            // Unit tests may reach anywhere; they sit at the end of their file.
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            // A trailing comment (a `//` inside a string literal is cut too: harmless here).
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::x`, `$crate::x` (and `super::x` in a file at the
/// top level) in `code`.
fn imports(code: &str, top_level_file: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut prefixes = vec!["crate::"];
    if top_level_file {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `signalbus_core::`, `mycrate::`
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every module's imports of other top-level modules (items of lib.rs itself aside).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let parts: Vec<_> = relative.components().collect();
        let first = parts[0].as_os_str().to_string_lossy().into_owned();
        if first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_owned();
        let top_level_file = parts.len() == 1;
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let modules_of_crate: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
        let deps = graph.entry(module.clone()).or_default();
        for name in imports(&code(&text), top_level_file) {
            if name != module && modules_of_crate.contains(&name.as_str()) {
                deps.insert(name);
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer() {
    for module in graph().keys() {
        assert!(
            layer_of(module).is_some(),
            "module `{module}` is in no layer: add it to LAYERS in tests/layers.rs (and keep \
             lib.rs in the same order)"
        );
    }
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let mut upward = Vec::new();
    for (module, deps) in graph() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for dep in deps {
            if layer_of(&dep).is_some_and(|layer| layer > own) {
                upward.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run upward: {upward:?}; move the shared item down a layer"
    );
}

#[test]
fn no_import_cycle_between_modules() {
    let graph = graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'g>(
        module: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[at..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for dep in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The scanner itself: it must see the imports this test exists to catch.
#[test]
fn the_scanner_sees_imports_and_skips_comments() {
    let text = "use crate::bus::SignalBus;\n// crate::atomic in a comment\nfn f() { \
                $crate::engine::x!(); signalbus_core::relay::X; } // crate::relay\n\
                #[cfg(test)]\nmod tests { use crate::registry::X; }\n";
    let found = imports(&code(text), false);
    assert_eq!(
        found,
        ["bus", "engine"].iter().map(|s| s.to_string()).collect()
    );
    assert!(imports("super::bus::X", true).contains("bus"));
    assert!(imports("super::bus::X", false).is_empty());
}
