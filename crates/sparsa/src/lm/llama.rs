//! The llama forward pass (SmolLM2) on f32 weights, batched, with hooks.
//!
//! For token ids `x` of shape `[b, t]` (right-padded; padding never influences real positions
//! because attention is causal), block `l` computes
//! ```text
//! h_l   = r_{l-1} + Attn_l(RMSNorm(r_{l-1}))          (resid_mid)
//! m_l   = W_down (SiLU(W_gate n) ⊙ W_up n),  n = RMSNorm(h_l)   (mlp_out, hook `mlp_out`)
//! r_l   = h_l + m_l                                  (resid_post, hook `resid_post`)
//! ```
//! with `r_{-1}` the token embedding, RMSNorm(x) = x / √(mean(x²) + ε) ⊙ w, grouped-query
//! attention with causal softmax(q kᵀ/√d_head) and llama.cpp's "normal" RoPE (interleaved pairs
//! (x₂ᵢ, x₂ᵢ₊₁) rotated by angle p·base^(−2i/d_head)), and logits = RMSNorm(r_{L−1}) Eᵀ with
//! the (tied) embedding E.
//!
//! Hooks: [`Llama::run_to`] reads the activation at a [`Hook`] and stops there;
//! [`Llama::forward_with_hook`] lets a closure replace it; [`Llama::capture`] +
//! [`Llama::resume`] run the prefix once and the suffix once per intervention (what downstream
//! evaluation uses).

use super::gguf::GgufModel;
use super::{LmError, Result};
use crate::kernels::bf16::{Bf16Gemm, Bf16Kernel, PackedA, PackedB};
use crate::kernels::with_f32;
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Hyper-parameters of a llama model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention: `n_heads / n_kv_heads` queries share one).
    pub n_kv_heads: usize,
    /// Width of one head (`d_model / n_heads`).
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: usize,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// RoPE frequency base.
    pub rope_base: f64,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Longest sequence the model was trained for (and the longest this implementation runs).
    pub context_length: usize,
}

/// Where in a block a hook sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// The residual stream after the block (`r_l`).
    ResidPost,
    /// The MLP's output before it is added to the residual stream (`m_l`).
    MlpOut,
}

impl HookPoint {
    /// The short name used on the command line: `resid_post` or `mlp_out`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HookPoint::ResidPost => "resid_post",
            HookPoint::MlpOut => "mlp_out",
        }
    }
}

impl FromStr for HookPoint {
    type Err = LmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resid_post" | "hook_resid_post" => Ok(HookPoint::ResidPost),
            "mlp_out" | "hook_mlp_out" => Ok(HookPoint::MlpOut),
            other => Err(LmError::Input(format!(
                "unknown hook point `{other}`: use `resid_post` or `mlp_out`"
            ))),
        }
    }
}

/// A hook: a point in a block. Named like TransformerLens/SAELens: `blocks.{layer}.hook_{point}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hook {
    /// Block index, 0-based.
    pub layer: usize,
    /// Point inside the block.
    pub point: HookPoint,
}

impl Hook {
    /// The residual stream after block `layer`.
    pub fn resid_post(layer: usize) -> Self {
        Hook {
            layer,
            point: HookPoint::ResidPost,
        }
    }
    /// The MLP output of block `layer`.
    pub fn mlp_out(layer: usize) -> Self {
        Hook {
            layer,
            point: HookPoint::MlpOut,
        }
    }
    /// `blocks.{layer}.hook_{point}`.
    pub fn name(&self) -> String {
        format!("blocks.{}.hook_{}", self.layer, self.point.as_str())
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Hook {
    type Err = LmError;
    /// Parses `blocks.{layer}.hook_{point}`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            LmError::Input(format!(
                "cannot parse hook `{s}`: expected `blocks.<layer>.hook_resid_post` or `blocks.<layer>.hook_mlp_out`"
            ))
        };
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, point) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let point = point.parse().map_err(|_| bad())?;
        Ok(Hook { layer, point })
    }
}

/// A closure that receives the activation at a hook (`[b, t, d]`) and returns its replacement
/// (same shape). Reading without changing = return a clone.
pub type HookFn<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

struct Block {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// The prefix of a forward pass up to a hook: what [`Llama::resume`] needs to run the rest.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The hook this capture stops at.
    pub hook: Hook,
    /// The activation at the hook, `[b, t, d_model]`.
    pub act: Tensor,
    /// The residual stream before the MLP of the hook's block (only for `mlp_out`).
    resid_mid: Option<Tensor>,
}

