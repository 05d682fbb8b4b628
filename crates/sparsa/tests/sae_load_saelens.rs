//! `load_sae` on hand-made SAELens-style directories: settings sparsa honours give SAELens's
//! codes and reconstruction (formulas written out here), settings it cannot honour are errors
//! naming the field.
//!
//! SAELens (6.x) inference, per token x:
//! - h = (x − b_dec·[apply_b_dec_to_input])·W_enc + b_enc;
//! - TopK: if `rescale_acts_by_decoder_norm`, h_j ← h_j·‖W_dec_j‖; z = ReLU of the k largest h;
//!   decode with z_j/‖W_dec_j‖ when rescaling;
//! - JumpReLU: z_j = ReLU(h_j)·[h_j > θ_j];
//! - x̂ = z·W_dec + b_dec; weights held in cfg `dtype`.

mod cases;
use half::{bf16, f16};
use sparsa::sae::allocation::{AllocInput, Matching};
use sparsa::sae::io::load_sae;
use sparsa::sae::metrics::{reconstructor, rule_for, Form};
use std::path::Path;

const D: usize = 4;
const F: usize = 6;

/// Weights in SAELens layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in].
struct Weights {
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
    threshold: Vec<f32>,
}

fn weights() -> Weights {
    let w = |i: usize, s: f32| ((i * 37 % 23) as f32 / 11.0 - 1.0) * s;
    Weights {
        w_enc: (0..D * F).map(|i| w(i, 0.9)).collect(),
        b_enc: (0..F).map(|j| w(j + 5, 0.2)).collect(),
        // Decoder rows of norms far from 1.
        w_dec: (0..F * D).map(|i| w(i + 3, 0.5 + (i / D) as f32)).collect(),
        b_dec: vec![0.75, -1.25, 0.5, 2.0],
        threshold: vec![0.1, 0.3, 0.0, 0.6, 0.2, 0.05],
    }
}

