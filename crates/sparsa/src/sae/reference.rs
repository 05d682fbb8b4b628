//! The reference training step: dense autograd on candle, simple and slow. It is the oracle for
//! faster paths and for the finite-difference gradient checks.
//!
//! L_rec = Σ‖x − x̂‖² / Σ‖x − x̄‖² (NMSE = FVU on the batch);
//! L_aux = Σ‖e − ê‖² / Σ‖e − ē‖² (or /(B·d) with `mse`), e = x − x̂ detached, ê = (A ⊙ M_aux)·W_dec;
//! L = L_rec + α·L_aux. Selections are computed from A by the caller's closure (piecewise
//! constant in the parameters, so gradients flow through the selected entries of A only).

use super::allocation::Matching;
use super::config::AuxNorm;
use super::optim::Grads;
use super::params::SaeParams;
use super::SaeError;
use candle_core::{DType, Device, Tensor, Var};

/// The two matchings of a step.
#[derive(Debug, Clone, Default)]
pub struct Selections {
    pub main: Matching,
    /// The auxiliary loss's matching (`None` when no auxiliary loss runs this step).
    pub aux: Option<Matching>,
}

/// The losses of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Losses {
    /// NMSE of the reconstruction (= FVU on the batch).
    pub rec: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Auxiliary loss (0 when none).
    pub aux: f64,
    /// L_rec + α·L_aux.
    pub total: f64,
}

/// Auxiliary-loss settings of a step.
#[derive(Debug, Clone, Copy)]
pub struct AuxTerm<'a> {
    pub coeff: f64,
    pub norm: AuxNorm,
    /// Use this residual (B×d) as the auxiliary target instead of the detached x − x̂ of this
    /// forward pass (finite-difference checks hold the constant target fixed).
    pub residual: Option<&'a [f32]>,
}

/// X̂ = (A ⊙ M)·W_dec + b_dec in f32, and A (for tests and evaluation).
pub fn reconstruct(
    p: &SaeParams,
    x: &[f32],
    b: usize,
    m: &Matching,
) -> Result<(Vec<f32>, Vec<f32>), SaeError> {
    let a = p.encode_pre(x, b)?;
    let mut xhat = vec![0f32; b * p.d];
    p.decode_sparse(&a, m, &mut xhat);
    Ok((a, xhat))
}

