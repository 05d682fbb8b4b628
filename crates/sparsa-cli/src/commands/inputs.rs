//! What several commands load: the language model (`--model`, default the fetched SmolLM2) and
//! a text corpus (`sotu`, `wiki` or a path).

use anyhow::{Context, Result};
use clap::Args;
use sparsa::data::corpus::{self, Document};
use sparsa::data::fetch::{ensure, Asset};
use sparsa::lm::{Llama, Tokenizer};
use std::path::PathBuf;
use std::time::Instant;

/// Which GGUF model to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// GGUF model file (default: SmolLM2-135M-Instruct, fetched into the cache if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
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
