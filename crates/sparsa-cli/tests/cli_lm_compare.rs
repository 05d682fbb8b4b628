//! End-to-end on the real model (fetched into the cache): the README's main job at a tiny size.

mod browser;

use std::process::Command;

#[test]
fn lm_compare_runs_end_to_end_and_sae_eval_reports_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let run = |args: &[&str]| {
        let r = Command::new(env!("CARGO_BIN_EXE_sparsa"))
            .args(args)
            .output()
            .unwrap();
        let (so, se) = (
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        );
        assert!(r.status.success(), "sparsa {args:?} failed:\n{se}");
        so
    };
    let stdout = run(&[
        "sae",
        "lm-compare",
        "--out",
        o,
        "--tokens",
        "3072",
        "--lm-sequences",
        "2",
        "--epochs",
        "1",
        "--variants",
        "topk+aux_k,mutual_choice+aux_zipf",
        "--set",
        "sae.d_sae=576",
        "--set",
        "sae.k=8",
        "--set",
        "data.holdout_tokens=1024",
        "--set",
        "train.batch_size=256",
        "--set",
        "train.init_sample=1024",
        "--set",
        "train.log_every=2",
    ]);
    for needle in [
        "topk + aux_k",
        "mutual_choice + aux_zipf",
        "inference",
        "CE clean",
        "CE spliced",
        "recovered (zero)",
        "KL",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
    // The base config leaves out the sink position: the SAEs record it, and the spliced
    // evaluation keeps it clean.
    assert!(stdout.contains("and position 1 keep"), "{stdout}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("mutual_choice+aux_zipf").join("cfg.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["sparsa"]["exclude_positions"], serde_json::json!([1]));
    // compare.html: the table and every variant's densities and per-token L0, in a browser.
    let compare = out.join("compare.html");
    assert_eq!(
        stdout.lines().last().map(str::trim),
        compare.to_str(),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&compare).unwrap();
    browser::assert_offline(&html);
    let r = browser::render(&compare);
    r.assert_clean();
    r.assert_sections(&["table", "density", "l0"]);
    let plots = r.assert_plots_drawn();
    for p in [
        "density-hist",
        "rank-density",
        "l0-training",
        "l0-inference",
    ] {
        assert!(plots.iter().any(|x| x == p), "plot {p} missing: {plots:?}");
    }
    assert!(r.dom.contains("mutual_choice + aux_zipf") && r.dom.contains("CE spliced"));
    if let Ok(dir) = std::env::var("SPARSA_SCREENSHOTS") {
        browser::screenshot(
            &compare,
            &std::path::Path::new(&dir).join("compare.png"),
            1100,
            1100,
            &["table", "density", "l0"],
            "",
        );
    }

    // sae report with feature dashboards from the store (one pass), in a browser.
    let sae_dir = out.join("mutual_choice+aux_zipf");
    let page = dir.path().join("mc-report.html");
    let stdout = run(&[
        "sae",
        "report",
        sae_dir.to_str().unwrap(),
        "--data",
        out.join("activations").to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
        "--features",
        "3,17",
        "--dense",
        "4",
        "--random",
        "4",
        "--rare",
        "2",
        "--batch",
        "256",
    ]);
    assert_eq!(stdout.trim(), page.to_str().unwrap());
    let html = std::fs::read_to_string(&page).unwrap();
    browser::assert_offline(&html);
    let r = browser::render(&page);
    r.assert_clean();
    r.assert_sections(&["summary", "curves", "density", "l0", "features"]);
    let plots = r.assert_plots_drawn();
    for p in [
        "curve-fvu",
        "density-hist",
        "rank-density",
        "l0-hist-0",
        "l0-hist-1",
    ] {
        assert!(plots.iter().any(|x| x == p), "plot {p} missing: {plots:?}");
    }
    assert!(
        r.dom.contains("id=\"f-3\"") && r.dom.contains("id=\"f-17\""),
        "requested features missing"
    );
    assert!(
        r.dom.contains("data-search=\"ok\""),
        "the search box does not find features"
    );
    // A dashboard shows contexts with shaded tokens, the max token marked, its activation
    // histogram and the logit lens.
    let f = &r.dom[r.dom.find("<article class=\"feature\"").unwrap()..];
    let f = &f[..f.find("</article>").unwrap()];
    assert!(f.contains("class=\"ctx\""), "no contexts");
    assert!(f.contains("class=\"tok max\""), "max token not marked");
    assert!(
        f.contains("background: rgba(255, 128, 0"),
        "no shaded tokens"
    );
    assert!(
        f.contains("data-plot=\"act-hist-"),
        "no activation histogram"
    );
    assert!(
        f.contains("promoted") && f.contains("suppressed"),
        "no logit lens"
    );
    if let Ok(dir) = std::env::var("SPARSA_SCREENSHOTS") {
        let d = std::path::Path::new(&dir);
        browser::screenshot(
            &page,
            &d.join("sae-dashboards-tiny.png"),
            1100,
            1300,
            &["features"],
            "#feature-index, .search, #features > p.note { display: none; }",
        );
    }

    // The store and SAE directories are reusable: evaluate one SAE on the store with sae eval.
    let sae = out.join("mutual_choice+aux_zipf");
    let store = out.join("activations");
    let stdout = run(&[
        "sae",
        "eval",
        "--sae",
        sae.to_str().unwrap(),
        "--data",
        store.to_str().unwrap(),
        "--tokens",
        "1024",
        "--batch",
        "256",
        "--lm-sequences",
        "2",
    ]);
    assert!(
        stdout.contains("CE spliced")
            && stdout.contains("training")
            && stdout.contains("inference"),
        "{stdout}"
    );
}