/// Σ‖v − v̄‖² over rows of a B×d matrix (f64).
pub fn total_variance(v: &[f32], d: usize) -> f64 {
    let b = v.len() / d;
    if b == 0 {
        return 0.0;
    }
    let mut mean = vec![0f64; d];
    for row in v.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
    }
    mean.iter_mut().for_each(|m| *m /= b as f64);
    v.chunks(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, m)| (x as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// The arithmetic of a reference step: the element type, and whether the encoder product sees
/// its operands rounded to bf16 (`train.matmul = "bf16"`).
#[derive(Debug, Clone, Copy)]
pub struct Precision {
    pub dtype: DType,
    /// The forward value of X′·W_encᵀ uses bf16-rounded X′ and W_enc; gradients flow as for
    /// the unrounded product (straight through), as in the fast step, whose gradients are f32.
    pub bf16_product: bool,
}

impl From<DType> for Precision {
    fn from(dtype: DType) -> Self {
        Precision {
            dtype,
            bf16_product: false,
        }
    }
}

/// X′·W_encᵀ; with `prec.bf16_product` its value is that of the bf16-rounded operands and its
/// gradient that of the unrounded product (straight through): P + (P_bf16 − P) detached.
fn encoder_product(xc: &Tensor, w_enc: &Tensor, prec: Precision) -> Result<Tensor, SaeError> {
    let product = xc.matmul(&w_enc.t()?)?;
    if !prec.bf16_product {
        return Ok(product);
    }
    let rounded = |v: &Tensor| -> Result<Tensor, SaeError> {
        let host: Vec<f32> = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let r: Vec<f32> = host
            .into_iter()
            .map(crate::kernels::bf16::round_bf16)
            .collect();
        Ok(Tensor::from_vec(r, v.dims(), v.device())?.to_dtype(prec.dtype)?)
    };
    let low = rounded(xc)?.matmul(&rounded(w_enc)?.t()?)?;
    Ok((&product + (low - &product)?.detach())?)
}

/// Forward (and, with `want_grads`, backward) of the full loss in precision `prec`.
/// `select` receives A (B×F, f32) and returns the matchings to use.
pub fn forward_backward<S>(
    p: &SaeParams,
    x: &[f32],
    b: usize,
    prec: impl Into<Precision>,
    aux: Option<AuxTerm<'_>>,
    want_grads: bool,
    select: S,
) -> Result<(Losses, Option<Grads>, Selections, Vec<f32>), SaeError>
where
    S: FnOnce(&[f32]) -> Selections,
{
    let (d, f) = (p.d, p.f);
    let prec = prec.into();
    let dtype = prec.dtype;
    let dev = Device::Cpu;
    let t = |v: &[f32], shape: &[usize]| -> Result<Tensor, SaeError> {
        Ok(Tensor::from_slice(v, shape, &dev)?.to_dtype(dtype)?)
    };
    let w_enc = Var::from_tensor(&t(&p.w_enc, &[f, d])?)?;
    let b_enc = Var::from_tensor(&t(&p.b_enc, &[f])?)?;
    let w_dec = Var::from_tensor(&t(&p.w_dec, &[f, d])?)?;
    let b_dec = Var::from_tensor(&t(&p.b_dec, &[d])?)?;
    let xt = t(x, &[b, d])?;

    let xc = xt.broadcast_sub(b_dec.as_tensor())?;
    let pre = encoder_product(&xc, w_enc.as_tensor(), prec)?.broadcast_add(b_enc.as_tensor())?;
    let a = pre.relu()?;
    let a_host: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let sel = select(&a_host);

    let mask = t(&sel.main.to_mask(), &[b, f])?;
    let z = (&a * &mask)?;
    let xhat = z
        .matmul(w_dec.as_tensor())?
        .broadcast_add(b_dec.as_tensor())?;
    let diff = (&xt - &xhat)?;
    let sse = diff.sqr()?.sum_all()?;
    let var = total_variance(x, d).max(f64::MIN_POSITIVE);
    let rec = (&sse / var)?;
    let mut total = rec.clone();
    let mut aux_val = 0.0;
    if let (Some(term), Some(m_aux)) = (aux, &sel.aux) {
        if m_aux.nnz() > 0 {
            let e = match term.residual {
                Some(r) => t(r, &[b, d])?,
                None => diff.detach(),
            };
            let e_host: Vec<f32> = e.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let denom = match term.norm {
                AuxNorm::Nmse => total_variance(&e_host, d),
                AuxNorm::Mse => (b * d) as f64,
            }
            .max(f64::MIN_POSITIVE);
            let mask_aux = t(&m_aux.to_mask(), &[b, f])?;
            let ehat = (&a * &mask_aux)?.matmul(w_dec.as_tensor())?;
            let l_aux = ((&e - &ehat)?.sqr()?.sum_all()? / denom)?;
            aux_val = l_aux.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            total = (&total + (&l_aux * term.coeff)?)?;
        }
    }
    let sse_v = sse.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let rec_v = rec.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let total_v = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let losses = Losses {
        rec: rec_v,
        mse: sse_v / (b * d) as f64,
        aux: aux_val,
        total: total_v,
    };

    let grads = if want_grads {
        let store = total.backward()?;
        let g = |v: &Var, n: usize| -> Result<Vec<f32>, SaeError> {
            Ok(match store.get(v.as_tensor()) {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                None => vec![0.0; n],
            })
        };
        Some(Grads {
            w_enc: g(&w_enc, f * d)?,
            b_enc: g(&b_enc, f)?,
            w_dec: g(&w_dec, f * d)?,
            b_dec: g(&b_dec, d)?,
        })
    } else {
        None
    };
    Ok((losses, grads, sel, a_host))
}
