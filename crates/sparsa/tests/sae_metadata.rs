//! cfg.json `metadata` comes from the training store's manifest (model, hook, layer, context
//! size, BOS handling), is null when the data says nothing, and can be set by hand.

use sparsa::data::activations::{write_store, Elem};
use sparsa::data::npy::write_npy_f32;
use sparsa::data::store::Manifest;
use sparsa::sae::config::RunConfig;
use sparsa::sae::io::{save_sae, SourceMeta, SourceOverrides};
use sparsa::sae::train::{DataSpec, Trainer};
use std::path::Path;

const D: usize = 6;

fn rows(n: usize) -> Vec<f32> {
    (0..n * D)
        .map(|i| ((i * 29 % 97) as f32 / 48.0 - 1.0) * (1.0 + (i % D) as f32))
        .collect()
}

/// A store whose manifest says what `sparsa activations extract` records.
fn store(dir: &Path, prefix: serde_json::Value) {
    let x = rows(600);
    write_store(dir, D, Elem::F32, &[&x[..300 * D], &x[300 * D..]]).unwrap();
    let mut m = Manifest::read(dir).unwrap();
    m.model = Some("SmolLM2-135M-Instruct".into());
    m.hook = Some("blocks.5.hook_resid_post".into());
    m.layer = Some(5);
    m.extra.insert("seq_len".into(), serde_json::json!(64));
    m.extra.insert("prefix_token".into(), prefix);
    m.extra
        .insert("include_bos".into(), serde_json::json!(false));
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn train_on(path: &Path) -> Trainer {
    let text = format!(
        "[sae]\narchitecture = \"mutual_choice\"\nd_sae = 16\nk = 2\n[train]\nbatch_size = 32\nsteps = 3\nlr = 1e-3\ninit_sample = 128\n[data]\npath = {:?}\n",
        path
    );
    let c = RunConfig::from_toml(&text, &[], "test").unwrap();
    let data = DataSpec::open(&c).unwrap();
    let mut t = Trainer::new(c.clone(), data.d(), &data.init_sample(&c).unwrap()).unwrap();
    let mut src = data.training_source(&c, 0).unwrap();
    for _ in 0..3 {
        let mut x = vec![0f32; 32 * D];
        src.next_batch(&mut x).unwrap();
        t.step(&mut x).unwrap();
    }
    t
}

fn metadata(t: &Trainer) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    save_sae(dir.path(), &t.model()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cfg.json")).unwrap()).unwrap();
    cfg["metadata"].clone()
}

#[test]
fn metadata_comes_from_the_store_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    store(&s, serde_json::json!(0));
    let t = train_on(&s);
    let src = t.model().meta.source;
    assert_eq!(
        src,
        SourceMeta {
            model_name: Some("SmolLM2-135M-Instruct".into()),
            hook_name: Some("blocks.5.hook_resid_post".into()),
            hook_layer: Some(5),
            context_size: Some(64),
            prepend_bos: Some(true),
            prefix_token: Some(0),
            include_bos: Some(false),
        }
    );
    let md = metadata(&t);
    assert_eq!(md["model_name"], "SmolLM2-135M-Instruct");
    assert_eq!(md["hook_name"], "blocks.5.hook_resid_post");
    assert_eq!(md["hook_layer"], 5);
    assert_eq!(md["context_size"], 64);
    assert_eq!(md["prepend_bos"], true);
    assert_eq!(md["exclude_special_tokens"], serde_json::json!([0]));

    // A store without a prefix token: prepend_bos false, nothing excluded.
    let s2 = dir.path().join("store-nobos");
    store(&s2, serde_json::Value::Null);
    let md = metadata(&train_on(&s2));
    assert_eq!(md["prepend_bos"], false);
    assert_eq!(md["exclude_special_tokens"], false);
    assert_eq!(md["hook_layer"], 5);

    // A plain file says nothing: every field null, never a made-up `prepend_bos: true`.
    let npy = dir.path().join("acts.npy");
    write_npy_f32(&npy, 600, D, &rows(600)).unwrap();
    let md = metadata(&train_on(&npy));
    for k in [
        "model_name",
        "hook_name",
        "hook_layer",
        "context_size",
        "prepend_bos",
    ] {
        assert!(md[k].is_null(), "{k} = {}", md[k]);
    }
}

#[test]
fn overrides_set_fields_and_keep_hook_and_layer_consistent() {
    let base = SourceMeta {
        model_name: Some("m".into()),
        hook_name: Some("blocks.5.hook_resid_post".into()),
        hook_layer: Some(5),
        context_size: Some(64),
        prepend_bos: Some(true),
        prefix_token: Some(0),
        include_bos: Some(false),
    };
    let mut s = base.clone();
    s.apply(&SourceOverrides {
        hook_name: Some("blocks.9.hook_mlp_out".into()),
        model_name: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        context_size: Some(256),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.hook_layer, Some(9), "the layer follows a blocks.N name");
    assert_eq!(
        s.model_name.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
    assert_eq!(s.context_size, Some(256));
    assert_eq!(s.prepend_bos, Some(true));

    let mut s = base.clone();
    s.apply(&SourceOverrides {
        prepend_bos: Some(false),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((s.prepend_bos, s.prefix_token), (Some(false), None));

    let mut s = base.clone();
    let e = s
        .apply(&SourceOverrides {
            hook_layer: Some(7),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("7") && e.contains("blocks.5.hook_resid_post"),
        "{e}"
    );
    let e = s
        .apply(&SourceOverrides {
            hook_name: Some("blocks.3.hook_resid_post".into()),
            hook_layer: Some(4),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("contradicts"), "{e}");
    // A name without a layer in it and an explicit layer.
    s.apply(&SourceOverrides {
        hook_name: Some("model.layers.3.mlp".into()),
        hook_layer: Some(3),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (s.hook_name.as_deref(), s.hook_layer),
        (Some("model.layers.3.mlp"), Some(3))
    );
}
