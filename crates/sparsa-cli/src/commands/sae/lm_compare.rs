//! The SAE commands that involve the language model: downstream evaluation (the model's own
//! next-token loss with the SAE spliced in) and `sparsa sae lm-compare`, the real-data pipeline
//! fetch → extract → train → evaluate → one table.

use crate::commands::inputs::{load_corpus, load_model, ModelArg};
use crate::ui::{self, Bar};
use anyhow::{bail, Context, Result};
use clap::Args;
use sparsa::data::store::Manifest;
use sparsa::extract::{extract, ExtractConfig};
use sparsa::lm::{
    downstream_eval_many, from_rows, DownstreamConfig, DownstreamReport, Hook, HookPoint, Llama,
    Reconstruct,
};
use sparsa::report::compare::CompareVariant;
use sparsa::report::sae::{EVAL_FILE, METRICS_FILE};
use sparsa::sae::compare::{train_and_evaluate, variant_config, Variant, VariantResult};
use sparsa::sae::config::{HoldoutSplit, RunConfig};
use sparsa::sae::io::{load_sae, SaeModel};
use sparsa::sae::metrics::{reconstructor, EvalReport, Form};
use sparsa::sae::train::DataSpec;
use sparsa::util::progress::Cancel;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The built-in base config of the real-data comparison (also at configs/sae/smollm2.toml).
pub const SMOLLM2_TOML: &str = include_str!("../../../../../configs/sae/smollm2.toml");

/// Held-out text and the model, ready for splicing.
pub struct Downstream {
    pub model: Llama,
    pub seqs: Vec<Vec<u32>>,
    pub cfg: DownstreamConfig,
}

/// A store's manifest, `None` when `path` is no store; a store whose manifest is bad is an error.
pub fn store_manifest(path: &Path) -> Result<Option<Manifest>> {
    if !Manifest::is_store(path) {
        return Ok(None);
    }
    Ok(Some(Manifest::read(path)?))
}

/// Load the model and the `sequences` held-out contexts that follow what the store used.
pub fn prepare(
    manifest: &Manifest,
    model: &ModelArg,
    corpus: Option<&str>,
    sequences: usize,
    batch: usize,
) -> Result<Downstream> {
    let corpus = match corpus {
        Some(c) => c.to_string(),
        None => manifest
            .corpus()
            .map(str::to_string)
            .context("the store's manifest names no corpus; pass --corpus")?,
    };
    let (m, tok, _) = load_model(model)?;
    let (_, docs) = load_corpus(&corpus)?;
    let held = sparsa::extract::held_out(&docs, &tok, manifest, sequences)?;
    let cfg = DownstreamConfig {
        hook: held.hook,
        batch_size: batch,
        pad_id: tok.eos_id().unwrap_or(0),
        bos_id: held.bos_id,
        // Set per evaluation from the SAEs' own `exclude_positions` (`evaluate_downstream`).
        skip_positions: Vec::new(),
    };
    Ok(Downstream {
        model: m,
        seqs: held.seqs,
        cfg,
    })
}

/// CE clean / spliced / ablated, loss recovered and KL for each (SAE, form), sharing the clean
/// and ablated passes.
pub fn evaluate_downstream(
    ds: &Downstream,
    saes: &[(&SaeModel, Form)],
    cancel: &Cancel,
) -> Result<Vec<DownstreamReport>> {
    let d = ds.model.d_model();
    for (m, _) in saes {
        if m.params.d != d {
            bail!(
                "the SAE has d_in {} but the model's hook has width {d}",
                m.params.d
            );
        }
    }
    // Positions the SAEs were trained without keep their clean activation.
    let skip = saes
        .first()
        .map(|(m, _)| m.meta.exclude_positions.clone())
        .unwrap_or_default();
    if saes.iter().any(|(m, _)| m.meta.exclude_positions != skip) {
        bail!(
            "the SAEs were trained without different positions (data.exclude_positions); \
             evaluate them downstream separately"
        );
    }
    let mut cfg = ds.cfg.clone();
    cfg.skip_positions = skip;
    let fns: Vec<_> = saes
        .iter()
        .map(|(m, form)| reconstructor(m, *form).map(|f| from_rows(d, f)))
        .collect::<Result<_, _>>()?;
    let refs: Vec<Reconstruct<'_>> = fns.iter().map(|f| f as Reconstruct<'_>).collect();
    let total: u64 = ds.seqs.iter().map(|s| s.len() as u64).sum();
    let bar = Bar::new(2 * total, "downstream", "tok");
    Ok(downstream_eval_many(
        &ds.model, &ds.seqs, &cfg, &refs, &bar, cancel,
    )?)
}

