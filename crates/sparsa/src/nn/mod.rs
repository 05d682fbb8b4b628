//! Image classifiers for the pruning half: layers ([`layers`]), models ([`models`]: LeNet-300-100,
//! Conv-2/4/6, ResNet-20, VGG-11/16/19 in their CIFAR forms), SGD with masking ([`optim`]) and
//! learning-rate schedules ([`schedule`]).
//!
//! Gradients come from candle's autograd; `tests` in [`layers`] check them against central finite
//! differences in f64 for conv2d, batch norm and pooling.

pub mod fast;
pub mod layers;
pub mod models;
pub mod optim;
pub mod schedule;

/// Errors from model construction, forward passes and optimisation.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("unknown architecture `{0}`: expected one of {list}", list = models::Arch::ALL.map(|a| a.name()).join(", "))]
    UnknownArch(String),
    #[error("input of shape {got:?} does not fit {arch}: it expects (batch, {c}, {h}, {w})")]
    InputShape {
        arch: String,
        got: Vec<usize>,
        c: usize,
        h: usize,
        w: usize,
    },
    #[error("invalid optimiser or schedule setting `{field}`: {msg}")]
    Config { field: &'static str, msg: String },
    #[error("non-finite loss ({0}) during training: lower the learning rate or check the data")]
    NonFinite(f32),
}

pub type Result<T> = std::result::Result<T, NnError>;
