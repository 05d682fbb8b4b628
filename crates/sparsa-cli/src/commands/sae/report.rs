//! `sparsa sae report`: one self-contained HTML page about a trained SAE (summary, training
//! curves, densities with the Zipf fit, per-token L0, and with --data the feature dashboards).
//! The library draws the page; this file loads the inputs, draws progress and prints the path.

use crate::commands::inputs::{model_path, ModelArg};
use crate::ui::{self, Bar};
use anyhow::{Context, Result};
use clap::Args;
use sparsa::data::activations::{ActivationSource, SourceOptions};
use sparsa::data::store::StoreReader;
use sparsa::lm::{GgufModel, Tokenizer, Unembedding};
use sparsa::report::dashboards::{self, ScanConfig, Selection};
use sparsa::report::sae::{read_evals, read_metrics, render, SaeReport};
use sparsa::sae::config::RunConfig;
use sparsa::sae::io::{load_sae, load_trainer_state, SaeModel};
use sparsa::sae::metrics::{evaluate, EvalReport, Form};
use sparsa::sae::train::DataSpec;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// SAE directory (cfg.json, sae_weights.safetensors; metrics.jsonl and eval.json when made
    /// by `sparsa sae train` or `sae lm-compare`).
    sae_dir: PathBuf,
    /// Activation store to draw feature dashboards from (one streaming pass over it).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the page (default: SAE_DIR/report.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Features that get a dashboard besides the automatic choice, e.g. --features 12,345.
    #[arg(long, value_delimiter = ',')]
    features: Vec<usize>,
    /// Dashboards of the densest features.
    #[arg(long, default_value_t = 12)]
    dense: usize,
    /// Dashboards of a seeded random sample of the features that fire.
    #[arg(long, default_value_t = 12)]
    random: usize,
    /// Dashboards of the rarest features that fire, and of up to 3 dead ones.
    #[arg(long, default_value_t = 6)]
    rare: usize,
    /// Seed of the random sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Top-activating contexts per feature.
    #[arg(long, default_value_t = 12)]
    contexts: usize,
    /// Rows per batch in the pass (the training form's batch rule sees batches of this size;
    /// default: the run's train.batch_size, else 4096).
    #[arg(long)]
    batch: Option<usize>,
    /// Scan at most this many rows of --data (default: all).
    #[arg(long)]
    rows: Option<u64>,
    /// Held-out rows for the final metrics when the directory has no eval.json with per-token
    /// L0 (the run's held-out data, else the last rows of --data).
    #[arg(long, default_value_t = 65536)]
    eval_tokens: u64,
    #[command(flatten)]
    model: ModelArg,
}

/// Evaluate both forms on `open()`'s rows.
fn eval_both(
    model: &SaeModel,
    open: &dyn Fn() -> Result<Box<dyn sparsa::data::activations::BatchSource>>,
    batch: usize,
    tokens: u64,
) -> Result<Vec<EvalReport>> {
    let mut forms = vec![Form::Training];
    if model.thresholds.is_some() {
        forms.push(Form::Inference);
    }
    let mut out = Vec::new();
    for form in forms {
        let mut src = open()?;
        let bar = Bar::new(tokens, "eval", "tok");
        out.push(evaluate(model, form, src.as_mut(), batch, tokens, &bar)?);
    }
    Ok(out)
}

/// The final metrics: eval.json when it has per-token L0, else a fresh evaluation.
fn final_metrics(
    a: &ReportArgs,
    model: &SaeModel,
    run: Option<&RunConfig>,
    batch: usize,
) -> Result<(Vec<EvalReport>, String)> {
    let saved = read_evals(&a.sae_dir);
    if let Some(e) = saved
        .as_ref()
        .filter(|e| e.iter().all(|r| !r.l0_hist.is_empty()))
    {
        return Ok((
            e.clone(),
            "Held-out evaluation written at the end of training (eval.json).".into(),
        ));
    }
    // The run's own held-out rows, when its data is still there.
    if let Some(cfg) = run {
        if let Ok(data) = DataSpec::open(cfg) {
            let open = || -> Result<Box<dyn sparsa::data::activations::BatchSource>> {
                Ok(data.eval_source(cfg, a.eval_tokens)?)
            };
            let e = eval_both(model, &open, cfg.train.batch_size, a.eval_tokens)?;
            let n = e.first().map_or(0, |r| r.tokens);
            return Ok((
                e,
                format!(
                    "Evaluated by the report on {n} evaluation rows of the run's data (its held-out rows when it kept some), in batches of {}.",
                    cfg.train.batch_size
                ),
            ));
        }
    }
    if let Some(store) = &a.data {
        let n = sparsa::data::activations::inspect(store)?.n_rows;
        let rows = (n.saturating_sub(a.eval_tokens), n);
        let open = || -> Result<Box<dyn sparsa::data::activations::BatchSource>> {
            let opts = SourceOptions {
                rows: Some(rows),
                ..Default::default()
            };
            Ok(Box::new(ActivationSource::open(store, opts)?))
        };
        let e = eval_both(model, &open, batch, a.eval_tokens)?;
        return Ok((
            e,
            format!(
                "Evaluated by the report on rows {}..{} of {} (the run's data is not available), in batches of {}.",
                rows.0,
                rows.1,
                store.display(),
                batch
            ),
        ));
    }
    match saved {
        Some(e) => Ok((
            e,
            "eval.json (written before per-token L0 was recorded).".into(),
        )),
        None => Ok((Vec::new(), String::new())),
    }
}

