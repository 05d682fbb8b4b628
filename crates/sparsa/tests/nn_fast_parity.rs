//! The fused image-classifier engine (`nn::fast`) against its reference, the candle path
//! (`Net::forward` + autograd + `Sgd`): per layer kind (f64, against candle and against finite
//! differences), per model one training step (loss, every parameter gradient, batch-norm running
//! statistics, the masked SGD update), DNR counts exactly, determinism, and the mask invariant.

mod cases;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsa::nn::fast::kernels::{self, ConvGeom, GroupAcc};
use sparsa::nn::fast::{Counting, FastNet};
use sparsa::nn::layers;
use sparsa::nn::models::{Arch, InputSpec, Mode, Net};
use sparsa::nn::optim::{Sgd, SgdConfig};
use sparsa::prune::dnr::DnrProbe;

fn spec(c: usize, h: usize, w: usize) -> InputSpec {
    InputSpec {
        channels: c,
        height: h,
        width: w,
        classes: 10,
    }
}

fn uniform<T: sparsa::nn::fast::kernels::Real>(n: usize, seed: u64) -> Vec<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| T::from_f64(rng.random_range(-1.0..1.0)))
        .collect()
}

fn labels(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..10u32)).collect()
}

/// Every model at a small input size (odd sizes where the model allows them).
fn small_models() -> Vec<(Arch, InputSpec)> {
    vec![
        (Arch::Lenet300100, spec(1, 7, 5)),
        (Arch::Lenet5, spec(2, 13, 15)),
        (Arch::Conv2, spec(1, 9, 7)),
        (Arch::Conv4, spec(1, 9, 9)),
        (Arch::Conv6, spec(3, 8, 8)),
        (Arch::Resnet20, spec(3, 9, 9)),
        (Arch::Vgg11, spec(3, 16, 16)),
        (Arch::Vgg16, spec(3, 16, 16)),
        (Arch::Vgg19, spec(3, 16, 16)),
    ]
}

/// Prune a random share of every prunable tensor (the pattern depends only on the seed and the
/// parameter order).
fn random_masks(net: &mut Net, density: f64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut masks = HashMap::new();
    for p in &net.params {
        if let Some(m) = &p.mask {
            let v: Vec<f32> = (0..m.elem_count())
                .map(|_| rng.random_bool(density) as u8 as f32)
                .collect();
            masks.insert(
                p.name.clone(),
                Tensor::from_vec(v, m.dims(), &Device::Cpu).unwrap(),
            );
        }
    }
    net.set_masks(&masks).unwrap();
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// max |a − b| ≤ tol · max(max |b|, floor).
fn close(a: &[f32], b: &[f32], tol: f32, floor: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if std::env::var("NN_DEBUG").is_ok() {
        let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
        let (mut err, mut at) = (0f32, 0);
        for i in 0..a.len() {
            if (a[i] - b[i]).abs() > err {
                err = (a[i] - b[i]).abs();
                at = i;
            }
        }
        eprintln!(
            "{what}: err {err} at {at} ({} vs {}) scale {scale}",
            a[at], b[at]
        );
        return;
    }
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err} vs scale {scale}"
    );
}

struct RefStep {
    loss: f32,
    grads: Vec<Vec<f32>>,
    probe: DnrProbe,
}

fn reference_step(net: &mut Net, x: &[f32], y: &[u32]) -> RefStep {
    let InputSpec {
        channels: c,
        height: h,
        width: w,
        ..
    } = net.input;
    let n = y.len();
    let xt = Tensor::from_slice(x, (n, c, h, w), &Device::Cpu).unwrap();
    let yt = Tensor::from_slice(y, n, &Device::Cpu).unwrap();
    let mut probe = DnrProbe::new(net.relu_names(), true);
    let logits = net.forward(&xt, Mode::Train, Some(&mut probe)).unwrap();
    let loss = layers::cross_entropy(&logits, &yt).unwrap();
    let grads = loss.backward().unwrap();
    let g = net
        .params
        .iter()
        .map(|p| {
            flat(
                grads
                    .get(p.var.as_tensor())
                    .expect("every parameter has a gradient"),
            )
        })
        .collect();
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    opt.step(net, &grads, 0.05).unwrap();
    RefStep {
        loss: loss.to_scalar::<f32>().unwrap(),
        grads: g,
        probe,
    }
}

#[test]
fn one_training_step_equals_the_reference_for_every_model() {
    cases::each(small_models(), |&(arch, input)| {
        let mut reference = Net::new(arch, input, 7, DType::F32).unwrap();
        random_masks(&mut reference, 0.7, 11);
        let mut net = reference.to_dtype(DType::F32).unwrap();
        let n = 5;
        let x: Vec<f32> = uniform(n * input.channels * input.height * input.width, 3);
        let y = labels(n, 4);
        let r = reference_step(&mut reference, &x, &y);

        let mut fast = FastNet::<f32>::from_net(&net, SgdConfig::default()).unwrap();
        fast.set_counting(Counting::Static);
        fast.forward(&x, n, Mode::Train).unwrap();
        let s = fast.backward(&y).unwrap();
        assert!(
            (s.loss as f32 - r.loss).abs() <= 1e-5 * r.loss.abs().max(1.0),
            "{arch}: loss {} vs {}",
            s.loss,
            r.loss
        );
        for (i, g) in fast.gradients().iter().enumerate() {
            let name = &net.params[i].name;
            close(g, &r.grads[i], 2e-3, 1e-4, &format!("{arch} ∂{name}"));
        }
        // The DNR counts of the fused ReLU passes equal the reference probe's, exactly.
        let mut probe = DnrProbe::new(net.relu_names(), true);
        probe.add_counts(&fast.take_counts());
        assert_eq!(probe.counts(), r.probe.counts(), "{arch}: DNR counts");
        assert_eq!(
            probe.report().unwrap(),
            r.probe.report().unwrap(),
            "{arch}: DNR report"
        );
        // The masked SGD update and the batch-norm running statistics.
        fast.sgd_step(0.05);
        fast.write_back(&mut net).unwrap();
        let (sf, sr) = (net.state().unwrap(), reference.state().unwrap());
        for (k, v) in &sr {
            close(&flat(&sf[k]), &flat(v), 1e-4, 1e-2, &format!("{arch} {k}"));
        }
        for p in &net.params {
            if let Some(m) = &p.mask {
                let (w, m) = (flat(p.var.as_tensor()), flat(m));
                assert!(
                    w.iter().zip(&m).all(|(w, m)| *m != 0.0 || *w == 0.0),
                    "{arch}: {} has a pruned weight ≠ 0",
                    p.name
                );
            }
        }
    });
}

