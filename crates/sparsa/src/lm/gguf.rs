//! Reading a GGUF model file: header and metadata through `candle_core::quantized::gguf_file`,
//! with the checks that turn a bad file into a typed [`LmError`] instead of a panic or a garbled
//! model: bad magic or header ⇒ [`LmError::Corrupt`], tensor data past the end of the file ⇒
//! [`LmError::Truncated`], `general.architecture` other than `llama` ⇒
//! [`LmError::UnsupportedArchitecture`].
//!
//! Weights are dequantised to f32 at load: candle's quantized CPU matmul rounds activations to
//! 8-bit blocks (as llama.cpp does), which moves SmolLM2's logits by up to 0.4 and changes its
//! top-5; f32 weights reproduce the reference forward to ~5e-4 and run ~20× faster on this CPU.

use super::{LlamaConfig, LmError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::{BufReader, ErrorKind};
use std::path::{Path, PathBuf};

/// Longest context accepted from the metadata (the RoPE tables are built for all of it).
const MAX_CONTEXT: usize = 1 << 20;

/// An opened GGUF file: its parsed header and metadata; tensors are read on demand.
#[derive(Debug)]
pub struct GgufModel {
    path: PathBuf,
    content: Content,
    file_size: u64,
}

impl GgufModel {
    /// Parse the header and metadata of `path` and check that every tensor's data lies inside
    /// the file. Reads no tensor data.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| LmError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let file_size = file
            .metadata()
            .map_err(|source| LmError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| LmError::Corrupt {
            path: path.to_path_buf(),
            reason: describe_header_error(&e, file_size),
        })?;
        let model = Self {
            path: path.to_path_buf(),
            content,
            file_size,
        };
        model.check_extents()?;
        Ok(model)
    }

    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw metadata value for `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// `general.architecture` (e.g. "llama").
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
    }

    /// The model's name as recorded in stores: the file stem (e.g. `SmolLM2-135M-Instruct.Q4_1`),
    /// which names the exact weights better than `general.name`.
    pub fn model_name(&self) -> String {
        match self.path.file_stem() {
            Some(s) if !s.is_empty() => s.to_string_lossy().into_owned(),
            _ => match self.content.metadata.get("general.name") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => "model".to_string(),
            },
        }
    }

    /// The llama hyper-parameters from the `llama.*` metadata keys; errors if the architecture is
    /// not `llama` or a key is missing.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        if arch != "llama" {
            return Err(LmError::UnsupportedArchitecture {
                path: self.path.clone(),
                arch: arch.to_string(),
            });
        }
        let (d_model, n_heads, n_kv_heads, head_dim) = self.attention_shape()?;
        let rope_base = match self.content.metadata.get("llama.rope.freq_base") {
            Some(_) => self.f64("llama.rope.freq_base")?,
            None => 10_000.0,
        };
        let cfg = LlamaConfig {
            n_layers: self.usize("llama.block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff: self.usize("llama.feed_forward_length")?,
            rms_eps: self.f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_base,
            vocab: self.vocab_size()?,
            context_length: self.usize("llama.context_length")?,
        };
        self.check_ranges(&cfg)?;
        Ok(cfg)
    }

    /// Width, heads, KV heads and head dimension, checked against each other and against the
    /// RoPE dimension (only full-head RoPE is implemented).
    fn attention_shape(&self) -> Result<(usize, usize, usize, usize)> {
        let d_model = self.usize("llama.embedding_length")?;
        let n_heads = self.usize("llama.attention.head_count")?;
        let n_kv_heads = match self.content.metadata.get("llama.attention.head_count_kv") {
            Some(_) => self.usize("llama.attention.head_count_kv")?,
            None => n_heads,
        };
        if n_heads == 0 || d_model % n_heads != 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(self.meta_err(
                "llama.attention.head_count",
                format!(
                    "inconsistent: {n_heads} heads, {n_kv_heads} KV heads, width {d_model} \
                     (heads must divide the width and KV heads must divide heads)"
                ),
            ));
        }
        let head_dim = d_model / n_heads;
        if head_dim % 2 != 0 {
            return Err(self.meta_err(
                "llama.embedding_length",
                format!("odd head dimension {head_dim} (width / heads); RoPE needs an even one"),
            ));
        }
        if let Some(v) = self.content.metadata.get("llama.rope.dimension_count") {
            let rd = v
                .to_u64()
                .map_err(|_| self.meta_err("llama.rope.dimension_count", "not an integer".into()))?
                as usize;
            if rd != head_dim {
                return Err(self.meta_err(
                    "llama.rope.dimension_count",
                    format!("{rd}, but only full-head RoPE ({head_dim}) is implemented"),
                ));
            }
        }
        Ok((d_model, n_heads, n_kv_heads, head_dim))
    }

    /// The vocabulary size: `llama.vocab_size`, else the embedding's rows, else the tokenizer's
    /// token count (0 when none is present; the weight loader then rejects the file).
    fn vocab_size(&self) -> Result<usize> {
        if self.content.metadata.contains_key("llama.vocab_size") {
            return self.usize("llama.vocab_size");
        }
        if let Some(info) = self.content.tensor_infos.get("token_embd.weight") {
            return Ok(info.shape.dims()[0]);
        }
        Ok(match self.content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => 0,
        })
    }

    /// The range checks on a parsed configuration, each naming its metadata key.
    fn check_ranges(&self, cfg: &LlamaConfig) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let checks: [(&str, bool, &str); 6] = [
            ("llama.block_count", cfg.n_layers >= 1, "must be at least 1"),
            (
                "llama.embedding_length",
                cfg.d_model >= 1,
                "must be at least 1",
            ),
            (
                "llama.feed_forward_length",
                cfg.d_ff >= 1,
                "must be at least 1",
            ),
            (
                "llama.context_length",
                (1..=MAX_CONTEXT).contains(&cfg.context_length),
                "must be in 1..=1048576",
            ),
            (
                "llama.attention.layer_norm_rms_epsilon",
                positive(cfg.rms_eps),
                "must be a positive number",
            ),
            (
                "llama.rope.freq_base",
                positive(cfg.rope_base),
                "must be a positive number",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, problem)) => Err(self.meta_err(key, problem.to_string())),
            None => Ok(()),
        }
    }

    /// Whether the file holds a tensor named `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Read tensor `name`, dequantised to f32, with the shape candle gives it (GGUF dims reversed:
    /// a linear layer is `[out, in]`). Errors if it is missing or its shape is not `expected`.
    pub fn tensor_f32(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| LmError::Tensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                problem: "is missing".to_string(),
            })?;
        if info.shape.dims() != expected {
            return Err(LmError::Tensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                problem: format!(
                    "has shape {:?}, expected {expected:?} from the metadata",
                    info.shape.dims()
                ),
            });
        }
        let file = File::open(&self.path).map_err(|source| LmError::Open {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let q = info
            .read(&mut reader, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| LmError::Corrupt {
                path: self.path.clone(),
                reason: format!("reading tensor `{name}`: {e}"),
            })?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| LmError::Corrupt {
            path: self.path.clone(),
            reason: format!("dequantising tensor `{name}`: {e}"),
        })?;
        Ok(t)
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.meta_err(key, "not a string".into())),
            None => Err(self.meta_err(key, "missing".into())),
        }
    }

    /// An integer metadata value as `usize`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| self.meta_err(key, "missing".into()))?;
        let n = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            _ => return Err(self.meta_err(key, "not an integer".into())),
        };
        usize::try_from(n).map_err(|_| self.meta_err(key, format!("{n}, not a valid size")))
    }

    /// A float metadata value.
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.content.metadata.get(key) {
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(_) => Err(self.meta_err(key, "not a float".into())),
            None => Err(self.meta_err(key, "missing".into())),
        }
    }

    fn meta_err(&self, key: &str, problem: String) -> LmError {
        LmError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            problem,
        }
    }

    /// Every tensor's bytes must lie inside the file; a truncated file is reported by the tensor
    /// that reaches furthest (so `needed` is the size the complete file must have).
    fn check_extents(&self) -> Result<()> {
        let mut furthest: Option<(u64, &str)> = None;
        for (name, info) in &self.content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if block == 0 || !elems.is_multiple_of(block) {
                return Err(LmError::Corrupt {
                    path: self.path.clone(),
                    reason: format!(
                        "tensor `{name}` has {elems} elements, not a multiple of its block size {block}"
                    ),
                });
            }
            let bytes = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
            let end = self
                .content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if furthest.is_none_or(|(e, n)| end > e || (end == e && name.as_str() < n)) {
                furthest = Some((end, name));
            }
        }
        match furthest {
            Some((end, name)) if end > self.file_size => Err(LmError::Truncated {
                path: self.path.clone(),
                tensor: name.to_string(),
                needed: end,
                actual: self.file_size,
            }),
            _ => Ok(()),
        }
    }
}

fn describe_header_error(e: &candle_core::Error, file_size: u64) -> String {
    let eof = match e {
        candle_core::Error::Io(io) => io.kind() == ErrorKind::UnexpectedEof,
        _ => false,
    };
    if eof {
        format!("the file ends inside its header after {file_size} bytes (truncated)")
    } else {
        e.to_string()
    }
}