/// Tokenizer and unembedding of the model the store came from, when it can be loaded.
fn load_text(store: &StoreReader, arg: &ModelArg) -> Option<(Tokenizer, Unembedding)> {
    store.manifest().model.as_ref()?;
    let load = || -> Result<(Tokenizer, Unembedding)> {
        let g = GgufModel::open(&model_path(arg)?)?;
        Ok((Tokenizer::from_gguf(&g)?, Unembedding::from_gguf(&g)?))
    };
    match load() {
        Ok(x) => Some(x),
        Err(e) => {
            eprintln!("note: no token text or logit lens: cannot load the model ({e:#})");
            None
        }
    }
}

pub fn report(a: ReportArgs) -> Result<()> {
    let model = load_sae(&a.sae_dir)?;
    check_features(&a, model.params.f)?;
    let metrics = read_metrics(&a.sae_dir)?;
    // The run's config, when the directory holds trainer state (not for SAELens downloads).
    let run = load_trainer_state(&a.sae_dir).ok().map(|t| t.0);
    let batch = a
        .batch
        .or(run.as_ref().map(|c| c.train.batch_size))
        .unwrap_or(4096)
        .max(1);
    let (evals, eval_note) = final_metrics(&a, &model, run.as_ref(), batch)?;
    let dash = match &a.data {
        None => None,
        Some(store) => match dashboards_for(&a, &model, store, batch)? {
            Some(d) => Some(d),
            None => return Err(ui::Interrupted("no report written".into()).into()),
        },
    };
    let html = render(&SaeReport {
        title: a.sae_dir.display().to_string(),
        model: &model,
        metrics: &metrics,
        evals: &evals,
        eval_note,
        dashboards: dash.as_ref(),
    })?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.sae_dir.join("report.html"));
    let path = sparsa::report::write(&out, &html)?;
    println!("{}", path.display());
    Ok(())
}

/// `--features` names features of this SAE, and dashboards need `--data`.
fn check_features(a: &ReportArgs, f: usize) -> Result<()> {
    dashboards::check_requested(&a.features, f).map_err(|e| ui::Usage(e.to_string()))?;
    if !a.features.is_empty() && a.data.is_none() {
        return Err(ui::Usage(
            "--features draws dashboards, which need activations: pass --data STORE".into(),
        )
        .into());
    }
    Ok(())
}

fn dashboards_for(
    a: &ReportArgs,
    model: &SaeModel,
    store: &Path,
    batch: usize,
) -> Result<Option<dashboards::Dashboards>> {
    let mut reader = StoreReader::open(store)
        .with_context(|| format!("opening the store {}", store.display()))?;
    let cfg = ScanConfig {
        top_n: a.contexts,
        batch,
        max_rows: a.rows,
        ..Default::default()
    };
    let total = a.rows.map_or(reader.n_rows(), |r| r.min(reader.n_rows()));
    let bar = Bar::new(total, "dashboards", "tok");
    let cancel = ui::ctrl_c_cancel();
    let Some(scan) = dashboards::scan(model, &mut reader, &cfg, &bar, &cancel)? else {
        return Ok(None);
    };
    let text = load_text(&reader, &a.model);
    let decode = |id: u32| match &text {
        Some((tok, _)) => tok.decode(&[id]),
        None => format!("#{id}"),
    };
    let sel = Selection {
        dense: a.dense,
        random: a.random,
        rare: a.rare,
        dead: if a.rare > 0 { 3 } else { 0 },
        requested: a.features.clone(),
        seed: a.seed,
    };
    let d = dashboards::build(
        model,
        &mut reader,
        scan,
        &sel,
        &decode,
        text.as_ref().map(|t| &t.1),
        store.display().to_string(),
    )?;
    Ok(Some(d))
}
