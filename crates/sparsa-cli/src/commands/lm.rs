//! `sparsa lm …`: the language model on its own (tokenize, next-token top-k, speed), plus the
//! model/corpus resolution shared with `sparsa activations`.
use crate::ui;
use anyhow::{Context, Result};
use candle_core::{IndexOp, Tensor};
use clap::{Args, Subcommand};
use sparsa::data::corpus::{self, Document};
use sparsa::data::fetch::{ensure, Asset};
use sparsa::kernels::bf16::Bf16Kernel;
use sparsa::lm::bench::ForwardTiming;
use sparsa::lm::{Batch, Hook, HookPoint, Llama, Tokenizer};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum LmCommand {
    /// Show the model's configuration and tokenizer.
    Info(ModelArg),
    /// Tokenize a text and print the ids and pieces.
    Tokenize {
        #[command(flatten)]
        model: ModelArg,
        /// Parse special tokens such as <|im_start|> as single ids.
        #[arg(long)]
        special: bool,
        /// The text.
        text: String,
    },
    /// Print the top-k next-token predictions after a prompt.
    Top {
        #[command(flatten)]
        model: ModelArg,
        /// How many candidates.
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        /// The prompt (no BOS is added).
        prompt: String,
    },
    /// Measure forward-pass speed (tokens/s) on corpus text, full model and up to a hook (alias
    /// of `sparsa bench lm`).
    #[command(hide = true)]
    Bench(BenchArgs),
    /// Next-token CE on a store's held-out contexts: clean, and with the store's hook zero- or
    /// mean-ablated (the baselines of `sae eval`'s loss recovered).
    Ablate(AblateArgs),
}

#[derive(Args, Debug)]
pub struct AblateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Activation store made by `sparsa activations extract` (gives hook, seq_len, corpus).
    #[arg(long)]
    pub store: PathBuf,
    /// Corpus the store was extracted from (default: the one in its manifest).
    #[arg(long)]
    pub corpus: Option<String>,
    /// Held-out contexts to evaluate.
    #[arg(long = "lm-sequences", alias = "sequences", default_value_t = 32)]
    pub sequences: usize,
    /// Contexts per forward pass.
    #[arg(long = "batch", alias = "batch-size", default_value_t = 8)]
    pub batch_size: usize,
}

/// Which GGUF model to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// GGUF model file (default: SmolLM2-135M-Instruct, fetched into the cache if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Also time running only up to this layer's residual (what extraction does).
    #[arg(long, default_value_t = 15)]
    pub layer: usize,
    /// Precisions of the linear layers to time, comma separated: `f32`, and `bf16` (bf16
    /// weights, inputs split into two bf16 halves, f32 accumulation; needs AMX-BF16 or
    /// AVX512-BF16, `SPARSA_BF16_KERNEL` picks one).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(["f32", "bf16"]),
        default_value = "f32,bf16"
    )]
    pub matmul: Vec<String>,
}

/// The GGUF path: `--model` or the fetched SmolLM2.
pub fn model_path(arg: &ModelArg) -> Result<PathBuf> {
    match &arg.model {
        Some(p) => Ok(p.clone()),
        None => ensure(Asset::SmolLm2Gguf).context("fetching the default model (SmolLM2-135M)"),
    }
}

/// Load the model and tokenizer, saying how long it took.
pub fn load_model(arg: &ModelArg) -> Result<(Llama, Tokenizer, PathBuf)> {
    let path = model_path(arg)?;
    let t = Instant::now();
    let (m, tok) =
        sparsa::lm::load(&path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        "loaded {} in {:.2}s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok((m, tok, path))
}

/// `sotu` / `wiki` (fetched) or a path, to (label, documents).
pub fn load_corpus(spec: &str) -> Result<(String, Vec<Document>)> {
    let path: PathBuf = match spec {
        "sotu" => ensure(Asset::SotuCorpus).context("fetching the State of the Union corpus")?,
        "wiki" | "wiki-summaries" => {
            ensure(Asset::WikiSummaries).context("fetching the Wikipedia summaries")?
        }
        p => PathBuf::from(p),
    };
    let docs = corpus::load(&path).with_context(|| format!("reading corpus `{spec}`"))?;
    let label = match spec {
        "sotu" | "wiki" | "wiki-summaries" => spec.to_string(),
        _ => path.display().to_string(),
    };
    Ok((label, docs))
}

pub fn run(cmd: LmCommand) -> Result<()> {
    match cmd {
        LmCommand::Info(m) => info(&m),
        LmCommand::Tokenize {
            model,
            special,
            text,
        } => tokenize(&model, special, &text),
        LmCommand::Top { model, k, prompt } => top(&model, k, &prompt),
        LmCommand::Bench(a) => bench(&a),
        LmCommand::Ablate(a) => ablate(&a),
    }
}

fn info(arg: &ModelArg) -> Result<()> {
    let (m, tok, path) = load_model(arg)?;
    let c = m.config();
    let rows = vec![
        vec!["field".into(), "value".into()],
        vec!["file".into(), path.display().to_string()],
        vec!["name".into(), m.name().to_string()],
        vec!["blocks".into(), c.n_layers.to_string()],
        vec!["d_model".into(), c.d_model.to_string()],
        vec![
            "heads (q/kv)".into(),
            format!("{}/{}", c.n_heads, c.n_kv_heads),
        ],
        vec!["d_ff".into(), c.d_ff.to_string()],
        vec!["vocab".into(), c.vocab.to_string()],
        vec!["context".into(), c.context_length.to_string()],
        vec!["rope base".into(), c.rope_base.to_string()],
        vec!["rms eps".into(), format!("{:e}", c.rms_eps)],
        vec!["pre-tokenizer".into(), format!("{:?}", tok.pre_tokenizer())],
        vec![
            "bos / eos".into(),
            format!("{:?} / {:?}", tok.bos_id(), tok.eos_id()),
        ],
    ];
    print!("{}", ui::table(&rows));
    Ok(())
}

fn tokenize(arg: &ModelArg, special: bool, text: &str) -> Result<()> {
    let (_, tok, _) = load_model(arg)?;
    let ids = tok.encode(text, special);
    println!("{ids:?}");
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| format!("{:?}", tok.decode(&[i])))
        .collect();
    println!("{}", pieces.join(" "));
    Ok(())
}

