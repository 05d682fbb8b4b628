//! Data in: activation stores, synthetic ground truth, image datasets, text corpora.
pub mod activations;
pub mod cifar;
pub mod corpus;
pub mod elem;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod npy;
pub mod store;
pub mod synthetic;
