//! Issue 16: no import circles. Reads the library's sources and builds the
//! graph of `crate::<module>` references between top-level modules, and
//! between the relay's own modules, leaving test code out; a cycle fails
//! with the modules on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source of `path` without its `#[cfg(test)] mod tests { ... }` tail,
/// its line comments, and nothing at all for a test-only file.
fn code_of(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "tests.rs"
        || name.ends_with("_tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
    {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Edges `module -> modules it names`, for the children of `root`
/// (`src` or `src/relay`), by `prefix` (`crate::` or `crate::relay::`).
fn graph(root: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(root).expect("read root") {
        let path = entry.expect("entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if ["lib", "main", "mod", "bin"].contains(&stem.as_str()) {
            continue;
        }
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            modules.insert(stem);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let mut files = Vec::new();
        let file = root.join(format!("{m}.rs"));
        if file.exists() {
            files.push(file);
        }
        let dir = root.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let deps = edges.entry(m.clone()).or_default();
        for f in files {
            let code = code_of(&f);
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if &name != m && modules.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    edges
}

fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src, "crate::");
    assert!(edges.contains_key("resolver") && edges["resolver"].contains("store"));
    assert_eq!(cycle(&edges), None, "import circle; graph: {edges:#?}");
}

#[test]
fn relay_modules_import_one_way() {
    let relay = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/relay");
    let edges = graph(&relay, "crate::relay::");
    // super:: references count the same as crate::relay:: ones.
    let mut with_super = edges.clone();
    for (m, deps) in graph(&relay, "super::") {
        with_super.entry(m).or_default().extend(deps);
    }
    assert_eq!(
        cycle(&with_super),
        None,
        "import circle; graph: {with_super:#?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
