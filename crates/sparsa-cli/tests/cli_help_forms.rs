//! Every default and possible value that `--help` shows parses when passed back verbatim: for
//! each command (found by walking the help's command lists) and each option with a value,
//! `sparsa CMD --flag SHOWN --help` must exit 0 (clap validates values met before `--help`).

use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsa"))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{path:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Subcommand names listed under "Commands:" (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or("");
            if !name.is_empty()
                && name != "help"
                && line.starts_with("  ")
                && !line.starts_with("   ")
            {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// (flag, every value the help shows for it: its default exactly as shown (a list default is
/// passed whole, as a user would copy it), and each possible value).
fn shown_values(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut flag: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('-') && line.starts_with("  ") {
            // `-k, --k <K>` or `--arch <ARCHS>`: a value flag has a <VALUE> after its name.
            let long = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string());
            let takes_value = t
                .split_whitespace()
                .nth(1)
                .is_some_and(|w| w.starts_with('<'))
                || t.split_whitespace()
                    .nth(2)
                    .is_some_and(|w| w.starts_with('<'));
            flag = long.filter(|_| takes_value);
        }
        let Some(f) = &flag else { continue };
        for (tag, multi) in [("[default: ", false), ("[possible values: ", true)] {
            if let Some(i) = t.find(tag) {
                let rest = &t[i + tag.len()..];
                let shown = &rest[..rest.find(']').unwrap_or(rest.len())];
                // clap quotes a value with spaces, as a user would type it into a shell.
                let shown = shown
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(shown);
                if multi {
                    out.extend(shown.split(", ").map(|v| (f.clone(), v.to_string())));
                } else {
                    out.push((f.clone(), shown.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_value_the_help_shows_parses() {
    let mut stack: Vec<Vec<String>> = vec![vec![]];
    let mut checked = 0;
    let mut failures = Vec::new();
    while let Some(path) = stack.pop() {
        let text = help(&path);
        let subs = subcommands(&text);
        for s in &subs {
            let mut p = path.clone();
            p.push(s.clone());
            stack.push(p);
        }
        for (flag, value) in shown_values(&text) {
            let out = Command::new(env!("CARGO_BIN_EXE_sparsa"))
                .args(&path)
                .args([flag.as_str(), value.as_str(), "--help"])
                .output()
                .unwrap();
            checked += 1;
            if !out.status.success() {
                failures.push(format!(
                    "sparsa {} {flag} {value}: {}",
                    path.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The walk found the commands and their defaults (bench sae alone shows nine).
    assert!(checked > 40, "only {checked} shown values found");
}
