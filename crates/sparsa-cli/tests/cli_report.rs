//! The HTML reports, rendered in a real headless browser: `sae report` of a synthetic run and
//! `prune report` of a small pruning grid (the LM store's dashboards and compare.html are in
//! cli_lm_compare.rs, which builds the tiny store).

mod browser;
mod images;

use std::path::Path;
use std::process::Command;

fn sparsa(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsa"))
        .args(args)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "sparsa {args:?} failed:\n{se}");
    so
}

/// The last line of stdout: the path each report command prints.
fn printed_path(stdout: &str) -> std::path::PathBuf {
    let last = stdout.lines().last().unwrap_or_default();
    std::path::PathBuf::from(last.trim_start_matches("wrote ").trim())
}

/// Save a screenshot for the README when SPARSA_SCREENSHOTS names a directory.
fn maybe_screenshot(page: &Path, name: &str, show: &[&str]) {
    if let Ok(dir) = std::env::var("SPARSA_SCREENSHOTS") {
        browser::screenshot(page, &Path::new(&dir).join(name), 1100, 1300, show, "");
    }
}

#[test]
fn sae_report_of_a_synthetic_run_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, include_str!("../../../configs/sae/synthetic.toml")).unwrap();
    let out = dir.path().join("mc");
    let o = out.to_str().unwrap();
    sparsa(&[
        "sae",
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        o,
        "--eval-tokens",
        "2048",
        "--set",
        "sae.architecture=mutual_choice",
        "--set",
        "aux.kind=aux_zipf",
        "--set",
        "train.steps=120",
        "--set",
        "train.batch_size=256",
        "--set",
        "train.log_every=10",
        "--set",
        "sae.d_sae=96",
        "--set",
        "sae.k=4",
        "--set",
        "data.synthetic.d=24",
        "--set",
        "data.synthetic.n_features=64",
        "--set",
        "train.init_sample=512",
    ]);
    let stdout = sparsa(&["sae", "report", o]);
    let page = printed_path(&stdout);
    assert_eq!(page, out.join("report.html"), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    browser::assert_offline(&html);
    let r = browser::render(&page);
    r.assert_clean();
    r.assert_sections(&["summary", "curves", "density", "l0", "features"]);
    let plots = r.assert_plots_drawn();
    for p in [
        "curve-fvu",
        "curve-l0",
        "curve-dead",
        "curve-aux",
        "curve-lr",
        "density-hist",
        "rank-density",
        "l0-hist-0",
    ] {
        assert!(plots.iter().any(|x| x == p), "plot {p} missing: {plots:?}");
    }
    // Both forms' final metrics and the Zipf fit are stated.
    assert!(r.dom.contains("<td>training</td>") && r.dom.contains("<td>inference</td>"));
    assert!(
        r.dom.contains("Zipf fit α="),
        "no fitted law on the rank plot"
    );
    // It prints (headless print-to-PDF succeeds and holds the page).
    let pdf = browser::print_pdf(&page);
    assert!(
        pdf.starts_with(b"%PDF") && pdf.len() > 20_000,
        "{} bytes",
        pdf.len()
    );
    maybe_screenshot(&page, "sae-report.png", &["curves", "density"]);
}

#[test]
fn prune_report_html_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    images::write_images(&data, 512, 256);
    let cfg = dir.path().join("smoke.toml");
    std::fs::write(
        &cfg,
        r#"
name = "smoke"
[data]
dataset = "mnist"
[model]
arch = "lenet-300-100"
[train]
epochs = 2
batch_size = 64
lr = 0.05
[prune]
schedule = "iterative"
methods = ["magnitude"]
rate = 0.6
rounds = 4
ap = ["off", "on"]
ap_rate = 0.02
seeds = [0, 1]
"#,
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let stdout = sparsa(&[
        "prune",
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let page = stdout
        .lines()
        .find(|l| l.ends_with("report.html"))
        .map(|l| std::path::PathBuf::from(l.trim_start_matches("wrote ")))
        .unwrap_or_else(|| panic!("no report.html printed:\n{stdout}"));
    // The terminal report is still there.
    assert!(stdout.contains("Paired differences AP − off"), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    browser::assert_offline(&html);
    let r = browser::render(&page);
    r.assert_clean();
    r.assert_sections(&["rounds", "plots", "dnr-epochs", "paired"]);
    let plots = r.assert_plots_drawn();
    for p in [
        "accuracy_vs_remaining",
        "paired_difference",
        "dnr_vs_sparsity_magnitude_global",
        "dnr-epochs-0",
    ] {
        assert!(plots.iter().any(|x| x == p), "plot {p} missing: {plots:?}");
    }
    maybe_screenshot(&page, "prune-report.png", &["plots"]);
}
