//! [`DataError`]: everything that can go wrong reading or writing activation data.

use std::path::PathBuf;
use thiserror::Error;

/// The dtypes accepted, for error messages.
const ACCEPTED: &str = "f32, f16 or bf16 for safetensors; f32 (<f4) or f16 (<f2) for .npy";

/// Everything that can go wrong reading or writing activation data. Each variant names the file
/// (and tensor, row or field) and says what to do.
#[derive(Debug, Error)]
pub enum DataError {
    /// The path does not exist.
    #[error("{path}: no such file or directory; pass a .safetensors file, a .npy file or an activation-store directory (or its manifest.json)", path = .path.display())]
    NotFound { path: PathBuf },
    /// The path exists but is none of the accepted formats.
    #[error("{path}: unknown activation format; expected a .safetensors file, a .npy file, or a store directory containing manifest.json", path = .path.display())]
    UnknownFormat { path: PathBuf },
    /// An I/O error while opening or mapping a file.
    #[error("{path}: cannot read: {source}; check that the file exists and is readable", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file whose header or size is invalid.
    #[error("{path}: not a valid safetensors file ({reason}); the file is corrupt or truncated, re-create it", path = .path.display())]
    CorruptSafetensors { path: PathBuf, reason: String },
    /// A `.npy` file whose header or size is invalid.
    #[error("{path}: not a valid .npy file ({reason}); re-create it with numpy.save or sparsa's write_npy_f32", path = .path.display())]
    CorruptNpy { path: PathBuf, reason: String },
    /// The requested tensor is not in the file.
    #[error("{path}: no tensor named `{tensor}`; the file holds: {available}; set the tensor name to one of these", path = .path.display())]
    TensorNotFound {
        path: PathBuf,
        tensor: String,
        available: String,
    },
    /// No tensor was named and the choice is ambiguous.
    #[error("{path}: {candidates} 2-D tensors and none is named `activations`; name the one to use (tensor option)", path = .path.display())]
    AmbiguousTensor { path: PathBuf, candidates: String },
    /// The file has no 2-D tensor at all.
    #[error("{path}: no 2-D tensor found (tensors: {available}); activations must be a [rows, d] matrix", path = .path.display())]
    NoMatrix { path: PathBuf, available: String },
    /// The tensor is not 2-D.
    #[error("{path}: tensor `{tensor}` has shape {shape:?} (rank {rank}); activations must be 2-D [rows, d]: reshape to (-1, d) before saving", path = .path.display(), rank = .shape.len())]
    WrongRank {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
    },
    /// The tensor's dtype is not accepted.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; accepted dtypes are {ACCEPTED}: convert it (e.g. .astype(np.float32) / .float()) before saving", path = .path.display())]
    WrongDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A `.npy` array stored in an order or byte order the reader cannot map.
    #[error("{path}: {what}; save a C-order little-endian array (np.ascontiguousarray(a).astype('<f4'))", path = .path.display())]
    NpyLayout { path: PathBuf, what: String },
    /// The manifest cannot be parsed or has an invalid field.
    #[error("{path}: manifest field `{field}`: {reason}", path = .path.display())]
    Manifest {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// A shard listed in the manifest is missing.
    #[error("{manifest}: shard `{shard}` is listed but {shard_path} does not exist; restore the shard or re-extract the store", manifest = .manifest.display(), shard_path = .shard_path.display())]
    ShardMissing {
        manifest: PathBuf,
        shard: String,
        shard_path: PathBuf,
    },
    /// A shard disagrees with the manifest.
    #[error("{manifest}: shard {shard} has {field} = {found} but the manifest says {expected}; the store is inconsistent, re-extract it or fix manifest.json", manifest = .manifest.display(), shard = .shard.display())]
    ShardMismatch {
        manifest: PathBuf,
        shard: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },
    /// Two shards have different row widths.
    #[error("shard {b} has rows of width d = {d_b} but shard {a} has d = {d_a}; all shards of a dataset need the same d, re-extract the store", a = .a.display(), b = .b.display())]
    DMismatch {
        a: PathBuf,
        d_a: usize,
        b: PathBuf,
        d_b: usize,
    },
    /// The dataset holds no rows (or rows of width 0).
    #[error("{path}: the dataset is empty ({rows} rows of width {d}); it needs at least one row of width ≥ 1", path = .path.display())]
    EmptyDataset { path: PathBuf, rows: u64, d: usize },
    /// The requested row range selects no rows or goes past the end.
    #[error("{path}: row range [{start}, {end}) is invalid for a dataset of {n_rows} rows; choose 0 ≤ start < end ≤ {n_rows}", path = .path.display())]
    BadRange {
        path: PathBuf,
        start: u64,
        end: u64,
        n_rows: u64,
    },
    /// The excluded ranges cover the whole selected range.
    #[error("{path}: the excluded (held-out) ranges cover all of the rows [{start}, {end}); hold out fewer rows", path = .path.display())]
    NothingLeft { path: PathBuf, start: u64, end: u64 },
    /// A row holds NaN or ±Inf.
    #[error("{path}: row {row} (dataset row {dataset_row}), column {col} is {value}; activations must be finite: drop or recompute that row", path = .path.display())]
    NonFinite {
        path: PathBuf,
        row: u64,
        dataset_row: u64,
        col: usize,
        value: f32,
    },
    /// An output buffer whose length is not a multiple of d.
    #[error("{path}: batch buffer of length {len} is not a positive multiple of d = {d}; allocate rows × d floats", path = .path.display())]
    BadBatch { path: PathBuf, len: usize, d: usize },
    /// Data passed to a writer does not match the declared shape.
    #[error("{path}: data has {len} values but rows × d = {rows} × {d}; pass exactly rows × d values", path = .path.display())]
    BadLength {
        path: PathBuf,
        rows: usize,
        d: usize,
        len: usize,
    },
    /// The shuffle buffer cannot be allocated.
    #[error("{path}: cannot allocate a shuffle buffer of {rows} rows × d = {d}; lower shuffle_buffer", path = .path.display())]
    BufferTooLarge {
        path: PathBuf,
        rows: usize,
        d: usize,
    },
    /// A write failed.
    #[error("{path}: cannot write: {source}", path = .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An impossible data configuration (e.g. a synthetic generator with zero features).
    #[error("{0}")]
    Invalid(String),
}
