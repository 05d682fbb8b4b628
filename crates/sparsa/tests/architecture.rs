//! The dependency direction of ARCHITECTURE.md, checked on the source: every `crate::X` path in a
//! top-level module's non-test code must name a module it is allowed to use. Adding an edge is a
//! decision: change ARCHITECTURE.md and the table below together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its non-test code may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("kernels", &["util"]),
    ("lm", &["util", "kernels"]),
    // `data` is a leaf: formats and readers only.
    ("data", &["util", "kernels"]),
    // `extract` runs the model to make a store: the one module that joins `lm` and `data`.
    ("extract", &["util", "kernels", "data", "lm"]),
    ("nn", &["util", "kernels", "data"]),
    ("prune", &["util", "kernels", "data", "nn"]),
    // `sae` and `lm` know nothing of each other.
    ("sae", &["util", "kernels", "data"]),
    (
        "report",
        &["util", "kernels", "data", "lm", "nn", "prune", "sae"],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of each line of `text` before its first `#[cfg(test)]` (test modules sit at the end
/// of a file by convention and may use any oracle), without comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split("//").next().unwrap_or(""))
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `crate::X` module names used by the code of `text` before its first `#[cfg(test)]`
/// (test modules sit at the end of a file by convention and may use any oracle), ignoring
/// comments.
fn edges(text: &str, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for code in code_lines(text) {
        for (i, _) in code.match_indices("crate::") {
            let name = ident(&code[i + "crate::".len()..]);
            if modules.contains(name.as_str()) {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_use_only_what_the_architecture_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, a)| (*m, a.iter().copied().collect()))
        .collect();
    let modules: BTreeSet<&str> = allowed.keys().copied().collect();
    // Every top-level module directory is in the table (a new one needs a decision too).
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                modules.contains(name.as_str()),
                "src/{name}/ is not in the architecture table of tests/architecture.rs"
            );
        }
    }
    let mut violations = Vec::new();
    for m in &modules {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let single = src.join(format!("{m}.rs"));
        if single.is_file() {
            files.push(single);
        }
        assert!(!files.is_empty(), "module {m} has no source");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for used in edges(&text, &modules) {
                if used != *m && !allowed[m].contains(used.as_str()) {
                    violations.push(format!(
                        "{} uses crate::{used}, but {m} may use only {:?}",
                        f.strip_prefix(&src).unwrap().display(),
                        allowed[m]
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_edge_scan_sees_paths_and_skips_comments_and_tests() {
    let modules: BTreeSet<&str> = ["sae", "lm", "data"].into_iter().collect();
    let text = "use crate::data::store::Manifest;\n\
                /// [`crate::lm::Llama`] in a doc comment\n\
                let x = crate::sae::io::load(p); // crate::lm in a comment\n\
                #[cfg(test)]\n\
                mod tests { use crate::lm::Llama; }\n";
    let got: Vec<String> = edges(text, &modules).into_iter().collect();
    assert_eq!(got, vec!["data".to_string(), "sae".to_string()]);
}

/// The module path of a source file under `src/` (`sae/allocation/mod.rs` → `[sae, allocation]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The sibling units (first path component below the top-level module) that a file of unit
/// `path[1]` names in its non-test code: `crate::m::X`, and `super::X` / `super::super::X`
/// resolved against the file's module path.
fn unit_edges(text: &str, path: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for code in code_lines(text) {
        let mut i = 0;
        while i < code.len() {
            let rest = &code[i..];
            let (mut segs, mut tail) = if let Some(t) = rest.strip_prefix("crate::") {
                (Vec::new(), t)
            } else if rest.starts_with("super::") {
                let mut base = path.to_vec();
                let mut t = rest;
                while let Some(t2) = t.strip_prefix("super::") {
                    base.pop();
                    t = t2;
                }
                (base, t)
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            };
            // Complete the path to at least two segments (top-level module, unit).
            while segs.len() < 2 {
                let name = ident(tail);
                if name.is_empty() {
                    break;
                }
                tail = &tail[name.len()..];
                segs.push(name);
                match tail.strip_prefix("::") {
                    Some(t) => tail = t,
                    None => break,
                }
            }
            if segs.len() >= 2 && segs[0] == path[0] && segs[1] != path[1] {
                out.insert(segs[1].clone());
            }
            i += "super::".len();
        }
    }
    out
}

/// Inside each top-level module, no two units (files or sub-directories directly below it)
/// use each other: a type lives with the unit that owns it and the others import it one way.
#[test]
fn no_two_units_of_a_module_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        if path.len() < 2 {
            continue; // lib.rs, a top-level mod.rs (it declares and re-exports its units)
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for to in unit_edges(&text, &path) {
            edges
                .entry((path[0].clone(), path[1].clone()))
                .or_default()
                .insert(to);
        }
    }
    let mut circles = Vec::new();
    for ((m, a), tos) in &edges {
        for b in tos {
            if a < b
                && edges
                    .get(&(m.clone(), b.clone()))
                    .is_some_and(|back| back.contains(a))
            {
                circles.push(format!("{m}::{a} ↔ {m}::{b}"));
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {}", circles.join(", "));
}

#[test]
fn the_unit_scan_resolves_super_and_crate_paths() {
    let path: Vec<String> = ["sae", "allocation", "feature_choice"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use super::{keep_largest, Matching};\n\
                use super::super::config::Capacity;\n\
                use crate::sae::select::top_k;\n\
                use crate::data::store::Manifest;\n\
                #[cfg(test)]\n\
                mod tests { use crate::sae::io::load; }\n";
    let got: Vec<String> = unit_edges(text, &path).into_iter().collect();
    assert_eq!(got, vec!["config".to_string(), "select".to_string()]);
    let top: Vec<String> = ["sae", "io"].iter().map(|s| s.to_string()).collect();
    let got: Vec<String> = unit_edges("use super::train::TrainState;\n", &top)
        .into_iter()
        .collect();
    assert_eq!(got, vec!["train".to_string()]);
}