/// One table row per (label, form): reconstruction and downstream metrics side by side.
pub fn combined_table(rows_in: &[(String, &EvalReport, Option<&DownstreamReport>)]) -> String {
    ui::table(&combined_rows(rows_in))
}

/// The rows of [`combined_table`] (first row the header), for the terminal and compare.html.
pub fn combined_rows(
    rows_in: &[(String, &EvalReport, Option<&DownstreamReport>)],
) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SAE".to_string(),
        "form".into(),
        "FVU".into(),
        "L0 mean".into(),
        "L0 std".into(),
        "dead %".into(),
        "CE clean".into(),
        "CE spliced".into(),
        "CE zero-abl.".into(),
        "CE mean-abl.".into(),
        "recovered (zero)".into(),
        "recovered (mean)".into(),
        "KL".into(),
    ]];
    for (label, e, d) in rows_in {
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        rows.push(vec![
            label.clone(),
            format!(
                "{}",
                match e.form {
                    Form::Training => "training",
                    Form::Inference => "inference",
                }
            ),
            format!("{:.4}", e.fvu),
            format!("{:.2}", e.l0_mean),
            format!("{:.2}", e.l0_std),
            format!("{:.1}", 100.0 * e.dead_frac),
            f(d.map(|d| d.ce_clean), 4),
            f(d.map(|d| d.ce_spliced), 4),
            f(d.map(|d| d.ce_zero_ablated), 4),
            f(d.map(|d| d.ce_mean_ablated), 4),
            f(d.map(|d| d.loss_recovered_zero), 4),
            f(d.map(|d| d.loss_recovered_mean), 4),
            f(d.map(|d| d.kl_clean_spliced), 4),
        ]);
    }
    rows
}

#[derive(Args, Debug)]
pub struct LmCompareArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Corpus: `sotu`, `wiki` (both fetched) or a path.
    #[arg(long, default_value = "sotu")]
    corpus: String,
    /// Block whose residual stream (after the block) is read; SmolLM2 has 30, 15 is the middle.
    #[arg(long, default_value_t = 15)]
    layer: usize,
    /// Activation rows to extract (training + held-out rows).
    #[arg(long, default_value_t = 196_608)]
    tokens: u64,
    /// Tokens per context (prefix included).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Passes over the training rows (sets train.steps unless --set gives it).
    #[arg(long, default_value_t = 3.0)]
    epochs: f64,
    /// Base SAE config; default: the built-in configs/sae/smollm2.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a base-config value (repeatable), e.g. --set sae.k=16.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Variants as ARCH+AUX, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = super::common::parse_variant,
        default_value = "topk+aux_k,mutual_choice+aux_k,mutual_choice+aux_zipf,feature_choice+aux_k"
    )]
    variants: Vec<Variant>,
    /// Held-out contexts for the downstream (next-token loss) evaluation.
    #[arg(long, default_value_t = 16)]
    lm_sequences: usize,
    /// Working directory: the activation store and one SAE directory per variant.
    #[arg(long, short, default_value = "runs/smollm2")]
    out: PathBuf,
}