/// Hand-written safetensors: tensors in `dtype` ("F32", "F16", "BF16").
fn write_weights(dir: &Path, w: &Weights, dtype: &str, threshold: bool) {
    let mut tensors: Vec<(&str, Vec<usize>, &Vec<f32>)> = vec![
        ("W_enc", vec![D, F], &w.w_enc),
        ("b_enc", vec![F], &w.b_enc),
        ("W_dec", vec![F, D], &w.w_dec),
        ("b_dec", vec![D], &w.b_dec),
    ];
    if threshold {
        tensors.push(("threshold", vec![F], &w.threshold));
    }
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, v) in tensors {
        let start = data.len();
        for &x in v.iter() {
            match dtype {
                "F32" => data.extend_from_slice(&x.to_le_bytes()),
                "F16" => data.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
                "BF16" => data.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
                "I32" => data.extend_from_slice(&(x as i32).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("sae_weights.safetensors"), bytes).unwrap();
}

fn write_cfg(dir: &Path, cfg: serde_json::Value) {
    std::fs::write(dir.join("cfg.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
}

fn base_cfg(arch: &str) -> serde_json::Value {
    let mut c = serde_json::json!({
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "metadata": {"model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post",
                     "hook_layer": 12, "context_size": 1024, "prepend_bos": true},
    });
    if arch == "topk" {
        c["k"] = serde_json::json!(3);
    }
    c
}

/// SAELens's inference on the weights as `round` holds them.
fn saelens(
    w: &Weights,
    round: impl Fn(f32) -> f32,
    arch: &str,
    apply_b_dec: bool,
    rescale: bool,
    x: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let r = |v: &Vec<f32>| -> Vec<f64> { v.iter().map(|&x| round(x) as f64).collect() };
    let (we, be, wd, bd, th) = (
        r(&w.w_enc),
        r(&w.b_enc),
        r(&w.w_dec),
        r(&w.b_dec),
        r(&w.threshold),
    );
    let norm: Vec<f64> = (0..F)
        .map(|j| (0..D).map(|i| wd[j * D + i].powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut h: Vec<f64> = (0..F)
        .map(|j| {
            be[j]
                + (0..D)
                    .map(|i| (x[i] as f64 - if apply_b_dec { bd[i] } else { 0.0 }) * we[i * F + j])
                    .sum::<f64>()
        })
        .collect();
    let mut z = vec![0.0; F];
    if arch == "topk" {
        if rescale {
            h.iter_mut().zip(&norm).for_each(|(h, n)| *h *= n);
        }
        let mut idx: Vec<usize> = (0..F).collect();
        idx.sort_by(|&a, &b| h[b].total_cmp(&h[a]));
        for &j in &idx[..3] {
            z[j] = h[j].max(0.0);
        }
    } else {
        for j in 0..F {
            z[j] = if h[j] > th[j] { h[j].max(0.0) } else { 0.0 };
        }
    }
    let xhat = (0..D)
        .map(|i| {
            bd[i]
                + (0..F)
                    .map(|j| {
                        let zj = if rescale { z[j] / norm[j] } else { z[j] };
                        zj * wd[j * D + i]
                    })
                    .sum::<f64>()
        })
        .collect();
    (z, xhat)
}

fn inputs() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, -0.5, 0.25, 2.0],
        vec![-1.5, 0.75, 1.0, -0.25],
        vec![0.3, 2.2, -1.1, 0.9],
        vec![0.75, -1.25, 0.5, 2.0],
    ]
}

/// Load `dir` and compare with SAELens's formulas on every input.
fn check(dir: &Path, w: &Weights, round: impl Fn(f32) -> f32 + Copy, cfg: &serde_json::Value) {
    let arch = cfg["architecture"].as_str().unwrap();
    let apply = cfg["apply_b_dec_to_input"].as_bool().unwrap_or(true);
    let rescale = cfg
        .get("rescale_acts_by_decoder_norm")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let what = format!(
        "{arch} {} apply_b_dec {apply} rescale {rescale}",
        cfg["dtype"]
    );
    let m = load_sae(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    let rule = rule_for(&m, Form::Inference).unwrap();
    let rec = reconstructor(&m, Form::Inference).unwrap();
    let mut active = 0;
    for x in inputs() {
        let (z, xhat) = saelens(w, round, arch, apply, rescale, &x);
        let a = m.params.encode_pre(&x, 1).unwrap();
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
        let mut got = [0.0; F];
        for &j in sel.row(0) {
            got[j as usize] = a[j as usize] as f64;
        }
        active += sel.row(0).len();
        let xh = rec(&x, 1).unwrap();
        for j in 0..F {
            assert!(
                (got[j] - z[j]).abs() <= 1e-5 * (1.0 + z[j].abs()),
                "{what}: code {j} of {x:?}: sparsa {} vs SAELens {}",
                got[j],
                z[j]
            );
        }
        for i in 0..D {
            assert!(
                (xh[i] as f64 - xhat[i]).abs() <= 1e-5 * (1.0 + xhat[i].abs()),
                "{what}: x̂[{i}] of {x:?}: sparsa {} vs SAELens {}",
                xh[i],
                xhat[i]
            );
        }
    }
    assert!(active >= 4, "{what}: inputs too inactive ({active})");
}

#[test]
fn saelens_settings_are_honoured() {
    let w = weights();
    let id = |v: f32| v;
    let mut grid = Vec::new();
    for arch in ["topk", "jumprelu"] {
        for apply in [true, false] {
            for rescale in [false, true] {
                // rescale_acts_by_decoder_norm is defined for TopK SAEs only.
                if !(rescale && arch == "jumprelu") {
                    grid.push((arch, apply, rescale));
                }
            }
        }
    }
    cases::each(grid, |&(arch, apply, rescale)| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base_cfg(arch);
        c["apply_b_dec_to_input"] = serde_json::json!(apply);
        if rescale {
            c["rescale_acts_by_decoder_norm"] = serde_json::json!(true);
        }
        write_cfg(dir.path(), c.clone());
        write_weights(dir.path(), &w, "F32", arch == "jumprelu");
        check(dir.path(), &w, id, &c);
    });
}

/// Weights stored as F16 or BF16 are read exactly; a declared `float16`/`bfloat16` dtype rounds
/// F32-stored weights to it, as SAELens holds them.
#[test]
fn half_precision_weights_and_dtypes_are_honoured() {
    let w = weights();
    let to_bf16 = |v: f32| bf16::from_f32(v).to_f32();
    let to_f16 = |v: f32| f16::from_f32(v).to_f32();
    cases::each(["topk", "jumprelu"], |&arch| {
        // Stored BF16, declared bfloat16 (apply_b_dec_to_input false, Gemma-Scope style).
        let dir = tempfile::tempdir().unwrap();
        let mut c = base_cfg(arch);
        c["dtype"] = serde_json::json!("bfloat16");
        c["apply_b_dec_to_input"] = serde_json::json!(false);
        write_cfg(dir.path(), c.clone());
        write_weights(dir.path(), &w, "BF16", arch == "jumprelu");
        check(dir.path(), &w, to_bf16, &c);
        // Stored F16, declared float32: exact F16 values.
        let dir = tempfile::tempdir().unwrap();
        let c = base_cfg(arch);
        write_cfg(dir.path(), c.clone());
        write_weights(dir.path(), &w, "F16", arch == "jumprelu");
        check(dir.path(), &w, to_f16, &c);
        // Stored F32, declared torch.float16: rounded to f16.
        let dir = tempfile::tempdir().unwrap();
        let mut c = base_cfg(arch);
        c["dtype"] = serde_json::json!("torch.float16");
        write_cfg(dir.path(), c.clone());
        write_weights(dir.path(), &w, "F32", arch == "jumprelu");
        check(dir.path(), &w, to_f16, &c);
        let m = load_sae(dir.path()).unwrap();
        assert!(m.params.b_dec.iter().all(|&v| to_f16(v) == v));
        assert_ne!(to_f16(w.w_enc[1]), w.w_enc[1], "the rounding is visible");
    });
}

#[test]
fn saelens_metadata_is_read_from_either_layout() {
    let w = weights();
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), &w, "F32", false);
    write_cfg(dir.path(), base_cfg("topk"));
    let s = load_sae(dir.path()).unwrap().meta.source;
    assert_eq!(s.model_name.as_deref(), Some("gemma-2-2b"));
    assert_eq!(s.hook_name.as_deref(), Some("blocks.12.hook_resid_post"));
    assert_eq!(
        (s.hook_layer, s.context_size, s.prepend_bos),
        (Some(12), Some(1024), Some(true))
    );
    // Older SAELens: the same fields at the top level.
    let mut c = base_cfg("topk");
    c.as_object_mut().unwrap().remove("metadata");
    c["model_name"] = serde_json::json!("gpt2");
    c["hook_name"] = serde_json::json!("blocks.8.hook_resid_pre");
    c["hook_layer"] = serde_json::json!(8);
    c["context_size"] = serde_json::json!(128);
    c["prepend_bos"] = serde_json::json!(false);
    write_cfg(dir.path(), c);
    let s = load_sae(dir.path()).unwrap().meta.source;
    assert_eq!(s.model_name.as_deref(), Some("gpt2"));
    assert_eq!(
        (s.hook_layer, s.context_size, s.prepend_bos),
        (Some(8), Some(128), Some(false))
    );
}

#[test]
fn unsupported_settings_are_errors_naming_the_field() {
    let w = weights();
    let err = |arch: &str, edit: &dyn Fn(&mut serde_json::Value), dtype: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base_cfg(arch);
        edit(&mut c);
        write_cfg(dir.path(), c);
        write_weights(dir.path(), &w, dtype, arch == "jumprelu");
        load_sae(dir.path())
            .map(|_| ())
            .expect_err("expected an error")
            .to_string()
    };
    let e = err("topk", &|c| c["dtype"] = "float64".into(), "F32");
    assert!(e.contains("`dtype`") && e.contains("float64"), "{e}");
    let e = err(
        "jumprelu",
        &|c| c["rescale_acts_by_decoder_norm"] = true.into(),
        "F32",
    );
    assert!(
        e.contains("rescale_acts_by_decoder_norm") && e.contains("jumprelu"),
        "{e}"
    );
    let e = err("topk", &|c| c["apply_b_dec_to_input"] = "yes".into(), "F32");
    assert!(e.contains("apply_b_dec_to_input"), "{e}");
    let e = err("topk", &|_| {}, "I32");
    assert!(e.contains("W_enc") && e.contains("I32"), "{e}");
    let e = err(
        "topk",
        &|c| c["normalize_activations"] = "layer_norm".into(),
        "F32",
    );
    assert!(e.contains("normalize_activations"), "{e}");
    // Rescaling by a zero decoder row divides by zero.
    let dir = tempfile::tempdir().unwrap();
    let mut w0 = weights();
    w0.w_dec[2 * D..3 * D].iter_mut().for_each(|v| *v = 0.0);
    let mut c = base_cfg("topk");
    c["rescale_acts_by_decoder_norm"] = true.into();
    write_cfg(dir.path(), c);
    write_weights(dir.path(), &w0, "F32", false);
    let e = load_sae(dir.path()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("W_dec row 2"), "{e}");
}