#[test]
fn one_step_gradients_equal_the_reference_in_f64() {
    cases::each(small_models(), |&(arch, input)| {
        let mut reference = Net::new(arch, input, 7, DType::F32)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let n = 5;
        let x: Vec<f64> = uniform(n * input.channels * input.height * input.width, 3);
        let y = labels(n, 4);
        let xt = Tensor::from_slice(
            &x,
            (n, input.channels, input.height, input.width),
            &Device::Cpu,
        )
        .unwrap();
        let yt = Tensor::from_slice(&y, n, &Device::Cpu).unwrap();
        let mut fast = FastNet::<f64>::from_net(&reference, SgdConfig::default()).unwrap();
        let logits = reference.forward(&xt, Mode::Train, None).unwrap();
        let loss = layers::cross_entropy(&logits, &yt).unwrap();
        let grads = loss.backward().unwrap();
        fast.forward(&x, n, Mode::Train).unwrap();
        let s = fast.backward(&y).unwrap();
        let rl = loss.to_scalar::<f64>().unwrap();
        assert!(
            (s.loss - rl).abs() < 1e-10,
            "{arch}: loss {} vs {rl}",
            s.loss
        );
        for (i, g) in fast.gradients().iter().enumerate() {
            let p = &reference.params[i];
            let r: Vec<f64> = grads
                .get(p.var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = r.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(&r)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-9 * scale,
                "{arch} ∂{}: {err} vs scale {scale}",
                p.name
            );
        }
    });
}

#[test]
fn evaluation_and_its_dnr_equal_the_reference() {
    cases::each(small_models(), |&(arch, input)| {
        let mut reference = Net::new(arch, input, 5, DType::F32).unwrap();
        // Non-trivial running statistics: one training step first.
        let n = 6;
        let x: Vec<f32> = uniform(n * input.channels * input.height * input.width, 8);
        let y = labels(n, 9);
        reference_step(&mut reference, &x, &y);
        let x: Vec<f32> = uniform(n * input.channels * input.height * input.width, 10);
        let xt = Tensor::from_slice(
            &x,
            (n, input.channels, input.height, input.width),
            &Device::Cpu,
        )
        .unwrap();
        let mut probe = DnrProbe::new(reference.relu_names(), true);
        let logits = flat(
            &reference
                .forward(&xt, Mode::Eval, Some(&mut probe))
                .unwrap(),
        );
        let mut fast = FastNet::<f32>::from_net(&reference, SgdConfig::default()).unwrap();
        fast.set_counting(Counting::Static);
        let got = fast.forward(&x, n, Mode::Eval).unwrap().to_vec();
        close(&got, &logits, 1e-4, 1e-2, &format!("{arch} eval logits"));
        let mut fp = DnrProbe::new(reference.relu_names(), true);
        fp.add_counts(&fast.take_counts());
        assert_eq!(fp.counts(), probe.counts(), "{arch}: eval DNR counts");
        assert_eq!(fp.report().unwrap(), probe.report().unwrap(), "{arch}");
    });
}

