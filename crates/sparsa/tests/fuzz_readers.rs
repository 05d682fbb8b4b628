//! A small byte-mutation fuzz harness over every file format sparsa reads: safetensors, `.npy`,
//! IDX, the store manifest, an SAE directory (cfg.json and its weights) and GGUF.
//!
//! For each format a valid file is written, then a fixed number of seeded mutations of it
//! (bytes flipped in the header or anywhere, truncation, a length field set to a huge value,
//! bytes inserted or deleted). Each mutated file is read through the public reader; the harness
//! asserts that no read panics and that nothing is left behind in the directory. A separate
//! table of header corruptions (bad magic, header cut short, header length past the end) must
//! give an error, not a silent success. Failures are collected and reported together, so one
//! does not hide the rest. Deterministic: the seeds are fixed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsa::data::activations::{
    read_sample, write_safetensors_2d, write_store, Elem, SourceOptions,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutated cases per format.
const CASES: usize = 1000;

/// One mutation of `valid`, biased towards its first `header` bytes; returns the bytes and a
/// description for the failure report.
fn mutate(valid: &[u8], header: usize, rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let mut b = valid.to_vec();
    let n = b.len();
    let head = header.clamp(1, n);
    match rng.random_range(0..6) {
        0 => {
            let k = rng.random_range(1..=4);
            let at: Vec<usize> = (0..k).map(|_| rng.random_range(0..head)).collect();
            for &i in &at {
                b[i] ^= 1 << rng.random_range(0..8);
            }
            (b, format!("bit flips in the header at {at:?}"))
        }
        1 => {
            let i = rng.random_range(0..n);
            b[i] = rng.random();
            (b, format!("byte {i} replaced"))
        }
        2 => {
            let cut = rng.random_range(0..n);
            b.truncate(cut);
            (b, format!("truncated to {cut} bytes"))
        }
        3 => {
            // A length or count field set to a huge value.
            let i = rng.random_range(0..head.saturating_sub(8).max(1));
            let v: u64 = match rng.random_range(0..3) {
                0 => u64::MAX,
                1 => 1 << rng.random_range(20..63),
                _ => rng.random(),
            };
            let end = (i + 8).min(n);
            b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            (b, format!("8 bytes at {i} set to {v:#x}"))
        }
        4 => {
            let i = rng.random_range(0..head);
            let k = rng.random_range(1..16);
            let junk: Vec<u8> = (0..k).map(|_| rng.random()).collect();
            b.splice(i..i, junk);
            (b, format!("{k} bytes inserted at {i}"))
        }
        _ => {
            let i = rng.random_range(0..head);
            let k = rng.random_range(1..16).min(n - i);
            b.drain(i..i + k);
            (b, format!("{k} bytes deleted at {i}"))
        }
    }
}

/// The files under `dir`, sorted (to check that a read leaves nothing behind).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Run `read` on `CASES` mutations of the file at `target` (restored after each case) and on
/// each header corruption; return the failures.
fn fuzz(
    name: &str,
    dir: &Path,
    target: &Path,
    header: usize,
    corruptions: &[(&str, Vec<u8>)],
    read: &dyn Fn() -> Result<(), String>,
) -> Vec<String> {
    let valid = std::fs::read(target).unwrap();
    let mut fails = Vec::new();
    assert_eq!(read(), Ok(()), "{name}: the valid file must read");
    let before = listing(dir);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED ^ name.len() as u64);
    let mut errors = 0;
    for case in 0..CASES {
        let (bytes, what) = mutate(&valid, header, &mut rng);
        std::fs::write(target, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(read)) {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                fails.push(format!("{name} case {case} ({what}): panicked: {msg}"));
            }
            Ok(Err(_)) => errors += 1,
            Ok(Ok(())) => {}
        }
        if listing(dir) != before {
            fails.push(format!("{name} case {case} ({what}): left files behind"));
        }
    }
    assert!(errors > 0, "{name}: no mutation was ever rejected");
    for (what, bytes) in corruptions {
        std::fs::write(target, bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(read)) {
            Err(_) => fails.push(format!("{name} ({what}): panicked")),
            Ok(Ok(())) => fails.push(format!("{name} ({what}): read as if valid")),
            Ok(Err(_)) => {}
        }
    }
    std::fs::write(target, &valid).unwrap();
    fails
}

