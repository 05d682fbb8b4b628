//! bf16 products with f32 accumulation: C (m×n) = A (m×k) · Bᵀ with B stored n×k row-major,
//! the SAE encoder product under `train.matmul = "bf16"` (A = X − b_dec, B = W_enc).
//!
//! Both operands are rounded to bf16 (round to nearest even; subnormals flushed to signed zero,
//! as the hardware conversion does) and packed once per product ([`Bf16Gemm`]):
//! - A row-major, k padded with zeros to a multiple of 32 and m to a multiple of 32;
//! - B in "VNNI" strips of 16 rows (features): for each pair of columns (2p, 2p + 1) one
//!   64-byte line holds the 16 features' two values side by side, n padded to a multiple of 32.
//!
//! Two kernels read the same packing, chosen at run time ([`Bf16Kernel`]):
//! - **AMX** (`tdpbf16ps`, Sapphire Rapids and later): a 32 × 32 output block is four 16 × 16
//!   f32 tiles; each 32-wide slice of k loads two A tiles (16 rows × 32 values, straight from
//!   the packed rows) and two B tiles (16 pairs × 16 features, one 1 KiB run of a strip).
//!   Measured on this project's machine: ≈ 2.9 TFLOP/s per core, 14× its f32 FMA peak.
//! - **AVX512-BF16** (`vdpbf16ps`): two 32 × 32 blocks side by side in register blocks of 6
//!   rows × 64 features (a lone last block: 8 rows × 32); per column pair one load of each
//!   strip's line and one broadcast of the row's pair per row. On Sapphire Rapids
//!   this instruction issues at half the rate of an f32 FMA (so it is slower than the f32
//!   product there, see [`crate::kernels::peak`]); on CPUs where it runs at full rate it halves
//!   the f32 time.
//!
//! The epilogue (+ bias, ReLU) is applied while the block is written to C, so the encoder's
//! pre-activation pass is fused. Products of two bf16 values are exact in f32; the
//! accumulation is f32. Every output element is one chain over k in a fixed order computed on
//! one thread, so the result does not depend on the thread count.
//!
//! `SPARSA_BF16_KERNEL=amx|avx512bf16|none` overrides the choice (`none` forces the f32
//! fallback, for testing machines without the instructions).

use super::aligned::Aligned;
use rayon::prelude::*;

/// Output block edge (rows and features) of both kernels.
const BLOCK: usize = 32;
/// Features per cache block of B (16 strips, 384 KiB of packed B at k = 768: stays in L2).
const FEATURE_BLOCK: usize = 256;
/// Width of the k slices (32 rows × KC of A: 16 KiB, kept in L1).
const KC: usize = 256;
/// Most rows one parallel task covers (its packed A, 384 KiB at k = 768, stays in L2 too).
const MAX_TASK_ROWS: usize = 256;

/// A bf16 product kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 dot products (`vdpbf16ps`).
    Avx512Bf16,
}

impl Bf16Kernel {
    /// Name as recorded in benchmarks and logs.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
        }
    }

    /// Whether this CPU (and, for AMX, the operating system) can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Bf16Kernel::Amx => amx_ready(),
            Bf16Kernel::Avx512Bf16 => avx512_bf16(),
        }
    }

    /// The kernel to use: `preference` (the value of `SPARSA_BF16_KERNEL`: `amx`,
    /// `avx512bf16`, `none`, or unset / `auto` for the fastest supported one). `Ok(None)` means
    /// no bf16 kernel runs here (f32 fallback); a preference this CPU cannot honour is an error.
    pub fn choose(preference: Option<&str>) -> Result<Option<Self>, String> {
        let want = match preference.map(str::trim) {
            None | Some("") | Some("auto") => {
                return Ok([Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
                    .into_iter()
                    .find(|k| k.supported()))
            }
            Some("none") => return Ok(None),
            Some("amx") => Bf16Kernel::Amx,
            Some("avx512bf16") => Bf16Kernel::Avx512Bf16,
            Some(other) => {
                return Err(format!(
                    "SPARSA_BF16_KERNEL={other:?}: expected amx, avx512bf16, none or auto"
                ))
            }
        };
        if want.supported() {
            Ok(Some(want))
        } else {
            Err(format!(
                "SPARSA_BF16_KERNEL asks for {} but this CPU or OS does not support it",
                want.name()
            ))
        }
    }

    /// [`Bf16Kernel::choose`] with the `SPARSA_BF16_KERNEL` environment variable.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::choose(std::env::var("SPARSA_BF16_KERNEL").ok().as_deref())
    }
}

fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMX-BF16 and AMX-TILE in CPUID, and the kernel's permission to use the tile state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux ≥ 5.16), asked once.
fn amx_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            if !avx512_bf16() {
                return false;
            }
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
            if !(amx_bf16 && amx_tile) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
            const XFEATURE_XTILEDATA: i64 = 18;
            let ret: i64;
            // SAFETY: the arch_prctl system call (158) only changes this process's permitted
            // extended state; it reads no user memory. rcx and r11 are clobbered by `syscall`.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack)
                );
            }
            ret == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

impl Bf16Kernel {
    /// FLOPs of one round of [`Bf16Kernel::peak_round`] (a product counts 2: multiply, add).
    pub fn flops_per_round(self) -> f64 {
        match self {
            // 4 tiles × 16 × 16 outputs × 32 products.
            Bf16Kernel::Amx => (4 * 16 * 16 * 32 * 2) as f64,
            // 16 instructions × 16 lanes × 2 products.
            Bf16Kernel::Avx512Bf16 => (16 * 16 * 2 * 2) as f64,
        }
    }

    /// Run `rounds` rounds of independent products on registers or tiles only (the
    /// instruction's peak, for [`crate::kernels::peak::measure_bf16`]). `None` when the CPU
    /// cannot run this kernel.
    pub fn peak_round(self, rounds: u64, seed: f32) -> Option<f32> {
        if !self.supported() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked just above that the CPU (and OS) support the kernel.
        unsafe {
            Some(match self {
                Bf16Kernel::Amx => amx::peak_loop(rounds) + seed,
                Bf16Kernel::Avx512Bf16 => dp::peak_loop(rounds, seed),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rounds, seed);
            None
        }
    }
}

/// f32 → bf16 bits: round to nearest even, NaN stays (quiet) NaN, subnormals become signed
/// zero (what `vcvtne2ps2bf16` does, so the scalar and vector packings agree).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16 value, as f32 (what the products see).
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Convert `src` into `dst[..src.len()]` and zero the rest of `dst`.
fn convert_row(src: &[f32], dst: &mut [u16], vector: bool) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is only set when the CPU has AVX512-BF16.
        unsafe { convert_row_avx512(src, dst) };
        return;
    }
    let _ = vector;
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = to_bf16(s));
    dst[src.len()..].fill(0);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut i = 0;
    while i + 32 <= n {
        let lo = _mm512_loadu_ps(src.as_ptr().add(i));
        let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut _, v);
        i += 32;
    }
    for j in i..n {
        dst[j] = to_bf16(src[j]);
    }
    dst[n..].fill(0);
}

/// `hi = bf16(x)` and `lo = bf16(x − hi)` of `src` into the first `src.len()` entries of `hi`
/// and `lo` (the rest zeroed); `vector` (AVX512-BF16 present) converts 32 at a time with the
/// same rounding as [`to_bf16`].
fn split_row(src: &[f32], hi: &mut [u16], lo: &mut [u16], vector: bool) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is only set when the CPU has AVX512-BF16; `hi` and `lo` are at least
        // as long as `src` (asserted inside).
        unsafe { split_row_avx512(src, hi, lo) };
        return;
    }
    let _ = vector;
    split_scalar(src, hi, lo);
    hi[src.len()..].fill(0);
    lo[src.len()..].fill(0);
}

/// The split of `src` into the first `src.len()` entries of `hi` and `lo`, one value at a time.
fn split_scalar(src: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    for ((h, l), &x) in hi.iter_mut().zip(lo.iter_mut()).zip(src) {
        let b = to_bf16(x);
        *h = b;
        *l = to_bf16(x - from_bf16(b));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn split_row_avx512(src: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    assert!(hi.len() >= n && lo.len() >= n);
    // bf16 bits (16 of them in a 256-bit half) back to f32: widen and shift into the top.
    let widen = |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
    let mut i = 0;
    while i + 32 <= n {
        let x0 = _mm512_loadu_ps(src.as_ptr().add(i));
        let x1 = _mm512_loadu_ps(src.as_ptr().add(i + 16));
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
        let h0 = widen(_mm512_castsi512_si256(h));
        let h1 = widen(_mm512_extracti64x4_epi64::<1>(h));
        let l: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_sub_ps(x1, h1),
            _mm512_sub_ps(x0, h0),
        ));
        _mm512_storeu_si512(hi.as_mut_ptr().add(i) as *mut _, h);
        _mm512_storeu_si512(lo.as_mut_ptr().add(i) as *mut _, l);
        i += 32;
    }
    split_scalar(&src[i..], &mut hi[i..], &mut lo[i..]);
    hi[n..].fill(0);
    lo[n..].fill(0);
}

