//! Fast CPU kernels, each beside the reference it must match.
//!
//! - [`aligned`]: buffers that start on a cache line (the wide kernels' operands).
//! - [`bf16`]: the same product with bf16 operands and f32 accumulation (AMX or AVX512-BF16,
//!   chosen at run time), for `train.matmul = "bf16"`.
//! - [`matmul`]: the encoder's dense product C = A·Bᵀ (the one dense product of an SAE step),
//!   on the `gemm` crate with the exact call candle makes (bit-identical to candle's matmul,
//!   which is the reference), without candle's per-call output allocation.
//! - [`vector`]: dot / axpy / scaled-add kernels for the sparse decode and backward; lane-wise
//!   arithmetic in a fixed order, so results do not depend on the instruction set or the thread
//!   count.
//! - [`reduce`]: deterministic parallel reductions (fixed chunking, fixed combine order).
//! - [`peak`]: a fused-multiply-add throughput microbenchmark (the machine's measured peak).
//! - [`simd`]: the widest vector instructions the hand-written kernels use (the CPU's, capped
//!   by `SPARSA_SIMD`).

pub mod aligned;
pub mod bf16;
pub mod matmul;
pub mod peak;
pub mod reduce;
pub mod simd;
pub mod vector;

/// Run `f` on the contiguous f32 CPU data of `t` without copying it; `None` for any other
/// tensor (another dtype or device, or a strided view).
pub fn with_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    use candle_core::{CpuStorage, Storage};
    let (st, layout) = t.storage_and_layout();
    let (o0, o1) = layout.contiguous_offsets()?;
    match &*st {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[o0..o1])),
        _ => None,
    }
}