/// A llama model with f32 weights on the CPU.
pub struct Llama {
    cfg: LlamaConfig,
    /// Token embedding `[vocab, d]`.
    embed: Tensor,
    /// Output projection `[vocab, d]` (the embedding when tied).
    lm_head: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    /// RoPE tables `[context_length, head_dim/2]`.
    cos: Tensor,
    sin: Tensor,
    name: String,
    /// The linear layers' weights rounded to bf16 and packed, when the bf16 forward is on.
    bf16: Option<Bf16Weights>,
}

/// Every linear layer's weight matrix rounded to bf16 and packed once for the bf16 kernel
/// ([`Llama::use_bf16`]), each row twice (`[w, w]`): the input of a product is split into two
/// bf16 halves `[hi, lo]` with x ≈ hi + lo (hi = bf16(x), lo = bf16(x − hi), relative error
/// 2⁻¹⁶), so one product over 2k columns computes (hi + lo)·w with f32 accumulation. The error
/// is then the weights' rounding alone. Project choice, measured: with inputs rounded to one
/// bf16 the golden prompt's 5th and 6th next tokens (0.047 apart in f32) swap; with the split
/// they do not. It doubles the kernel's work, which AMX has to spare.
struct Bf16Weights {
    gemm: Bf16Gemm,
    /// Per block: wq, wk, wv, wo, w_gate, w_up, w_down.
    blocks: Vec<[PackedB; 7]>,
    lm_head: PackedB,
    /// The split input of the product in progress, its buffer reused across calls.
    input: std::sync::Mutex<PackedA>,
}

/// Index of a block's weight in [`Bf16Weights::blocks`].
#[derive(Clone, Copy)]
enum Lin {
    Q = 0,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl fmt::Debug for Llama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Llama")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// The model's output map without the rest of the model: the final RMSNorm gain g and the
/// unembedding W_U `[vocab, d]`. The logit lens of a residual-stream direction v is
/// W_U·(g ⊙ v): the logits it adds when written into the last residual stream (ignoring the
/// norm's data-dependent scale, which is shared by every token).
#[derive(Debug, Clone)]
pub struct Unembedding {
    pub vocab: usize,
    pub d: usize,
    /// Row-major `[vocab, d]`.
    pub w_u: Vec<f32>,
    pub gain: Vec<f32>,
}

impl Unembedding {
    /// Read only the output tensors of a llama GGUF (~113 MB for SmolLM2-135M).
    pub fn from_gguf(g: &GgufModel) -> Result<Self> {
        let cfg = g.llama_config()?;
        let d = cfg.d_model;
        let name = if g.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let w_u = g
            .tensor_f32(name, &[cfg.vocab, d])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let gain = g.tensor_f32("output_norm.weight", &[d])?.to_vec1::<f32>()?;
        Ok(Self {
            vocab: cfg.vocab,
            d,
            w_u,
            gain,
        })
    }

    /// W_U·(g ⊙ v), one logit per vocabulary entry.
    pub fn logit_lens(&self, v: &[f32]) -> Vec<f32> {
        let gv: Vec<f32> = v.iter().zip(&self.gain).map(|(a, b)| a * b).collect();
        self.w_u
            .chunks_exact(self.d)
            .map(|row| row.iter().zip(&gv).map(|(a, b)| a * b).sum())
            .collect()
    }
}

impl Llama {
    /// Load every weight of a llama GGUF, dequantised to f32 (~540 MB for SmolLM2-135M).
    pub fn from_gguf(g: &GgufModel) -> Result<Self> {
        let cfg = g.llama_config()?;
        let (d, dff, hd) = (cfg.d_model, cfg.d_ff, cfg.head_dim);
        let embed = g.tensor_f32("token_embd.weight", &[cfg.vocab, d])?;
        let lm_head = if g.has_tensor("output.weight") {
            g.tensor_f32("output.weight", &[cfg.vocab, d])?
        } else {
            embed.clone()
        };
        let norm = g.tensor_f32("output_norm.weight", &[d])?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let t = |name: &str, shape: &[usize]| g.tensor_f32(&format!("blk.{l}.{name}"), shape);
            blocks.push(Block {
                attn_norm: t("attn_norm.weight", &[d])?,
                wq: t("attn_q.weight", &[cfg.n_heads * hd, d])?,
                wk: t("attn_k.weight", &[cfg.n_kv_heads * hd, d])?,
                wv: t("attn_v.weight", &[cfg.n_kv_heads * hd, d])?,
                wo: t("attn_output.weight", &[d, cfg.n_heads * hd])?,
                ffn_norm: t("ffn_norm.weight", &[d])?,
                w_gate: t("ffn_gate.weight", &[dff, d])?,
                w_up: t("ffn_up.weight", &[dff, d])?,
                w_down: t("ffn_down.weight", &[d, dff])?,
            });
        }
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(Self {
            name: g.model_name(),
            cfg,
            embed,
            lm_head,
            norm,
            blocks,
            cos,
            sin,
            bf16: None,
        })
    }