/// A rounded and packed left operand A (m×k): row-major bf16, k padded to 32, m to 32.
#[derive(Debug, Default, Clone)]
pub struct PackedA {
    m: usize,
    k: usize,
    /// On whole cache lines: a buffer 16 bytes off made every AMX tile load touch two lines
    /// (the product at 768 × 24576 × 4096 took 0.20 s instead of 0.13 s).
    data: Aligned<u16>,
}

impl PackedA {
    /// Round and pack `a` (m×k row-major), reusing the buffer.
    ///
    /// # Panics
    /// If `a.len() != m·k`.
    pub fn pack(&mut self, a: &[f32], m: usize, k: usize) {
        assert_eq!(a.len(), m * k, "PackedA::pack: shape mismatch");
        let kp = k.div_ceil(BLOCK) * BLOCK;
        let mp = m.div_ceil(BLOCK) * BLOCK;
        self.m = m;
        self.k = k;
        self.data.resize(mp * kp);
        let vector = avx512_bf16();
        if k == 0 {
            return;
        }
        self.data
            .par_chunks_mut(kp)
            .enumerate()
            .for_each(|(r, dst)| {
                if r < m {
                    convert_row(&a[r * k..(r + 1) * k], dst, vector);
                } else {
                    dst.fill(0);
                }
            });
    }

    /// Pack `a` (m×k row-major) split into two bf16 halves, reusing the buffer: row r becomes
    /// `[hi(a_r), 0…, lo(a_r), 0…]` of 2·kp columns (kp = k rounded up to 32), with
    /// hi = bf16(x) and lo = bf16(x − hi), so a product with B packed as `[w, 0…, w, 0…]`
    /// computes (hi + lo)·w: x to a relative 2⁻¹⁶ instead of bf16's 2⁻⁸.
    ///
    /// # Panics
    /// If `a.len() != m·k`.
    pub fn pack_split(&mut self, a: &[f32], m: usize, k: usize) {
        assert_eq!(a.len(), m * k, "PackedA::pack_split: shape mismatch");
        let half = k.div_ceil(BLOCK) * BLOCK;
        let k2 = 2 * half;
        let mp = m.div_ceil(BLOCK) * BLOCK;
        self.m = m;
        self.k = k2;
        self.data.resize(mp * k2);
        if k2 == 0 {
            return; // k = 0: nothing to pack (and no rows to cut the buffer into)
        }
        let vector = avx512_bf16();
        self.data
            .par_chunks_mut(k2)
            .enumerate()
            .for_each(|(r, dst)| {
                if r >= m {
                    dst.fill(0);
                    return;
                }
                let (hi, lo) = dst.split_at_mut(half);
                split_row(&a[r * k..(r + 1) * k], hi, lo, vector);
            });
    }
}

/// A rounded and packed right operand B (n×k, used transposed): 16-row VNNI strips, k padded to
/// 32, n to 32. Pack constant weights once and reuse them for every product.
#[derive(Debug, Default, Clone)]
pub struct PackedB {
    n: usize,
    k: usize,
    /// On whole cache lines (see `PackedA`).
    data: Aligned<u16>,
}

impl PackedB {
    /// Round and pack `b` (n×k row-major), reusing the buffer.
    ///
    /// # Panics
    /// If `b.len() != n·k`.
    pub fn pack(&mut self, b: &[f32], n: usize, k: usize) {
        assert_eq!(b.len(), n * k, "PackedB::pack: shape mismatch");
        self.n = n;
        self.k = k;
        let kp = k.div_ceil(BLOCK) * BLOCK;
        let np = n.div_ceil(BLOCK) * BLOCK;
        // A strip: kp/2 lines of 16 features × 2 values.
        let strip = kp * 16;
        self.data.resize(np * kp);
        let vector = avx512_bf16();
        self.data.par_chunks_mut(strip).enumerate().for_each_init(
            || vec![0u16; 16 * kp],
            |rows, (s, dst)| {
                for (i, row) in rows.chunks_mut(kp).enumerate() {
                    let j = s * 16 + i;
                    if j < n && k > 0 {
                        convert_row(&b[j * k..(j + 1) * k], row, vector);
                    } else {
                        row.fill(0);
                    }
                }
                // Interleave: line p holds (row i, 2p), (row i, 2p + 1) for i in 0..16.
                for p in 0..kp / 2 {
                    let line = &mut dst[p * 32..p * 32 + 32];
                    for i in 0..16 {
                        line[2 * i] = rows[i * kp + 2 * p];
                        line[2 * i + 1] = rows[i * kp + 2 * p + 1];
                    }
                }
            },
        );
    }

