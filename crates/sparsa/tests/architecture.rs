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

/// The module paths the non-test code of a file at module path `path` names: `crate::a::b…` and
/// `super::…` resolved against `path`, with `{…}` groups on one line expanded one level.
fn named_paths(text: &str, path: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // One string, so that a `use a::{…}` group spread over several lines is read whole.
    let code: String = code_lines(text).collect::<Vec<_>>().join(" ");
    {
        let code = code.as_str();
        let mut i = 0;
        while i < code.len() {
            let rest = &code[i..];
            let (base, tail) = if let Some(t) = rest.strip_prefix("crate::") {
                (Vec::new(), t)
            } else if rest.starts_with("super::") && !code[..i].ends_with("::") {
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
            out.extend(expand(base, tail));
            i += "crate::".len().min(rest.len());
        }
    }
    out
}

/// `base` extended by the path `a::b::c…` at the start of `tail`; a `{x, y::{z, w}}` group gives
/// one path per item (nested groups included).
fn expand(mut base: Vec<String>, mut tail: &str) -> Vec<Vec<String>> {
    loop {
        if let Some(group) = tail.strip_prefix('{') {
            // The group's items: split on commas at depth 0, up to the matching `}`.
            let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        items.push(&group[start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&group[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return items
                .into_iter()
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .flat_map(|item| expand(base.clone(), item))
                .collect();
        }
        let name = ident(tail);
        if name.is_empty() {
            return vec![base];
        }
        tail = &tail[name.len()..];
        base.push(name);
        match tail.strip_prefix("::") {
            Some(t) => tail = t,
            None => return vec![base],
        }
    }
}

/// Pairs of sibling modules (same parent, any depth) whose non-test code uses each other, in the
/// crate whose sources are under `src`.
fn sibling_circles(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let paths: Vec<(PathBuf, Vec<String>)> = files
        .into_iter()
        .map(|f| {
            let m = module_path(f.strip_prefix(src).unwrap());
            (f, m)
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = paths.iter().map(|(_, m)| m.clone()).collect();
    let mut edges: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for (f, p) in &paths {
        let text = std::fs::read_to_string(f).unwrap();
        for q in named_paths(&text, p) {
            let c = p.iter().zip(&q).take_while(|(a, b)| a == b).count();
            if c < p.len() && c < q.len() && modules.contains(&q[..=c]) {
                edges.insert((p[..=c].to_vec(), q[..=c].to_vec()));
            }
        }
    }
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{} ↔ {}", a.join("::"), b.join("::")))
        .collect()
}

/// No two sibling modules (files or directories with the same parent, at any depth, in the
/// library and the CLI) use each other: a type lives with the module that owns it and the others
/// import it one way.
#[test]
fn no_two_sibling_modules_import_each_other() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sparsa-cli/src");
    let mut circles = sibling_circles(&lib);
    circles.extend(
        sibling_circles(&cli)
            .into_iter()
            .map(|c| format!("CLI {c}")),
    );
    assert!(circles.is_empty(), "import circles: {}", circles.join(", "));
}

#[test]
fn the_path_scan_resolves_super_crate_and_groups() {
    let path: Vec<String> = ["sae", "allocation", "feature_choice"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use super::{keep_largest, select::Matching};\n\
                use crate::sae::{\n    io::load,\n    stats::{a, b},\n};\n\
                use super::super::config::Capacity;\n\
                use crate::sae::select::top_k;\n\
                // use crate::lm::Llama;\n\
                #[cfg(test)]\n\
                mod tests { use crate::sae::io::load; }\n";
    let got: Vec<String> = named_paths(text, &path)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        got,
        vec![
            "sae::allocation::keep_largest",
            "sae::allocation::select::Matching",
            "sae::io::load",
            "sae::stats::a",
            "sae::stats::b",
            "sae::config::Capacity",
            "sae::select::top_k",
        ]
    );
}

#[test]
fn a_planted_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/mod.rs"), "pub mod x;\npub mod y;\n").unwrap();
    std::fs::write(src.join("a/b/x.rs"), "use super::y::Y;\n").unwrap();
    std::fs::write(src.join("a/b/y.rs"), "use crate::a::b::{x::X, z};\n").unwrap();
    assert_eq!(sibling_circles(src), vec!["a::b::x ↔ a::b::y".to_string()]);
    std::fs::write(src.join("a/b/y.rs"), "pub struct Y;\n").unwrap();
    assert!(sibling_circles(src).is_empty());
}
