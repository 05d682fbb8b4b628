//! A corrupt, truncated or foreign GGUF gives a clear typed error, never a panic.

mod lm_common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sparsa::lm::{load, GgufModel, LmError};
use std::io::{Read, Write};

fn write_prefix(src: &std::path::Path, dst: &std::path::Path, n: u64) {
    let mut f = std::fs::File::open(src).unwrap().take(n);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    std::fs::write(dst, buf).unwrap();
}

#[test]
fn truncated_in_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    write_prefix(&lm_common::gguf_path(), &p, 60_000_000);
    let e = load(&p).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::Truncated {
                actual: 60_000_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn truncated_in_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    write_prefix(&lm_common::gguf_path(), &p, 1_000_000);
    let e = load(&p).unwrap_err();
    assert!(matches!(e, LmError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("cut.gguf"), "{e}");
}

#[test]
fn corrupt_magic_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.gguf");
    std::fs::write(&p, b"this is not a gguf model file at all, just text").unwrap();
    let e = load(&p).unwrap_err();
    assert!(matches!(e, LmError::Corrupt { .. }), "{e}");
    let e = load(&dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(e, LmError::Open { .. }), "{e}");
    assert!(e.to_string().contains("sparsa fetch"), "{e}");
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt2.gguf");
    let arch = gguf_file::Value::String("gpt2".into());
    let n = gguf_file::Value::U32(2);
    let w = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut f = std::fs::File::create(&p).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch), ("gpt2.block_count", &n)],
        &[("token_embd.weight", &w)],
    )
    .unwrap();
    f.flush().unwrap();
    let g = GgufModel::open(&p).unwrap();
    let e = sparsa::lm::Llama::from_gguf(&g).unwrap_err();
    assert!(
        matches!(&e, LmError::UnsupportedArchitecture { arch, .. } if arch == "gpt2"),
        "{e}"
    );
    assert!(e.to_string().contains("llama"), "{e}");
}

/// A bad metadata value is named by its key, as "metadata key `KEY`: problem" (one case per
/// check, every case run).
#[test]
fn bad_llama_metadata_names_the_key() {
    use gguf_file::Value as V;
    let base = || -> Vec<(&'static str, V)> {
        vec![
            ("general.architecture", V::String("llama".into())),
            ("llama.block_count", V::U32(2)),
            ("llama.embedding_length", V::U32(64)),
            ("llama.attention.head_count", V::U32(4)),
            ("llama.attention.head_count_kv", V::U32(2)),
            ("llama.feed_forward_length", V::U32(128)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.context_length", V::U32(256)),
            ("llama.rope.freq_base", V::F32(10000.0)),
            ("llama.vocab_size", V::U32(32)),
        ]
    };
    let open = |meta: &[(&'static str, V)]| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let mut f = std::fs::File::create(&p).unwrap();
        let refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &refs, &[]).unwrap();
        f.flush().unwrap();
        GgufModel::open(&p).unwrap().llama_config()
    };
    assert!(open(&base()).is_ok());
    let cases: Vec<(&str, Option<V>, &str)> = vec![
        (
            "llama.rope.freq_base",
            Some(V::F32(-1.0)),
            "must be a positive number",
        ),
        ("llama.block_count", Some(V::U32(0)), "must be at least 1"),
        ("llama.block_count", None, "missing"),
        (
            "llama.context_length",
            Some(V::U32(0)),
            "must be in 1..=1048576",
        ),
        (
            "llama.attention.head_count",
            Some(V::U32(3)),
            "inconsistent",
        ),
        (
            "llama.embedding_length",
            Some(V::U32(12)),
            "odd head dimension",
        ),
        (
            "llama.feed_forward_length",
            Some(V::String("x".into())),
            "not an integer",
        ),
    ];
    let mut failures = Vec::new();
    for (key, value, problem) in cases {
        let mut meta = base();
        meta.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            meta.push((key, v));
        }
        let msg = match open(&meta) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        };
        let want = format!("metadata key `{key}`: {problem}");
        if !msg.contains(&want) || msg.contains(" is must") {
            failures.push(format!("{key}: got `{msg}`, want `{want}`"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