    /// Rows of B (the product's columns).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// A supported bf16 kernel and one pair of reusable packed operands.
#[derive(Debug)]
pub struct Bf16Gemm {
    kernel: Bf16Kernel,
    a: PackedA,
    b: PackedB,
}

impl Bf16Gemm {
    /// Buffers for `kernel`; `None` when this CPU or OS cannot run it.
    pub fn new(kernel: Bf16Kernel) -> Option<Self> {
        kernel.supported().then(|| Bf16Gemm {
            kernel,
            a: PackedA::default(),
            b: PackedB::default(),
        })
    }

    pub fn kernel(&self) -> Bf16Kernel {
        self.kernel
    }

    /// Round and pack A (m×k row-major) into the owned buffer.
    pub fn pack_a(&mut self, a: &[f32], m: usize, k: usize) {
        self.a.pack(a, m, k);
    }

    /// Round and pack B (n×k row-major) into the owned buffer.
    pub fn pack_b(&mut self, b: &[f32], n: usize, k: usize) {
        self.b.pack(b, n, k);
    }

    /// C (m×n row-major, overwritten) = A·Bᵀ of the owned packed operands, then + `bias[j]`
    /// per column and ReLU when asked. Runs on the current rayon pool.
    ///
    /// # Panics
    /// As [`Bf16Gemm::product_of`].
    pub fn product(&self, c: &mut [f32], bias: Option<&[f32]>, relu: bool) {
        self.product_of(&self.a, &self.b, c, bias, relu);
    }

