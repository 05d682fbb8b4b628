//! An independent reader of sparsa's SAELens export (not a round trip through `load_sae`): the
//! safetensors bytes are parsed by hand here (8-byte little-endian header length, JSON header,
//! raw little-endian data) and cfg.json is read as plain JSON. The test checks key names, shapes,
//! dtype and layout (W_enc [d_in, d_sae], W_dec [d_sae, d_in]) and that encoding fixed inputs
//! with SAELens's own formulas, written out here, gives sparsa's codes and reconstruction:
//! - TopK: h = (x − b_dec)·W_enc + b_enc; keep the k largest entries of h, then ReLU;
//! - JumpReLU: h as above; z = ReLU(h)·[h > threshold];
//! - decode: x̂ = z·W_dec + b_dec.

use sparsa::sae::allocation::{AllocInput, Matching};
use sparsa::sae::config::{Architecture, ThresholdMode};
use sparsa::sae::io::{save_sae, SaeMeta, SaeModel, SourceMeta};
use sparsa::sae::metrics::{reconstructor, rule_for, Form};
use sparsa::sae::params::SaeParams;
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 3;
const F: usize = 5;

/// A tensor as read from the file: dtype string, shape and f32 values.
struct Raw {
    dtype: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Parse a safetensors file by hand.
fn read_safetensors(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    let mut spans = Vec::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap().to_string();
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let off: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let raw = &data[off[0]..off[1]];
        assert_eq!(dtype, "F32", "{name}");
        assert_eq!(raw.len(), shape.iter().product::<usize>() * 4, "{name}");
        spans.push((off[0], off[1]));
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(
            name.clone(),
            Raw {
                dtype,
                shape,
                values,
            },
        );
    }
    // The data section is exactly the tensors, back to back.
    spans.sort();
    let mut at = 0;
    for (s, e) in spans {
        assert_eq!(s, at, "gap or overlap in the data section");
        at = e;
    }
    assert_eq!(at, data.len());
    out
}

fn read_cfg(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("cfg.json")).unwrap()).unwrap()
}

/// Known numbers: encoder row j (sparsa's F×d storage) and a decoder with non-unit rows.
fn params() -> SaeParams {
    let w_enc = vec![
        0.9, -0.2, 0.1, // feature 0
        -0.3, 0.8, 0.05, // feature 1
        0.2, 0.3, -0.7, // feature 2
        0.5, 0.5, 0.5, // feature 3
        -0.6, -0.1, 0.4, // feature 4
    ];
    let w_dec = vec![
        1.0, 0.0, 0.0, //
        0.0, 0.6, 0.8, //
        0.6, 0.0, -0.8, //
        0.3, 0.3, 0.3, //
        -0.5, 0.5, 0.25, //
    ];
    SaeParams {
        d: D,
        f: F,
        w_enc,
        b_enc: vec![0.1, -0.05, 0.0, -0.2, 0.15],
        w_dec,
        b_dec: vec![0.25, -0.5, 0.125],
    }
}

fn inputs() -> Vec<[f32; D]> {
    vec![
        [1.0, 0.5, -0.25],
        [-0.75, 1.5, 0.5],
        [0.3, -0.9, 2.0],
        [0.25, -0.5, 0.125], // x = b_dec: only the biases act
    ]
}

fn model(jumprelu: bool) -> SaeModel {
    SaeModel {
        params: params(),
        thresholds: jumprelu.then(|| vec![0.5, 0.0, 0.7, f32::INFINITY, 0.05]),
        meta: SaeMeta {
            trained_architecture: if jumprelu {
                Architecture::MutualChoice
            } else {
                Architecture::TopK
            },
            k: 2,
            threshold_mode: ThresholdMode::Feature,
            input_scale: 1.5,
            steps: 7,
            tokens_seen: 448,
            dataset: "acts/l3".into(),
            source: SourceMeta {
                model_name: Some("SmolLM2-135M-Instruct".into()),
                hook_name: Some("blocks.3.hook_resid_post".into()),
                hook_layer: Some(3),
                context_size: Some(128),
                prepend_bos: Some(true),
                prefix_token: Some(0),
                include_bos: Some(false),
            },
            ..Default::default()
        },
        density: vec![0.5, 0.25, 0.1, 0.0, 0.01],
    }
}

/// SAELens's encoder on the file's tensors (W_enc [d_in, d_sae]).
fn saelens_hidden_pre(t: &BTreeMap<String, Raw>, x: &[f32; D]) -> Vec<f64> {
    let (w, be, bd) = (&t["W_enc"].values, &t["b_enc"].values, &t["b_dec"].values);
    (0..F)
        .map(|j| {
            let mut h = be[j] as f64;
            for i in 0..D {
                h += (x[i] as f64 - bd[i] as f64) * w[i * F + j] as f64;
            }
            h
        })
        .collect()
}

fn saelens_topk(h: &[f64], k: usize) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..h.len()).collect();
    idx.sort_by(|&a, &b| h[b].total_cmp(&h[a]));
    let mut z = vec![0.0; h.len()];
    for &j in &idx[..k] {
        z[j] = h[j].max(0.0);
    }
    z
}

fn saelens_jumprelu(h: &[f64], theta: &[f32]) -> Vec<f64> {
    h.iter()
        .zip(theta)
        .map(|(&v, &t)| if v > t as f64 { v.max(0.0) } else { 0.0 })
        .collect()
}