#[test]
fn direct_linear_kernel_matches_an_f64_product() {
    if !sparsa::nn::fast::direct::available() {
        eprintln!("no AVX-512F or AVX2: the direct linear kernel never runs here");
        return;
    }
    use sparsa::nn::fast::direct;
    // (n, fin, fout): row tails (n not a multiple of the 12 rows of an AVX-512 block or the 6
    // of an AVX2 one), column tails (fout not a multiple of 16 or 32), LeNet's shapes.
    assert_eq!((direct::LINEAR_ROWS, direct::LINEAR_ROWS_AVX2), (12, 6));
    for &(n, fin, fout) in &[
        (13usize, 37usize, 300usize),
        (8, 784, 300),
        (12, 784, 300),
        (25, 64, 48),
        (5, 300, 100),
        (17, 100, 10),
        (1, 3, 1),
        (9, 64, 48),
    ] {
        let x: Vec<f32> = uniform(n * fin, 60);
        let w: Vec<f32> = uniform(fout * fin, 61);
        let (mut panel, mut xt) = (Vec::new(), Vec::new());
        direct::pack_linear(&w, fout, fin, &mut panel);
        // Sentinels past each row's fout must survive (the tail stores are masked).
        let mut y = vec![f32::NAN; n * fout + 16];
        direct::linear_rows(&x, n, fin, &panel, fout, &mut xt, &mut y);
        assert!(
            y[n * fout..].iter().all(|v| v.is_nan()),
            "{n}×{fin}→{fout}: wrote past y"
        );
        let bound = (fin * fin) as f64 * 6e-8;
        for r in 0..n {
            for o in 0..fout {
                let want: f64 = (0..fin)
                    .map(|i| x[r * fin + i] as f64 * w[o * fin + i] as f64)
                    .sum();
                let got = y[r * fout + o] as f64;
                assert!(
                    (got - want).abs() <= bound,
                    "{n}×{fin}→{fout} [{r},{o}]: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn evaluation_after_training_uses_the_updated_weights() {
    // The evaluation path caches packed weights; after SGD steps it must see the new ones.
    for (arch, input) in [
        (Arch::Lenet300100, spec(1, 7, 5)),
        (Arch::Resnet20, spec(3, 9, 9)),
    ] {
        let net = Net::new(arch, input, 5, DType::F32).unwrap();
        let n = 6;
        let x: Vec<f32> = uniform(n * input.channels * input.height * input.width, 12);
        let y = labels(n, 13);
        let mut fast = FastNet::<f32>::from_net(&net, SgdConfig::default()).unwrap();
        let before = fast.forward(&x, n, Mode::Eval).unwrap().to_vec();
        for _ in 0..3 {
            fast.train_step(&x, &y, 0.1).unwrap();
        }
        let after = fast.forward(&x, n, Mode::Eval).unwrap().to_vec();
        let mut trained = Net::new(arch, input, 5, DType::F32).unwrap();
        fast.write_back(&mut trained).unwrap();
        let mut fresh = FastNet::<f32>::from_net(&trained, SgdConfig::default()).unwrap();
        let want = fresh.forward(&x, n, Mode::Eval).unwrap().to_vec();
        assert_eq!(
            after, want,
            "{arch}: evaluation after training used stale weights"
        );
        assert_ne!(before, after, "{arch}: training changed nothing");
    }
}

/// L(θ) of the f64 engine in training mode.
fn loss64(net: &Net, x: &[f64], y: &[u32]) -> f64 {
    let mut f = FastNet::<f64>::from_net(net, SgdConfig::default()).unwrap();
    f.forward(x, y.len(), Mode::Train).unwrap();
    f.loss(y).unwrap().loss
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let models = [
        (Arch::Lenet300100, spec(1, 5, 3)),
        (Arch::Lenet5, spec(1, 12, 13)),
        (Arch::Conv2, spec(2, 5, 7)),
        (Arch::Resnet20, spec(3, 7, 7)),
    ];
    for (arch, input) in models {
        let net32 = Net::new(arch, input, 21, DType::F32).unwrap();
        let mut net = net32.to_dtype(DType::F64).unwrap();
        // γ away from 1 and β away from 0 so their gradients are exercised.
        for p in &net.params {
            if !p.prunable() && p.name.contains("bn") {
                let t = p.var.as_tensor();
                let v: Vec<f64> = uniform(t.elem_count(), p.name.len() as u64);
                let shift = if p.name.ends_with("weight") { 1.5 } else { 0.0 };
                let v: Vec<f64> = v.iter().map(|a| a * 0.5 + shift).collect();
                p.var
                    .set(&Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let n = 3;
        let x: Vec<f64> = uniform(n * input.channels * input.height * input.width, 31);
        let y = labels(n, 32);
        let mut fast = FastNet::<f64>::from_net(&net, SgdConfig::default()).unwrap();
        fast.forward(&x, n, Mode::Train).unwrap();
        fast.backward(&y).unwrap();
        let grads = fast.gradients();
        let h = 1e-6;
        let mut checked = 0;
        for pi in 0..net.params.len() {
            let t = net.params[pi].var.as_tensor().copy().unwrap();
            let base = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let step = (base.len() / 6).max(1);
            for i in (0..base.len()).step_by(step) {
                let eval = |d: f64, net: &mut Net| {
                    let mut v = base.clone();
                    v[i] += d;
                    net.params[pi]
                        .var
                        .set(&Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss64(net, &x, &y)
                };
                let fd = (eval(h, &mut net) - eval(-h, &mut net)) / (2.0 * h);
                net.params[pi].var.set(&t.copy().unwrap()).unwrap();
                let g = grads[pi][i];
                assert!(
                    (fd - g).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{arch} {} [{i}]: engine {g} vs finite difference {fd}",
                    net.params[pi].name
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "{arch}");
    }
}

fn candle_conv(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Tensor {
    layers::conv2d_reference(x, w, None, stride, pad).unwrap()
}

fn nchw_to_nhwc(v: &[f64], n: usize, c: usize, hw: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                out[(i * hw + p) * c + ch] = v[(i * c + ch) * hw + p];
            }
        }
    }
    out
}

#[test]
fn conv_kernel_matches_candle_for_every_geometry() {
    // (n, h, w, cin, cout, k, stride, pad): odd sizes, stride 2, padding 0/1, 1×1 (the plain
    // GEMM path at stride 1), and more rows than one im2col tile.
    let cases = [
        (
            3usize, 7usize, 5usize, 3usize, 4usize, 3usize, 1usize, 1usize,
        ),
        (2, 7, 7, 2, 5, 3, 2, 1),
        (2, 8, 6, 3, 2, 3, 2, 0),
        (3, 5, 5, 4, 3, 3, 1, 0),
        (2, 6, 5, 3, 4, 1, 1, 0),
        (2, 7, 7, 3, 4, 1, 2, 0),
        (5, 30, 30, 8, 6, 3, 1, 1),
        // More than 64 output channels, 3×3, stride 1, padding 1: the Winograd kernels.
        (2, 5, 7, 3, 66, 3, 1, 1),
    ];
    let grid: Vec<_> = [1usize, 2, 3]
        .iter()
        .flat_map(|&t| cases.iter().map(move |&c| (t, c)))
        .collect();
    cases::each(grid, |&(threads, (n, h, w, cin, cout, k, stride, pad))| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let g = ConvGeom::new(n, h, w, cin, cout, k, stride, pad).unwrap();
        let x: Vec<f64> = uniform(n * cin * h * w, 40);
        let wt: Vec<f64> = uniform(cout * cin * k * k, 41);
        let xv =
            Var::from_tensor(&Tensor::from_vec(x.clone(), (n, cin, h, w), &Device::Cpu).unwrap())
                .unwrap();
        let wv = Var::from_tensor(
            &Tensor::from_vec(wt.clone(), (cout, cin, k, k), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let y = candle_conv(xv.as_tensor(), wv.as_tensor(), stride, pad);
        let r: Vec<f64> = uniform(y.elem_count(), 42);
        let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
        let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let y_ref = nchw_to_nhwc(
            &y.flatten_all().unwrap().to_vec1().unwrap(),
            n,
            cout,
            g.ohw(),
        );
        let dx_ref = nchw_to_nhwc(
            &grads
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
            n,
            cin,
            h * w,
        );
        let dw_ref: Vec<f64> = grads
            .get(wv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Engine layouts: x NHWC, W (o, ky, kx, ci), dy NHWC.
        let xn = nchw_to_nhwc(&x, n, cin, h * w);
        let mut wn = vec![0.0; wt.len()];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..k * k {
                    wn[(o * k * k + t) * cin + ci] = wt[(o * cin + ci) * k * k + t];
                }
            }
        }
        let dy = nchw_to_nhwc(&r, n, cout, g.ohw());
        let (mut yo, mut dx, mut dw) = (
            vec![0.0; g.out_len()],
            vec![0.0; g.in_len()],
            vec![0.0; wt.len()],
        );
        pool.install(|| {
            let mut scratch = vec![Vec::new(); threads];
            let mut accs = vec![GroupAcc::default(); threads];
            let mut parts = vec![Vec::new(); threads];
            let mut pack = Vec::new();
            g.forward(
                &xn,
                &wn,
                &mut yo,
                &mut pack,
                &mut scratch,
                &mut accs,
                &|_, _, _| {},
            );
            g.backward(
                &xn,
                &wn,
                &dy,
                &mut dw,
                Some(&mut dx),
                &mut pack,
                &mut scratch,
                &mut parts,
            );
        });
        let what = format!("k{k} s{stride} p{pad} {h}×{w} threads {threads}");
        let err =
            |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err(&yo, &y_ref) < 1e-12, "forward {what}");
        assert!(err(&dx, &dx_ref) < 1e-12, "dx {what}");
        let mut dw_ref_n = vec![0.0; wt.len()];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..k * k {
                    dw_ref_n[(o * k * k + t) * cin + ci] = dw_ref[(o * cin + ci) * k * k + t];
                }
            }
        }
        assert!(err(&dw, &dw_ref_n) < 1e-11, "dW {what}");
    });
}

/// One conv forward + backward through `ConvGeom` (output, input gradient, weight gradient).
fn conv_pass<T: sparsa::nn::fast::kernels::Real>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    dy: &[T],
    threads: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (mut y, mut dx, mut dw) = (
        vec![T::zero(); g.out_len()],
        vec![T::zero(); g.in_len()],
        vec![T::zero(); w.len()],
    );
    pool.install(|| {
        let mut scratch = vec![Vec::new(); threads];
        let mut accs = vec![GroupAcc::default(); threads];
        let mut parts = vec![Vec::new(); threads];
        let mut pack = Vec::new();
        g.forward(
            x,
            w,
            &mut y,
            &mut pack,
            &mut scratch,
            &mut accs,
            &|_, _, _| {},
        );
        g.backward(
            x,
            w,
            dy,
            &mut dw,
            Some(&mut dx),
            &mut pack,
            &mut scratch,
            &mut parts,
        );
    });
    (y, dx, dw)
}

/// A conv pass's y, dx and dW (f32) against their f64 oracle: an output that is a sum of
/// `terms` products of values in [-1, 1] (k²·cin for y, k²·cout for dx, at most n·h·w for dW)
/// carries an f32 rounding error of at most about terms · 2⁻²⁴ · Σ|products| ≤ terms² · 6e-8.
/// Returns the results by name, for further checks.
fn assert_conv_within_f32_rounding<'a>(
    what: &str,
    g: &ConvGeom,
    got: [&'a [f32]; 3],
    want: [&[f64]; 3],
) -> [(&'static str, &'a [f32]); 3] {
    let kk = g.k * g.k;
    let terms = [kk * g.cin, kk * g.cout, g.n * g.h * g.w];
    let names = ["y", "dx", "dW"];
    for i in 0..3 {
        let bound = (terms[i] * terms[i]) as f64 * 6e-8;
        let worst = got[i]
            .iter()
            .zip(want[i])
            .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q).abs()));
        assert!(
            worst <= bound,
            "{} {what}: error {worst} > {bound}",
            names[i]
        );
    }
    [(names[0], got[0]), (names[1], got[1]), (names[2], got[2])]
}

/// The oracle of the f32 convolution kernels: the im2col path in f64 on the same (f32-valued)
/// inputs, one thread.
fn im2col_f64(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let g64 = ConvGeom {
        direct: false,
        ..*g
    };
    conv_pass(&g64, &up(x), &up(w), &up(dy), 1)
}

#[test]
fn direct_conv_kernels_match_the_im2col_path() {
    if !sparsa::nn::fast::direct::available() {
        eprintln!("no AVX-512F or AVX2: the direct kernels never run here (im2col is used)");
        return;
    }
    // (n, h, w, cin, cout, k, pad): one and two channel vectors, pixel and channel tails (w
    // not a multiple of the 16/8-pixel blocks, cin not a multiple of the 16/8-channel blocks),
    // channel counts below and between multiples of 16 (masked lanes, LeNet-5's 1→6 and 6→16
    // 5×5 layers), padding 0, 1 and 2, the widest direct layer.
    let cases = [
        (3, 7, 9, 3, 16, 3, 1),
        (2, 8, 19, 16, 16, 3, 1),
        (2, 5, 11, 32, 32, 3, 1),
        (3, 6, 6, 48, 48, 3, 1),
        (2, 9, 4, 64, 64, 3, 1),
        (2, 5, 7, 20, 32, 3, 1),
        (1, 3, 3, 16, 48, 3, 1),
        (2, 12, 10, 1, 6, 5, 2),
        (2, 9, 11, 6, 16, 5, 0),
        (2, 7, 8, 5, 7, 3, 0),
        (1, 6, 6, 40, 20, 5, 1),
    ];
    let grid: Vec<_> = [1usize, 2, 3]
        .iter()
        .flat_map(|&t| cases.iter().map(move |&c| (t, c)))
        .collect();
    cases::each(grid, |&(threads, (n, h, w, cin, cout, k, pad))| {
        let g = ConvGeom::new(n, h, w, cin, cout, k, 1, pad).unwrap();
        assert!(sparsa::nn::fast::direct::forward_applies::<f32>(&g));
        let what = format!("{n}×{h}×{w}×{cin}→{cout} k{k} p{pad}, threads {threads}");
        assert_conv_pass_matches_im2col(&g, 50, threads, &what);
    });
}

/// The direct kernels on every instruction set this CPU runs (AVX-512F and AVX2 on an AVX-512
/// machine) against the widest one, bit for bit: both sum in the same order. (The tests above
/// check the widest against im2col and the portable loop; this carries that to the others.)
#[test]
fn direct_kernels_are_equal_on_every_instruction_set() {
    use sparsa::nn::fast::direct::{self, Isa, Window};
    let isas = Isa::all();
    if isas.len() < 2 {
        eprintln!("this CPU runs {isas:?}: no second instruction set to compare");
        return;
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // (oh, ow, k, cin, cout): pixel and channel tails, one to four 16-channel blocks, 5×5.
    for &(oh, ow, k, cin, cout) in &[
        (5usize, 13usize, 3usize, 3usize, 16usize),
        (4, 7, 3, 16, 32),
        (3, 9, 3, 20, 7),
        (6, 6, 5, 6, 16),
        (2, 11, 3, 64, 64),
        (3, 5, 3, 40, 48),
    ] {
        let win = Window {
            oh,
            ow,
            k,
            cin,
            cout,
        };
        let xp: Vec<f32> = uniform((oh + k - 1) * (ow + k - 1) * cin, 80);
        let w: Vec<f32> = uniform(cout * k * k * cin, 81);
        let dy: Vec<f32> = uniform(oh * ow * cout, 82);
        let mut wt = Vec::new();
        direct::pack_forward(&w, cout, cin, k, &mut wt);
        let seed: Vec<f32> = uniform(wt.len(), 83);
        let run = |isa: Isa| {
            // Sentinels past the outputs must survive (tail stores are masked).
            let mut y = vec![f32::NAN; oh * ow * cout + 16];
            direct::conv_image_on(isa, win, &xp, &wt, &mut y);
            let mut acc = seed.clone();
            direct::weight_grad_image_on(isa, win, &xp, &dy, &mut acc);
            (y, acc)
        };
        let (y0, a0) = run(isas[0]);
        assert!(y0[oh * ow * cout..].iter().all(|v| v.is_nan()));
        assert!(y0[..oh * ow * cout].iter().all(|v| v.is_finite()));
        for &isa in &isas[1..] {
            let (y, a) = run(isa);
            let what = format!("{isa:?} {oh}×{ow} k{k} {cin}→{cout}");
            assert_eq!(bits(&y), bits(&y0), "{what}: forward");
            assert_eq!(bits(&a), bits(&a0), "{what}: weight gradient");
        }
    }
    for &(n, fin, fout) in &[(13usize, 37usize, 300usize), (128, 784, 300), (5, 300, 10)] {
        let x: Vec<f32> = uniform(n * fin, 84);
        let w: Vec<f32> = uniform(fout * fin, 85);
        let mut panel = Vec::new();
        direct::pack_linear(&w, fout, fin, &mut panel);
        let run = |isa: Isa| {
            let mut y = vec![f32::NAN; n * fout + 16];
            direct::linear_rows_on(isa, &x, n, fin, &panel, fout, &mut Vec::new(), &mut y);
            y
        };
        let y0 = run(isas[0]);
        assert!(y0[n * fout..].iter().all(|v| v.is_nan()));
        for &isa in &isas[1..] {
            assert_eq!(
                bits(&run(isa)),
                bits(&y0),
                "{isa:?} linear {n}×{fin}→{fout}"
            );
        }
    }
    for &(h, w, c, k) in &[
        (7usize, 9usize, 20usize, 2usize),
        (9, 7, 6, 3),
        (4, 4, 64, 2),
    ] {
        let mut x: Vec<f32> = uniform::<f32>(h * w * c, 86)
            .iter()
            .map(|v| (v * 3.0).round())
            .collect();
        for i in (0..x.len()).step_by(37) {
            x[i] = f32::NAN;
        }
        let len = (h / k) * (w / k) * c;
        let run = |isa: Isa| {
            let (mut o, mut a) = (vec![0f32; len], vec![0u8; len]);
            direct::max_pool_image_on(isa, &x, h, w, c, k, &mut o, &mut a);
            (bits(&o), a)
        };
        let r0 = run(isas[0]);
        for &isa in &isas[1..] {
            assert_eq!(run(isa), r0, "{isa:?} max pool {h}×{w}×{c} k{k}");
        }
    }
}

/// One pass of the engine's convolution (y, dx, dW) on random data (seeds `seed`, `seed + 1`,
/// `seed + 2`) against the f64 im2col path, within f32 rounding, none of the three all zero.
fn assert_conv_pass_matches_im2col(g: &ConvGeom, seed: u64, threads: usize, what: &str) {
    let x: Vec<f32> = uniform(g.in_len(), seed);
    let wt: Vec<f32> = uniform(g.cout * g.k * g.k * g.cin, seed + 1);
    let dy: Vec<f32> = uniform(g.out_len(), seed + 2);
    let (y, dx, dw) = conv_pass(g, &x, &wt, &dy, threads);
    let (y64, dx64, dw64) = im2col_f64(g, &x, &wt, &dy);
    let results = assert_conv_within_f32_rounding(what, g, [&y, &dx, &dw], [&y64, &dx64, &dw64]);
    for (name, a) in results {
        assert!(a.iter().any(|&v| v != 0.0), "{name} {what}: all zero");
    }
}

#[test]
fn winograd_conv_kernels_match_the_im2col_path() {
    use sparsa::nn::fast::winograd;
    // (n, h, w, cin, cout): odd map sizes (a last row and column of half-empty tiles), 1×1 and
    // 2×2 maps (one tile per image, mostly padding), channel counts off the 16-lane chunks, an
    // input gradient with few output channels (cin 3), and enough images for several blocks
    // per group at one to three threads (100 images of 4 tiles, 32 per block).
    let cases = [
        (3usize, 7usize, 9usize, 3usize, 65usize),
        (2, 1, 1, 17, 66),
        (2, 2, 2, 70, 80),
        (3, 6, 5, 20, 72),
        (100, 4, 3, 128, 72),
    ];
    let grid: Vec<_> = [1usize, 2, 3]
        .iter()
        .flat_map(|&t| cases.iter().map(move |&c| (t, c)))
        .collect();
    cases::each(grid, |&(threads, (n, h, w, cin, cout))| {
        let g = ConvGeom::new(n, h, w, cin, cout, 3, 1, 1).unwrap();
        assert!(winograd::applies(&g));
        let what = format!("{n}×{h}×{w}×{cin}→{cout}, threads {threads}");
        assert_conv_pass_matches_im2col(&g, 53, threads, &what);
    });
}

#[test]
fn sparse_conv_kernels_match_the_im2col_path() {
    use sparsa::nn::fast::sparse_conv::{self, SparseConv};
    if !sparsa::nn::fast::sparse_conv::available() {
        eprintln!("no AVX-512F or AVX2: the sparse convolution never runs here");
        return;
    }
    // (n, h, w, cin, cout, k, pad): 1×1; 3×3 with padding 0, 1 and 2 (output wider than the
    // input); 5×5; rows narrower and wider than a vector (the thrown-away columns and the tail
    // of the 8-vector blocks); channel counts past 64 and not multiples of 16 (the transposes'
    // masked edges); one image and more images than groups; batches that fill several sets of
    // planes of images side by side, with images left over for the one-image planes at every
    // thread count (4×4 and 2×2 maps: 8 and 4 images a set; 7×9 with padding 0 and 6×6 with
    // padding 2, 7 and 8: the weight gradient's own output planes, not the shared ones).
    let cases = [
        (19usize, 4usize, 4usize, 8usize, 16usize, 3usize, 1usize),
        (21, 2, 2, 24, 8, 3, 1),
        (23, 7, 9, 5, 12, 3, 0),
        (25, 6, 6, 2, 7, 3, 2),
        (13, 6, 5, 6, 16, 5, 2),
        (3, 7, 9, 3, 16, 3, 1),
        (2, 14, 14, 64, 80, 3, 1),
        (2, 28, 28, 17, 5, 3, 1),
        (1, 5, 11, 32, 33, 3, 0),
        (4, 6, 6, 1, 7, 3, 2),
        (2, 12, 10, 6, 16, 5, 2),
        (2, 9, 11, 6, 3, 5, 0),
        (3, 4, 5, 40, 24, 1, 0),
        (1, 33, 3, 2, 2, 3, 1),
        (2, 6, 5, 128, 16, 3, 1),
    ];
    let grid: Vec<_> = [1usize, 3]
        .iter()
        .flat_map(|&t| {
            cases.iter().flat_map(move |&c| {
                [0.0, 0.05, 0.3, 1.0]
                    .into_iter()
                    .enumerate()
                    .map(move |d| (t, c, d))
            })
        })
        .collect();
    cases::each(
        grid,
        |&(threads, (n, h, w, cin, cout, k, pad), (di, density))| {
            let g = ConvGeom::new(n, h, w, cin, cout, k, 1, pad).unwrap();
            assert!(sparse_conv::applies::<f32>(&g));
            let what = format!(
                "{n}×{h}×{w}×{cin}→{cout} k{k} p{pad} density {density}, threads {threads}"
            );
            let x: Vec<f32> = uniform(g.in_len(), 60);
            let mut rng = ChaCha8Rng::seed_from_u64(61 + di as u64);
            let mask: Vec<f32> = (0..cout * k * k * cin)
                .map(|_| rng.random_bool(density) as u8 as f32)
                .collect();
            let wt: Vec<f32> = uniform::<f32>(mask.len(), 62)
                .iter()
                .zip(&mask)
                .map(|(a, m)| a * m)
                .collect();
            let dy: Vec<f32> = uniform(g.out_len(), 63);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut sc = SparseConv::new(&g, &mask);
            assert_eq!(sc.nnz(), mask.iter().filter(|&&m| m != 0.0).count());
            assert_eq!(sc.images_per_planes(), sparse_conv::images_per_planes(&g));
            let (mut y, mut dx, mut dw) = (
                vec![f32::NAN; g.out_len()],
                vec![f32::NAN; g.in_len()],
                vec![f32::NAN; wt.len()],
            );
            pool.install(|| {
                let mut accs = vec![GroupAcc::default(); threads];
                // The epilogue sees each image's output once, in NHWC, before the next image.
                let seen = std::sync::Mutex::new(Vec::new());
                sc.forward(&g, &x, &wt, &mut y, &mut accs, &|_, r0, img| {
                    assert_eq!(img.len(), g.ohw() * cout);
                    seen.lock().unwrap().push(r0);
                });
                let mut seen = seen.into_inner().unwrap();
                seen.sort();
                assert_eq!(seen, (0..n).map(|i| i * g.ohw()).collect::<Vec<_>>());
                sc.backward(&g, &x, &wt, &dy, &mut dw, Some(&mut dx), threads);
            });
            let (y64, dx64, dw64) = im2col_f64(&g, &x, &wt, &dy);
            // The dense gradient off the support is not computed: 0 there.
            let dw64: Vec<f64> = dw64.iter().zip(&mask).map(|(d, m)| d * *m as f64).collect();
            let results =
                assert_conv_within_f32_rounding(&what, &g, [&y, &dx, &dw], [&y64, &dx64, &dw64]);
            for (name, a) in results {
                if density > 0.2 {
                    assert!(a.iter().any(|&v| v != 0.0), "{name} {what}: all zero");
                }
            }
            for (i, &m) in mask.iter().enumerate() {
                if m == 0.0 {
                    assert_eq!(dw[i], 0.0, "{what}: dW[{i}] off the support");
                }
            }
            // Evaluating again (buffers reused) gives the same output bit for bit, and the weight
            // gradient without the input gradient is the same.
            let (mut y2, mut dw2) = (vec![0f32; g.out_len()], vec![f32::NAN; wt.len()]);
            pool.install(|| {
                let mut accs = vec![GroupAcc::default(); threads];
                sc.forward(&g, &x, &wt, &mut y2, &mut accs, &|_, _, _| {});
                sc.backward(&g, &x, &wt, &dy, &mut dw2, None, threads);
            });
            assert!(
                y2.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: rerun"
            );
            assert!(
                dw2.iter().zip(&dw).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: dW alone"
            );
            // Other data and one image more, through the same buffers: against the oracle again
            // (stale values left in a border would show here).
            let g1 = ConvGeom { n: n + 1, ..g };
            let x1: Vec<f32> = uniform(g1.in_len(), 64);
            let dy1: Vec<f32> = uniform(g1.out_len(), 65);
            let (mut y1, mut dx1, mut dw1) = (
                vec![f32::NAN; g1.out_len()],
                vec![f32::NAN; g1.in_len()],
                vec![f32::NAN; wt.len()],
            );
            pool.install(|| {
                let mut accs = vec![GroupAcc::default(); threads];
                sc.forward(&g1, &x1, &wt, &mut y1, &mut accs, &|_, _, _| {});
                sc.backward(&g1, &x1, &wt, &dy1, &mut dw1, Some(&mut dx1), threads);
            });
            let (y64, dx64, dw64) = im2col_f64(&g1, &x1, &wt, &dy1);
            let dw64: Vec<f64> = dw64.iter().zip(&mask).map(|(d, m)| d * *m as f64).collect();
            assert_conv_within_f32_rounding(
                &format!("{what}, second batch"),
                &g1,
                [&y1, &dx1, &dw1],
                [&y64, &dx64, &dw64],
            );
        },
    );
}

/// The vector max pooling (f32, AVX-512 or AVX2) against the portable loop, bit for bit: values on a coarse
/// grid (ties everywhere: the first maximum must win), a few NaNs (never chosen over the
/// window's first value, as `>` does), channel counts below, at and past a vector, odd sizes.
#[test]
fn max_pool_kernel_equals_the_portable_loop() {
    if !sparsa::nn::fast::direct::available() {
        eprintln!("no AVX-512F or AVX2: the portable loop is the only one");
        return;
    }
    let grid: Vec<(usize, usize, usize, usize)> = [1usize, 6, 16, 20, 64]
        .iter()
        .flat_map(|&c| {
            [(2usize, 7usize, 9usize), (3, 9, 7), (2, 4, 4)].map(|(k, h, w)| (c, k, h, w))
        })
        .collect();
    cases::each(grid, |&(c, k, h, w)| {
        let n = 3;
        let mut x: Vec<f32> = uniform::<f32>(n * h * w * c, 70)
            .iter()
            .map(|v| (v * 3.0).round())
            .collect();
        for i in (0..x.len()).step_by(37) {
            x[i] = f32::NAN;
        }
        let len = n * (h / k) * (w / k) * c;
        let (mut o1, mut a1) = (vec![0f32; len], vec![0u8; len]);
        let (mut o2, mut a2) = (vec![0f32; len], vec![0u8; len]);
        kernels::max_pool(&x, n, h, w, c, k, &mut o1, &mut a1);
        let (img_in, img_out) = (h * w * c, len / n);
        for i in 0..n {
            kernels::max_pool_image(
                &x[i * img_in..(i + 1) * img_in],
                h,
                w,
                c,
                k,
                &mut o2[i * img_out..(i + 1) * img_out],
                &mut a2[i * img_out..(i + 1) * img_out],
            );
        }
        assert_eq!(a1, a2, "c {c} k {k} {h}×{w}: arg");
        assert!(
            o1.iter().zip(&o2).all(|(p, q)| p.to_bits() == q.to_bits()),
            "c {c} k {k} {h}×{w}: values"
        );
        assert!(a1.iter().any(|&v| v > 0));
    });
}

/// Which convolutions the default threshold puts on the sparse kernels: density times the
/// positions the kernels compute per output (with images side by side: 1.14 on 28×28 maps,
/// 1.17 on 32×32, 1.5 on 4×4).
#[test]
fn sparse_conv_threshold_weighs_the_wasted_positions() {
    use sparsa::nn::fast::sparse_conv::{images_per_planes, waste};
    let g = |h: usize, k: usize, pad: usize| ConvGeom::new(1, h, h, 8, 8, k, 1, pad).unwrap();
    // Images side by side: each takes w + 2·pad columns of a row padded to whole vectors.
    for (geom, n, w) in [
        // Rows of at most 128 floats: 28×28 stays alone (4 images: 120 → 128, no better).
        (g(28, 3, 1), 1, 32.0 / 28.0),
        (g(32, 3, 1), 3, 112.0 / 96.0),
        (g(16, 3, 1), 7, 128.0 / 112.0),
        (g(14, 3, 1), 1, 16.0 / 14.0),
        (g(8, 3, 1), 8, 10.0 / 8.0),
        (g(4, 3, 1), 8, 1.5),
        (g(2, 3, 1), 4, 2.0),
        (g(14, 1, 0), 8, 1.0),
    ] {
        assert_eq!(images_per_planes(&geom), n, "{geom:?}");
        assert!(
            (waste(&geom) - w).abs() < 1e-12,
            "{geom:?}: {}",
            waste(&geom)
        );
    }
    if !sparsa::nn::fast::sparse_conv::available() {
        return;
    }
    // Conv-2 on 28×28: its second convolution (28×28, 64 → 64) is sparse at density 0.3
    // (0.34 < 0.45) and dense at 0.42 (0.48: the wasted positions decide), the first (one
    // input channel) likewise.
    for (density, sparse) in [(0.3, true), (0.42, false)] {
        let mut net = Net::new(Arch::Conv2, spec(1, 28, 28), 1, DType::F32).unwrap();
        random_masks(&mut net, density, 7);
        let fast = FastNet::<f32>::from_net(&net, SgdConfig::default()).unwrap();
        let d = fast.conv_densities();
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|&(_, s)| s == sparse), "{density}: {d:?}");
    }
}