fn rows(n: usize, d: usize) -> Vec<f32> {
    (0..n * d).map(|i| ((i * 7) % 13) as f32 - 6.0).collect()
}

fn read_all(path: &Path) -> Result<(), String> {
    read_sample(path, &SourceOptions::default(), usize::MAX >> 8)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The usual corruptions of a file whose first 8 bytes are a little-endian header length.
fn length_prefixed_corruptions(valid: &[u8], header: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut too_long = valid.to_vec();
    too_long[..8].copy_from_slice(&(valid.len() as u64 * 2).to_le_bytes());
    let mut zero = valid.to_vec();
    zero[..8].copy_from_slice(&0u64.to_le_bytes());
    vec![
        ("header cut short", valid[..header / 2].to_vec()),
        ("header length past the end", too_long),
        ("header length 0", zero),
        ("empty file", Vec::new()),
    ]
}

#[test]
fn safetensors_npy_idx_and_manifest_survive_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let mut fails = Vec::new();

    // safetensors: one [20, 6] f32 tensor.
    let st = dir.path().join("a.safetensors");
    write_safetensors_2d(&st, "activations", 20, 6, &rows(20, 6), Elem::F32).unwrap();
    let valid = std::fs::read(&st).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let mut c = length_prefixed_corruptions(&valid, header);
    let mut not_json = valid.clone();
    not_json[8] = b'[';
    c.push(("header is not a JSON object", not_json));
    fails.extend(fuzz("safetensors", dir.path(), &st, header, &c, &|| {
        read_all(&st)
    }));

    // .npy: [20, 6] f32.
    let np = dir.path().join("a.npy");
    sparsa::data::npy::write_npy_f32(&np, 20, 6, &rows(20, 6)).unwrap();
    let valid = std::fs::read(&np).unwrap();
    let header = 10 + u16::from_le_bytes([valid[8], valid[9]]) as usize;
    let mut magic = valid.clone();
    magic[1] = b'X';
    let mut dtype = valid.clone();
    let at = dtype.windows(3).position(|w| w == b"<f4").unwrap();
    dtype[at..at + 3].copy_from_slice(b"<i8");
    let c = vec![
        ("bad magic", magic),
        ("header cut short", valid[..header / 2].to_vec()),
        ("integer dtype", dtype),
        ("data cut short", valid[..valid.len() - 5].to_vec()),
    ];
    fails.extend(fuzz("npy", dir.path(), &np, header, &c, &|| read_all(&np)));

    // IDX: 5 images of 4×4 u8.
    let idx = dir.path().join("images-idx3-ubyte");
    let mut bytes = vec![0u8, 0, 8, 3];
    for d in [5u32, 4, 4] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend((0..80).map(|i| i as u8));
    std::fs::write(&idx, &bytes).unwrap();
    let read_idx = || {
        sparsa::data::idx::read_idx(&idx)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let mut magic = bytes.clone();
    magic[2] = 9;
    let mut dims = bytes.clone();
    dims[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let c = vec![
        ("bad type byte", magic),
        ("dimensions past the end", dims),
        ("header cut short", bytes[..6].to_vec()),
        ("data cut short", bytes[..bytes.len() - 1].to_vec()),
    ];
    fails.extend(fuzz("idx", dir.path(), &idx, 16, &c, &read_idx));

    // Store manifest: two shards.
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let data = rows(30, 4);
    write_store(&store, 4, Elem::F32, &[&data[..40], &data[40..]]).unwrap();
    let mp = store.join("manifest.json");
    let valid = std::fs::read(&mp).unwrap();
    let text = String::from_utf8(valid.clone()).unwrap();
    let c = vec![
        ("not JSON", b"{ not json".to_vec()),
        (
            "wrong format tag",
            text.replace("sparsa-activations/1", "other/9").into_bytes(),
        ),
        (
            "n_tokens off",
            text.replace("\"n_tokens\": 30", "\"n_tokens\": 31")
                .into_bytes(),
        ),
        (
            "unknown dtype",
            text.replace("\"f32\"", "\"i8\"").into_bytes(),
        ),
        ("cut short", valid[..valid.len() / 2].to_vec()),
    ];
    fails.extend(fuzz("manifest", dir.path(), &mp, valid.len(), &c, &|| {
        read_all(&store)
    }));

    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

#[test]
fn sae_directories_survive_mutation() {
    use sparsa::sae::io::{load_sae, save_sae, SaeMeta, SaeModel};
    use sparsa::sae::params::SaeParams;
    let dir = tempfile::tempdir().unwrap();
    let sae = dir.path().join("sae");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (d, f) = (6, 16);
    let model = SaeModel {
        params: SaeParams::init_tied(d, f, vec![0.1; d], &mut rng),
        thresholds: Some(vec![0.5; f]),
        meta: SaeMeta {
            trained_architecture: sparsa::sae::config::Architecture::MutualChoice,
            k: 3,
            ..SaeMeta::default()
        },
        density: vec![0.01; f],
    };
    save_sae(&sae, &model).unwrap();
    let load = || load_sae(&sae).map(|_| ()).map_err(|e| e.to_string());
    let mut fails = Vec::new();

    let cfg = sae.join("cfg.json");
    let valid = std::fs::read(&cfg).unwrap();
    let text = String::from_utf8(valid.clone()).unwrap();
    let c = vec![
        ("not JSON", b"[1, 2".to_vec()),
        (
            "d_in off",
            text.replace("\"d_in\": 6", "\"d_in\": 7").into_bytes(),
        ),
        (
            "unknown architecture",
            text.replace("\"jumprelu\"", "\"gated\"").into_bytes(),
        ),
        ("cut short", valid[..valid.len() / 2].to_vec()),
    ];
    fails.extend(fuzz("cfg.json", dir.path(), &cfg, valid.len(), &c, &load));

    let w = sae.join("sae_weights.safetensors");
    let valid = std::fs::read(&w).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let c = length_prefixed_corruptions(&valid, header);
    fails.extend(fuzz("sae_weights", dir.path(), &w, header, &c, &load));

    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

#[test]
fn gguf_survives_mutation() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use sparsa::lm::GgufModel;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    let arch = gguf_file::Value::String("llama".into());
    let blocks = gguf_file::Value::U32(1);
    let width = gguf_file::Value::U32(32);
    let tokens = gguf_file::Value::Array(vec![
        gguf_file::Value::String("a".into()),
        gguf_file::Value::String("b".into()),
    ]);
    let w = QTensor::quantize(
        &Tensor::ones((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut file = std::fs::File::create(&p).unwrap();
    gguf_file::write(
        &mut file,
        &[
            ("general.architecture", &arch),
            ("llama.block_count", &blocks),
            ("llama.embedding_length", &width),
            ("tokenizer.ggml.tokens", &tokens),
        ],
        &[("token_embd.weight", &w)],
    )
    .unwrap();
    drop(file);
    let valid = std::fs::read(&p).unwrap();
    let read = || -> Result<(), String> {
        let g = GgufModel::open(&p).map_err(|e| e.to_string())?;
        let _ = g.llama_config();
        g.tensor_f32("token_embd.weight", &[4, 32])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let mut magic = valid.clone();
    magic[0] = b'X';
    let c = vec![
        ("bad magic", magic),
        ("header cut short", valid[..20].to_vec()),
        ("tensor data cut short", valid[..valid.len() - 4].to_vec()),
        ("empty file", Vec::new()),
    ];
    // The header (metadata and tensor infos) is everything before the 32-byte-aligned data.
    let header = valid.len() - 4 * 32 * 4;
    let fails = fuzz("gguf", dir.path(), &p, header, &c, &read);
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}
