//! The node's floors (issue 15), checked over the source: a module may use
//! its own floor and the floors below it, never a floor above. The floors,
//! bottom up, and what goes where, are in `node/src/lib.rs`.
//!
//! Read from the `use` lines and paths of every file under `node/src`:
//! `crate::m` and `use crate::{m, ...}` name the top module `m` a file
//! depends on. Comments are skipped (a doc link is not a dependency).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top modules by floor, bottom up. A module missing here fails the test:
/// new code must be given a floor.
const FLOORS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "clock",
            "codec",
            "config",
            "cluster_map",
            "error",
            "ids",
            "ledger",
            "listener",
            "maps",
            "metrics_http",
            "tls",
        ],
    ),
    ("raft", &["raft"]),
    ("shard", &["shard"]),
    ("frontdoor", &["frontdoor"]),
    // The Nchf HTTP producer: a sibling of the gRPC service, above the front door.
    ("nchf", &["nchf"]),
    ("control", &["control"]),
    (
        "assembly",
        &["bin", "cluster", "config_file", "node", "process"],
    ),
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|(_, ms)| ms.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top modules a source file names through `crate::`.
fn deps(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_uses_a_higher_floor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &mut all);
    all.sort();
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let Some(mine) = floor_of(&top) else {
            unplaced.push(rel.display().to_string());
            continue;
        };
        let src = std::fs::read_to_string(f).unwrap();
        for d in deps(&src) {
            match floor_of(&d) {
                Some(theirs) if theirs > mine => wrong
                    .entry(rel.display().to_string())
                    .or_default()
                    .push(format!("{d} ({} floor)", FLOORS[theirs].0)),
                Some(_) => {}
                None => unplaced.push(format!("{} (named by {})", d, rel.display())),
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules with no floor in FLOORS: {unplaced:?}"
    );
    for v in wrong.values_mut() {
        v.sort();
        v.dedup();
    }
    assert!(
        wrong.is_empty(),
        "modules using a higher floor (file: what it uses):\n{}",
        wrong
            .iter()
            .map(|(f, v)| format!("  {f}: {}", v.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    let src = "use crate::{raft::NodeId, shard};\n// crate::node is a comment\nlet x = crate::control::meta::f();";
    assert_eq!(deps(src), vec!["raft", "shard", "control"]);
}