fn saelens_decode(t: &BTreeMap<String, Raw>, z: &[f64]) -> Vec<f64> {
    let (w, bd) = (&t["W_dec"].values, &t["b_dec"].values);
    (0..D)
        .map(|i| bd[i] as f64 + (0..F).map(|j| z[j] * w[j * D + i] as f64).sum::<f64>())
        .collect()
}

/// sparsa's inference-form codes (dense) and reconstruction of one row.
fn sparsa_codes(m: &SaeModel, x: &[f32; D]) -> (Vec<f64>, Vec<f64>) {
    let a = m.params.encode_pre(x, 1).unwrap();
    let rule = rule_for(m, Form::Inference).unwrap();
    let mut sel = Matching::default();
    rule.select(
        &AllocInput {
            a: &a,
            b: 1,
            f: F,
            density: &m.density,
            step: 0,
        },
        &mut sel,
    );
    let mut z = vec![0.0; F];
    for &j in sel.row(0) {
        z[j as usize] = a[j as usize] as f64;
    }
    let xhat = reconstructor(m, Form::Inference).unwrap()(x, 1).unwrap();
    (z, xhat.iter().map(|&v| v as f64).collect())
}

fn close(a: &[f64], b: &[f64], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
            "{what}[{i}]: sparsa {x} vs SAELens formula {y}"
        );
    }
}

fn check(jumprelu: bool) {
    let m = model(jumprelu);
    let dir = tempfile::tempdir().unwrap();
    save_sae(dir.path(), &m).unwrap();

    // cfg.json, read as plain JSON.
    let cfg = read_cfg(dir.path());
    let arch = if jumprelu { "jumprelu" } else { "topk" };
    assert_eq!(cfg["architecture"], arch);
    assert_eq!(cfg["d_in"], D);
    assert_eq!(cfg["d_sae"], F);
    assert_eq!(cfg["dtype"], "float32");
    assert_eq!(cfg["apply_b_dec_to_input"], true);
    assert_eq!(cfg["normalize_activations"], "none");
    if jumprelu {
        assert!(cfg.get("k").is_none(), "a JumpReLU cfg has no k");
    } else {
        assert_eq!(cfg["k"], 2);
    }
    let md = &cfg["metadata"];
    assert_eq!(md["model_name"], "SmolLM2-135M-Instruct");
    assert_eq!(md["hook_name"], "blocks.3.hook_resid_post");
    assert_eq!(md["hook_layer"], 3);
    assert_eq!(md["context_size"], 128);
    assert_eq!(md["prepend_bos"], true);
    assert_eq!(md["exclude_special_tokens"], serde_json::json!([0]));
    assert_eq!(md["dataset_path"], "acts/l3");
    assert!(md["sae_lens_version"].is_string());
    assert_eq!(cfg["sparsa"]["input_scale"], 1.5);

    // Weights: names, dtype, shapes, layout.
    let t = read_safetensors(&dir.path().join("sae_weights.safetensors"));
    let mut names: Vec<&str> = t.keys().map(String::as_str).collect();
    names.sort();
    let mut want = vec!["W_dec", "W_enc", "b_dec", "b_enc"];
    if jumprelu {
        want.push("threshold");
    }
    want.sort();
    assert_eq!(names, want);
    assert_eq!(t["W_enc"].shape, [D, F]);
    assert_eq!(t["W_dec"].shape, [F, D]);
    assert_eq!(t["b_enc"].shape, [F]);
    assert_eq!(t["b_dec"].shape, [D]);
    for r in t.values() {
        assert_eq!(r.dtype, "F32");
    }
    let p = params();
    for i in 0..D {
        for j in 0..F {
            assert_eq!(
                t["W_enc"].values[i * F + j],
                p.w_enc[j * D + i],
                "W_enc[{i}][{j}]"
            );
            assert_eq!(
                t["W_dec"].values[j * D + i],
                p.w_dec[j * D + i],
                "W_dec[{j}][{i}]"
            );
        }
    }
    assert_eq!(t["b_enc"].values, p.b_enc);
    assert_eq!(t["b_dec"].values, p.b_dec);
    if jumprelu {
        assert_eq!(&t["threshold"].values, m.thresholds.as_ref().unwrap());
    }
    let sp = read_safetensors(&dir.path().join("sparsity.safetensors"));
    assert_eq!(sp["sparsity"].shape, [F]);
    assert_eq!(sp["sparsity"].values[0], 0.5f32.log10());

    // Encoding fixed inputs with SAELens's formulas reproduces sparsa's output.
    let mut active = 0;
    for x in inputs() {
        let h = saelens_hidden_pre(&t, &x);
        let z = if jumprelu {
            saelens_jumprelu(&h, &t["threshold"].values)
        } else {
            saelens_topk(&h, 2)
        };
        active += z.iter().filter(|&&v| v > 0.0).count();
        let xhat = saelens_decode(&t, &z);
        let (sz, sx) = sparsa_codes(&m, &x);
        close(&sz, &z, &format!("{arch} codes of {x:?}"));
        close(&sx, &xhat, &format!("{arch} reconstruction of {x:?}"));
    }
    assert!(
        active >= 4,
        "{arch}: the inputs activate too little ({active})"
    );
}

#[test]
fn topk_export_read_independently_matches_saelens_formulas() {
    check(false);
}

#[test]
fn jumprelu_export_read_independently_matches_saelens_formulas() {
    check(true);
}
