//! Terminal output: logging, progress bars, Ctrl-C, tables.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparsa::util::progress::{Cancel, Progress};
use std::io::IsTerminal;

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An indicatif bar behind the library's [`Progress`] trait. Hidden when stderr is not a
/// terminal (CI logs), so logs stay readable.
pub struct Bar(ProgressBar);

impl Bar {
    /// `unit` names what is counted ("tok", "img", "step").
    pub fn new(total: u64, prefix: &str, unit: &str) -> Self {
        let pb = ProgressBar::new(total);
        if !std::io::stderr().is_terminal() {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        let template = format!(
            "{{prefix:>12}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} \
             ({{per_sec}}, ETA {{eta}}) {{msg}}"
        );
        pb.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(prefix.to_string());
        Bar(pb)
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total)
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }
    fn inc(&self, n: u64) {
        self.0.inc(n)
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string())
    }
    fn finish(&self) {
        self.0.finish()
    }
}

/// A command stopped by Ctrl-C after saving its state: `main` prints the message and exits 130.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted: {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// A bad flag or flag combination (exit 2, like clap's own usage errors).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit status of a failed command: 130 when it was interrupted (state saved), 2 for a
/// usage or configuration error, 1 for any other (runtime) error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use sparsa::sae::SaeError;
    use sparsa::{extract::ExtractError, lm::LmError, nn::NnError, prune::PruneError};
    let mut code = 1;
    for e in err.chain() {
        if e.is::<Interrupted>()
            || matches!(e.downcast_ref(), Some(PruneError::Cancelled))
            || matches!(e.downcast_ref(), Some(LmError::Cancelled))
        {
            return 130;
        }
        if e.is::<Usage>()
            || matches!(e.downcast_ref(), Some(SaeError::Config { .. }))
            || matches!(e.downcast_ref(), Some(PruneError::Config { .. }))
            || matches!(e.downcast_ref(), Some(NnError::Config { .. }))
            || matches!(e.downcast_ref(), Some(ExtractError::Config { .. }))
            || matches!(e.downcast_ref(), Some(LmError::LayerOutOfRange { .. }))
        {
            code = 2;
        }
    }
    code
}

/// Let a closed stdout (`sparsa … | head -1`) end the process quietly, as for other Unix
/// tools, instead of a panic in `println!`: restore the default SIGPIPE action that Rust's
/// runtime sets to "ignore".
pub fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called once at the start of `main`, before any thread is spawned; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A cancellation flag set by the first Ctrl-C; a second Ctrl-C exits at once.
pub fn ctrl_c_cancel() -> Cancel {
    let cancel = Cancel::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.is_cancelled() {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and saving a checkpoint (Ctrl-C again to abort)");
        c.cancel();
    });
    cancel
}

/// A positive count (for clap's value_parser: 0 or a non-number is a usage error).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// A non-negative number (for clap's value_parser: a negative number, NaN or a non-number is a
/// usage error).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a non-negative number")),
    }
}

/// Say on stderr that `old` is a deprecated spelling of `new` (kept for one release).
pub fn deprecated(old: &str, new: &str) {
    eprintln!("note: `{old}` is deprecated and will be removed in the next release; use `{new}`");
}

/// Render rows as an aligned plain-text table (first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut width = vec![0usize; ncol];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = width[i])
                } else {
                    format!("{c:>w$}", w = width[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if ri == 0 {
            let total: usize = width.iter().sum::<usize>() + 2 * ncol.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}