fn top(arg: &ModelArg, k: usize, prompt: &str) -> Result<()> {
    let (m, tok, _) = load_model(arg)?;
    let ids = tok.encode(prompt, true);
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
    let x = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let logits: Vec<f32> = m.forward(&x)?.i((0, ids.len() - 1))?.to_vec1()?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut rows = vec![vec!["id".into(), "token".into(), "logit".into()]];
    for &i in order.iter().take(k) {
        rows.push(vec![
            i.to_string(),
            format!("{:?}", tok.decode(&[i as u32])),
            format!("{:.3}", logits[i]),
        ]);
    }
    println!("ids {ids:?}");
    print!("{}", ui::table(&rows));
    Ok(())
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.seq_len > 0 && a.reps > 0,
        "batch, seq-len and reps must be positive"
    );
    let (m, tok, _) = load_model(&a.model)?;
    m.check_hook(Hook::resid_post(a.layer))?;
    let (_, docs) = load_corpus("sotu")?;
    let t = Instant::now();
    let (mut n_text, mut n_bytes) = (0usize, 0usize);
    for d in &docs {
        n_text += tok.encode(&d.text, false).len();
        n_bytes += d.text.len();
    }
    let tok_secs = t.elapsed().as_secs_f64();
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
        let kernel = match prec.as_str() {
            "bf16" => match Bf16Kernel::from_env().map_err(ui::Usage)? {
                Some(k) => Some(k),
                None => {
                    eprintln!("bf16: no AMX-BF16 or AVX512-BF16 kernel here: skipped");
                    continue;
                }
            },
            _ => None,
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
        docs.len(),
        n_bytes as f64 / 1e6,
        n_text,
        tok_secs,
        n_text as f64 / tok_secs
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

fn ablate(a: &AblateArgs) -> Result<()> {
    use sparsa::data::store::Manifest;
    use sparsa::lm::{downstream_eval, DownstreamConfig};
    let mp = Manifest::file_of(&a.store);
    let manifest = Manifest::read(&a.store)?;
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => manifest
            .extra
            .get("corpus")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{} names no corpus; pass --corpus", mp.display()))?,
    };
    let (m, tok, _) = load_model(&a.model)?;
    let (_, docs) = load_corpus(&corpus)?;
    let held = sparsa::extract::held_out(&docs, &tok, &manifest, a.sequences)?;
    let cfg = DownstreamConfig {
        hook: held.hook,
        batch_size: a.batch_size,
        pad_id: tok.eos_id().unwrap_or(0),
        bos_id: held.bos_id,
        skip_positions: Vec::new(),
    };
    let total: u64 = held.seqs.iter().map(|s| s.len() as u64).sum();
    let bar = ui::Bar::new(2 * total, "ablate", "tok");
    let cancel = ui::ctrl_c_cancel();
    let t = Instant::now();
    let r = downstream_eval(&m, &held.seqs, &cfg, &|x| Ok(x.clone()), &bar, &cancel)?;
    let rows = vec![
        vec!["run".into(), "CE (nats/token)".into()],
        vec!["clean".into(), format!("{:.4}", r.ce_clean)],
        vec!["zero-ablated".into(), format!("{:.4}", r.ce_zero_ablated)],
        vec!["mean-ablated".into(), format!("{:.4}", r.ce_mean_ablated)],
    ];
    println!(
        "{}: {} held-out contexts, {} predictions, {:.1}s ({})",
        r.hook,
        r.n_sequences,
        r.n_predictions,
        t.elapsed().as_secs_f64(),
        r.bos_rule
    );
    print!("{}", ui::table(&rows));
    Ok(())
}