    /// Run every linear layer (attention projections, MLP, output head) with bf16 weights,
    /// inputs split into two bf16 halves and f32 accumulation on `kernel` (see
    /// [`Bf16Weights`]), or in f32 with `None`. Attention scores, softmax, norms and the
    /// residual stream stay f32. Packing costs one pass over the weights (≈ 540 MB of packed
    /// bf16 for SmolLM2-135M). Returns false, and stays f32, when this CPU cannot run `kernel`.
    pub fn use_bf16(&mut self, kernel: Option<Bf16Kernel>) -> Result<bool> {
        let Some(gemm) = kernel.and_then(Bf16Gemm::new) else {
            self.bf16 = None;
            return Ok(kernel.is_none());
        };
        let pack = |w: &Tensor| -> Result<PackedB> {
            let (n, k) = w.dims2()?;
            let host: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let kp = split_width(k);
            let mut twice = vec![0f32; n * 2 * kp];
            for (dst, row) in twice.chunks_mut(2 * kp).zip(host.chunks(k.max(1))) {
                dst[..k].copy_from_slice(row);
                dst[kp..kp + k].copy_from_slice(row);
            }
            let mut p = PackedB::default();
            p.pack(&twice, n, 2 * kp);
            Ok(p)
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok([
                    pack(&b.wq)?,
                    pack(&b.wk)?,
                    pack(&b.wv)?,
                    pack(&b.wo)?,
                    pack(&b.w_gate)?,
                    pack(&b.w_up)?,
                    pack(&b.w_down)?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = pack(&self.lm_head)?;
        self.bf16 = Some(Bf16Weights {
            gemm,
            blocks,
            lm_head,
            input: std::sync::Mutex::new(PackedA::default()),
        });
        Ok(true)
    }

    /// The bf16 kernel the linear layers run on (`None`: f32).
    pub fn bf16_kernel(&self) -> Option<Bf16Kernel> {
        self.bf16.as_ref().map(|b| b.gemm.kernel())
    }

    /// `x [n, in] · wᵀ`: in f32, or on the packed bf16 weights `packed` picks.
    fn linear_with(
        &self,
        x: &Tensor,
        w: &Tensor,
        packed: impl Fn(&Bf16Weights) -> &PackedB,
    ) -> candle_core::Result<Tensor> {
        let Some(bw) = &self.bf16 else {
            return linear(x, w);
        };
        let pb = packed(bw);
        let (n, k) = x.dims2()?;
        let x = x.contiguous()?;
        let mut out = vec![0f32; n * pb.rows()];
        // The reused buffer is taken out and the lock released at once, so concurrent forwards
        // never wait on each other or re-enter the lock from rayon work (a concurrent one finds
        // the slot empty and packs into a fresh buffer). A poisoned lock only means another
        // forward panicked; the buffer is rewritten anyway.
        let take = || std::mem::take(&mut *bw.input.lock().unwrap_or_else(|p| p.into_inner()));
        let mut pa = take();
        let packed_ok = with_f32(&x, |host| pa.pack_split(host, n, k)).is_some();
        if !packed_ok {
            let host: Vec<f32> = x.flatten_all()?.to_vec1()?;
            pa.pack_split(&host, n, k);
        }
        bw.gemm.product_of(&pa, pb, &mut out, None, false);
        *bw.input.lock().unwrap_or_else(|p| p.into_inner()) = pa;
        Tensor::from_vec(out, (n, pb.rows()), x.device())
    }

    /// A block's linear layer `which`.
    fn block_linear(&self, l: usize, which: Lin, x: &Tensor) -> candle_core::Result<Tensor> {
        let blk = &self.blocks[l];
        let w = match which {
            Lin::Q => &blk.wq,
            Lin::K => &blk.wk,
            Lin::V => &blk.wv,
            Lin::O => &blk.wo,
            Lin::Gate => &blk.w_gate,
            Lin::Up => &blk.w_up,
            Lin::Down => &blk.w_down,
        };
        self.linear_with(x, w, |bw| &bw.blocks[l][which as usize])
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The model's name (the GGUF file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Residual stream width.
    pub fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    /// Check that `hook` names an existing block.
    pub fn check_hook(&self, hook: Hook) -> Result<()> {
        if hook.layer >= self.cfg.n_layers {
            return Err(LmError::LayerOutOfRange {
                layer: hook.layer,
                n_layers: self.cfg.n_layers,
            });
        }
        Ok(())
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for l in 0..self.cfg.n_layers {
            let (mid, mlp) = self.block(l, &x)?;
            x = (mid + mlp)?;
        }
        self.logits(&x)
    }

    /// The `k` most likely next tokens after `ids` (one sequence, no BOS added): (id, logit),
    /// highest logit first (ties by lower id). Empty `ids` is an error.
    pub fn top_next(&self, ids: &[u32], k: usize) -> Result<Vec<(u32, f32)>> {
        if ids.is_empty() {
            return Err(LmError::Input("the prompt is empty (no tokens)".into()));
        }
        let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let logits: Vec<f32> = self.forward(&x)?.get(0)?.get(ids.len() - 1)?.to_vec1()?;
        Ok(top_k(&logits, k))
    }

    /// The activation at `hook`, `[b, t, d]`; blocks after the hook and the output head are not
    /// run.
    pub fn run_to(&self, ids: &Tensor, hook: Hook) -> Result<Tensor> {
        Ok(self.capture(ids, hook)?.act)
    }

    /// Run up to `hook` and keep what [`Llama::resume`] needs.
    pub fn capture(&self, ids: &Tensor, hook: Hook) -> Result<Capture> {
        self.check_hook(hook)?;
        let mut x = self.embed(ids)?;
        for l in 0..hook.layer {
            let (mid, mlp) = self.block(l, &x)?;
            x = (mid + mlp)?;
        }
        let (mid, mlp) = self.block(hook.layer, &x)?;
        Ok(match hook.point {
            HookPoint::ResidPost => Capture {
                hook,
                act: (mid + mlp)?,
                resid_mid: None,
            },
            HookPoint::MlpOut => Capture {
                hook,
                act: mlp,
                resid_mid: Some(mid),
            },
        })
    }

    /// Logits `[b, t, vocab]` of the forward pass whose activation at `cap.hook` is replaced by
    /// `act` (same shape as `cap.act`). `resume(cap, &cap.act)` equals [`Llama::forward`]
    /// bit for bit.
    pub fn resume(&self, cap: &Capture, act: &Tensor) -> Result<Tensor> {
        if act.dims() != cap.act.dims() {
            return Err(LmError::HookShape {
                hook: cap.hook.name(),
                got: act.dims().to_vec(),
                expected: cap.act.dims().to_vec(),
            });
        }
        let act = act.to_dtype(DType::F32)?;
        let mut x = match &cap.resid_mid {
            Some(mid) => (mid + act)?,
            None => act,
        };
        for l in cap.hook.layer + 1..self.cfg.n_layers {
            let (mid, mlp) = self.block(l, &x)?;
            x = (mid + mlp)?;
        }
        self.logits(&x)
    }

    /// Logits with the activation at `hook` passed through `f` (which may read it, e.g. into a
    /// `RefCell`, and/or return a replacement of the same shape).
    pub fn forward_with_hook(&self, ids: &Tensor, hook: Hook, f: HookFn<'_>) -> Result<Tensor> {
        let cap = self.capture(ids, hook)?;
        let new = f(&cap.act)?;
        self.resume(&cap, &new)
    }

    /// Embedding lookup: `[b, t]` ids → `[b, t, d]`. Errors on an id outside the vocabulary.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().map_err(|_| {
            LmError::Input(format!(
                "token ids must be [batch, seq], got {:?}",
                ids.dims()
            ))
        })?;
        if b == 0 || t == 0 {
            return Err(LmError::Input(format!(
                "empty batch: {b} sequences of {t} tokens"
            )));
        }
        if t > self.cfg.context_length {
            return Err(LmError::Input(format!(
                "sequence length {t} exceeds the model's context length {}",
                self.cfg.context_length
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let flat = ids.flatten_all()?;
        if let Some(&bad) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab)
        {
            return Err(LmError::TokenOutOfRange {
                id: bad,
                vocab: self.cfg.vocab,
            });
        }
        Ok(self
            .embed
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.d_model))?)
    }

    /// Final RMSNorm and output projection: `[b, t, d]` → `[b, t, vocab]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let x = rms_norm(&x.reshape((b * t, d))?, &self.norm, self.cfg.rms_eps)?;
        Ok(self
            .linear_with(&x, &self.lm_head, |bw| &bw.lm_head)?
            .reshape((b, t, self.cfg.vocab))?)
    }

    /// Block `l` on the residual `x` `[b, t, d]`: returns (resid_mid, mlp_out).
    fn block(&self, l: usize, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let blk = &self.blocks[l];
        let c = &self.cfg;
        let (b, t, d) = x.dims3()?;
        let x2 = x.reshape((b * t, d))?;
        let n = rms_norm(&x2, &blk.attn_norm, c.rms_eps)?;
        let q = self
            .block_linear(l, Lin::Q, &n)?
            .reshape((b, t, c.n_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .block_linear(l, Lin::K, &n)?
            .reshape((b, t, c.n_kv_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .block_linear(l, Lin::V, &n)?
            .reshape((b, t, c.n_kv_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
        // Grouped-query attention without copying K/V: the `rep` query heads of one KV group
        // are stacked along the sequence axis, [b, kv, rep·t, hd].
        let rep = c.n_heads / c.n_kv_heads;
        let q = (q * (1.0 / (c.head_dim as f64).sqrt()))?.reshape((
            b,
            c.n_kv_heads,
            rep * t,
            c.head_dim,
        ))?;
        let scores = q.matmul(&k.t()?)?; // [b, kv, rep·t, t]
        let mask = causal_mask(t, rep, x.device())?;
        let scores = scores.broadcast_add(&mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = p
            .matmul(&v)? // [b, kv, rep·t, hd]
            .reshape((b, c.n_heads, t, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b * t, c.n_heads * c.head_dim))?;
        let attn = self.block_linear(l, Lin::O, &o)?;
        let mid = (x2 + attn)?;
        let n = rms_norm(&mid, &blk.ffn_norm, c.rms_eps)?;
        let g = self.block_linear(l, Lin::Gate, &n)?.silu()?;
        let u = self.block_linear(l, Lin::Up, &n)?;
        let mlp = self.block_linear(l, Lin::Down, &(g * u)?)?;
        Ok((mid.reshape((b, t, d))?, mlp.reshape((b, t, d))?))
    }
}

/// Width of one half of a split bf16 operand: `k` rounded up to the kernel's 32.
fn split_width(k: usize) -> usize {
    k.div_ceil(32) * 32
}

/// `x [n, in] · wᵀ` for `w [out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
}

/// Additive causal mask `[rep·t, t]`: row `r·t + i` may attend to columns `j ≤ i`.
fn causal_mask(t: usize, rep: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = Vec::with_capacity(rep * t * t);
    for _ in 0..rep {
        for i in 0..t {
            for j in 0..t {
                m.push(if j <= i { 0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(m, (rep * t, t), device)
}

/// RoPE cos/sin tables `[context_length, head_dim/2]`: angle(p, i) = p · base^(−2i/head_dim).
fn rope_tables(cfg: &LlamaConfig) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let n = cfg.context_length.max(1);
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for i in 0..half {
            let inv = cfg.rope_base.powf(-(2.0 * i as f64) / cfg.head_dim as f64);
            let a = p as f64 * inv;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), &Device::Cpu)?,
        Tensor::from_vec(sin, (n, half), &Device::Cpu)?,
    ))
}

/// Cross-entropy helper shared by evaluation: `log_softmax` over the last axis.
pub(crate) fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

/// The `k` largest of `v` as (index, value), largest first, ties by lower index; one partial
/// selection (O(n)) and a sort of the k.
pub fn top_k(v: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(v.len());
    let mut order: Vec<u32> = (0..v.len() as u32).collect();
    let before = |a: &u32, b: &u32| v[*b as usize].total_cmp(&v[*a as usize]).then(a.cmp(b));
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, before);
    }
    order.truncate(k);
    order.sort_by(before);
    order.into_iter().map(|i| (i, v[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_is_the_k_largest_in_order_with_ties_by_index() {
        let v = [0.5f32, 3.0, -1.0, 3.0, 2.0, f32::NEG_INFINITY];
        assert_eq!(top_k(&v, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&v, 0), vec![]);
        assert_eq!(top_k(&v, 99).len(), 6);
        assert_eq!(top_k(&v, 6)[5], (5, f32::NEG_INFINITY));
        // Against a full sort on a longer vector.
        let w: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32).collect();
        let mut all: Vec<u32> = (0..1000).collect();
        all.sort_by(|a, b| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b)));
        let want: Vec<u32> = all[..17].to_vec();
        let got: Vec<u32> = top_k(&w, 17).into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, want);
    }
}