    /// C (m×n row-major, overwritten) = A·Bᵀ of packed operands held elsewhere (constant
    /// weights packed once), then + `bias[j]` and ReLU when asked.
    ///
    /// # Panics
    /// If `a` and `b` were packed with different k, `c.len() != m·n` or `bias` is not n long.
    pub fn product_of(
        &self,
        a: &PackedA,
        b: &PackedB,
        c: &mut [f32],
        bias: Option<&[f32]>,
        relu: bool,
    ) {
        let (m, n) = (a.m, b.n);
        let kp = a.k.div_ceil(BLOCK) * BLOCK;
        assert!(
            a.k == b.k
                && a.data.len() == m.div_ceil(BLOCK) * BLOCK * kp
                && b.data.len() == n.div_ceil(BLOCK) * BLOCK * kp
                && c.len() == m * n
                && bias.is_none_or(|v| v.len() == n),
            "Bf16Gemm::product: operands not packed for this shape"
        );
        if m == 0 || n == 0 {
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let task_rows =
            (m.div_ceil(threads * 4).div_ceil(BLOCK) * BLOCK).clamp(BLOCK, MAX_TASK_ROWS);
        let kernel = self.kernel;
        c.par_chunks_mut(task_rows * n)
            .enumerate()
            .for_each_init(Vec::new, |acc, (t, c_rows)| {
                let rows = (t * task_rows, c_rows.len() / n);
                // SAFETY: `Bf16Gemm::new` only accepts a supported kernel; the packed buffers
                // are sized as asserted above.
                unsafe { task(kernel, (a, b), c_rows, rows, acc, (bias, relu)) };
            });
    }
}

/// One task: rows `r0..r0 + rows` of C (`c_rows`), every column. `acc` holds the partial
/// sums between k slices; it is reused across the tasks of a thread and only grown (every
/// block is written before it is read: the first k slice starts from zero).
///
/// # Safety
/// `kernel` is supported; the packed operands have the sizes `Bf16Gemm::product_of` asserts.
unsafe fn task(
    kernel: Bf16Kernel,
    (pa, pb): (&PackedA, &PackedB),
    c_rows: &mut [f32],
    (r0, rows): (usize, usize),
    acc: &mut Vec<Block>,
    (bias, relu): (Option<&[f32]>, bool),
) {
    let n = pb.n;
    let kp = pa.k.div_ceil(BLOCK) * BLOCK;
    let np = n.div_ceil(BLOCK) * BLOCK;
    let strip = kp * 16;
    let row_blocks = rows.div_ceil(BLOCK);
    let blocks = row_blocks * FEATURE_BLOCK / BLOCK;
    if acc.len() < blocks {
        acc.resize_with(blocks, || Block([0f32; BLOCK * BLOCK]));
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Amx {
        amx::configure();
    }
    for f0 in (0..np).step_by(FEATURE_BLOCK) {
        let f1 = (f0 + FEATURE_BLOCK).min(np);
        // k in slices of KC: a block's 32 rows × KC of A stay in L1 while the block row
        // sweeps the feature block's strips; partial sums wait in `acc`.
        for k0 in (0..kp).step_by(KC) {
            let chunks = (kp - k0).min(KC) / BLOCK;
            for ib in 0..row_blocks {
                let a = pa.data.as_ptr().add((r0 + ib * BLOCK) * kp + k0);
                for j0 in (f0..f1).step_by(BLOCK) {
                    let b0 = pb.data.as_ptr().add(j0 / 16 * strip + k0 * 16);
                    let at = ib * (FEATURE_BLOCK / BLOCK) + (j0 - f0) / BLOCK;
                    let more = k0 > 0;
                    #[cfg(target_arch = "x86_64")]
                    match kernel {
                        Bf16Kernel::Amx => {
                            amx::block(a, kp, b0, strip, chunks, &mut acc[at].0, more)
                        }
                        // Two blocks side by side run as one (half the broadcasts per
                        // product); the second of a pair is done with the first, and a lone
                        // last block runs alone.
                        Bf16Kernel::Avx512Bf16 if (j0 - f0) % (2 * BLOCK) != 0 => {}
                        Bf16Kernel::Avx512Bf16 if j0 + 2 * BLOCK <= f1 => {
                            let (left, right) = acc.split_at_mut(at + 1);
                            let outs = [&mut left[at].0, &mut right[0].0];
                            dp::block_pair(a, kp, b0, strip, chunks * 16, outs, more)
                        }
                        Bf16Kernel::Avx512Bf16 => {
                            dp::block(a, kp, b0, strip, chunks * 16, &mut acc[at].0, more)
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("no bf16 kernel off x86-64 ({a:?} {b0:?} {out:?} {more})");
                }
            }
        }
        for ib in 0..row_blocks {
            let i0 = ib * BLOCK;
            for j0 in (f0..f1).step_by(BLOCK) {
                if j0 >= n {
                    break;
                }
                #[cfg(target_arch = "x86_64")]
                store_block(
                    &acc[ib * (FEATURE_BLOCK / BLOCK) + (j0 - f0) / BLOCK].0,
                    c_rows.as_mut_ptr().add(i0 * n + j0),
                    n,
                    (rows - i0).min(BLOCK),
                    (n - j0).min(BLOCK),
                    bias.map(|b| &b[j0..]),
                    relu,
                );
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Amx {
        amx::release();
    }
}

/// A 32 × 32 f32 output block as four 16 × 16 tiles, row-major each, in the order
/// (rows 0–15, cols 0–15), (0–15, 16–31), (16–31, 0–15), (16–31, 16–31).
#[repr(C, align(64))]
struct Block([f32; BLOCK * BLOCK]);

/// Write the valid `rows × cols` part of a block into C (row stride `ldc`), + bias, ReLU.
///
/// # Safety
/// The CPU has AVX-512F; `c` holds `rows` rows of `cols` values at stride `ldc`; `bias`, when
/// given, holds `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_block(
    block: &[f32; BLOCK * BLOCK],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    relu: bool,
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    for half in 0..2 {
        let c0 = half * 16;
        if c0 >= cols {
            break;
        }
        let w = (cols - c0).min(16);
        let mask: __mmask16 = if w == 16 { 0xffff } else { (1u16 << w) - 1 };
        let b = match bias {
            Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)),
            None => zero,
        };
        for i in 0..rows {
            let tile = (i / 16) * 2 + half;
            let mut v = _mm512_load_ps(block.as_ptr().add(tile * 256 + (i % 16) * 16));
            v = _mm512_add_ps(v, b);
            if relu {
                v = _mm512_max_ps(v, zero);
            }
            let dst = c.add(i * ldc + c0);
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/// The AMX kernel: tiles 0–3 accumulate the block, 4–5 hold A, 6–7 hold B.
#[cfg(target_arch = "x86_64")]
mod amx {
    /// The tile configuration: palette 1, eight 16-row × 64-byte tiles.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Load the tile configuration on this thread.
    ///
    /// # Safety
    /// AMX must be supported and permitted ([`super::Bf16Kernel::supported`]).
    pub unsafe fn configure() {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack));
    }

    /// Release the tile state on this thread.
    ///
    /// # Safety
    /// As [`configure`].
    pub unsafe fn release() {
        std::arch::asm!("tilerelease", options(nostack));
    }

    /// `iters` rounds of 4 independent `tdpbf16ps` on zeroed tiles (the instruction's
    /// throughput; nothing is read from memory). Returns a value that depends on the result.
    ///
    /// # Safety
    /// As [`configure`] (which this calls).
    pub unsafe fn peak_loop(iters: u64) -> f32 {
        configure();
        let mut out = [0f32; 256];
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            "tilestored [{out} + {s64}*1], tmm0",
            n = inout(reg) iters.max(1) => _,
            s64 = in(reg) 64usize,
            out = in(reg) out.as_mut_ptr(),
            options(nostack)
        );
        release();
        out[0]
    }

    /// The 32 × 32 block of rows `a` (row stride `lda` values) × strips `b`, `b + strip`,
    /// over `chunks` 32-wide slices of k, into `out` (four 16 × 16 tiles), added to what `out`
    /// holds when `more`.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `a` has 32 rows of `chunks·32` readable values at
    /// stride `lda`; each strip has `chunks·16` readable 64-byte lines.
    pub unsafe fn block(
        a: *const u16,
        lda: usize,
        b: *const u16,
        strip: usize,
        chunks: usize,
        out: &mut [f32; 1024],
        more: bool,
    ) {
        let a1 = a.add(16 * lda);
        let b1 = b.add(strip);
        if more {
            std::arch::asm!(
                "tileloadd tmm0, [{out} + {s64}*1]",
                "tileloadd tmm1, [{out} + {s64}*1 + 1024]",
                "tileloadd tmm2, [{out} + {s64}*1 + 2048]",
                "tileloadd tmm3, [{out} + {s64}*1 + 3072]",
                s64 = in(reg) 64usize,
                out = in(reg) out.as_ptr(),
                options(nostack)
            );
        } else {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
        }
        std::arch::asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{out} + {s64}*1], tmm0",
            "tilestored [{out} + {s64}*1 + 1024], tmm1",
            "tilestored [{out} + {s64}*1 + 2048], tmm2",
            "tilestored [{out} + {s64}*1 + 3072], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) chunks => _,
            lda = in(reg) lda * 2,
            s64 = in(reg) 64usize,
            out = in(reg) out.as_mut_ptr(),
            options(nostack)
        );
    }
}

/// The AVX512-BF16 kernel.
#[cfg(target_arch = "x86_64")]
mod dp {
    use std::arch::x86_64::*;

    /// Same contract as [`super::amx::block`], with `pairs` = k/2 (k padded to 32).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; the pointers are valid as for the AMX block.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block(
        a: *const u16,
        lda: usize,
        b: *const u16,
        strip: usize,
        pairs: usize,
        out: &mut [f32; 1024],
        more: bool,
    ) {
        for g in 0..4 {
            rows8(
                a.add(g * 8 * lda),
                lda,
                [b, b.add(strip)],
                pairs,
                out,
                g * 8,
                more,
            );
        }
    }

    /// Two 32 × 32 blocks side by side: strips `b`, `b + strip` into `outs[0]` and the next
    /// two into `outs[1]`, in register blocks of 6 rows × 4 strips (24 accumulators; per column
    /// pair 4 loads and 6 broadcasts for 24 products, against 2 and 8 for 16 in [`block`]),
    /// and 2 rows × 4 strips for the last two rows. Each output is the same chain over k as in
    /// [`block`], so the two agree bit for bit.
    ///
    /// # Safety
    /// As [`block`], with four strips readable.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block_pair(
        a: *const u16,
        lda: usize,
        b: *const u16,
        strip: usize,
        pairs: usize,
        outs: [&mut [f32; 1024]; 2],
        more: bool,
    ) {
        let [o0, o1] = outs;
        let b4 = [b, b.add(strip), b.add(2 * strip), b.add(3 * strip)];
        for g in 0..5 {
            rows_by4::<6>(
                a.add(g * 6 * lda),
                lda,
                b4,
                pairs,
                [&mut *o0, &mut *o1],
                g * 6,
                more,
            );
        }
        rows_by4::<2>(
            a.add(30 * lda),
            lda,
            b4,
            pairs,
            [&mut *o0, &mut *o1],
            30,
            more,
        );
    }