#[test]
fn conv_kernels_name_what_each_layer_runs() {
    // Conv-4: conv1 (1 → 64) and conv2 (64 → 64) on the direct kernels (im2col without
    // AVX-512F), conv3 (64 → 128) and conv4 (128 → 128) on Winograd unless the switch is moved;
    // at density 0.3 on 28×28 inputs every layer goes sparse (0.3 × 1.14 wasted positions <
    // 0.45, where the sparse kernels run).
    let direct = sparsa::nn::fast::direct::available();
    let small = if direct { "direct" } else { "im2col" };
    let net = Net::new(Arch::Conv4, spec(1, 28, 28), 1, DType::F32).unwrap();
    let fast = FastNet::<f32>::from_net(&net, SgdConfig::default()).unwrap();
    assert_eq!(fast.conv_kernels(), [small, small, "winograd", "winograd"]);
    let fast = fast.with_winograd_above(usize::MAX);
    assert_eq!(fast.conv_kernels(), [small, small, "im2col", "im2col"]);
    let mut net = Net::new(Arch::Conv4, spec(1, 28, 28), 1, DType::F32).unwrap();
    random_masks(&mut net, 0.3, 8);
    let fast = FastNet::<f32>::from_net(&net, SgdConfig::default()).unwrap();
    if sparsa::nn::fast::sparse_conv::available() {
        assert_eq!(fast.conv_kernels(), ["sparse"; 4]);
    }
}

