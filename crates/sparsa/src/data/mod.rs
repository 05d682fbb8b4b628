//! Data in: activation stores, synthetic ground truth, image datasets, text corpora.
pub mod store;
pub mod cifar;
pub mod idx;
