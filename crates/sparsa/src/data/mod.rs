//! Data in: activation stores, synthetic ground truth, image datasets, text corpora.
pub mod activations;
pub mod fetch;
pub mod npy;
pub mod store;