#[test]
fn pooling_kernels_match_candle() {
    let (n, h, w, c) = (2usize, 7usize, 5usize, 3usize);
    let x: Vec<f64> = uniform(n * c * h * w, 50);
    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu).unwrap())
        .unwrap();
    let y = layers::max_pool(xv.as_tensor(), 2).unwrap();
    let r: Vec<f64> = uniform(y.elem_count(), 51);
    let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
    let gx = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = nchw_to_nhwc(
        &gx.get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
        n,
        c,
        h * w,
    );
    let xn = nchw_to_nhwc(&x, n, c, h * w);
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![0.0; n * oh * ow * c];
    let mut arg = vec![0u8; out.len()];
    kernels::max_pool(&xn, n, h, w, c, 2, &mut out, &mut arg);
    assert_eq!(
        out,
        nchw_to_nhwc(&y.flatten_all().unwrap().to_vec1().unwrap(), n, c, oh * ow)
    );
    let mut dx = vec![1.0; xn.len()];
    kernels::max_pool_backward(
        &nchw_to_nhwc(&r, n, c, oh * ow),
        &arg,
        n,
        h,
        w,
        c,
        2,
        &mut dx,
    );
    assert_eq!(dx, gx);
    // Global average pooling.
    let g = layers::global_avg_pool(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut o = vec![0.0; n * c];
    kernels::gap(&xn, n, h * w, c, &mut o);
    assert!(o.iter().zip(&g).all(|(a, b)| (a - b).abs() < 1e-12));
}

