//! Layer functions over candle tensors. Each reads like its equation; candle's autograd supplies
//! the backward pass (checked against finite differences in the tests below).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};

use super::Result;

/// `x Wᵀ` as one op whose backward pass skips ∂/∂x when `x` needs no gradient (the input
/// batch of the first layer): candle's generic matmul backward always computes both operands'
/// gradients, and for LeNet-300-100 the unused 784-wide input gradient is ~40 % of the backward
/// FLOPs. ∂/∂W = gᵀ x comes out contiguous in W's (out, in) layout.
struct LinearXWt;

fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("linear: operand is not contiguous")
    };
    let dev = &candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[o0..o1], l.shape(), dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[o0..o1], l.shape(), dev),
        _ => candle_core::bail!("linear: only f32 and f64 are supported"),
    }
}

impl CustomOp2 for LinearXWt {
    fn name(&self) -> &'static str {
        "linear-x-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = cpu_tensor(s1, l1)?.matmul(&cpu_tensor(s2, l2)?.t()?)?;
        let shape = y.shape().clone();
        let (st, layout) = y.storage_and_layout();
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("linear: matmul output is not contiguous")
        };
        let out = match &*st {
            Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[o0..o1].to_vec()),
            Storage::Cpu(CpuStorage::F64(v)) => CpuStorage::F64(v[o0..o1].to_vec()),
            _ => candle_core::bail!("linear: unexpected storage"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = if x.track_op() {
            Some(grad.matmul(w)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(grad.t()?.matmul(x)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// `x Wᵀ` through candle's generic matmul (the reference for [`LinearXWt`]).
pub fn matmul_xwt_reference(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

/// Fully connected layer: `y = x Wᵀ + b`, with `W` of shape (out, in). On the CPU for f32/f64
/// it runs through a custom op whose backward pass skips the input gradient when the input needs
/// none (tested against [`matmul_xwt_reference`]).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
        && x.rank() == 2
        && w.rank() == 2;
    let y = if fast {
        x.contiguous()?.apply_op2(&w.contiguous()?, LinearXWt)?
    } else {
        matmul_xwt_reference(x, w)?
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Geometry of an im2col/col2im pair: input (B, C, H, W), k×k window, stride, zero padding.
#[derive(Clone, Copy, Debug)]
struct Patches {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Patches {
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// cols[(n·OH + oy)·OW + ox][(ci·k + ky)·k + kx] = x[n][ci][oy·s + ky − p][ox·s + kx − p] (0 outside).
    fn im2col<T: Copy + Default + Send + Sync>(&self, x: &[T]) -> Vec<T> {
        use rayon::prelude::*;
        let ckk = self.ckk();
        let per_img = self.oh * self.ow * ckk;
        let mut out = vec![T::default(); self.b * per_img];
        out.par_chunks_mut(per_img)
            .enumerate()
            .for_each(|(n, img)| {
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let row =
                            &mut img[(oy * self.ow + ox) * ckk..(oy * self.ow + ox + 1) * ckk];
                        for ci in 0..self.c {
                            let plane =
                                &x[(n * self.c + ci) * self.h * self.w..][..self.h * self.w];
                            for ky in 0..self.k {
                                let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                                for kx in 0..self.k {
                                    let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < self.h
                                        && (ix as usize) < self.w
                                    {
                                        row[(ci * self.k + ky) * self.k + kx] =
                                            plane[iy as usize * self.w + ix as usize];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        out
    }

    /// The adjoint of [`Patches::im2col`]: scatter-add each column entry back to its pixel.
    fn col2im<T: Copy + Default + Send + Sync + std::ops::AddAssign>(&self, cols: &[T]) -> Vec<T> {
        use rayon::prelude::*;
        let ckk = self.ckk();
        let per_img = self.c * self.h * self.w;
        let mut out = vec![T::default(); self.b * per_img];
        out.par_chunks_mut(per_img)
            .enumerate()
            .for_each(|(n, img)| {
                let src = &cols[n * self.oh * self.ow * ckk..][..self.oh * self.ow * ckk];
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let row = &src[(oy * self.ow + ox) * ckk..][..ckk];
                        for ci in 0..self.c {
                            for ky in 0..self.k {
                                let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                                for kx in 0..self.k {
                                    let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < self.h
                                        && (ix as usize) < self.w
                                    {
                                        img[(ci * self.h + iy as usize) * self.w + ix as usize] +=
                                            row[(ci * self.k + ky) * self.k + kx];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        out
    }
}

/// im2col as a candle op: (B, C, H, W) → (B·OH·OW, C·k·k); its gradient is [`Col2Im`].
struct Im2Col(Patches);
/// col2im as a candle op: (B·OH·OW, C·k·k) → (B, C, H, W); its gradient is [`Im2Col`].
struct Col2Im(Patches);

fn contiguous_slice<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((o0, o1)) => Ok(&v[o0..o1]),
        None => candle_core::bail!("im2col: operand is not contiguous"),
    }
}

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let shape = Shape::from((p.b * p.oh * p.ow, p.ckk()));
        Ok(match s {
            CpuStorage::F32(v) => (CpuStorage::F32(p.im2col(contiguous_slice(v, l)?)), shape),
            CpuStorage::F64(v) => (CpuStorage::F64(p.im2col(contiguous_slice(v, l)?)), shape),
            _ => candle_core::bail!("im2col: only f32 and f64 are supported"),
        })
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl candle_core::CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let shape = Shape::from((p.b, p.c, p.h, p.w));
        Ok(match s {
            CpuStorage::F32(v) => (CpuStorage::F32(p.col2im(contiguous_slice(v, l)?)), shape),
            CpuStorage::F64(v) => (CpuStorage::F64(p.col2im(contiguous_slice(v, l)?)), shape),
            _ => candle_core::bail!("col2im: only f32 and f64 are supported"),
        })
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// candle's own conv2d (the reference path for [`conv2d`]).
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, pad, stride, 1, 1)?;
    Ok(match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
        None => y,
    })
}

/// 2-D convolution, `W` of shape (out, in, k, k), zero padding `pad` on each side, and an
/// optional per-channel bias: `y[n, o, i, j] = b[o] + Σ_{c,u,v} W[o, c, u, v] ·
/// x[n, c, i·s + u − p, j·s + v − p]`.
///
/// On the CPU (f32/f64) it runs as im2col → one matrix product with the (out, in·k·k) weight
/// matrix → layout change, with col2im as im2col's exact adjoint in the backward pass. candle's
/// conv2d backward goes through a slow conv-transpose; this path is several times faster and is
/// tested against [`conv2d_reference`] and finite differences.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype();
    let (bn, c, h, wd) = x.dims4()?;
    let (cout, cin, k, k2) = w.dims4()?;
    if !fast || cin != c || k != k2 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
        return conv2d_reference(x, w, b, stride, pad);
    }
    let p = Patches {
        b: bn,
        c,
        h,
        w: wd,
        k,
        stride,
        pad,
        oh: (h + 2 * pad - k) / stride + 1,
        ow: (wd + 2 * pad - k) / stride + 1,
    };
    let cols = x.contiguous()?.apply_op1(Im2Col(p))?;
    let wm = w.reshape((cout, p.ckk()))?;
    let y = cols.apply_op2(&wm, LinearXWt)?; // (B·OH·OW, out)
    let y = y
        .reshape((bn, p.oh, p.ow, cout))?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    Ok(match b {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?,
        None => y,
    })
}

/// Batch statistics used and produced by [`batch_norm_train`].
pub struct BnStats {
    /// Per-channel batch mean, shape (C).
    pub mean: Tensor,
    /// Per-channel biased batch variance, shape (C).
    pub var: Tensor,
}

/// The per-channel reduction axes of a (N, C) or (N, C, H, W) tensor and the broadcast shape of a
/// per-channel vector.
fn channel_axes(x: &Tensor) -> Result<(Vec<usize>, Vec<usize>)> {
    let dims = x.dims();
    let c = dims.get(1).copied().unwrap_or(1);
    Ok(match dims.len() {
        2 => (vec![0], vec![1, c]),
        _ => (vec![0, 2, 3], vec![1, c, 1, 1]),
    })
}

/// Batch normalisation in training mode, over the batch (and spatial positions for 4-D input):
/// `y = γ · (x − μ_B) / √(σ²_B + ε) + β` with the biased batch variance σ²_B.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BnStats)> {
    let (axes, bshape) = channel_axes(x)?;
    let mean = x.mean_keepdim(axes.clone())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(axes)?;
    let inv = (var.clone() + eps)?.sqrt()?.recip()?;
    let y = xc
        .broadcast_mul(&inv)?
        .broadcast_mul(&gamma.reshape(bshape.clone())?)?
        .broadcast_add(&beta.reshape(bshape)?)?;
    let c = gamma.dim(0)?;
    Ok((
        y,
        BnStats {
            mean: mean.detach().reshape(c)?,
            var: var.detach().reshape(c)?,
        },
    ))
}

/// Batch normalisation in evaluation mode with running statistics:
/// `y = γ · (x − μ_run) / √(σ²_run + ε) + β`.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    run_mean: &Tensor,
    run_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (_, bshape) = channel_axes(x)?;
    let scale = (gamma / (run_var + eps)?.sqrt()?)?;
    let shift = (beta - (run_mean * &scale)?)?;
    Ok(x.broadcast_mul(&scale.reshape(bshape.clone())?)?
        .broadcast_add(&shift.reshape(bshape)?)?)
}

/// Max pooling with a k×k window and stride k. Trailing rows/columns that do not fill a window
/// are dropped (floor semantics).
///
/// Written as a reshape to (N, C, H/k, k, W/k, k) and two max reductions rather than candle's
/// `max_pool2d`, whose backward pass in candle 0.11 scales the gradient by 1/k² (the
/// finite-difference test below catches it).
pub fn max_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    let x = crop_to_multiple(x, k)?;
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3)?)
}

/// Average pooling with a k×k window and stride k (floor semantics, as [`max_pool`]).
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    Ok(crop_to_multiple(x, k)?.avg_pool2d(k)?)
}

fn crop_to_multiple(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (h2, w2) = (h / k * k, w / k * k);
    if h2 == h && w2 == w {
        return Ok(x.clone());
    }
    Ok(x.narrow(2, 0, h2)?.narrow(3, 0, w2)?)
}

/// Global average pooling: (N, C, H, W) → (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean((2, 3))?)
}

/// Mean cross-entropy of logits (N, K) against class ids (N) as u32.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Number of correct arg-max predictions.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let eq = pred.eq(&labels.to_dtype(pred.dtype())?)?;
    Ok(eq.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Central-difference check of d(sum(f(vars) ⊙ R))/d(var) against autograd, in f64.
    fn fd_check(vars: &[Var], f: &dyn Fn(&[Tensor]) -> Tensor, tol: f64) {
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&inputs);
        let r = rand_t(out.dims(), 99);
        let loss = (out * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let h = 1e-6;
        for (vi, var) in vars.iter().enumerate() {
            let g = grads
                .get(var.as_tensor())
                .expect("gradient exists")
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let shape = var.as_tensor().dims().to_vec();
            // Check a spread of coordinates (all of them for small tensors).
            let step = (base.len() / 40).max(1);
            for i in (0..base.len()).step_by(step) {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                    let mut ins = inputs.clone();
                    ins[vi] = t;
                    (f(&ins) * &r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                let err = (fd - g[i]).abs() / (1.0 + fd.abs());
                assert!(
                    err < tol,
                    "var {vi} coord {i}: autograd {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn conv2d_gradients_match_finite_differences() {
        for &(stride, pad, hw) in &[(1usize, 1usize, 6usize), (2, 1, 7), (2, 0, 6), (1, 0, 5)] {
            let x = Var::from_tensor(&rand_t(&[2, 3, hw, hw], 1)).unwrap();
            let w = Var::from_tensor(&rand_t(&[4, 3, 3, 3], 2)).unwrap();
            let b = Var::from_tensor(&rand_t(&[4], 3)).unwrap();
            fd_check(
                &[x.clone(), w.clone(), b.clone()],
                &|t| conv2d(&t[0], &t[1], Some(&t[2]), stride, pad).unwrap(),
                1e-6,
            );
            fd_check(
                &[x, w, b],
                &|t| conv2d_reference(&t[0], &t[1], Some(&t[2]), stride, pad).unwrap(),
                1e-6,
            );
        }
    }

    #[test]
    fn linear_fast_path_matches_reference_and_finite_differences() {
        let x = Var::from_tensor(&rand_t(&[5, 7], 20)).unwrap();
        let w = Var::from_tensor(&rand_t(&[3, 7], 21)).unwrap();
        let b = Var::from_tensor(&rand_t(&[3], 22)).unwrap();
        fd_check(
            &[x.clone(), w.clone(), b],
            &|t| linear(&t[0], &t[1], Some(&t[2])).unwrap(),
            1e-6,
        );
        // Same values and gradients as candle's matmul; no input gradient for a plain input.
        let xin = rand_t(&[5, 7], 20);
        let fast = linear(&xin, w.as_tensor(), None).unwrap();
        let refr = matmul_xwt_reference(&xin, w.as_tensor()).unwrap();
        let d = (&fast - &refr).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        let r = rand_t(&[5, 3], 23);
        let g1 = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (refr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, c) = (
            g1.get(w.as_tensor()).unwrap(),
            g2.get(w.as_tensor()).unwrap(),
        );
        let d = (a - c).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        assert!(g1.get(&xin).is_none());
    }

    #[test]
    fn conv2d_fast_path_matches_candle() {
        for &(stride, pad, hw, k) in &[
            (1usize, 1usize, 6usize, 3usize),
            (2, 1, 7, 3),
            (2, 0, 8, 1),
            (1, 0, 5, 3),
        ] {
            let x = rand_t(&[3, 2, hw, hw], 30);
            let w = Var::from_tensor(&rand_t(&[4, 2, k, k], 31)).unwrap();
            let b = rand_t(&[4], 32);
            let fast = conv2d(&x, w.as_tensor(), Some(&b), stride, pad).unwrap();
            let refr = conv2d_reference(&x, w.as_tensor(), Some(&b), stride, pad).unwrap();
            assert_eq!(fast.dims(), refr.dims());
            let d = (&fast - &refr).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                d.to_scalar::<f64>().unwrap() < 1e-12,
                "stride {stride} pad {pad}"
            );
            let r = rand_t(fast.dims(), 33);
            let g1 = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (refr * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let d = (g1.get(w.as_tensor()).unwrap() - g2.get(w.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(
                d.to_scalar::<f64>().unwrap() < 1e-10,
                "grad stride {stride} pad {pad}"
            );
        }
    }

    #[test]
    fn batch_norm_gradients_match_finite_differences() {
        let x = Var::from_tensor(&rand_t(&[4, 3, 3, 3], 4)).unwrap();
        let g = Var::from_tensor(&(rand_t(&[3], 5) + 1.5).unwrap()).unwrap();
        let b = Var::from_tensor(&rand_t(&[3], 6)).unwrap();
        fd_check(
            &[x, g, b],
            &|t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5).unwrap().0,
            1e-5,
        );
        // The 2-D (N, C) form.
        let x = Var::from_tensor(&rand_t(&[5, 3], 7)).unwrap();
        let g = Var::from_tensor(&(rand_t(&[3], 8) + 1.5).unwrap()).unwrap();
        let b = Var::from_tensor(&rand_t(&[3], 9)).unwrap();
        fd_check(
            &[x, g, b],
            &|t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5).unwrap().0,
            1e-5,
        );
    }

    #[test]
    fn pooling_gradients_match_finite_differences() {
        // Odd spatial size exercises the floor cropping.
        let x = Var::from_tensor(&rand_t(&[2, 2, 7, 7], 10)).unwrap();
        fd_check(
            std::slice::from_ref(&x),
            &|t| max_pool(&t[0], 2).unwrap(),
            1e-6,
        );
        fd_check(
            std::slice::from_ref(&x),
            &|t| avg_pool(&t[0], 2).unwrap(),
            1e-6,
        );
        fd_check(&[x], &|t| global_avg_pool(&t[0]).unwrap(), 1e-6);
    }

    #[test]
    fn batch_norm_normalises_and_eval_matches_train_with_batch_stats() {
        let x = rand_t(&[8, 2, 3, 3], 11).to_dtype(DType::F32).unwrap();
        let g = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let (y, st) = batch_norm_train(&x, &g, &b, 1e-5).unwrap();
        let m = y.mean((0, 2, 3)).unwrap().to_vec1::<f32>().unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-5));
        let ye = batch_norm_eval(&x, &g, &b, &st.mean, &st.var, 1e-5).unwrap();
        let d = (y - ye).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn max_pool_floor_semantics() {
        let v: Vec<f32> = (0..25).map(|i| i as f32).collect();
        let x = Tensor::from_vec(v, (1, 1, 5, 5), &Device::Cpu).unwrap();
        let y = max_pool(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![6.0, 8.0, 16.0, 18.0]
        );
    }
}
