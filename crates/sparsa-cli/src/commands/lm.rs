//! `sparsa lm …`: the language model on its own (info, tokenize, next-token top-k, ablation
//! baselines; `lm bench` is a deprecated alias of `sparsa bench lm`).
use crate::commands::inputs::{load_corpus, load_model, ModelArg};
use crate::ui;
use anyhow::Result;
use clap::{Args, Subcommand};
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
        #[arg(short, long, default_value_t = 5, value_parser = ui::positive)]
        k: usize,
        /// The prompt (no BOS is added).
        prompt: String,
    },
    /// Deprecated alias of `sparsa bench lm` (kept for one release).
    #[command(hide = true)]
    Bench(super::bench::lm::BenchArgs),
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
    #[arg(long = "lm-sequences", alias = "sequences", default_value_t = 32, value_parser = ui::positive)]
    pub sequences: usize,
    /// Contexts per forward pass.
    #[arg(long = "batch", alias = "batch-size", default_value_t = 8, value_parser = ui::positive)]
    pub batch_size: usize,
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
        LmCommand::Bench(a) => {
            ui::deprecated("sparsa lm bench", "sparsa bench lm");
            super::bench::lm::bench(&a)
        }
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
    if ids.is_empty() {
        return Err(ui::Usage("the prompt is empty: give some text".into()).into());
    }
    let mut rows = vec![vec!["id".into(), "token".into(), "logit".into()]];
    for (i, logit) in m.top_next(&ids, k)? {
        rows.push(vec![
            i.to_string(),
            format!("{:?}", tok.decode(&[i])),
            format!("{logit:.3}"),
        ]);
    }
    println!("ids {ids:?}");
    print!("{}", ui::table(&rows));
    Ok(())
}

fn ablate(a: &AblateArgs) -> Result<()> {
    use sparsa::data::store::Manifest;
    use sparsa::lm::{downstream_eval, DownstreamConfig};
    let mp = Manifest::file_of(&a.store);
    let manifest = Manifest::read(&a.store)?;
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => manifest
            .corpus()
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