/// Weights after `steps` training steps; `sparse` runs every masked convolution on the sparse
/// kernels (else none).
fn run_steps(
    arch: Arch,
    input: InputSpec,
    threads: usize,
    steps: usize,
    sparse: bool,
) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut net = Net::new(arch, input, 3, DType::F32).unwrap();
        random_masks(&mut net, 0.5, 4);
        let mut fast = FastNet::<f32>::from_net(&net, SgdConfig::default())
            .unwrap()
            .with_sparse_conv_threshold(if sparse { 1.0 } else { 0.0 });
        let n = 16;
        for s in 0..steps {
            let x: Vec<f32> = uniform(
                n * input.channels * input.height * input.width,
                100 + s as u64,
            );
            fast.train_step(&x, &labels(n, 200 + s as u64), 0.02)
                .unwrap();
        }
        fast.weights()
    })
}

#[test]
fn one_thread_runs_are_bit_identical_and_so_are_two_thread_runs() {
    for (arch, input) in [
        (Arch::Resnet20, spec(3, 12, 12)),
        (Arch::Conv4, spec(1, 12, 12)),
    ] {
        for sparse in [false, true] {
            assert!(
                run_steps(arch, input, 1, 3, sparse) == run_steps(arch, input, 1, 3, sparse),
                "{arch} 1 thread, sparse convolutions {sparse}"
            );
            assert!(
                run_steps(arch, input, 2, 3, sparse) == run_steps(arch, input, 2, 3, sparse),
                "{arch} 2 threads, sparse convolutions {sparse}"
            );
        }
    }
}

