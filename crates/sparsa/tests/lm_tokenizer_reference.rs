//! The tokenizer against an independent implementation: ids from Hugging Face `tokenizers`
//! built from the same GGUF vocabulary/merges with SmolLM2's pre-tokenizer
//! (tests/lm_data/make_tokenizer_reference.py), on hand-written strings, SOTU openings and
//! Wikipedia summaries re-read from the fetched corpora.

mod lm_common;

use sparsa::data::corpus;
use sparsa::data::fetch::{ensure, Asset};
use std::collections::HashMap;

#[test]
fn matches_hugging_face_tokenizers() {
    let (_, tok) = lm_common::model();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("lm_data/tokenizer_reference.json")).unwrap();
    let sotu: HashMap<String, String> = corpus::load(&lm_common::sotu_dir())
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.text))
        .collect();
    let wiki: HashMap<String, String> = corpus::load(&ensure(Asset::WikiSummaries).unwrap())
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.text))
        .collect();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let mut n_ids = 0;
    for case in cases {
        let text: String = match case.get("corpus").and_then(|c| c.as_str()) {
            None => case["text"].as_str().unwrap().to_string(),
            Some(c) => {
                let name = case["name"].as_str().unwrap();
                let full = if c == "sotu" {
                    &sotu[name]
                } else {
                    &wiki[name]
                };
                match case.get("chars").and_then(|n| n.as_u64()) {
                    Some(n) => full.chars().take(n as usize).collect(),
                    None => full.clone(),
                }
            }
        };
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(&text, false);
        n_ids += want.len();
        assert_eq!(
            got,
            want,
            "text {:?}",
            &text.chars().take(80).collect::<String>()
        );
    }
    assert!(n_ids > 5000);
}
