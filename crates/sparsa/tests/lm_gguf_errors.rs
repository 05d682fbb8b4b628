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
