//! Activation datasets for SAE training: one door for safetensors files, `.npy` files and sharded
//! activation stores, streamed in batches through a bounded shuffle buffer.
//!
//! # Reading
//! Every file is memory-mapped and rows are converted to `f32` only when handed out, so a dataset
//! larger than RAM trains: resident memory is the shuffle buffer (`shuffle_buffer × d` f32 plus a
//! row id per slot) and whatever pages the OS keeps cached. Files must not be modified while a
//! source is open.
//!
//! # Shuffling (project choice)
//! The selected row range is cut into *blocks* of contiguous rows that never cross a shard
//! boundary (default: about [`BLOCK_BYTES`] of storage per block). Each epoch `e`:
//! 1. the block order is a permutation drawn from `(seed, e)` (this also shuffles the shard order);
//! 2. rows stream block by block, sequentially inside a block (sequential I/O);
//! 3. a buffer of `shuffle_buffer` rows is filled from the stream; each output row is a uniformly
//!    random slot of the buffer (RNG from `(seed, e)`), refilled from the stream, and the buffer is
//!    drained at the end of the stream.
//!
//! So each epoch hands out exactly a permutation of the range's rows, and the order depends only
//! on the seed, the epoch, the buffer size and the block size, never on the data. That is what
//! makes [`ActivationSource::skip_rows`] exact and cheap: it replays the index arithmetic without
//! reading rows, then loads only the buffer's current rows. `shuffle_buffer = 0` reads the range in
//! file order with no shuffling at all (evaluation).
//!
//! # Checks
//! Shapes, dtypes and manifests are checked when a source is opened; every row is checked for
//! NaN/Inf when it is read, and the error names the file and row.

pub use super::elem::Elem;
pub use super::error::DataError;
use super::npy;
use super::store::{Manifest, ACTIVATIONS_TENSOR, MANIFEST_FILE, MANIFEST_FORMAT};
use safetensors::Dtype;
use std::fmt;
use std::path::{Path, PathBuf};

mod files;
mod source;
mod write;

pub use files::inspect;
pub use source::{read_sample, subtract_ranges, ActivationSource};
pub use write::{
    write_safetensors, write_safetensors_2d, write_store, write_store_with_positions, RawTensor,
};

/// Target storage bytes per shuffle block; a block holds `max(1, BLOCK_BYTES / (d × elem size))`
/// rows (e.g. 1,820 rows for d = 576 in f32). Large enough for sequential reads, small enough
/// that a shuffle buffer spans many blocks from all over the dataset.
pub const BLOCK_BYTES: usize = 4 << 20;

/// The container a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A single `.safetensors` file.
    Safetensors,
    /// A single `.npy` file.
    Npy,
    /// A sharded store: directory with `manifest.json` (see [`super::store`]).
    Store,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::Npy => "npy",
            Format::Store => "store",
        })
    }
}

/// What [`inspect`] reports about a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Container format.
    pub format: Format,
    /// Row width.
    pub d: usize,
    /// Total rows over all shards.
    pub n_rows: u64,
    /// Storage dtype.
    pub dtype: Elem,
    /// Number of files (1 for a single file).
    pub shards: usize,
    /// The tensor read (None for `.npy`).
    pub tensor: Option<String>,
}

impl fmt::Display for Info {
    /// e.g. `store, 4 shards, 100000 rows × d 576, bf16, tensor activations`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.format)?;
        if self.format == Format::Store {
            write!(f, ", {} shards", self.shards)?;
        }
        write!(f, ", {} rows × d {}, {}", self.n_rows, self.d, self.dtype)?;
        if let Some(t) = &self.tensor {
            write!(f, ", tensor {t}")?;
        }
        Ok(())
    }
}

/// Options for [`ActivationSource::open`] and [`read_sample`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceOptions {
    /// Tensor name in a safetensors file or store shards (default: the tensor named
    /// `activations`, else the file's only 2-D tensor); ignored for `.npy`.
    pub tensor: Option<String>,
    /// Rows held in the shuffle buffer (0 = no shuffling, file order); memory is
    /// `shuffle_buffer × d × 4` bytes.
    pub shuffle_buffer: usize,
    /// Seed of block order and in-buffer order.
    pub seed: u64,
    /// Half-open row range `[start, end)` of the whole dataset (e.g. train / held-out split);
    /// None = all rows.
    pub rows: Option<(u64, u64)>,
    /// Half-open row ranges skipped inside `rows` (e.g. held-out chunks spread over the data):
    /// sorted or not, possibly overlapping; they may reach outside `rows`.
    pub exclude: Vec<(u64, u64)>,
    /// true: loop forever over epochs (training); false: one pass (evaluation).
    pub cycle: bool,
}

/// Anything that hands out batches of activation rows.
pub trait BatchSource: Send {
    /// Width of each row.
    fn d(&self) -> usize;
    /// Fill `out` (length = rows × d, rows = out.len() / d) with the next rows; returns the number
    /// of rows written. Training sources cycle forever (a new shuffle order each epoch) and always
    /// fill `out` completely; finite sources (eval) return fewer, then 0 at the end.
    fn next_batch(&mut self, out: &mut [f32]) -> Result<usize, DataError>;
}

#[cfg(test)]
mod tests;