#[test]
fn masked_weights_stay_zero_through_100_steps() {
    let input = spec(1, 10, 10);
    let mut net = Net::new(Arch::Conv2, input, 1, DType::F32).unwrap();
    random_masks(&mut net, 0.3, 2);
    let before = net.state().unwrap();
    // Its convolutions on the sparse kernels (SGD over the support only), the linear layers
    // dense.
    let mut fast = FastNet::<f32>::from_net(&net, SgdConfig::default())
        .unwrap()
        .with_sparse_conv_threshold(1.0);
    // (Without AVX-512F or AVX2 the convolutions stay dense and the test checks the dense
    // path's masking.)
    let sparse_convs = if sparsa::nn::fast::sparse_conv::available() {
        2
    } else {
        0
    };
    assert_eq!(
        fast.conv_densities().iter().filter(|d| d.1).count(),
        sparse_convs
    );
    let n = 8;
    for s in 0..100u64 {
        let x: Vec<f32> = uniform(n * 100, 300 + s);
        fast.train_step(&x, &labels(n, 400 + s), 0.05).unwrap();
    }
    fast.write_back(&mut net).unwrap();
    for p in &net.params {
        let w = flat(p.var.as_tensor());
        let w0 = flat(&before[&p.name]);
        if let Some(m) = &p.mask {
            let m = flat(m);
            assert!(
                w.iter().zip(&m).all(|(w, m)| *m != 0.0 || *w == 0.0),
                "{}",
                p.name
            );
            let kept = m.iter().filter(|&&m| m != 0.0).count();
            let moved = (0..w.len())
                .filter(|&i| m[i] != 0.0 && w[i] != w0[i])
                .count();
            assert!(
                moved * 10 >= kept * 9,
                "{}: {moved}/{kept} kept weights moved",
                p.name
            );
        }
    }
}

