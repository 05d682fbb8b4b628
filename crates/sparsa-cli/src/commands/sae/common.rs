//! Helpers shared by `sae train`/`compare` (this module's parent) and `sae lm-compare`.

use anyhow::{Context, Result};
use sparsa::sae::compare::Variant;
use sparsa::sae::config::{RunConfig, ThresholdSource};
use sparsa::sae::train::StepMetrics;
use sparsa::sae::SaeError;
use std::io::Write;
use std::path::Path;

/// Append metric lines to a JSONL file.
pub(super) struct JsonlLog(std::fs::File);

impl JsonlLog {
    /// Start the file afresh (a run that starts from step 0).
    pub(super) fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(JsonlLog(f))
    }
    /// Continue the log of a run resumed at `step`: lines logged after that checkpoint (the
    /// steps the interrupted run did not save) are dropped first, so no step appears twice.
    pub(super) fn resume(path: &Path, step: u64) -> Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            sparsa::util::fs::atomic_write(path, kept.as_bytes())
                .with_context(|| format!("cannot rewrite {}", path.display()))?;
        }
        Self::open(path)
    }

    fn open(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(JsonlLog(f))
    }
    pub(super) fn write(&mut self, m: &StepMetrics) -> Result<(), SaeError> {
        let line = serde_json::to_string(m).unwrap_or_default();
        writeln!(self.0, "{line}").map_err(|source| SaeError::Io {
            path: "metrics.jsonl".into(),
            source,
        })
    }
}

pub(super) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    sparsa::util::fs::atomic_write(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// How the inference thresholds of a run were set, for table footnotes.
pub fn threshold_note(cfg: &RunConfig) -> String {
    match cfg.sae.threshold_source {
        ThresholdSource::Calibrated => format!(
            "{:?} thresholds calibrated on {} training rows",
            cfg.sae.threshold_mode, cfg.sae.calibration_tokens
        )
        .to_lowercase(),
        ThresholdSource::Ema => "running (EMA) thresholds from training".into(),
    }
}

/// `--variants` entries, parsed by the library's `Variant: FromStr` (for clap's value_parser).
pub fn parse_variant(s: &str) -> std::result::Result<Variant, String> {
    s.parse()
}
