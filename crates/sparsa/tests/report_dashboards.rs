//! Data against source: the dashboards' one streaming pass keeps, for every feature, exactly the
//! top-N rows a brute-force pass over the same store finds (inference form, ties to the earlier
//! row), its firing counts, and per-token L0s; contexts are rebuilt from the store's documents
//! and positions around the maximum.

use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use sparsa::data::activations::{write_safetensors, RawTensor};
use sparsa::data::store::{Manifest, ShardEntry, StoreReader, MANIFEST_FORMAT};
use sparsa::report::dashboards::{contexts, scan, ScanConfig};
use sparsa::sae::allocation::Matching;
use sparsa::sae::config::Architecture;
use sparsa::sae::io::{SaeMeta, SaeModel};
use sparsa::sae::metrics::{encode_select, rule_for, Form};
use sparsa::sae::params::SaeParams;
use sparsa::util::progress::{Cancel, NoProgress};
use std::path::Path;

const D: usize = 8;
const SEQ: usize = 7;

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A store of `shards` shards of `rows` rows: contexts of SEQ tokens (positions 1..=SEQ, the
/// prefix row left out), consecutive contexts sometimes from the same document.
fn write_store(dir: &Path, shards: usize, rows: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut all = Vec::new();
    let mut entries = Vec::new();
    let mut g = 0usize;
    for s in 0..shards {
        let mut acts = Vec::with_capacity(rows * D);
        let (mut tok, mut doc, mut pos) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rows {
            for _ in 0..D {
                acts.push(rng.random_range(-1.0f32..1.0));
            }
            tok.push(rng.random_range(0..500u32));
            doc.push((g / (2 * SEQ)) as u32);
            pos.push((g % SEQ) as u32 + 1);
            g += 1;
        }
        let file = format!("shard-{s:05}.safetensors");
        let a: Vec<u8> = acts.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_safetensors(
            &dir.join(&file),
            &[
                RawTensor {
                    name: "activations",
                    dtype: Dtype::F32,
                    shape: vec![rows, D],
                    data: &a,
                },
                RawTensor {
                    name: "token_ids",
                    dtype: Dtype::U32,
                    shape: vec![rows],
                    data: &u32_bytes(&tok),
                },
                RawTensor {
                    name: "doc_ids",
                    dtype: Dtype::U32,
                    shape: vec![rows],
                    data: &u32_bytes(&doc),
                },
                RawTensor {
                    name: "positions",
                    dtype: Dtype::U32,
                    shape: vec![rows],
                    data: &u32_bytes(&pos),
                },
            ],
        )
        .unwrap();
        entries.push(ShardEntry {
            file,
            n_tokens: rows as u64,
        });
        all.extend(acts);
    }
    let m = Manifest {
        format: MANIFEST_FORMAT.into(),
        d_model: D,
        dtype: "f32".into(),
        n_tokens: (shards * rows) as u64,
        shards: entries,
        model: None,
        hook: None,
        layer: None,
        extra: Default::default(),
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    all
}

fn model(arch: Architecture, f: usize, k: usize) -> SaeModel {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let params = SaeParams::init_tied(D, f, vec![0.0; D], &mut rng);
    let thresholds =
        (arch != Architecture::TopK).then(|| (0..f).map(|j| 0.3 + 0.01 * (j % 7) as f32).collect());
    SaeModel {
        params,
        thresholds,
        meta: SaeMeta {
            trained_architecture: arch,
            k,
            ..Default::default()
        },
        density: vec![0.01; f],
    }
}

#[test]
fn top_contexts_match_a_brute_force_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, rows) = (3, 101);
    let x = write_store(dir.path(), shards, rows);
    let n = shards * rows;
    for arch in [Architecture::TopK, Architecture::MutualChoice] {
        let (f, k, top_n) = (24, 3, 5);
        let m = model(arch, f, k);
        let mut reader = StoreReader::open(dir.path()).unwrap();
        // An odd batch size, so batches straddle shard boundaries.
        let cfg = ScanConfig {
            top_n,
            batch: 37,
            max_rows: None,
            hist_bins: 16,
        };
        let s = scan(&m, &mut reader, &cfg, &NoProgress, &Cancel::new())
            .unwrap()
            .unwrap();
        assert_eq!(s.rows, n as u64);

        // Brute force: every row on its own through the inference form.
        let rule = rule_for(&m, Form::Inference).unwrap();
        let mut per_feature: Vec<Vec<(f32, u64)>> = vec![Vec::new(); f];
        let mut l0 = vec![0u64; f + 1];
        let mut mm = Matching::default();
        for r in 0..n {
            let a = encode_select(&m, rule.as_ref(), &x[r * D..(r + 1) * D], 0, &mut mm).unwrap();
            l0[mm.row(0).len()] += 1;
            for &j in mm.row(0) {
                per_feature[j as usize].push((a[j as usize], r as u64));
            }
        }
        let mut checked = 0;
        for (j, pf) in per_feature.iter().enumerate() {
            let mut v = pf.clone();
            assert_eq!(s.counts[j], v.len() as u64, "{arch:?} feature {j} count");
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            v.truncate(top_n);
            let got = s.top[j].sorted();
            assert_eq!(got.len(), v.len());
            for (g, w) in got.iter().zip(&v) {
                assert_eq!(g.1, w.1, "{arch:?} feature {j}: rows {got:?} vs {v:?}");
                assert!((g.0 - w.0).abs() <= 1e-5 * w.0.abs().max(1.0));
            }
            checked += usize::from(!v.is_empty());
            assert_eq!(
                s.hists[j].counts.iter().map(|&c| c as u64).sum::<u64>(),
                s.counts[j]
            );
        }
        assert!(checked > f / 2, "too few features fired to test");
        let mut got_l0 = s.l0_inference.clone();
        got_l0.resize(f + 1, 0);
        assert_eq!(got_l0, l0);
        assert_eq!(s.l0_training.iter().sum::<u64>(), n as u64);

        // Contexts: the maximum row is inside, every token of the same document at consecutive
        // positions, and the max token carries the recorded activation.
        let j = (0..f).max_by_key(|&j| s.counts[j]).unwrap();
        let top = s.top[j].sorted();
        let ctx = contexts(&m, &mut reader, j, &top, 4, 2).unwrap();
        let src = reader.read_sources(0, n).unwrap();
        for c in &ctx {
            let start = c.row as usize - c.max_index;
            let toks: Vec<Option<u32>> = c.tokens.iter().map(|t| t.0).collect();
            let want: Vec<Option<u32>> = src[start..start + toks.len()]
                .iter()
                .map(|s| s.token)
                .collect();
            assert_eq!(toks, want);
            for w in src[start..start + toks.len()].windows(2) {
                assert_eq!(w[0].doc, w[1].doc);
                assert_eq!(w[0].position.unwrap() + 1, w[1].position.unwrap());
            }
            assert!(c.max_index <= 4 && toks.len() - c.max_index <= 3);
            let a = c.tokens[c.max_index].1;
            assert!(
                (a - c.act).abs() <= 1e-5 * c.act.abs().max(1.0),
                "{a} vs {}",
                c.act
            );
        }
    }
}