/// Sparse kernels (linear: CSR of the mask × dense activations; convolution: [`sparse_conv`])
/// against the dense ones on the same masked weights, across densities from 0 to 100 %: logits,
/// loss, every gradient on the mask's support (the sparse path's weight gradient is 0 off it),
/// and the weights after five masked SGD steps with momentum (three for ResNet-20, below);
/// masked weights stay exactly 0. LeNet-5 has 5×5 convolutions with padding 2 and 0; ResNet-20
/// batch norm, residual joins and stride-2 convolutions (those stay dense).
///
/// [`sparse_conv`]: sparsa::nn::fast::sparse_conv
#[test]
fn sparse_kernels_equal_the_dense_ones() {
    let models = [
        (Arch::Lenet300100, spec(1, 7, 5)),
        (Arch::Conv2, spec(1, 9, 7)),
        (Arch::Lenet5, spec(1, 12, 12)),
        (Arch::Resnet20, spec(3, 8, 8)),
    ];
    let grid: Vec<_> = models
        .iter()
        .flat_map(|&m| {
            [0.0, 0.02, 0.1, 0.5, 1.0]
                .into_iter()
                .enumerate()
                .map(move |dd| (m, dd))
        })
        .collect();
    cases::each(grid, |&((arch, input), (d, density))| {
        let mut net = Net::new(arch, input, 5, DType::F32).unwrap();
        random_masks(&mut net, density, 40 + d as u64);
        let mk = |t: f64| {
            FastNet::<f32>::from_net(&net, SgdConfig::default())
                .unwrap()
                .with_sparse_threshold(t)
                .with_sparse_conv_threshold(t)
        };
        let (mut dense, mut sparse) = (mk(0.0), mk(2.0));
        assert_eq!(dense.sparse_layers(), 0);
        // ResNet-20 has one linear layer: without AVX-512F or AVX2 (no sparse convolutions)
        // it is the only sparse layer.
        let wide = sparsa::nn::fast::sparse_conv::available();
        let least = if wide || arch != Arch::Resnet20 { 2 } else { 1 };
        assert!(
            sparse.sparse_layers() >= least,
            "{arch}: sparse path not taken"
        );
        if wide && arch != Arch::Lenet300100 {
            let convs = sparse.conv_densities();
            assert!(
                convs.iter().any(|c| c.1),
                "{arch}: no sparse convolution {convs:?}"
            );
        }
        let n = 6;
        let sz = input.channels * input.height * input.width;
        // ResNet-20's batch norm over 6 images of 2×2 pixels in its last stage amplifies
        // rounding differences until a ReLU input near 0 flips sign (seen at 10 % density,
        // step 4: the loss still agreed to 1e-5, the first conv's gradient moved 0.7 % of its
        // scale at once), so its trajectories are compared for three steps.
        let steps = if arch == Arch::Resnet20 { 3 } else { 5 };
        for step in 0..steps {
            let x: Vec<f32> = uniform(n * sz, 900 + step);
            let y = labels(n, 950 + step);
            let ld = dense.forward(&x, n, Mode::Train).unwrap().to_vec();
            let ls = sparse.forward(&x, n, Mode::Train).unwrap().to_vec();
            for (a, b) in ld.iter().zip(&ls) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "{arch} {density}: logits {a} vs {b}"
                );
            }
            let (sd, ss) = (dense.backward(&y).unwrap(), sparse.backward(&y).unwrap());
            assert!(
                (sd.loss - ss.loss).abs() <= 1e-5 * (1.0 + sd.loss.abs()),
                "{arch} {density}: loss"
            );
            let masks = mask_vectors(&sparse);
            for (p, (gd, gs)) in dense.gradients().iter().zip(sparse.gradients()).enumerate() {
                // Relative to the parameter's largest gradient: the sums reach it through
                // different summation orders, and a few entries cancel to nearly 0.
                let scale = 1.0 + gd.iter().fold(0f32, |a, &v| a.max(v.abs()));
                for i in 0..gd.len() {
                    let on = masks[p].as_ref().is_none_or(|m| m[i] != 0.0);
                    // Off the support a sparse layer's gradient is 0 (the dense layers of
                    // both engines, convolutions here, still compute it there).
                    if !on && gs[i] == 0.0 {
                        continue;
                    }
                    assert!(
                        (gd[i] - gs[i]).abs() <= 1e-4 * scale,
                        "{arch} {density} step {step}: param {p} grad[{i}] {} vs {}",
                        gd[i],
                        gs[i]
                    );
                }
            }
            dense.sgd_step(0.05);
            sparse.sgd_step(0.05);
        }
        let masks = mask_vectors(&sparse);
        for (p, (wd, ws)) in dense.weights().iter().zip(sparse.weights()).enumerate() {
            for i in 0..wd.len() {
                assert!(
                    (wd[i] - ws[i]).abs() <= 1e-4 * (1.0 + wd[i].abs()),
                    "{arch} {density}: w"
                );
                if masks[p].as_ref().is_some_and(|m| m[i] == 0.0) {
                    assert_eq!(
                        ws[i], 0.0,
                        "{arch} {density}: masked weight {p}[{i}] moved (dense {})",
                        wd[i]
                    );
                }
            }
        }
    });
}

/// Each parameter's mask in the candle layout, as `weights()` and `gradients()` (None when
/// unmasked).
fn mask_vectors(f: &FastNet<f32>) -> Vec<Option<Vec<f32>>> {
    f.masks()
}

#[test]
fn transpose_is_exact_for_every_shape() {
    // Full 16 × 16 blocks, edges on either side, and shapes smaller than one block.
    for &(rows, cols) in &[
        (128usize, 784usize),
        (300, 128),
        (37, 53),
        (16, 16),
        (5, 3),
        (17, 33),
    ] {
        let a: Vec<f32> = uniform(rows * cols, 70);
        let mut out = Vec::new();
        kernels::transpose(&a, rows, cols, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    out[c * rows + r],
                    a[r * cols + c],
                    "{rows}×{cols} [{r},{c}]"
                );
            }
        }
    }
}