    /// `R` rows from `row0` × four strips, over `pairs` column pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows_by4<const R: usize>(
        a: *const u16,
        lda: usize,
        b: [*const u16; 4],
        pairs: usize,
        outs: [&mut [f32; 1024]; 2],
        row0: usize,
        more: bool,
    ) {
        let at = |i: usize, half: usize| ((i / 16) * 2 + half) * 256 + (i % 16) * 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        if more {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (s, v) in acc.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(outs[s / 2].as_ptr().add(at(row0 + r, s % 2)));
                }
            }
        }
        for p in 0..pairs {
            let w: [__m512bh; 4] = std::array::from_fn(|s| {
                std::mem::transmute(_mm512_loadu_si512(b[s].add(p * 32) as *const _))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * lda + 2 * p) as *const i32).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for s in 0..4 {
                    acc[s] = _mm512_dpbf16_ps(acc[s], x, w[s]);
                }
            }
        }
        let [o0, o1] = outs;
        for (r, acc) in acc.iter().enumerate() {
            for (s, v) in acc.iter().enumerate() {
                let o = if s < 2 { &mut *o0 } else { &mut *o1 };
                _mm512_storeu_ps(o.as_mut_ptr().add(at(row0 + r, s % 2)), *v);
            }
        }
    }

    /// `iters` rounds of 16 independent `vdpbf16ps` (the instruction's throughput).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn peak_loop(iters: u64, seed: f32) -> f32 {
        let mut acc = [_mm512_set1_ps(seed); 16];
        let one: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let tiny: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3380_3380));
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, one, tiny);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows8(
        a: *const u16,
        lda: usize,
        [b0, b1]: [*const u16; 2],
        pairs: usize,
        out: &mut [f32; 1024],
        row0: usize,
        more: bool,
    ) {
        let at = |i: usize, half: usize| ((i / 16) * 2 + half) * 256 + (i % 16) * 16;
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        if more {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (half, v) in acc.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(out.as_ptr().add(at(row0 + r, half)));
                }
            }
        }
        for p in 0..pairs {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32) as *const _));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * lda + 2 * p) as *const i32).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (half, v) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(at(row0 + r, half)), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn rounding_is_nearest_even_and_matches_half() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..10_000 {
            let x: f32 = rng.random_range(-1e6..1e6) * rng.random_range(0.0f32..1.0).powi(8);
            if x.abs() < f32::MIN_POSITIVE {
                continue; // `half` keeps subnormals; the hardware conversion flushes them
            }
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
        // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(to_bf16(-1e-40), 0x8000);
        assert_eq!(to_bf16(1e-40), 0);
    }

    #[test]
    fn vector_and_scalar_packing_agree() {
        if !avx512_bf16() {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let src: Vec<f32> = (0..77)
            .map(|i| match i % 11 {
                0 => 1e-40,
                1 => f32::NAN,
                _ => rng.random_range(-3.0..3.0),
            })
            .collect();
        let mut v = vec![7u16; 96];
        let mut s = vec![7u16; 96];
        convert_row(&src, &mut v, true);
        convert_row(&src, &mut s, false);
        for (i, (a, b)) in v.iter().zip(&s).enumerate() {
            let both_nan = from_bf16(*a).is_nan() && from_bf16(*b).is_nan();
            assert!(a == b || both_nan, "element {i}: {a:#x} vs {b:#x}");
        }
    }

    /// The split packing equals packing the explicit `[hi, 0…, lo, 0…]` rows, and hi + lo
    /// carries x to a relative 2⁻¹⁶.
    #[test]
    fn split_packing_equals_packing_the_explicit_halves() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut empty = PackedA::default();
        empty.pack_split(&[], 4, 0); // k = 0 packs nothing and does not panic
        assert_eq!((empty.m, empty.k, empty.data.len()), (4, 0, 0));
        for (m, k) in [(1usize, 1usize), (3, 31), (5, 32), (33, 70)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let half = k.div_ceil(BLOCK) * BLOCK;
            let mut explicit = vec![0f32; m * 2 * half];
            for (dst, row) in explicit.chunks_mut(2 * half).zip(a.chunks(k)) {
                for (t, &x) in row.iter().enumerate() {
                    let hi = round_bf16(x);
                    dst[t] = hi;
                    dst[half + t] = x - hi;
                    let lo = round_bf16(x - hi);
                    assert!((hi + lo - x).abs() <= x.abs() * 2f32.powi(-16), "{x}");
                }
            }
            let (mut want, mut got) = (PackedA::default(), PackedA::default());
            want.pack(&explicit, m, 2 * half);
            got.data.resize(96); // reused buffers are rewritten whole
            got.data.fill(9);
            got.pack_split(&a, m, k);
            assert_eq!((got.m, got.k), (want.m, want.k), "{m}x{k}");
            assert!(got.data == want.data, "{m}x{k}");
        }
    }

    /// The AVX512-BF16 split equals the scalar one bit for bit, special values included.
    #[test]
    fn vector_split_equals_the_scalar_split() {
        if !avx512_bf16() {
            eprintln!("no AVX512-BF16: the scalar split is the only one");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let mut a: Vec<f32> = (0..200)
            .map(|i| rng.random_range(-3.0f32..3.0) * 10f32.powi(i % 13 - 6))
            .collect();
        let special = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-41,
            0.0,
            -0.0,
            1.0 + f32::EPSILON,
            3.0e38,
        ];
        for (i, &v) in special.iter().enumerate() {
            a[7 * i + 3] = v;
        }
        for n in [0usize, 5, 32, 33, 200] {
            let (mut h1, mut l1) = (vec![7u16; n + 9], vec![7u16; n + 9]);
            let (mut h2, mut l2) = (vec![9u16; n + 9], vec![9u16; n + 9]);
            split_row(&a[..n], &mut h1, &mut l1, false);
            split_row(&a[..n], &mut h2, &mut l2, true);
            assert_eq!(h1, h2, "hi, n {n}");
            assert_eq!(l1, l2, "lo, n {n}");
        }
    }

    /// The packed buffers start on a cache line (the kernels' tile loads are aligned lines).
    #[test]
    fn packed_operands_are_line_aligned() {
        let (mut a, mut b) = (PackedA::default(), PackedB::default());
        for (m, k) in [(1usize, 3usize), (40, 70), (7, 768)] {
            a.pack(&vec![0.5; m * k], m, k);
            b.pack(&vec![0.5; m * k], m, k);
            assert_eq!(a.data.as_ptr() as usize % 64, 0, "A {m}x{k}");
            assert_eq!(b.data.as_ptr() as usize % 64, 0, "B {m}x{k}");
        }
    }

    /// Every kernel this machine runs, on shapes with tails in m, n and k: the result is within
    /// the f32 accumulation bound of the exact product of the rounded inputs, and within the
    /// bf16 input-rounding bound of the exact f32-input product.
    #[test]
    fn products_are_within_the_derived_bounds() {
        let kernels: Vec<Bf16Kernel> = [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
            .into_iter()
            .filter(|k| k.supported())
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(m, n, k) in &[
            (1usize, 1usize, 1usize),
            (7, 13, 5),
            (33, 17, 40),
            (64, 70, 100),
            (45, 300, 97),
            (96, 64, 768),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            for &kernel in &kernels {
                let mut g = Bf16Gemm::new(kernel).unwrap();
                g.pack_a(&a, m, k);
                g.pack_b(&b, n, k);
                let mut c = vec![f32::NAN; m * n];
                g.product(&mut c, None, false);
                // Unit roundoffs: bf16 (8-bit significand) and f32.
                let (u16_, u32_) = (2f64.powi(-8), 2f64.powi(-24));
                let chain = (k + 1) as f64 * u32_;
                let gamma = chain / (1.0 - chain);
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact_r, mut abs_r, mut exact, mut abs) = (0f64, 0f64, 0f64, 0f64);
                        for t in 0..k {
                            let (x, w) = (a[i * k + t], b[j * k + t]);
                            let pr = round_bf16(x) as f64 * round_bf16(w) as f64;
                            exact_r += pr;
                            abs_r += pr.abs();
                            exact += x as f64 * w as f64;
                            abs += (x as f64 * w as f64).abs();
                        }
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - exact_r).abs() <= gamma * abs_r,
                            "{} {m}x{n}x{k} at ({i},{j}): {got} vs rounded-input product {exact_r}",
                            kernel.name()
                        );
                        let bound = (2.0 * u16_ + u16_ * u16_) * abs + gamma * abs_r;
                        assert!(
                            (got - exact).abs() <= bound,
                            "{} {m}x{n}x{k} at ({i},{j}): {got} vs {exact}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn epilogue_and_thread_count_change_nothing_but_what_they_should() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let (m, n, k) = (150usize, 90usize, 70usize);
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5..0.5)).collect();
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
            let Some(mut g) = Bf16Gemm::new(kernel) else {
                continue;
            };
            g.pack_a(&a, m, k);
            g.pack_b(&b, n, k);
            let run = |threads: usize, bias: Option<&[f32]>, relu: bool| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = vec![f32::NAN; m * n];
                pool.install(|| g.product(&mut c, bias, relu));
                c
            };
            let plain = run(1, None, false);
            assert_eq!(plain, run(3, None, false), "{}", kernel.name());
            let fused = run(2, Some(&bias), true);
            let want: Vec<f32> = plain
                .iter()
                .enumerate()
                .map(|(ij, &v)| (v + bias[ij % n]).max(0.0))
                .collect();
            assert_eq!(fused, want, "{}", kernel.name());
        }
    }

    #[test]
    fn forced_choices_are_honoured_or_refused() {
        assert_eq!(Bf16Kernel::choose(Some("none")), Ok(None));
        assert!(Bf16Kernel::choose(Some("fp8")).is_err());
        let auto = Bf16Kernel::choose(None).unwrap();
        assert_eq!(auto.is_some(), avx512_bf16() || amx_ready());
        for (name, k) in [
            ("amx", Bf16Kernel::Amx),
            ("avx512bf16", Bf16Kernel::Avx512Bf16),
        ] {
            match Bf16Kernel::choose(Some(name)) {
                Ok(Some(got)) => assert!(got == k && k.supported()),
                Ok(None) => panic!("{name} chose nothing"),
                Err(_) => assert!(!k.supported()),
            }
        }
    }
}
