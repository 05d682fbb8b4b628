//! End-to-end: cfg.json metadata from a store through `sae train`, `sae export`'s metadata flags,
//! and `activations extract --prefix-token` (the real model, fetched into the cache).

use sparsa::data::activations::{write_store, Elem};
use sparsa::data::store::Manifest;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod signal;

fn sparsa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsa"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn metadata(dir: &Path) -> serde_json::Value {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cfg.json")).unwrap()).unwrap();
    cfg["metadata"].clone()
}

#[test]
fn train_fills_metadata_from_the_store_and_export_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let d = 8;
    let x: Vec<f32> = (0..1000 * d)
        .map(|i| ((i * 31 % 89) as f32 / 44.0 - 1.0) * (1.0 + (i % d) as f32))
        .collect();
    write_store(&p("store"), d, Elem::F32, &[&x]).unwrap();
    let mut m = Manifest::read(&p("store")).unwrap();
    m.model = Some("SmolLM2-135M-Instruct".into());
    m.hook = Some("blocks.5.hook_resid_post".into());
    m.layer = Some(5);
    m.extra.insert("seq_len".into(), serde_json::json!(128));
    m.extra.insert("prefix_token".into(), serde_json::json!(0));
    m.extra
        .insert("include_bos".into(), serde_json::json!(false));
    std::fs::write(
        p("store").join("manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    std::fs::write(
        p("run.toml"),
        format!(
            "[sae]\narchitecture = \"mutual_choice\"\nd_sae = 16\nk = 2\n[train]\nbatch_size = 64\nsteps = 4\nlr = 1e-3\ninit_sample = 256\n[data]\npath = {:?}\nholdout_tokens = 128\n",
            p("store")
        ),
    )
    .unwrap();
    let run = p("run");
    let (ok, _, err) = sparsa(&[
        "sae",
        "train",
        "--config",
        p("run.toml").to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let md = metadata(&run);
    assert_eq!(md["model_name"], "SmolLM2-135M-Instruct");
    assert_eq!(md["hook_name"], "blocks.5.hook_resid_post");
    assert_eq!(md["hook_layer"], 5);
    assert_eq!(md["context_size"], 128);
    assert_eq!(md["prepend_bos"], true);

    let exp = p("exp");
    let (ok, _, err) = sparsa(&[
        "sae",
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exp.to_str().unwrap(),
        "--model-name",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--hook-name",
        "blocks.9.hook_resid_post",
        "--context-size",
        "64",
        "--prepend-bos",
        "false",
    ]);
    assert!(ok, "{err}");
    let md = metadata(&exp);
    assert_eq!(md["model_name"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(md["hook_name"], "blocks.9.hook_resid_post");
    assert_eq!(md["hook_layer"], 9);
    assert_eq!(md["context_size"], 64);
    assert_eq!(md["prepend_bos"], false);

    // The store is gone: export keeps what the checkpoint recorded; --hook-layer alone must agree
    // with the recorded hook name.
    std::fs::remove_dir_all(p("store")).unwrap();
    let (ok, _, err) = sparsa(&[
        "sae",
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        p("exp2").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let md = metadata(&p("exp2"));
    assert_eq!(md["hook_name"], "blocks.5.hook_resid_post");
    assert_eq!(md["context_size"], 128);
    let (ok, _, err) = sparsa(&[
        "sae",
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        p("exp3").to_str().unwrap(),
        "--hook-layer",
        "3",
    ]);
    assert!(!ok && err.contains("contradicts"), "{err}");
}

/// u32 tensors of a shard, parsed by hand.
fn u32_tensors(path: &Path) -> BTreeMap<String, Vec<u32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, v) in header.as_object().unwrap() {
        if v["dtype"] != "U32" {
            continue;
        }
        let o = &v["data_offsets"];
        let (s, e) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        out.insert(
            name.clone(),
            data[s..e]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
    }
    out
}

/// Extract with `--include-bos` so the prefix position is stored, and return the manifest's
/// prefix token and every context's first token (the token at each position-0 row).
fn extract(out: &Path, prefix: Option<&str>) -> (serde_json::Value, Vec<u32>, usize) {
    let mut args = vec![
        "activations",
        "extract",
        "--corpus",
        "sotu",
        "--layer",
        "1",
        "--tokens",
        "150",
        "--seq-len",
        "16",
        "--include-bos",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(p) = prefix {
        args.extend_from_slice(&["--prefix-token", p]);
    }
    let (ok, _, err) = sparsa(&args);
    assert!(ok, "{err}");
    let m = Manifest::read(out).unwrap();
    let (mut firsts, mut rows) = (Vec::new(), 0);
    for s in &m.shards {
        let t = u32_tensors(&out.join(&s.file));
        let (ids, pos) = (&t["token_ids"], &t["positions"]);
        for (i, (&id, &p)) in ids.iter().zip(pos).enumerate() {
            if p == 0 {
                firsts.push(id);
            } else {
                assert_eq!(
                    p,
                    pos[i - 1] + 1,
                    "positions run 0, 1, 2, … within a context"
                );
            }
        }
        rows += ids.len();
    }
    (m.extra["prefix_token"].clone(), firsts, rows)
}

#[test]
fn extract_prefix_token_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, firsts, rows) = extract(&dir.path().join("p5"), Some("5"));
    assert_eq!(stored, 5);
    assert_eq!(rows, 150);
    // 150 rows of 16-token contexts: at least ⌈150/16⌉ contexts, each starting with the prefix.
    assert!(firsts.len() >= 10, "{} contexts", firsts.len());
    assert!(firsts.iter().all(|&t| t == 5), "{firsts:?}");
    // The default is the document-start token `<|endoftext|>` (id 0), as `sae lm-compare` uses.
    let (stored, firsts, _) = extract(&dir.path().join("default"), None);
    assert_eq!(stored, 0);
    assert!(
        !firsts.is_empty() && firsts.iter().all(|&t| t == 0),
        "{firsts:?}"
    );
}

/// Ctrl-C during `activations extract`: exit status 130, the store keeps exactly its complete
/// shards (every listed file exists and holds its rows), and rerunning the same command resumes
/// to a finished store.
#[cfg(unix)]
#[test]
fn sigint_during_extract_keeps_complete_shards_and_resumes() {
    use std::process::Stdio;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let args = |tokens: &str| -> Vec<String> {
        [
            "activations",
            "extract",
            "--corpus",
            "sotu",
            "--layer",
            "1",
            "--tokens",
            tokens,
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--shard-tokens",
            "64",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_sparsa"))
        .args(args("6000"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until at least one shard is complete, then interrupt.
    let res = signal::interrupt_when(
        child,
        "the first shard",
        || Manifest::read(&out).is_ok_and(|m| !m.shards.is_empty()),
        Duration::ZERO,
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    let m = Manifest::read(&out).unwrap();
    assert!(!m.shards.is_empty());
    for s in &m.shards {
        let t = u32_tensors(&out.join(&s.file));
        assert_eq!(
            t["token_ids"].len() as u64,
            s.n_tokens,
            "shard {} is whole",
            s.file
        );
    }
    let done: u64 = m.shards.iter().map(|s| s.n_tokens).sum();
    assert!(done < 6000, "interrupted before the end");
    // The same command resumes from the complete shards and finishes the store.
    let (ok, _, err) = sparsa(&args("6000").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let m2 = Manifest::read(&out).unwrap();
    let rows2: u64 = m2.shards.iter().map(|s| s.n_tokens).sum();
    assert_eq!(rows2, 6000, "the resumed store is complete");
    assert_eq!(
        &m2.shards[..m.shards.len()],
        &m.shards[..],
        "finished shards untouched"
    );
}
