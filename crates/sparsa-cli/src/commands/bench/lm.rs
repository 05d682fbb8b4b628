//! `sparsa bench lm`: the language model's forward speed on corpus text, the full model and up
//! to a hook (what extraction runs), per precision of the linear layers.

use crate::commands::inputs::{load_corpus, load_model, ModelArg};
use crate::ui;
use anyhow::Result;
use clap::Args;
use sparsa::kernels::bf16::Bf16Kernel;
use sparsa::lm::bench::ForwardTiming;
use sparsa::lm::{Batch, Hook, HookPoint};
use sparsa::sae::config::Matmul;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8, value_parser = ui::positive)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128, value_parser = ui::positive)]
    pub seq_len: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3, value_parser = ui::positive)]
    pub reps: usize,
    /// Also time running only up to this layer's residual (what extraction does).
    #[arg(long, default_value_t = 15)]
    pub layer: usize,
    /// Precisions of the linear layers to time, comma separated: `f32`, and `bf16` (bf16
    /// weights, inputs split into two bf16 halves, f32 accumulation; needs AMX-BF16 or
    /// AVX512-BF16, `SPARSA_BF16_KERNEL` picks one).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub matmul: Vec<Matmul>,
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let (m, tok, _) = load_model(&a.model)?;
    m.check_hook(Hook::resid_post(a.layer))?;
    let (_, docs) = load_corpus("sotu")?;
    let tt = sparsa::lm::bench::time_tokenizer(&tok, docs.iter().map(|d| d.text.as_str()));
    let seqs: Vec<Vec<u32>> =
        sparsa::extract::contexts(&docs, &tok, a.seq_len, tok.document_start_id())
            .filter(|c| c.ids.len() == a.seq_len)
            .take(a.batch)
            .map(|c| c.ids)
            .collect();
    anyhow::ensure!(seqs.len() == a.batch, "the corpus gave too few contexts");
    let batch = Batch::new(&seqs, 0)?;
    let threads = candle_core::utils::get_num_threads();
    let hook = Hook {
        layer: a.layer,
        point: HookPoint::ResidPost,
    };
    let mut m = m;
    let mut runs: Vec<(String, ForwardTiming)> = Vec::new();
    for prec in &a.matmul {
        let kernel = match prec {
            Matmul::Bf16 => match Bf16Kernel::from_env().map_err(ui::Usage)? {
                Some(k) => Some(k),
                None => {
                    eprintln!("bf16: no AMX-BF16 or AVX512-BF16 kernel here: skipped");
                    continue;
                }
            },
            Matmul::F32 => None,
        };
        m.use_bf16(kernel)?;
        let label = kernel.map_or("f32".to_string(), |k| format!("bf16 ({})", k.name()));
        let timing = sparsa::lm::bench::time_forward(&m, &batch.ids, hook, a.reps)?;
        if let (Some(_), Some((_, base))) = (kernel, runs.iter().find(|(l, _)| l == "f32")) {
            let d = sparsa::lm::bench::max_abs_diff(&base.logits, &timing.logits);
            eprintln!("{label}: max |Δlogit| against f32 over the batch {d:.4}");
        }
        runs.push((label, timing));
    }
    let rows = bench_rows(
        &runs,
        (a.batch * a.seq_len) as f64,
        m.config().n_layers,
        hook,
    );
    println!(
        "batch {} x {} tokens, {} reps, {threads} threads; tokenizer: {} SOTU documents, {:.1} MB -> {} tokens in {:.2}s ({:.0} tokens/s)",
        a.batch,
        a.seq_len,
        a.reps,
        tt.texts,
        tt.bytes as f64 / 1e6,
        tt.tokens,
        tt.secs,
        tt.tokens as f64 / tt.secs.max(1e-9)
    );
    print!("{}", ui::table(&rows));
    Ok(())
}

/// The bench table: per precision the full forward and the prefix, tokens/s and × f32.
fn bench_rows(
    runs: &[(String, ForwardTiming)],
    n_tok: f64,
    n_layers: usize,
    hook: Hook,
) -> Vec<Vec<String>> {
    let base = runs.iter().find(|(l, _)| l == "f32").map(|(_, t)| t);
    let mut rows = vec![vec![
        "pass".into(),
        "linear layers".into(),
        "s/batch".into(),
        "tokens/s".into(),
        "× f32".into(),
    ]];
    for (label, t) in runs {
        for (pass, secs, base_secs) in [
            (
                format!("forward, all {n_layers} blocks + logits"),
                t.full_s,
                base.map(|b| b.full_s),
            ),
            (
                format!("up to {hook} (extraction)"),
                t.prefix_s,
                base.map(|b| b.prefix_s),
            ),
        ] {
            rows.push(vec![
                pass,
                label.clone(),
                format!("{secs:.3}"),
                format!("{:.0}", n_tok / secs),
                base_secs.map_or("–".to_string(), |b| format!("{:.2}", b / secs)),
            ]);
        }
    }
    rows
}
