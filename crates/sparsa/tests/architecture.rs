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

/// `crate::X` module names used by the code of `text` before its first `#[cfg(test)]`
/// (test modules sit at the end of a file by convention and may use any oracle), ignoring
/// comments.
fn edges(text: &str, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
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
