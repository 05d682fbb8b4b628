//! `sparsa activations extract`: run the language model over a corpus and store the activations
//! at one hook as a sharded safetensors store (resumable).
use super::inputs::{load_corpus, load_model, ModelArg};
use crate::ui;
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sparsa::data::activations::Elem;
use sparsa::extract::{extract, ExtractConfig};
use sparsa::kernels::bf16::Bf16Kernel;
use sparsa::lm::{Hook, HookPoint};
use sparsa::sae::config::Matmul;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum ActivationsCommand {
    /// Extract activations at one hook of the model over a corpus into a store directory.
    /// Rerunning the same command resumes an interrupted extraction (Ctrl-C stops cleanly).
    Extract(ExtractArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum HookArg {
    /// Residual stream after the block.
    ResidPost,
    /// Output of the block's MLP.
    MlpOut,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text: `sotu` (State of the Union), `wiki` (Wikipedia summaries), a folder of .txt files,
    /// a .txt file or a summaries .json.
    #[arg(long, default_value = "sotu")]
    pub corpus: String,
    /// Block index of the hook (0-based; SmolLM2 has 30 blocks).
    #[arg(long)]
    pub layer: usize,
    /// Hook point inside the block.
    #[arg(long, value_enum, default_value_t = HookArg::ResidPost)]
    pub hook: HookArg,
    /// Activation rows (tokens) to store.
    #[arg(long)]
    pub tokens: u64,
    /// Tokens per context, BOS included.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Output store directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of the activations.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Keep the BOS position's row (excluded by default: an attention sink with a huge norm).
    #[arg(long)]
    pub include_bos: bool,
    /// Do not prepend a BOS token to each context.
    #[arg(long, conflicts_with = "prefix_token")]
    pub no_bos: bool,
    /// The BOS token id prepended to each context (default: `<|endoftext|>` if the vocabulary
    /// has it, SmolLM2's document separator, else the GGUF's bos_token_id).
    #[arg(long)]
    pub prefix_token: Option<u32>,
    /// Contexts per forward pass (part of the store's identity: keep it when resuming).
    #[arg(long = "batch", alias = "batch-size", default_value_t = 8)]
    pub batch_size: usize,
    /// Rows per shard.
    #[arg(long, default_value_t = 65_536)]
    pub shard_tokens: usize,
    /// Precision of the model's linear layers: `f32`, or `bf16` (bf16 weights, inputs split
    /// into two bf16 halves, f32 accumulation, on AMX-BF16 or AVX512-BF16; a CPU with neither
    /// extracts in f32 and says so). Recorded in the manifest: a resume must use the same.
    #[arg(long, default_value = "f32")]
    pub matmul: Matmul,
}

pub fn run(cmd: ActivationsCommand) -> Result<()> {
    match cmd {
        ActivationsCommand::Extract(a) => run_extract(a),
    }
}

fn run_extract(a: ExtractArgs) -> Result<()> {
    let (mut model, tok, _) = load_model(&a.model)?;
    if a.matmul == Matmul::Bf16 {
        match Bf16Kernel::from_env().map_err(ui::Usage)? {
            Some(k) => {
                model.use_bf16(Some(k))?;
                eprintln!("linear layers in bf16 on {}", k.name());
            }
            None => eprintln!(
                "--matmul bf16: this CPU has neither AMX-BF16 nor AVX512-BF16 (or \
                 SPARSA_BF16_KERNEL=none): extracting in f32"
            ),
        }
    }
    let (label, docs) = load_corpus(&a.corpus)?;
    let hook = Hook {
        layer: a.layer,
        point: match a.hook {
            HookArg::ResidPost => HookPoint::ResidPost,
            HookArg::MlpOut => HookPoint::MlpOut,
        },
    };
    model.check_hook(hook)?;
    let prefix_token = if a.no_bos {
        None
    } else {
        Some(a.prefix_token.or(tok.document_start_id()).ok_or_else(|| {
            anyhow!("the model's tokenizer has no BOS id; pass --prefix-token ID or --no-bos")
        })?)
    };
    let cfg = ExtractConfig {
        hook,
        seq_len: a.seq_len,
        n_tokens: a.tokens,
        batch_size: a.batch_size,
        shard_tokens: a.shard_tokens,
        dtype: match a.dtype {
            DtypeArg::F32 => Elem::F32,
            DtypeArg::F16 => Elem::F16,
            DtypeArg::Bf16 => Elem::BF16,
        },
        include_bos: a.include_bos,
        prefix_token,
        corpus: label,
    };
    eprintln!(
        "extracting {} of {} over `{}` ({} documents): {} tokens, contexts of {}, into {}",
        hook,
        model.name(),
        cfg.corpus,
        docs.len(),
        cfg.n_tokens,
        cfg.seq_len,
        a.out.display()
    );
    let bar = ui::Bar::new(cfg.n_tokens, "extract", "tok");
    let cancel = ui::ctrl_c_cancel();
    let t = Instant::now();
    let s = extract(&model, &tok, &docs, &cfg, &a.out, &bar, &cancel)
        .with_context(|| format!("extracting into {}", a.out.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let rows = vec![
        vec!["store".into(), a.out.display().to_string()],
        vec!["rows".into(), s.n_tokens.to_string()],
        vec!["shards".into(), s.n_shards.to_string()],
        vec!["resumed from row".into(), s.resumed_from.to_string()],
        vec![
            "tokens through the model".into(),
            s.tokens_forwarded.to_string(),
        ],
        vec!["seconds".into(), format!("{secs:.1}")],
        vec![
            "rows stored / s".into(),
            format!(
                "{:.0}",
                (s.n_tokens - s.resumed_from) as f64 / secs.max(1e-9)
            ),
        ],
        vec![
            "model tokens / s".into(),
            format!("{:.0}", s.tokens_forwarded as f64 / secs.max(1e-9)),
        ],
    ];
    let mut table = vec![vec!["".to_string(), "".to_string()]];
    table.extend(rows);
    print!("{}", ui::table(&table));
    if !s.complete {
        return Err(ui::Interrupted(format!(
            "the store holds {} complete rows; rerun the same command to resume",
            s.n_tokens
        ))
        .into());
    }
    if s.corpus_exhausted {
        eprintln!(
            "warning: the corpus ran out after {} of {} requested rows",
            s.n_tokens, cfg.n_tokens
        );
    }
    Ok(())
}