pub fn lm_compare(a: LmCompareArgs) -> Result<()> {
    let t_all = Instant::now();
    let cancel = ui::ctrl_c_cancel();
    let variants = a.variants.clone();
    // Validate the SAE config before the long extraction.
    let store = a.out.join("activations");
    let mut base = base_config(&a, &store)?;

    let ext = extract_store(&a, &store, &cancel)?;
    let train_rows = DataSpec::open(&base)?.training_rows();
    if !a
        .set
        .iter()
        .any(|s| sparsa::util::toml_set::key(s) == "train.steps")
    {
        base.train.steps = base.steps_for_epochs(a.epochs, train_rows);
    }
    eprintln!(
        "[2/3] training {} SAEs: d_in {}, d_sae {}, k {}, {} steps × {} tokens ({:.1} epochs of {} rows)",
        variants.len(),
        ext.d_model,
        base.sae.d_sae,
        base.sae.k,
        base.train.steps,
        base.train.batch_size,
        base.train.steps as f64 * base.train.batch_size as f64 / train_rows.max(1) as f64,
        train_rows
    );
    let trained = train_variants(&a.out, &base, &variants, &cancel)?;

    eprintln!(
        "[3/3] downstream evaluation on {} held-out contexts",
        a.lm_sequences
    );
    let manifest = Manifest::read(&store)?;
    let ds = prepare(&manifest, &a.model, Some(&a.corpus), a.lm_sequences, 8)?;
    let mut pairs: Vec<(&SaeModel, Form, &EvalReport, String)> = Vec::new();
    for t in &trained {
        pairs.push((&t.model, Form::Training, &t.result.eval, t.label.clone()));
        if t.model.thresholds.is_some() {
            pairs.push((
                &t.model,
                Form::Inference,
                &t.result.eval_inference,
                t.label.clone(),
            ));
        }
    }
    let saes: Vec<(&SaeModel, Form)> = pairs.iter().map(|(m, f, _, _)| (*m, *f)).collect();
    let reports = evaluate_downstream(&ds, &saes, &cancel)?;
    let rows: Vec<(String, &EvalReport, Option<&DownstreamReport>)> = pairs
        .iter()
        .zip(&reports)
        .map(|((_, _, e, l), d)| (l.clone(), *e, Some(d)))
        .collect();
    let table_rows = combined_rows(&rows);
    println!("{}", ui::table(&table_rows));
    let notes = vec![run_note(&a, &manifest, &base, &trained, &reports[0])];
    println!("{}", notes[0]);
    let mean_tps = trained
        .iter()
        .map(|t| t.result.tokens_per_second)
        .sum::<f64>()
        / trained.len().max(1) as f64;
    println!(
        "extraction {:.0} model tokens/s; SAE training {mean_tps:.0} tokens/s (mean over variants); total {:.0} s.",
        ext.rate,
        t_all.elapsed().as_secs_f64()
    );
    write_page(&a.out, &table_rows, &notes, &trained)
}

/// The base SAE config (the given file or the built-in one) pointed at `store`, with `--set`
/// applied.
fn base_config(a: &LmCompareArgs, store: &Path) -> Result<RunConfig> {
    let (base_text, origin) = match &a.config {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            SMOLLM2_TOML.to_string(),
            "configs/sae/smollm2.toml (built in)".to_string(),
        ),
    };
    let mut set = vec![format!("data.path={:?}", store.display().to_string())];
    set.extend(a.set.iter().cloned());
    Ok(RunConfig::from_toml(&base_text, &set, &origin)?)
}

/// `out/compare.html`: the table, the notes and each variant's figures; its path is printed.
fn write_page(
    out: &Path,
    table_rows: &[Vec<String>],
    notes: &[String],
    trained: &[Trained],
) -> Result<()> {
    let variants: Vec<CompareVariant> = trained
        .iter()
        .map(|t| CompareVariant {
            label: t.label.clone(),
            training: &t.result.eval,
            inference: t
                .model
                .thresholds
                .is_some()
                .then_some(&t.result.eval_inference),
        })
        .collect();
    let html = sparsa::report::compare::render(
        &format!("SAE comparison: {}", out.display()),
        table_rows,
        notes,
        &variants,
    )?;
    let path = sparsa::report::write(&out.join("compare.html"), &html)?;
    println!("{}", path.display());
    Ok(())
}

/// What step 1 of `lm-compare` left: the store's summary, the extraction rate and the width.
struct Extracted {
    rate: f64,
    d_model: usize,
}

