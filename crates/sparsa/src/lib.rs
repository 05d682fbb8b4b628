//! sparsa: sparsity allocation in neural networks.
//!
//! Two halves share one crate:
//! - [`sae`]: sparse autoencoders with adaptive sparse allocation (TopK, Mutual Choice,
//!   Feature Choice, JumpReLU inference form; aux_k and aux_zipf auxiliary losses).
//! - [`prune`]: pruning with dead-neuron-rate tracking and Activate-while-Pruning (AP).
//!
//! Data flows one way: [`data`] → models ([`lm`], [`nn`]) / [`sae`] → trainers → metrics → files.
//! The library never prints; long work reports through [`util::progress::Progress`].

pub mod data;
pub mod extract;
pub mod kernels;
pub mod lm;
pub mod nn;
pub mod prune;
pub mod report;
pub mod sae;
pub mod util;
