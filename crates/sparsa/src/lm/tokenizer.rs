//! Byte-level BPE tokenizer built from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Encoding a text:
//! 1. Special tokens (token type 3 "control" or 4 "user-defined", e.g. `<|im_start|>`) are split
//!    out first and kept as single ids, when the caller asks for it.
//! 2. Pre-tokenization, by `tokenizer.ggml.pre`:
//!    - `smollm` (SmolLM2; llama.cpp's rule, same as the HF tokenizer's `Digits(individual)` +
//!      `ByteLevel(add_prefix_space=false)`): every digit `\p{N}` is its own piece, then GPT-2's
//!      pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``
//!      splits each remaining piece;
//!    - `gpt-2`: the GPT-2 pattern alone.
//!
//!    No prefix space is added unless `tokenizer.ggml.add_space_prefix` is true.
//! 3. Each piece's UTF-8 bytes are mapped to GPT-2's printable byte alphabet and merged by BPE:
//!    repeatedly merge the adjacent pair with the lowest rank in `tokenizer.ggml.merges`.
//!
//! The `\s+(?!\S)` look-ahead is done by hand (the `regex` crate has none): a whitespace run
//! followed by a non-space keeps its last character for the next piece.

use super::gguf::GgufModel;
use super::{LmError, Result};
use candle_core::quantized::gguf_file::Value;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Mutex;

/// GGUF token type of control tokens (`<|endoftext|>`, `<|im_start|>`…).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Marks a byte with no single-byte token in the vocabulary (SmolLM2 lacks a few control bytes
/// such as 0x04); such bytes are dropped, as the HF tokenizer does without an `unk` token.
const NO_TOKEN: u32 = u32::MAX;

/// The pre-tokenizer rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// Digits split one by one, then the GPT-2 pattern (SmolLM2).
    SmolLm,
    /// The GPT-2 pattern.
    Gpt2,
}

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    token_to_id: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of each byte's printable stand-in ([`NO_TOKEN`] if the vocabulary has none).
    byte_ids: [u32; 256],
    /// Inverse of GPT-2's byte → char map.
    char_to_byte: HashMap<char, u8>,
    /// Special tokens, longest first.
    specials: Vec<(String, u32)>,
    pre: PreTokenizer,
    pattern: Regex,
    add_space_prefix: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_chars() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    map
}

fn gpt2_pattern() -> Regex {
    // A constant pattern: compiling it cannot fail.
    #[allow(clippy::expect_used)]
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("constant regex")
}

