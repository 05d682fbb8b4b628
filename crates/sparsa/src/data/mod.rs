//! Data in: activation stores, synthetic ground truth, image datasets, text corpora.
pub mod cifar;
pub mod idx;
pub mod store;
