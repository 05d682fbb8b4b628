//! Which token should start each extraction context? Clean next-token CE of SmolLM2 on the same
//! 12 text windows (127 tokens each, SOTU and Wikipedia) behind three candidate prefixes:
//! `<|im_start|>` (1, the GGUF's bos_token_id), `<|endoftext|>` (0, SmolLM2's document
//! separator in pre-training) and `<|im_end|>` (2). Run:
//! `cargo run --release -p sparsa --example lm_prefix`
use sparsa::data::{corpus, fetch};
use sparsa::extract::contexts;
use sparsa::lm::{downstream_eval, load, DownstreamConfig, Hook};
use sparsa::util::progress::{Cancel, NoProgress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (m, tok) = load(&fetch::ensure(fetch::Asset::SmolLm2Gguf)?)?;
    for (name, asset) in [
        ("sotu", fetch::Asset::SotuCorpus),
        ("wiki", fetch::Asset::WikiSummaries),
    ] {
        let docs = corpus::load(&fetch::ensure(asset)?)?;
        let base: Vec<Vec<u32>> = contexts(&docs, &tok, 128, Some(1))
            .step_by(97)
            .take(12)
            .map(|c| c.ids[1..].to_vec())
            .collect();
        for prefix in [1u32, 0, 2] {
            let seqs: Vec<Vec<u32>> = base
                .iter()
                .map(|s| std::iter::once(prefix).chain(s.iter().copied()).collect())
                .collect();
            let cfg = DownstreamConfig {
                hook: Hook::resid_post(15),
                batch_size: 6,
                pad_id: 2,
                bos_id: Some(prefix),
                skip_positions: Vec::new(),
            };
            let r = downstream_eval(
                &m,
                &seqs,
                &cfg,
                &|x| Ok(x.clone()),
                &NoProgress,
                &Cancel::new(),
            )?;
            println!(
                "{name} prefix {prefix} ({:?}): clean CE {:.4}, zero-ablated {:.3}, mean-ablated {:.3}",
                tok.decode(&[prefix]),
                r.ce_clean,
                r.ce_zero_ablated,
                r.ce_mean_ablated
            );
        }
    }
    Ok(())
}