impl Tokenizer {
    /// Build the tokenizer from a GGUF's metadata.
    pub fn from_gguf(g: &GgufModel) -> Result<Self> {
        let bad = |key: &str, problem: &str| LmError::Metadata {
            path: g.path().to_path_buf(),
            key: key.to_string(),
            problem: problem.to_string(),
        };
        let model = g.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LmError::UnsupportedTokenizer(format!(
                "{}: tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is implemented",
                g.path().display()
            )));
        }
        let pre = match g.metadata("tokenizer.ggml.pre") {
            Some(Value::String(s)) => match s.as_str() {
                "smollm" => PreTokenizer::SmolLm,
                "gpt-2" | "gpt2" | "default" => PreTokenizer::Gpt2,
                other => {
                    return Err(LmError::UnsupportedTokenizer(format!(
                        "{}: pre-tokenizer `{other}` is not implemented (supported: smollm, gpt-2)",
                        g.path().display()
                    )))
                }
            },
            _ => PreTokenizer::Gpt2,
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            match g.metadata(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(bad(key, "not an array of strings")),
                    })
                    .collect(),
                Some(_) => Err(bad(key, "not an array")),
                None => Err(bad(key, "missing")),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges_s = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match g.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.to_i64().or_else(|_| v.to_i32().map(|x| x as i64)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad("tokenizer.ggml.token_type", "not an array of integers"))?,
            _ => vec![1; tokens.len()],
        };
        let id_of = |key: &str| -> Result<Option<u32>> {
            match g.metadata(key) {
                Some(_) => Ok(Some(g.usize(key)? as u32)),
                None => Ok(None),
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let add_space_prefix = matches!(
            g.metadata("tokenizer.ggml.add_space_prefix"),
            Some(Value::Bool(true))
        );
        Self::new(tokens, &merges_s, &types, pre, add_space_prefix, bos, eos)
    }

    /// Build from explicit parts (what [`Tokenizer::from_gguf`] reads). `merges` are "a b"
    /// strings in rank order; `types` are GGUF token types (3, 4 = special).
    pub fn new(
        tokens: Vec<String>,
        merges: &[String],
        types: &[i64],
        pre: PreTokenizer,
        add_space_prefix: bool,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Self> {
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.entry(t.clone()).or_insert(i as u32);
        }
        let b2c = bytes_to_chars();
        let mut byte_ids = [0u32; 256];
        let mut char_to_byte = HashMap::with_capacity(256);
        for (b, c) in b2c.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
            byte_ids[b] = token_to_id.get(&c.to_string()).copied().unwrap_or(NO_TOKEN);
        }
        if byte_ids.iter().filter(|&&i| i != NO_TOKEN).count() < 200 {
            return Err(LmError::UnsupportedTokenizer(
                "the vocabulary lacks most single-byte tokens: not a byte-level BPE vocabulary"
                    .into(),
            ));
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                LmError::UnsupportedTokenizer(format!("merge #{rank} `{m}` is not `left right`"))
            })?;
            let (Some(&ia), Some(&ib), Some(&iab)) = (
                token_to_id.get(a),
                token_to_id.get(b),
                token_to_id.get(&format!("{a}{b}")),
            ) else {
                return Err(LmError::UnsupportedTokenizer(format!(
                    "merge #{rank} `{m}` refers to tokens missing from the vocabulary"
                )));
            };
            merge_map.entry((ia, ib)).or_insert((rank as u32, iab));
        }
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                let ty = types.get(*i).copied().unwrap_or(1);
                !t.is_empty() && (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        for id in [bos, eos].into_iter().flatten() {
            if id as usize >= tokens.len() {
                return Err(LmError::TokenOutOfRange {
                    id,
                    vocab: tokens.len(),
                });
            }
        }
        Ok(Self {
            tokens,
            token_to_id,
            merges: merge_map,
            byte_ids,
            char_to_byte,
            specials,
            pre,
            pattern: gpt2_pattern(),
            add_space_prefix,
            bos,
            eos,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence id from the metadata (SmolLM2: 1, `<|im_start|>`).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id from the metadata (SmolLM2: 2, `<|im_end|>`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The token that starts a document in sparsa's contexts (project choice): `<|endoftext|>` if
    /// the vocabulary has it (SmolLM2's document separator in pre-training: clean CE on SOTU 3.97
    /// vs 4.02 behind `<|im_start|>`, Wikipedia 2.65 vs 2.73; `examples/lm_prefix.rs`), otherwise
    /// the GGUF's BOS id.
    pub fn document_start_id(&self) -> Option<u32> {
        self.token_id("<|endoftext|>").or(self.bos)
    }

    /// The pre-tokenizer rule in use.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// The id of an exact token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.token_to_id.get(token).copied()
    }

    /// The raw token string of `id` (in GPT-2's byte alphabet, e.g. "ĠParis").
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    /// Encode `text`. With `parse_special`, special-token strings in the text become their single
    /// ids; without, they are tokenized as ordinary text (the safe choice for corpus text). No BOS
    /// is added (SmolLM2's `add_bos_token` is false); callers prepend one where they want it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let text = if self.add_space_prefix && !text.starts_with(' ') {
            std::borrow::Cow::Owned(format!(" {text}"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        if !parse_special || self.specials.is_empty() {
            self.encode_plain(&text, &mut out);
            return out;
        }
        let mut rest: &str = &text;
        while !rest.is_empty() {
            // Earliest special occurrence; ties go to the longest (specials are longest first).
            let mut best: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials {
                if let Some(pos) = rest.find(s.as_str()) {
                    if best.is_none_or(|(bp, _, _)| pos < bp) {
                        best = Some((pos, s, *id));
                    }
                }
            }
            match best {
                Some((pos, s, id)) => {
                    self.encode_plain(&rest[..pos], &mut out);
                    out.push(id);
                    rest = &rest[pos + s.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// Decode ids to text (invalid UTF-8 is replaced by U+FFFD; unknown ids are skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(tok) = self.tokens.get(id as usize) else {
                continue;
            };
            for c in tok.chars() {
                match self.char_to_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text pieces the pre-tokenizer cuts `text` into (no special-token handling).
    pub fn pre_tokenize<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = Vec::new();
        match self.pre {
            PreTokenizer::Gpt2 => self.split_gpt2(text, &mut pieces),
            PreTokenizer::SmolLm => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        if start < i {
                            self.split_gpt2(&text[start..i], &mut pieces);
                        }
                        pieces.push(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                if start < text.len() {
                    self.split_gpt2(&text[start..], &mut pieces);
                }
            }
        }
        pieces
    }

    fn split_gpt2<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.pattern.find_at(text, pos) else {
                break;
            };
            let (s, mut e) = (m.start(), m.end());
            if s > pos {
                // Cannot happen (the pattern covers every character), but never drop text.
                out.push(&text[pos..s]);
            }
            let piece = &text[s..e];
            if e < text.len() && piece.chars().all(char::is_whitespace) {
                // `\s+(?!\S)`: leave the last whitespace character to the next piece.
                if let Some((last, _)) = piece.char_indices().last() {
                    if last > 0 {
                        e = s + last;
                    }
                }
            }
            out.push(&text[s..e]);
            pos = e;
        }
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        for piece in self.pre_tokenize(text) {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(piece);
            out.extend_from_slice(&ids);
            if cache.len() < 1 << 20 {
                cache.insert(piece.to_string(), ids);
            }
        }
    }

    /// BPE on one pre-token: start from byte symbols, merge the lowest-ranked adjacent pair until
    /// no pair has a merge.
    fn bpe(&self, piece: &str) -> Vec<u32> {
        let mut syms: Vec<u32> = piece
            .bytes()
            .map(|b| self.byte_ids[b as usize])
            .filter(|&id| id != NO_TOKEN)
            .collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(syms[i], syms[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, at, merged)) = best else {
                break;
            };
            // Merge every occurrence of this pair, left to right.
            let (a, b) = (syms[at], syms[at + 1]);
            let mut next = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(syms[i]);
                    i += 1;
                }
            }
            syms = next;
        }
        syms
    }
}
