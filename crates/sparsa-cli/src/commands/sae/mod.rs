//! `sparsa sae …`: train, evaluate, export, compare.

mod common;
pub mod lm_compare;
pub mod report;

use crate::ui::{self, Bar};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
pub use common::threshold_note;
use common::{parse_variant, write_json, JsonlLog};
use sparsa::data::activations::{subtract_ranges, ActivationSource, SourceOptions};
use sparsa::sae::calibrate::deployable_model;
use sparsa::sae::compare::{train_and_evaluate, variant_config, Variant, VariantResult};
use sparsa::sae::config::{RunConfig, ThresholdMode, ThresholdSource};
use sparsa::sae::io::{load_meta, load_sae, save_sae, SourceOverrides};
use sparsa::sae::metrics::{evaluate, EvalReport, Form};
use sparsa::sae::train::{DataSpec, RunEnd, Trainer, DEFAULT_EVAL_TOKENS};
use std::path::{Path, PathBuf};

/// The built-in synthetic comparison config (also at configs/sae/synthetic.toml).
const SYNTHETIC_TOML: &str = include_str!("../../../../../configs/sae/synthetic.toml");

#[derive(Subcommand, Debug)]
pub enum SaeCommand {
    /// Train an SAE from a TOML config; writes an SAELens directory plus trainer state.
    Train(TrainArgs),
    /// Evaluate a saved SAE on activations (reconstruction metrics, both forms).
    Eval(EvalArgs),
    /// Re-export a checkpoint's SAE (e.g. with global instead of per-feature thresholds).
    Export(ExportArgs),
    /// Train TopK, Mutual Choice and Feature Choice (with aux_k and aux_zipf) at equal k on the
    /// same data and print one comparison table. Default: synthetic ground truth.
    Compare(CompareArgs),
    /// The real-data pipeline: fetch SmolLM2-135M and a corpus, extract a middle layer's
    /// residual stream, train TopK, Mutual Choice and Feature Choice SAEs at equal k, and
    /// evaluate reconstruction and the model's own next-token loss. Resumable.
    LmCompare(lm_compare::LmCompareArgs),
    /// Write one self-contained HTML page about a trained SAE: summary, training curves,
    /// density histogram and rank–density plot with the Zipf fit, per-token L0, and with
    /// --data STORE feature dashboards (top contexts, activation histogram, logit lens).
    Report(report::ReportArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run config (TOML with [sae], [aux], [train], [data] tables).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a config value, e.g. --set train.lr=1e-3 --set sae.k=32 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output directory (SAELens files, trainer state, metrics.jsonl, eval.json).
    #[arg(long, short)]
    out: PathBuf,
    /// Continue the run saved in --out exactly where it stopped.
    #[arg(long)]
    resume: bool,
    /// Held-out tokens for the final evaluation (files: data.holdout_tokens when set).
    #[arg(long, default_value_t = DEFAULT_EVAL_TOKENS)]
    eval_tokens: u64,
    /// Train with the simple dense-autograd reference step instead of the fused sparse fast
    /// step (same results, several times slower; sets train.reference = true).
    #[arg(long)]
    reference: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormArg {
    Training,
    Inference,
    Both,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// SAE directory (cfg.json + sae_weights.safetensors).
    #[arg(long)]
    sae: PathBuf,
    /// Activations: .safetensors, .npy, or a store directory.
    #[arg(long)]
    data: PathBuf,
    /// Tensor name inside a safetensors file.
    #[arg(long)]
    tensor: Option<String>,
    /// Evaluate rows START:END of the data, or `held-out`: the rows the SAE's training held
    /// out (recorded in its cfg.json).
    #[arg(long, value_name = "START:END|held-out", value_parser = parse_rows)]
    rows: Option<Rows>,
    /// Evaluate every row, also at the in-context positions the SAE was trained without (its
    /// cfg.json's `exclude_positions`); the downstream evaluation then splices there too.
    #[arg(long)]
    all_positions: bool,
    /// Maximum tokens to evaluate.
    #[arg(long, default_value_t = 65536)]
    tokens: u64,
    /// Batch size (matters for the batch-dependent training forms).
    #[arg(long, default_value_t = 4096, value_parser = ui::positive)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = FormArg::Both)]
    form: FormArg,
    /// Also write the reports as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Held-out contexts for the downstream evaluation (the model's next-token loss with the SAE
    /// spliced in); used when --data is a store made by `sparsa activations extract`. 0 = off.
    #[arg(long, default_value_t = 16)]
    lm_sequences: usize,
    /// Corpus of the held-out contexts (default: the store's).
    #[arg(long)]
    corpus: Option<String>,
    #[command(flatten)]
    model: crate::commands::inputs::ModelArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThresholdArg {
    Feature,
    Global,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A training output directory (holds trainer_state.*).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Where to write the SAELens directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Thresholds of the JumpReLU inference form (Mutual/Feature Choice only).
    #[arg(long, value_enum)]
    threshold_mode: Option<ThresholdArg>,
    /// Where the thresholds come from: `calibrated` (a pass over sae.calibration_tokens
    /// training rows; needs the training data) or `ema` (the running estimate from training).
    /// Default: the run's sae.threshold_source.
    #[arg(long, value_enum)]
    threshold_source: Option<ThresholdSourceArg>,
    /// cfg.json `metadata.model_name` (default: the training store's model).
    #[arg(long)]
    model_name: Option<String>,
    /// cfg.json `metadata.hook_name`, e.g. blocks.15.hook_resid_post (default: the store's hook;
    /// a `blocks.N.…` name also sets the hook layer).
    #[arg(long)]
    hook_name: Option<String>,
    /// cfg.json `metadata.hook_layer` (default: the store's layer).
    #[arg(long)]
    hook_layer: Option<usize>,
    /// cfg.json `metadata.context_size`: tokens per context, BOS included (default: the store's).
    #[arg(long)]
    context_size: Option<usize>,
    /// cfg.json `metadata.prepend_bos` (default: whether the store prepends a BOS token).
    #[arg(long, value_name = "true|false")]
    prepend_bos: Option<bool>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThresholdSourceArg {
    Calibrated,
    Ema,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Base config; default: the built-in synthetic comparison (configs/sae/synthetic.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a base-config value (repeatable), e.g. --set train.steps=300.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Variants as ARCH+AUX, comma separated (ARCH: topk, mutual_choice, feature_choice;
    /// AUX: none, aux_k, aux_zipf). Default: all six combinations with aux_k and aux_zipf.
    #[arg(long, value_delimiter = ',', value_parser = parse_variant)]
    variants: Vec<Variant>,
    /// Save each trained SAE under this directory (one sub-directory per variant).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Held-out tokens per evaluation.
    #[arg(long, default_value_t = DEFAULT_EVAL_TOKENS)]
    eval_tokens: u64,
}

pub fn run(cmd: SaeCommand) -> Result<()> {
    match cmd {
        SaeCommand::Train(a) => train(a),
        SaeCommand::Eval(a) => eval(a),
        SaeCommand::Export(a) => export(a),
        SaeCommand::Compare(a) => compare(a),
        SaeCommand::LmCompare(a) => lm_compare::lm_compare(a),
        SaeCommand::Report(a) => report::report(a),
    }
}

fn load_config(path: Option<&Path>, set: &[String], default: Option<&str>) -> Result<RunConfig> {
    match (path, default) {
        (Some(p), _) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?;
            Ok(RunConfig::from_toml(&text, set, &p.display().to_string())?)
        }
        (None, Some(text)) => Ok(RunConfig::from_toml(text, set, "built-in config")?),
        (None, None) => Err(ui::Usage(
            "--config is required (a TOML file with [sae], [train], [data] tables)".into(),
        )
        .into()),
    }
}

/// A fresh run's `--out` must be new or empty: never a finished or partial run (that is
/// `--resume`), an activation store or any other directory with files in it.
fn check_fresh_out(out: &Path) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(out) else {
        if out.exists() {
            return Err(ui::Usage(format!(
                "--out {} exists and is not a directory",
                out.display()
            ))
            .into());
        }
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let what = if out.join("trainer_state.json").exists() {
        "a training run; continue it with --resume, or"
    } else if sparsa::data::store::Manifest::is_store(out) {
        "an activation store;"
    } else {
        "other files;"
    };
    Err(ui::Usage(format!(
        "--out {} is not empty: it holds {what} choose a new or empty directory",
        out.display()
    ))
    .into())
}

/// What `sae train` is about to do, and the encoder product it runs (or why bf16 fell back).
fn announce_training(trainer: &Trainer) {
    let cfg = &trainer.cfg;
    eprintln!(
        "training {} (d_in {}, d_sae {}, k {}, aux {:?}) for {} steps × {} tokens",
        cfg.sae.architecture.name(),
        cfg.sae.d_in,
        cfg.sae.d_sae,
        cfg.sae.k,
        cfg.aux.kind,
        cfg.train.steps,
        cfg.train.batch_size
    );
    match trainer.matmul_fallback() {
        Some(why) => eprintln!("note: {why}"),
        None => eprintln!("encoder product: {}", trainer.encoder_product()),
    }
}

/// The trainer `sae train` runs: resumed from `--out`, or new from the config (then `--out` is
/// created only once the config and data are known good, so a failure leaves nothing).
fn open_trainer(a: &TrainArgs) -> Result<Trainer> {
    Ok(if a.resume {
        if a.config.is_some() || !a.set.is_empty() {
            eprintln!(
                "note: --resume continues with the config saved in {}; --config/--set are ignored",
                a.out.display()
            );
        }
        let t = Trainer::resume(&a.out)
            .with_context(|| format!("cannot resume from {}", a.out.display()))?;
        eprintln!(
            "resuming at step {} ({} tokens)",
            t.state.step, t.state.tokens
        );
        t
    } else {
        let cfg = load_config(a.config.as_deref(), &a.set, None)?;
        check_fresh_out(&a.out)?;
        let data = DataSpec::open(&cfg)?;
        let sample = data.init_sample(&cfg)?;
        let t = Trainer::new(cfg, data.d(), &sample)?;
        // Created only once the config and data are known good: a failure leaves nothing.
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("cannot create {}", a.out.display()))?;
        t
    })
}

fn train(a: TrainArgs) -> Result<()> {
    let mut trainer = open_trainer(&a)?;
    if a.reference {
        trainer.cfg.train.reference = true;
    }
    let cfg = trainer.cfg.clone();
    let data = DataSpec::open(&cfg)?;
    let mut source = data.training_source(&cfg, trainer.state.tokens)?;
    let mut log = JsonlLog::resume(&a.out.join("metrics.jsonl"), trainer.state.step)?;
    let bar = Bar::new(
        cfg.train.steps * cfg.train.batch_size as u64,
        "train",
        "tok",
    );
    let cancel = ui::ctrl_c_cancel();
    announce_training(&trainer);
    let t0 = std::time::Instant::now();
    let start_tokens = trainer.state.tokens;
    let end = trainer.run(
        source.as_mut(),
        Some(&a.out),
        &bar,
        &cancel,
        None,
        &mut |m| log.write(m),
    )?;
    if end == RunEnd::Stopped {
        return Err(ui::Interrupted(format!(
            "stopped at step {}; checkpoint saved in {} (continue with --resume)",
            trainer.state.step,
            a.out.display()
        ))
        .into());
    }
    let secs = t0.elapsed().as_secs_f64();
    let tps = (trainer.state.tokens - start_tokens) as f64 / secs.max(1e-9);
    let (model, calibration) = deployable_model(&trainer, &data, &Bar::new(0, "calibrate", "tok"))?;
    if let Some(c) = &calibration {
        save_sae(&a.out, &model)?;
        eprintln!(
            "inference thresholds calibrated on {} training rows (training-form L0 there {:.2})",
            c.tokens, c.target_l0
        );
    }
    let mut reports = Vec::new();
    let forms: &[Form] = if cfg.sae.architecture.batch_dependent() {
        &[Form::Training, Form::Inference]
    } else {
        &[Form::Training]
    };
    for &form in forms {
        let mut ev = data.eval_source(&cfg, a.eval_tokens)?;
        reports.push(evaluate(
            &model,
            form,
            ev.as_mut(),
            cfg.train.batch_size,
            a.eval_tokens,
            &sparsa::util::progress::NoProgress,
        )?);
    }
    write_json(&a.out.join("eval.json"), &reports)?;
    println!("{}", eval_table(&reports));
    println!(
        "trained {} tokens in {secs:.1} s ({tps:.0} tokens/s); SAE saved in {}",
        trainer.state.tokens - start_tokens,
        a.out.display()
    );
    Ok(())
}

fn eval_table(reports: &[EvalReport]) -> String {
    ui::table(&sparsa::sae::metrics::eval_rows(reports))
}

/// `--rows`: the SAE's held-out rows, or a half-open range.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rows {
    HeldOut,
    Range(u64, u64),
}

/// A `--rows` value (for clap's value_parser: a bad one is a usage error).
fn parse_rows(s: &str) -> std::result::Result<Rows, String> {
    if s.trim() == "held-out" {
        return Ok(Rows::HeldOut);
    }
    let form = "--rows takes START:END (e.g. 90000:100000) or held-out";
    let (a, b) = s.split_once(':').ok_or_else(|| format!("`{s}`: {form}"))?;
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}`: {form}"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if b <= a {
        return Err(format!("`{s}`: the range {a}:{b} is empty"));
    }
    Ok(Rows::Range(a, b))
}

/// A half-open range of row indices.
type RowRange = (u64, u64);

/// The rows `sae eval` reads: the range (`--rows`: `held-out`, START:END or all) and the rows
/// left out (outside the held-out ranges, and at the positions the SAE was trained without).
fn eval_rows(
    a: &EvalArgs,
    model: &sparsa::sae::io::SaeModel,
) -> Result<(Option<RowRange>, Vec<RowRange>)> {
    let (rows, exclude) = match a.rows {
        Some(Rows::HeldOut) => {
            if model.meta.holdout_rows.is_empty() {
                bail!(
                    "--rows held-out: {} records no held-out rows (trained without \
                     data.holdout_tokens, or exported by another tool); pass --rows START:END",
                    a.sae.display()
                );
            }
            let n = sparsa::data::activations::inspect(&a.data)?.n_rows;
            let keep = &model.meta.holdout_rows;
            (Some((0, n)), subtract_ranges((0, n), keep))
        }
        Some(Rows::Range(start, end)) => (Some((start, end)), vec![]),
        None => (None, vec![]),
    };
    let mut exclude = exclude;
    let skip = &model.meta.exclude_positions;
    if !skip.is_empty() {
        exclude.extend(
            sparsa::sae::train::skipped_rows(&a.data, skip).with_context(|| {
                format!(
                    "{} was trained without the rows at positions {skip:?}; pass --all-positions \
                 to evaluate every row",
                    a.sae.display()
                )
            })?,
        );
        println!("rows at in-context positions {skip:?} left out, as in training (--all-positions to keep them)");
    }
    Ok((rows, exclude))
}

fn eval(a: EvalArgs) -> Result<()> {
    let mut model = load_sae(&a.sae)?;
    if a.all_positions {
        model.meta.exclude_positions.clear();
    }
    if sparsa::data::store::Manifest::read(&a.data).is_ok_and(|m| m.complete() == Some(false)) {
        eprintln!(
            "warning: {} is an incomplete activation store (its extraction was interrupted); \
             rerun the same `sparsa activations extract` command to finish it",
            a.data.display()
        );
    }
    let forms: Vec<Form> = match a.form {
        FormArg::Training => vec![Form::Training],
        FormArg::Inference => vec![Form::Inference],
        FormArg::Both => vec![Form::Training, Form::Inference],
    };
    let (rows, exclude) = eval_rows(&a, &model)?;
    let mut reports = Vec::new();
    for form in forms {
        let opts = SourceOptions {
            tensor: a.tensor.clone(),
            shuffle_buffer: 0,
            seed: 0,
            rows,
            exclude: exclude.clone(),
            cycle: false,
        };
        let mut src = ActivationSource::open(&a.data, opts)?;
        let bar = Bar::new(a.tokens.min(src.n_rows()), "eval", "tok");
        reports.push(evaluate(&model, form, &mut src, a.batch, a.tokens, &bar)?);
    }
    println!(
        "SAE {} (trained as {}, exported as {}, d_in {}, d_sae {})",
        a.sae.display(),
        model.meta.trained_architecture.name(),
        model.export_architecture(),
        model.params.d,
        model.params.f
    );
    let manifest = lm_compare::store_manifest(&a.data)?
        .filter(|m| m.hook.is_some() && m.contexts_used().is_some());
    match (a.lm_sequences, manifest) {
        (0, _) => println!("{}", eval_table(&reports)),
        (_, None) => {
            println!("{}", eval_table(&reports));
            println!("(no downstream evaluation: --data is not a store made by `sparsa activations extract`)");
        }
        (n, Some(manifest)) => {
            let ds = lm_compare::prepare(&manifest, &a.model, a.corpus.as_deref(), n, 8)?;
            let saes: Vec<_> = reports.iter().map(|r| (&model, r.form)).collect();
            let down = lm_compare::evaluate_downstream(&ds, &saes, &ui::ctrl_c_cancel())?;
            let rows: Vec<_> = reports
                .iter()
                .zip(&down)
                .map(|(r, d)| (a.sae.display().to_string(), r, Some(d)))
                .collect();
            println!("{}", lm_compare::combined_table(&rows));
            println!(
                "{} held-out contexts, {} predictions; {}",
                down[0].n_sequences, down[0].n_predictions, down[0].bos_rule
            );
            if let Some(p) = &a.json {
                write_json(
                    p,
                    &serde_json::json!({ "reconstruction": reports, "downstream": down }),
                )?;
            }
            return Ok(());
        }
    }
    if let Some(p) = a.json {
        write_json(&p, &reports)?;
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let mut t = Trainer::resume(&a.checkpoint)
        .with_context(|| format!("{} is not a training checkpoint", a.checkpoint.display()))?;
    if let Some(m) = a.threshold_mode {
        if !t.cfg.sae.architecture.batch_dependent() {
            bail!(
                "--threshold-mode applies to mutual_choice and feature_choice SAEs; this one is {}",
                t.cfg.sae.architecture.name()
            );
        }
        t.cfg.sae.threshold_mode = match m {
            ThresholdArg::Feature => ThresholdMode::Feature,
            ThresholdArg::Global => ThresholdMode::Global,
        };
    }
    if let Some(src) = a.threshold_source {
        t.cfg.sae.threshold_source = match src {
            ThresholdSourceArg::Calibrated => ThresholdSource::Calibrated,
            ThresholdSourceArg::Ema => ThresholdSource::Ema,
        };
    }
    let mut model = if t.cfg.sae.architecture.batch_dependent()
        && t.cfg.sae.threshold_source == ThresholdSource::Calibrated
    {
        match DataSpec::open(&t.cfg) {
            Ok(data) => deployable_model(&t, &data, &Bar::new(0, "calibrate", "tok"))?.0,
            Err(e) => {
                // The training data is gone: the checkpoint's own SAE files hold calibrated
                // thresholds when training finished; reuse them if they belong to this step
                // and mode.
                let saved = load_sae(&a.checkpoint).ok().filter(|m| {
                    m.meta.threshold_calibration_tokens.is_some()
                        && m.meta.steps == t.state.step
                        && m.meta.threshold_mode == t.cfg.sae.threshold_mode
                });
                let Some(saved) = saved else {
                    return Err(anyhow::Error::new(e).context(
                        "calibrating the thresholds needs the training data named in the run's \
                         config (or pass --threshold-source ema)",
                    ));
                };
                eprintln!(
                    "note: the training data is not available ({e}); keeping the thresholds the \
                     checkpoint was calibrated with"
                );
                let mut m = t.model();
                m.thresholds = saved.thresholds;
                m.meta.threshold_calibration_tokens = saved.meta.threshold_calibration_tokens;
                m
            }
        }
    } else {
        t.model()
    };
    if model.meta.source.is_unknown() {
        // The training store is gone (or was no store): keep what the checkpoint's cfg.json says.
        if let Ok(m) = load_meta(&a.checkpoint) {
            model.meta.source = m.source;
        }
    }
    model.meta.source.apply(&SourceOverrides {
        model_name: a.model_name,
        hook_name: a.hook_name,
        hook_layer: a.hook_layer,
        context_size: a.context_size,
        prepend_bos: a.prepend_bos,
    })?;
    save_sae(&a.out, &model)?;
    println!(
        "exported {} SAE ({} tokens trained) to {}",
        model.export_architecture(),
        t.state.tokens,
        a.out.display()
    );
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    let base = load_config(a.config.as_deref(), &a.set, Some(SYNTHETIC_TOML))?;
    let variants: Vec<Variant> = if a.variants.is_empty() {
        Variant::standard()
    } else {
        a.variants.clone()
    };
    let data = DataSpec::open(&base)?;
    announce_compare(&base, &data, variants.len())?;
    let cancel = ui::ctrl_c_cancel();
    let t0 = std::time::Instant::now();
    let mut results: Vec<VariantResult> = Vec::new();
    for v in variants {
        results.push(compare_one(&base, v, &a, &cancel)?);
    }
    println!("{}", ui::table(&compare_rows(&results)));
    println!(
        "held-out {} tokens per evaluation; FVU/dead/L0 in the training form (batch rule), inf. = inference form \
         (TopK per token; JumpReLU with {}); dead = never active on the held-out tokens. Total {:.0} s.",
        a.eval_tokens,
        threshold_note(&base),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The settings on stderr, and for synthetic data the ground-truth L0 of the init sample.
fn announce_compare(base: &RunConfig, data: &DataSpec, variants: usize) -> Result<()> {
    // The init sample is checked (size, memory) and read here, before any training.
    let rows = (data.init_sample(base)?.len() / data.d()) as u64;
    eprintln!(
        "comparing {variants} variants: d_in {}, d_sae {}, k {}, {} steps × {} tokens",
        data.d(),
        base.sae.d_sae,
        base.sae.k,
        base.train.steps,
        base.train.batch_size
    );
    if let DataSpec::Synthetic(s) = data {
        let (m, sd) = s.active_features(rows);
        eprintln!(
            "ground truth: {m:.2} ± {sd:.2} active features per sample (of {})",
            s.config().n_features
        );
    }
    Ok(())
}

/// Train and evaluate one variant (into `--out/<variant>` when given); an interruption is an
/// error naming where its checkpoint is.
fn compare_one(
    base: &RunConfig,
    v: Variant,
    a: &CompareArgs,
    cancel: &sparsa::util::progress::Cancel,
) -> Result<VariantResult> {
    let cfg = variant_config(base, v);
    let out = a
        .out
        .as_ref()
        .map(|o| o.join(v.label().replace(" + ", "+")));
    let bar = Bar::new(
        cfg.train.steps * cfg.train.batch_size as u64,
        &v.label(),
        "tok",
    );
    let Some(r) = train_and_evaluate(
        &cfg,
        out.as_deref(),
        a.eval_tokens,
        &bar,
        cancel,
        &mut |_| Ok(()),
    )?
    else {
        return Err(ui::Interrupted(format!(
            "{} was not finished{}",
            v.label(),
            match &out {
                Some(o) => format!("; its checkpoint is in {}", o.display()),
                None => String::new(),
            }
        ))
        .into());
    };
    eprintln!(
        "{}: FVU {:.4}, L0 {:.2}, {:.1} s ({:.0} tokens/s)",
        v.label(),
        r.eval.fvu,
        r.eval.l0_mean,
        r.seconds,
        r.tokens_per_second
    );
    Ok(r)
}

/// The comparison table (first row the header).
fn compare_rows(results: &[VariantResult]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "variant".to_string(),
        "FVU".into(),
        "dead %".into(),
        "L0 mean".into(),
        "L0 std".into(),
        "L0=0 %".into(),
        "MMCS".into(),
        "recovered %".into(),
        "inf. FVU".into(),
        "inf. L0".into(),
        "tok/s".into(),
    ]];
    for r in results {
        rows.push(vec![
            r.variant.label(),
            format!("{:.4}", r.eval.fvu),
            format!("{:.1}", 100.0 * r.eval.dead_frac),
            format!("{:.2}", r.eval.l0_mean),
            format!("{:.2}", r.eval.l0_std),
            format!("{:.1}", 100.0 * r.eval.l0_zero_frac),
            r.recovery.map_or("-".into(), |x| format!("{:.3}", x.0)),
            r.recovery
                .map_or("-".into(), |x| format!("{:.1}", 100.0 * x.1)),
            format!("{:.4}", r.eval_inference.fvu),
            format!("{:.2}", r.eval_inference.l0_mean),
            format!("{:.0}", r.tokens_per_second),
        ]);
    }
    rows
}
