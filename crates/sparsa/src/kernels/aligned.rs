//! Buffers that start on a cache line.
//!
//! `Vec` only guarantees its element's alignment, and the allocator returns large blocks
//! 16 bytes past a page boundary; an AVX-512 or AMX kernel loading or storing 64-byte rows from
//! such a buffer touches two cache lines per access. The bf16 product's packed operands and the
//! SAE step's B×F pre-activations live in [`Aligned`] buffers instead.

use std::marker::PhantomData;

/// Element types an [`Aligned`] buffer holds: plain numbers for which all-zero bytes are 0.
pub trait Plain: Copy + Default + Send + Sync + 'static + private::Sealed {}
impl Plain for u16 {}
impl Plain for f32 {}

mod private {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for f32 {}
}

/// One cache line of storage.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A growable buffer of `T` whose first element is 64-byte aligned. Dereferences to `[T]`.
pub struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Default for Aligned<T> {
    fn default() -> Self {
        Aligned {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }
}

impl<T: Plain> Clone for Aligned<T> {
    fn clone(&self) -> Self {
        Aligned {
            lines: self.lines.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned(len {})", self.len)
    }
}

impl<T: Plain + PartialEq> PartialEq for Aligned<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Plain> Aligned<T> {
    /// Set the length to `n`, keeping the capacity and the first min(n, old length) values.
    /// Values past the old length are unspecified (stale or 0): callers overwrite them.
    pub fn resize(&mut self, n: usize) {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .expect("Aligned::resize: length overflows the address space");
        self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
        self.len = n;
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values of T (resize), 64-byte aligned (≥ T's
        // alignment), and every byte pattern written is a valid T (Plain: u16, f32).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_start_on_a_line_and_keep_values() {
        let mut v = Aligned::<f32>::default();
        assert!(v.is_empty());
        for n in [1usize, 15, 16, 17, 1000, 3] {
            v.resize(n);
            assert_eq!(v.len(), n);
            assert_eq!(v.as_ptr() as usize % 64, 0, "{n}");
        }
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        v.resize(40);
        assert_eq!(&v[..3], &[0.0, 1.0, 2.0]);
        let mut h = Aligned::<u16>::default();
        h.resize(33);
        assert!(h.iter().all(|&x| x == 0), "fresh lines are zero");
        assert_eq!(h.as_ptr() as usize % 64, 0);
    }
}
