//! Data in: activation stores, synthetic ground truth, image datasets, text corpora.
pub mod fetch;
pub mod store;
