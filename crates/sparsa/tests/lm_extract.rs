//! Activation extraction on the real model: shapes agree with the model, rows are the model's
//! activations, an interrupted extraction resumes to a byte-identical store.

mod lm_common;

use candle_core::{IndexOp, Tensor};
use sparsa::data::activations::{inspect, Elem};
use sparsa::data::corpus::{self, CorpusError, Document};
use sparsa::data::store::Manifest;
use sparsa::extract::{contexts, corpus_digest, extract, ExtractConfig, ExtractError};
use sparsa::lm::Hook;
use sparsa::util::progress::{Cancel, NoProgress, Progress};
use std::path::Path;

fn docs() -> Vec<Document> {
    let mut d = corpus::load(&lm_common::sotu_dir()).unwrap();
    d.truncate(3);
    d
}

fn cfg() -> ExtractConfig {
    ExtractConfig {
        hook: Hook::resid_post(3),
        seq_len: 32,
        n_tokens: 700,
        batch_size: 4,
        shard_tokens: 256,
        dtype: Elem::F32,
        include_bos: false,
        prefix_token: Some(1),
        corpus: "sotu".into(),
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn read_manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn store_shapes_agree_with_model_and_rows_are_activations() {
    let (m, tok) = lm_common::model();
    let docs = docs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let s = extract(m, tok, &docs, &cfg(), &out, &NoProgress, &Cancel::new()).unwrap();
    assert!(s.complete && !s.corpus_exhausted);
    assert_eq!(s.n_tokens, 700);
    assert_eq!(s.n_shards, 3); // 256 + 256 + 188
    let man = read_manifest(&out);
    assert_eq!(man.d_model, m.d_model());
    assert_eq!(man.layer, Some(3));
    assert_eq!(man.hook.as_deref(), Some("blocks.3.hook_resid_post"));
    assert_eq!(
        man.shards.iter().map(|e| e.n_tokens).collect::<Vec<_>>(),
        [256, 256, 188]
    );
    let info = inspect(&out).unwrap();
    assert_eq!((info.n_rows, info.d, info.shards), (700, 576, 3));

    // Shard 0: shapes, ids and activations equal to a separate forward of the first context.
    let bytes = std::fs::read(out.join("shard-00000.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("activations").unwrap().shape(), [256, 576]);
    for name in ["token_ids", "doc_ids", "positions"] {
        assert_eq!(st.tensor(name).unwrap().shape(), [256], "{name}");
    }
    let u32s = |name: &str| -> Vec<u32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let first = contexts(&docs, tok, 32, Some(1)).next().unwrap();
    assert_eq!(first.ids.len(), 32);
    assert_eq!(first.ids[0], 1);
    assert_eq!(&u32s("token_ids")[..31], &first.ids[1..]);
    assert_eq!(&u32s("positions")[..31], &(1..32).collect::<Vec<u32>>()[..]);
    assert!(u32s("doc_ids")[..31].iter().all(|&d| d == 0));
    let acts: Vec<f32> = st
        .tensor("activations")
        .unwrap()
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let ids = Tensor::new(first.ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let r = m.run_to(&ids, Hook::resid_post(3)).unwrap();
    for p in [1usize, 15, 31] {
        let want: Vec<f32> = r.i((0, p)).unwrap().to_vec1().unwrap();
        let got = &acts[(p - 1) * 576..p * 576];
        let diff = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "position {p}: {diff}");
    }
}

/// Cancels once the reported position passes `at`.
struct CancelAt {
    at: u64,
    cancel: Cancel,
}
impl Progress for CancelAt {
    fn set_position(&self, pos: u64) {
        if pos >= self.at {
            self.cancel.cancel();
        }
    }
}

#[test]
fn interrupted_extraction_resumes_to_identical_store() {
    let (m, tok) = lm_common::model();
    let docs = docs();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut c = cfg();
    c.dtype = Elem::F16;
    extract(m, tok, &docs, &c, &a, &NoProgress, &Cancel::new()).unwrap();

    let cancel = Cancel::new();
    let stop = CancelAt {
        at: 300,
        cancel: cancel.clone(),
    };
    let s = extract(m, tok, &docs, &c, &b, &stop, &cancel).unwrap();
    assert!(!s.complete);
    assert_eq!(
        s.n_tokens, 256,
        "one complete shard before the interruption"
    );
    assert_eq!(read_manifest(&b).shards.len(), 1);
    // A crash after a shard was written but before the manifest listed it, and a stale temp file.
    std::fs::write(b.join("shard-00001.safetensors"), b"half-written garbage").unwrap();
    std::fs::write(b.join(".shard-00001.safetensors.tmp-1"), b"junk").unwrap();

    let s = extract(m, tok, &docs, &c, &b, &NoProgress, &Cancel::new()).unwrap();
    assert!(s.complete);
    assert_eq!(s.resumed_from, 256);
    std::fs::remove_file(b.join(".shard-00001.safetensors.tmp-1")).unwrap();
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(
            x == y,
            "{name} differs between the resumed and the uninterrupted store"
        );
    }
    // Running again on a complete store does nothing.
    let s = extract(m, tok, &docs, &c, &b, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!((s.resumed_from, s.tokens_forwarded), (700, 0));
}

#[test]
fn resume_with_other_settings_and_bad_inputs_are_errors() {
    let (m, tok) = lm_common::model();
    let docs = docs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let mut c = cfg();
    c.n_tokens = 40;
    extract(m, tok, &docs, &c, &out, &NoProgress, &Cancel::new()).unwrap();
    let mut other = c.clone();
    other.seq_len = 64;
    let e = extract(m, tok, &docs, &other, &out, &NoProgress, &Cancel::new()).unwrap_err();
    assert!(
        matches!(&e, ExtractError::Mismatch { field, .. } if field == "seq_len"),
        "{e}"
    );
    // Same corpus path and settings, different text: refused, not mixed into the store.
    let mut edited = docs.clone();
    edited[0].text.push_str(" An added sentence.");
    let e = extract(m, tok, &edited, &c, &out, &NoProgress, &Cancel::new()).unwrap_err();
    assert!(
        matches!(&e, ExtractError::Mismatch { field, .. } if field.starts_with("corpus_sha256")),
        "{e}"
    );
    assert_eq!(
        read_manifest(&out).extra["corpus_sha256"],
        corpus_digest(&docs).as_str()
    );

    let mut bad = c.clone();
    bad.hook = Hook::resid_post(30);
    let e = extract(
        m,
        tok,
        &docs,
        &bad,
        &dir.path().join("t"),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");

    // A directory with foreign files is refused.
    let foreign = dir.path().join("f");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let e = extract(m, tok, &docs, &c, &foreign, &NoProgress, &Cancel::new()).unwrap_err();
    assert!(matches!(e, ExtractError::NotAStore { .. }), "{e}");

    // A missing corpus.
    let e = corpus::load(&dir.path().join("no-such-corpus")).unwrap_err();
    assert!(matches!(e, CorpusError::Missing { .. }));
    assert!(e.to_string().contains("sparsa fetch"), "{e}");
}

/// Extraction with the linear layers in bf16: the manifest records the precision, the rows stay
/// close to the f32 ones, and a store started in one precision refuses a resume in the other.
#[test]
fn bf16_extraction_is_recorded_and_not_mixed_with_f32() {
    let Some(kernel) = sparsa::kernels::bf16::Bf16Kernel::from_env().unwrap() else {
        eprintln!("no AMX-BF16 or AVX512-BF16 here: bf16 extraction is not available");
        return;
    };
    let (m, tok) = lm_common::model();
    let (mut mb, _) = sparsa::lm::load(&lm_common::gguf_path()).unwrap();
    assert!(mb.use_bf16(Some(kernel)).unwrap());
    let docs = docs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.n_tokens = 60;
    let (f, b) = (dir.path().join("f32"), dir.path().join("bf16"));
    extract(m, tok, &docs, &c, &f, &NoProgress, &Cancel::new()).unwrap();
    extract(&mb, tok, &docs, &c, &b, &NoProgress, &Cancel::new()).unwrap();
    let (mf, mbm) = (read_manifest(&f), read_manifest(&b));
    assert_eq!(mf.extra["matmul"], "f32");
    assert_eq!(mbm.extra["matmul"], "bf16");
    assert_eq!(mbm.extra["matmul_kernel"], kernel.name());
    // The rows: the split inputs carry x to 2⁻¹⁶ and the weights are rounded to bf16, so each
    // row is within a few bf16 roundings of the f32 one (relative to the row's norm).
    let rows = |dir: &Path| -> Vec<f32> {
        let shard = &read_manifest(dir).shards[0].file;
        let t = candle_core::safetensors::load(dir.join(shard), &candle_core::Device::Cpu).unwrap();
        t["activations"].flatten_all().unwrap().to_vec1().unwrap()
    };
    let (rf, rb) = (rows(&f), rows(&b));
    assert_eq!(rf.len(), rb.len());
    let d = m.d_model();
    for (x, y) in rf.chunks(d).zip(rb.chunks(d)) {
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff = x
            .iter()
            .zip(y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(diff <= 0.05 * norm, "row differs by {diff} (norm {norm})");
        assert!(x != y, "bf16 rows equal to the f32 ones: bf16 did not run");
    }
    // Reopening either store in the other precision is refused, naming the field.
    for (model, dir) in [(&mb, &f), (m, &b)] {
        let e = extract(model, tok, &docs, &c, dir, &NoProgress, &Cancel::new()).unwrap_err();
        assert!(
            matches!(&e, ExtractError::Mismatch { field, .. } if field == "matmul"),
            "{e}"
        );
    }
}

#[test]
fn corpus_exhaustion_is_recorded() {
    let (m, tok) = lm_common::model();
    let docs = vec![Document {
        id: 0,
        name: "tiny".into(),
        text: "A short document of a few words.".into(),
    }];
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.include_bos = true;
    let s = extract(
        m,
        tok,
        &docs,
        &c,
        &dir.path().join("s"),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let n = tok.encode(&docs[0].text, false).len() as u64 + 1;
    assert!(s.complete && s.corpus_exhausted);
    assert_eq!(s.n_tokens, n);
}

#[test]
fn held_out_contexts_follow_the_store() {
    let (m, tok) = lm_common::model();
    let docs = docs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let mut c = cfg();
    c.n_tokens = 100;
    let s = extract(m, tok, &docs, &c, &out, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(s.contexts_used, 4); // one batch of 4 contexts of 31 rows covers 100 rows
    let h = sparsa::extract::held_out(&docs, tok, &read_manifest(&out), 3).unwrap();
    assert_eq!(h.hook, Hook::resid_post(3));
    assert_eq!(h.bos_id, Some(1));
    let want: Vec<Vec<u32>> = contexts(&docs, tok, 32, Some(1))
        .skip(4)
        .take(3)
        .map(|c| c.ids)
        .collect();
    assert_eq!(h.seqs, want);
    // Tokens the store holds never appear as held-out positions of the same document window.
    let stored_first = contexts(&docs, tok, 32, Some(1)).next().unwrap();
    assert!(!h.seqs.contains(&stored_first.ids));
}
