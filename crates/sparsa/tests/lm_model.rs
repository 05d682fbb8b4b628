//! SmolLM2 forward pass and tokenizer against the golden values of spec/data.md.

mod lm_common;

use candle_core::{IndexOp, Tensor};
use lm_common::model;
use sparsa::lm::{Batch, Hook};

const PROMPT: &str = "The capital of France is";
const GOLDEN_IDS: [u32; 5] = [504, 3575, 282, 4649, 314];

#[test]
fn tokenizer_matches_golden_ids() {
    let (_, tok) = model();
    assert_eq!(tok.encode(PROMPT, false), GOLDEN_IDS);
    assert_eq!(tok.decode(&GOLDEN_IDS), PROMPT);
}

#[test]
fn logits_match_golden_top5() {
    let (m, _) = model();
    let ids = Tensor::new(&[GOLDEN_IDS], &candle_core::Device::Cpu).unwrap();
    let logits = m.forward(&ids).unwrap();
    let last: Vec<f32> = logits.i((0, 4)).unwrap().to_vec1().unwrap();
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let top: Vec<usize> = order[..5].to_vec();
    assert_eq!(top, vec![7042, 260, 4528, 2250, 1315]);
    let golden = [17.371f32, 14.889, 13.245, 13.009, 12.952];
    for (i, g) in top.iter().zip(golden) {
        assert!((last[*i] - g).abs() < 5e-3, "logit {} = {} vs {g}", i, last[*i]);
    }
}

#[test]
fn resid_after_block0_matches_golden() {
    let (m, _) = model();
    let ids = Tensor::new(&[GOLDEN_IDS], &candle_core::Device::Cpu).unwrap();
    let r = m.run_to(&ids, Hook::resid_post(0)).unwrap();
    let v: Vec<f32> = r.i((0, 4)).unwrap().to_vec1().unwrap();
    let golden = [2.2252f32, -0.8438, -1.1437, -0.7542];
    for (a, g) in v[..4].iter().zip(golden) {
        assert!((a - g).abs() < 1e-3, "{:?} vs {golden:?}", &v[..4]);
    }
}

#[test]
fn batched_padded_forward_equals_single() {
    let (m, tok) = model();
    let a = tok.encode(PROMPT, false);
    let b = tok.encode("In 1790, George Washington spoke to Congress about the", false);
    let batch = Batch::new(&[a.clone(), b.clone()], 0).unwrap();
    let lb = m.forward(&batch.ids).unwrap();
    for (row, seq) in [a, b].iter().enumerate() {
        let single = m
            .forward(&Tensor::new(seq.as_slice(), &candle_core::Device::Cpu).unwrap().unsqueeze(0).unwrap())
            .unwrap();
        let s = single.i(0).unwrap();
        let p = lb.i(row).unwrap().narrow(0, 0, seq.len()).unwrap();
        let diff: f32 = (s - p).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff < 1e-3, "row {row}: max |Δlogit| = {diff}");
    }
}