/// Step 1: fetch the model and corpus and extract the store (resumable; a complete store is
/// reused). An interrupted extraction is an `Interrupted` error.
fn extract_store(a: &LmCompareArgs, store: &Path, cancel: &Cancel) -> Result<Extracted> {
    let (model, tok, _) = load_model(&a.model)?;
    let (label, docs) = load_corpus(&a.corpus)?;
    let hook = Hook {
        layer: a.layer,
        point: HookPoint::ResidPost,
    };
    model.check_hook(hook)?;
    let ecfg = ExtractConfig {
        hook,
        seq_len: a.seq_len,
        n_tokens: a.tokens,
        batch_size: 8,
        shard_tokens: 65_536,
        dtype: sparsa::data::activations::Elem::F32,
        include_bos: false,
        prefix_token: tok.document_start_id().or(tok.bos_id()),
        corpus: label,
    };
    eprintln!(
        "[1/3] extracting {} of {} over `{}`: {} rows, contexts of {} → {}",
        hook,
        model.name(),
        ecfg.corpus,
        a.tokens,
        a.seq_len,
        store.display()
    );
    let t = Instant::now();
    let bar = Bar::new(a.tokens, "extract", "tok");
    let s = extract(&model, &tok, &docs, &ecfg, store, &bar, cancel)?;
    if !s.complete {
        return Err(ui::Interrupted(format!(
            "extraction stopped at {} rows; rerun the same command to resume",
            s.n_tokens
        ))
        .into());
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = s.tokens_forwarded as f64 / secs.max(1e-9);
    eprintln!(
        "      {} rows ({} new) in {secs:.1} s, {rate:.0} model tokens/s",
        s.n_tokens,
        s.n_tokens - s.resumed_from
    );
    Ok(Extracted {
        rate,
        d_model: model.d_model(),
    })
}

/// One trained variant: its label, the exported SAE and its held-out evaluations.
struct Trained {
    label: String,
    model: SaeModel,
    result: VariantResult,
}

/// Step 2: train and evaluate each variant at equal k into `out/ARCH+AUX/` (eval.json and
/// metrics.jsonl beside the SAE). Ctrl-C is an `Interrupted` error after the checkpoint.
fn train_variants(
    out: &Path,
    base: &RunConfig,
    variants: &[Variant],
    cancel: &Cancel,
) -> Result<Vec<Trained>> {
    let mut trained = Vec::new();
    for v in variants {
        let cfg = variant_config(base, *v);
        let dir = out.join(v.label().replace(" + ", "+"));
        let bar = Bar::new(
            cfg.train.steps * cfg.train.batch_size as u64,
            &v.label(),
            "tok",
        );
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut log = super::common::JsonlLog::create(&dir.join(METRICS_FILE))?;
        let r = train_and_evaluate(
            &cfg,
            Some(&dir),
            base.data.holdout_tokens,
            &bar,
            cancel,
            &mut |m| log.write(m),
        )?
        .ok_or_else(|| {
            ui::Interrupted(format!(
                "the checkpoint of {} is saved in {}",
                v.label(),
                dir.display()
            ))
        })?;
        let mut evals = vec![&r.eval];
        if cfg.sae.architecture.batch_dependent() {
            evals.push(&r.eval_inference);
        }
        super::common::write_json(&dir.join(EVAL_FILE), &evals)?;
        eprintln!(
            "      {}: FVU {:.4}, L0 {:.2}, {:.1} s ({:.0} tokens/s)",
            v.label(),
            r.eval.fvu,
            r.eval.l0_mean,
            r.seconds,
            r.tokens_per_second
        );
        trained.push(Trained {
            label: v.label(),
            model: load_sae(&dir)?,
            result: r,
        });
    }
    Ok(trained)
}

/// The sentence under the table: data, held-out rows, forms and the position rule.
fn run_note(
    a: &LmCompareArgs,
    manifest: &Manifest,
    base: &RunConfig,
    trained: &[Trained],
    r0: &DownstreamReport,
) -> String {
    let d = &base.data;
    let split = match d.holdout_split {
        HoldoutSplit::Spread => format!("{} chunks spread over the store", d.holdout_chunks),
        HoldoutSplit::Tail => "the store's last rows".to_string(),
    };
    let left_out = match (d.exclude_positions.as_slice(), trained.first()) {
        ([], _) | (_, None) => String::new(),
        (p, Some(t)) => format!(
            "; {} evaluated: rows at in-context position{} {} left out of training and evaluation",
            t.result.eval.tokens,
            if p.len() == 1 { "" } else { "s" },
            p.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    format!(
        "{} {}, {} rows from `{}` ({} held out for FVU/L0, {split}{left_out}), {} held-out contexts \
         ({} predictions) for CE; training form = the batch rule over batches of {}, inference \
         form = JumpReLU with {}; {}.",
        manifest.model.as_deref().unwrap_or("model"),
        r0.hook,
        manifest.n_tokens,
        a.corpus,
        d.holdout_tokens,
        r0.n_sequences,
        r0.n_predictions,
        base.train.batch_size,
        super::common::threshold_note(base),
        r0.bos_rule
    )
}
