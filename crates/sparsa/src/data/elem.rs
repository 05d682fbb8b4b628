//! [`Elem`]: the storage element types of activation data (f32, f16, bf16) and their codec.

use half::{bf16, f16};
use safetensors::Dtype;
use std::fmt;

/// Storage element type of a dataset; every one is converted to `f32` when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top 16 bits of an f32).
    BF16,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }

    /// The lower-case name used in manifests ("f32", "f16", "bf16").
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
        }
    }

    /// Parse a manifest dtype name (case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(Elem::F32),
            "f16" | "float16" => Some(Elem::F16),
            "bf16" | "bfloat16" => Some(Elem::BF16),
            _ => None,
        }
    }

    pub(crate) fn from_safetensors(d: Dtype) -> Option<Self> {
        match d {
            Dtype::F32 => Some(Elem::F32),
            Dtype::F16 => Some(Elem::F16),
            Dtype::BF16 => Some(Elem::BF16),
            _ => None,
        }
    }

    pub(crate) fn to_safetensors(self) -> Dtype {
        match self {
            Elem::F32 => Dtype::F32,
            Elem::F16 => Dtype::F16,
            Elem::BF16 => Dtype::BF16,
        }
    }

    /// Convert little-endian storage bytes to `f32` (`src.len() == out.len() × size`).
    pub fn decode(self, src: &[u8], out: &mut [f32]) {
        match self {
            Elem::F32 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Elem::F16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Elem::BF16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        }
    }

    /// Encode `f32` values as little-endian storage bytes (rounding to nearest for f16/bf16).
    pub fn encode(self, src: &[f32]) -> Vec<u8> {
        match self {
            Elem::F32 => src.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Elem::F16 => src
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
            Elem::BF16 => src
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        }
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
