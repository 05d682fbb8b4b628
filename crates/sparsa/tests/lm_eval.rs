//! Downstream evaluation on the real model.

mod lm_common;

use candle_core::Tensor;
use sparsa::data::corpus;
use sparsa::extract::contexts;
use sparsa::lm::{downstream_eval, downstream_eval_many, DownstreamConfig, Hook, Reconstruct};
use sparsa::util::progress::{Cancel, NoProgress};

fn seqs() -> Vec<Vec<u32>> {
    let (_, tok) = lm_common::model();
    let mut docs = corpus::load(&lm_common::sotu_dir()).unwrap();
    docs.truncate(4);
    // Held-out-style: skip the first contexts, take 4 of 48 tokens, plus one short sequence.
    let mut s: Vec<Vec<u32>> = contexts(&docs, tok, 48, Some(1))
        .skip(10)
        .take(4)
        .map(|c| c.ids)
        .collect();
    s.push(s[0][..20].to_vec());
    s
}

fn cfg(hook: Hook) -> DownstreamConfig {
    DownstreamConfig {
        hook,
        batch_size: 5,
        pad_id: 2,
        bos_id: Some(1),
        skip_positions: Vec::new(),
    }
}

#[test]
fn identity_splice_is_exactly_clean_and_ablations_hurt() {
    let (m, _) = lm_common::model();
    let s = seqs();
    for hook in [Hook::resid_post(24), Hook::mlp_out(24)] {
        let r = downstream_eval(
            m,
            &s,
            &cfg(hook),
            &|x| Ok(x.clone()),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(r.ce_spliced, r.ce_clean, "{hook}");
        assert_eq!(r.kl_clean_spliced, 0.0);
        assert_eq!(r.loss_recovered_zero, 1.0);
        assert!(r.ce_zero_ablated > r.ce_clean + 0.01, "{r:?}");
        assert!(r.ce_mean_ablated > r.ce_clean, "{r:?}");
        assert_eq!(r.n_sequences, 5);
        assert_eq!(r.n_spliced, 4 * 47 + 19);
        assert_eq!(r.n_predictions, 4 * 46 + 18);
        assert!(
            r.ce_clean > 1.0 && r.ce_clean < 6.0,
            "plausible clean CE: {}",
            r.ce_clean
        );
    }
}

/// Skipped positions (an SAE trained without them) keep their clean activation and are no
/// prediction source: position 1 of every sequence drops out of the rows given to the
/// reconstruction and out of the scored predictions.
#[test]
fn skipped_positions_stay_clean_and_are_not_scored() {
    let (m, _) = lm_common::model();
    let s = seqs();
    let mut c = cfg(Hook::resid_post(24));
    let zero = |x: &Tensor| x.zeros_like();
    let all = downstream_eval(m, &s, &c, &zero, &NoProgress, &Cancel::new()).unwrap();
    c.skip_positions = vec![1];
    let n_rows = std::cell::Cell::new(0usize);
    let counting = |x: &Tensor| {
        n_rows.set(n_rows.get() + x.dims()[0]);
        x.zeros_like()
    };
    let r = downstream_eval(m, &s, &c, &counting, &NoProgress, &Cancel::new()).unwrap();
    // 5 sequences, each loses position 1 as a spliced row and as a prediction source.
    assert_eq!(r.n_spliced, all.n_spliced - 5);
    assert_eq!(n_rows.get(), r.n_spliced);
    assert_eq!(r.n_predictions, all.n_predictions - 5);
    assert!(r.bos_rule.contains("and position 1 keep"), "{}", r.bos_rule);
    assert_ne!(
        r.ce_clean, all.ce_clean,
        "position 1's prediction left the clean CE too"
    );
    assert!(r.ce_spliced.is_finite() && r.ce_spliced > r.ce_clean);
}

#[test]
fn several_reconstructions_at_once_zero_noise_identity() {
    let (m, _) = lm_common::model();
    let s = seqs();
    let c = cfg(Hook::resid_post(24));
    let zero = |x: &Tensor| x.zeros_like();
    let shrink = |x: &Tensor| x * 0.9;
    let ident = |x: &Tensor| Ok(x.clone());
    let recs: [Reconstruct<'_>; 3] = [&zero, &shrink, &ident];
    let r = downstream_eval_many(m, &s, &c, &recs, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(r.len(), 3);
    // x̂ = 0 is zero-ablation.
    assert_eq!(r[0].ce_spliced, r[0].ce_zero_ablated);
    assert_eq!(r[0].loss_recovered_zero, 0.0);
    assert!(r[0].kl_clean_spliced > 0.0);
    // x̂ = 0.9 x: a small damage, loss recovered strictly between 0 and 1.
    assert!(
        r[1].ce_spliced > r[1].ce_clean && r[1].ce_spliced < r[1].ce_zero_ablated,
        "{:?}",
        r[1]
    );
    assert!(r[1].loss_recovered_zero > 0.0 && r[1].loss_recovered_zero < 1.0);
    assert!(r[1].kl_clean_spliced > 0.0);
    // A row-slice closure (the SAE side's shape) behaves like the tensor one.
    let rows = sparsa::lm::from_rows(576, |x: &[f32], _n: usize| -> Result<Vec<f32>, String> {
        Ok(x.iter().map(|v| v * 0.9).collect())
    });
    let via_rows = downstream_eval(m, &s, &c, &rows, &NoProgress, &Cancel::new()).unwrap();
    assert!((via_rows.ce_spliced - r[1].ce_spliced).abs() < 1e-6);
    // Identity, and the shared passes agree with a single-reconstruction run.
    assert_eq!(r[2].ce_spliced, r[2].ce_clean);
    assert_eq!(r[2].kl_clean_spliced, 0.0);
    let single = downstream_eval(m, &s, &c, &shrink, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(single, r[1]);
}

#[test]
fn bad_reconstructions_are_errors() {
    let (m, _) = lm_common::model();
    let s = seqs();
    let c = cfg(Hook::resid_post(24));
    let e = downstream_eval(
        m,
        &s,
        &c,
        &|x| x.narrow(1, 0, 10),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("reconstruction"), "{e}");
    let e = downstream_eval(
        m,
        &s,
        &c,
        &|x| x.affine(0.0, f64::NAN),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = downstream_eval(
        m,
        &s,
        &cfg(Hook::resid_post(31)),
        &|x| Ok(x.clone()),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let _ = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu);
}
