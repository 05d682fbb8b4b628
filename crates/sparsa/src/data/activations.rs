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
use crate::util::fs::atomic_write_with;
use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

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

// ---------------------------------------------------------------------------------------------
// Files

/// One memory-mapped file holding a `[n_rows, d]` matrix at byte `offset`.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    mmap: Mmap,
    offset: usize,
    n_rows: u64,
    d: usize,
    elem: Elem,
    tensor: Option<String>,
}

impl Segment {
    /// Convert local row `row` into `out` (length d) and check it is finite.
    fn read_row(&self, row: u64, dataset_row: u64, out: &mut [f32]) -> Result<(), DataError> {
        let rb = self.d * self.elem.size();
        let start = self.offset + row as usize * rb;
        self.elem.decode(&self.mmap[start..start + rb], out);
        if let Some(col) = out.iter().position(|v| !v.is_finite()) {
            return Err(DataError::NonFinite {
                path: self.path.clone(),
                row,
                dataset_row,
                col,
                value: out[col],
            });
        }
        Ok(())
    }
}

fn map_file(path: &Path) -> Result<Mmap, DataError> {
    let file = File::open(path).map_err(|source| io_err(path, source))?;
    // SAFETY: the mapping is read-only; sparsa requires that dataset files are not modified
    // while a source is open (documented at the module level).
    unsafe { Mmap::map(&file) }.map_err(|source| io_err(path, source))
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn open_safetensors(path: &Path, tensor: Option<&str>) -> Result<Segment, DataError> {
    let len = std::fs::metadata(path)
        .map_err(|source| io_err(path, source))?
        .len();
    if len < 8 {
        return Err(DataError::CorruptSafetensors {
            path: path.to_path_buf(),
            reason: format!("file is {len} bytes, shorter than the 8-byte header length"),
        });
    }
    let mmap = map_file(path)?;
    let (n, meta) =
        SafeTensors::read_metadata(&mmap).map_err(|e| DataError::CorruptSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let tensors = meta.tensors();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let available = || {
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names
                .iter()
                .map(|n| {
                    let t = tensors[*n];
                    format!("{n} {:?} {}", t.shape, t.dtype)
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let name = match tensor {
        Some(t) => {
            if !tensors.contains_key(t) {
                return Err(DataError::TensorNotFound {
                    path: path.to_path_buf(),
                    tensor: t.to_string(),
                    available: available(),
                });
            }
            t.to_string()
        }
        None if tensors.contains_key(ACTIVATIONS_TENSOR) => ACTIVATIONS_TENSOR.to_string(),
        None => {
            let mats: Vec<&&String> = names
                .iter()
                .filter(|n| tensors[**n].shape.len() == 2)
                .collect();
            match mats.len() {
                1 => mats[0].to_string(),
                0 if names.len() == 1 => names[0].to_string(), // reported as a rank error below
                0 => {
                    return Err(DataError::NoMatrix {
                        path: path.to_path_buf(),
                        available: available(),
                    })
                }
                _ => {
                    return Err(DataError::AmbiguousTensor {
                        path: path.to_path_buf(),
                        candidates: mats
                            .iter()
                            .map(|s| format!("`{s}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
    };
    let info = tensors[&name];
    if info.shape.len() != 2 {
        return Err(DataError::WrongRank {
            path: path.to_path_buf(),
            tensor: name,
            shape: info.shape.clone(),
        });
    }
    let elem = Elem::from_safetensors(info.dtype).ok_or_else(|| DataError::WrongDtype {
        path: path.to_path_buf(),
        tensor: name.clone(),
        dtype: info.dtype.to_string(),
    })?;
    Ok(Segment {
        path: path.to_path_buf(),
        offset: 8 + n + info.data_offsets.0,
        n_rows: info.shape[0] as u64,
        d: info.shape[1],
        elem,
        tensor: Some(name),
        mmap,
    })
}

fn open_npy(path: &Path) -> Result<Segment, DataError> {
    let mmap = map_file(path)?;
    let corrupt = |reason: String| DataError::CorruptNpy {
        path: path.to_path_buf(),
        reason,
    };
    let h = npy::parse_header(&mmap).map_err(corrupt)?;
    if h.shape.len() != 2 {
        return Err(DataError::WrongRank {
            path: path.to_path_buf(),
            tensor: "array".into(),
            shape: h.shape,
        });
    }
    let elem = match h.elem() {
        Some(e) => e,
        None if h.descr.starts_with('>') => {
            return Err(DataError::NpyLayout {
                path: path.to_path_buf(),
                what: format!("dtype `{}` is big-endian", h.descr),
            })
        }
        None => {
            return Err(DataError::WrongDtype {
                path: path.to_path_buf(),
                tensor: "array".into(),
                dtype: h.descr,
            })
        }
    };
    if h.fortran_order && h.shape[0] > 1 && h.shape[1] > 1 {
        return Err(DataError::NpyLayout {
            path: path.to_path_buf(),
            what: "the array is stored in Fortran (column-major) order".into(),
        });
    }
    let expected = (h.shape[0] as u128) * (h.shape[1] as u128) * elem.size() as u128;
    let actual = (mmap.len() - h.data_offset) as u128;
    if expected != actual {
        return Err(corrupt(format!(
            "shape {:?} of {} needs {expected} data bytes but the file has {actual}{}",
            h.shape,
            h.descr,
            if actual < expected {
                " (truncated)"
            } else {
                ""
            }
        )));
    }
    Ok(Segment {
        path: path.to_path_buf(),
        offset: h.data_offset,
        n_rows: h.shape[0] as u64,
        d: h.shape[1],
        elem,
        tensor: None,
        mmap,
    })
}

fn open_store(manifest_path: &Path, tensor: Option<&str>) -> Result<Vec<Segment>, DataError> {
    let text = std::fs::read_to_string(manifest_path).map_err(|s| io_err(manifest_path, s))?;
    let bad = |field: &str, reason: String| DataError::Manifest {
        path: manifest_path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let m = Manifest::parse(&text).map_err(|(field, reason)| bad(field, reason))?;
    let elem = Elem::from_name(&m.dtype).ok_or_else(|| bad("dtype", m.dtype.clone()))?;
    if m.shards.is_empty() {
        return Err(bad(
            "shards",
            "is empty; the store has no complete shard yet".into(),
        ));
    }
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let tensor = tensor.unwrap_or(ACTIVATIONS_TENSOR);
    let mut segs: Vec<Segment> = Vec::with_capacity(m.shards.len());
    for s in &m.shards {
        let p = dir.join(&s.file);
        if !p.exists() {
            return Err(DataError::ShardMissing {
                manifest: manifest_path.to_path_buf(),
                shard: s.file.clone(),
                shard_path: p,
            });
        }
        let seg = open_safetensors(&p, Some(tensor))?;
        if let Some(first) = segs.first() {
            if first.d != seg.d {
                return Err(DataError::DMismatch {
                    a: first.path.clone(),
                    d_a: first.d,
                    b: p,
                    d_b: seg.d,
                });
            }
        }
        let mismatch = |field, expected: String, found: String| DataError::ShardMismatch {
            manifest: manifest_path.to_path_buf(),
            shard: p.clone(),
            field,
            expected,
            found,
        };
        if seg.d != m.d_model {
            return Err(mismatch(
                "d_model",
                m.d_model.to_string(),
                seg.d.to_string(),
            ));
        }
        if seg.n_rows != s.n_tokens {
            return Err(mismatch(
                "n_tokens",
                s.n_tokens.to_string(),
                seg.n_rows.to_string(),
            ));
        }
        if seg.elem != elem {
            return Err(mismatch("dtype", elem.to_string(), seg.elem.to_string()));
        }
        segs.push(seg);
    }
    Ok(segs)
}

/// All files of a dataset, concatenated row-wise.
#[derive(Debug)]
struct Dataset {
    path: PathBuf,
    format: Format,
    segs: Vec<Segment>,
    /// `starts[i]` = dataset row of segment i's first row; `starts[len]` = total rows.
    starts: Vec<u64>,
    d: usize,
}

impl Dataset {
    fn open(path: &Path, tensor: Option<&str>) -> Result<Self, DataError> {
        if !path.exists() {
            return Err(DataError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let (format, segs) = if path.is_dir() {
            let mp = path.join(MANIFEST_FILE);
            if !mp.exists() {
                return Err(DataError::UnknownFormat {
                    path: path.to_path_buf(),
                });
            }
            (Format::Store, open_store(&mp, tensor)?)
        } else {
            match ext.as_deref() {
                Some("safetensors") => (Format::Safetensors, vec![open_safetensors(path, tensor)?]),
                Some("npy") => (Format::Npy, vec![open_npy(path)?]),
                Some("json") => (Format::Store, open_store(path, tensor)?),
                _ => {
                    return Err(DataError::UnknownFormat {
                        path: path.to_path_buf(),
                    })
                }
            }
        };
        let d = segs[0].d;
        let mut starts = Vec::with_capacity(segs.len() + 1);
        let mut total = 0u64;
        for s in &segs {
            starts.push(total);
            total += s.n_rows;
        }
        starts.push(total);
        if total == 0 || d == 0 {
            return Err(DataError::EmptyDataset {
                path: path.to_path_buf(),
                rows: total,
                d,
            });
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            format,
            segs,
            starts,
            d,
        })
    }

    fn n_rows(&self) -> u64 {
        self.starts[self.segs.len()]
    }

    fn read(&self, id: RowId, out: &mut [f32]) -> Result<(), DataError> {
        let seg = &self.segs[id.seg];
        seg.read_row(id.row, self.starts[id.seg] + id.row, out)
    }

    fn info(&self) -> Info {
        Info {
            format: self.format,
            d: self.d,
            n_rows: self.n_rows(),
            dtype: self.segs[0].elem,
            shards: self.segs.len(),
            tensor: self.segs[0].tensor.clone(),
        }
    }
}

/// Describe a dataset (format, width, rows, dtype, shard count) without reading any row.
pub fn inspect(path: &Path) -> Result<Info, DataError> {
    Ok(Dataset::open(path, None)?.info())
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// A row: segment index and row inside the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowId {
    seg: usize,
    row: u64,
}

/// Contiguous rows `[start, start + len)` of one segment.
#[derive(Debug, Clone, Copy)]
struct Block {
    seg: usize,
    start: u64,
    len: u64,
}

/// `range` minus the union of `exclude`, as sorted disjoint non-empty half-open ranges.
pub fn subtract_ranges(range: (u64, u64), exclude: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut ex: Vec<(u64, u64)> = exclude.iter().copied().filter(|(a, b)| a < b).collect();
    ex.sort_unstable();
    let mut out = Vec::new();
    let mut cur = range.0;
    for (a, b) in ex {
        if a >= range.1 {
            break;
        }
        if a > cur {
            out.push((cur, a));
        }
        cur = cur.max(b);
    }
    if cur < range.1 {
        out.push((cur, range.1));
    }
    out
}

/// Streams a dataset's rows in batches; see the module docs for the shuffle and its determinism.
#[derive(Debug)]
pub struct ActivationSource {
    ds: Dataset,
    n_rows: u64,
    shuffle: usize,
    seed: u64,
    cycle: bool,
    blocks: Vec<Block>,
    block_rows: u64,
    // Position.
    rows_read: u64,
    epoch: u64,
    /// Rows handed out in the current epoch.
    in_epoch: u64,
    started: bool,
    finished: bool,
    order: Vec<usize>,
    cursor_block: usize,
    cursor_row: u64,
    rng: ChaCha8Rng,
    buf_ids: Vec<RowId>,
    buf_data: Vec<f32>,
    /// Whether `buf_data` holds the rows of `buf_ids`.
    data_valid: bool,
}

/// SplitMix64 finaliser: decorrelates the per-epoch seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn epoch_rng(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(seed ^ mix(stream)).wrapping_add(epoch)))
}

impl ActivationSource {
    /// Open `path`: a `.safetensors` file (one 2-D f32/f16/bf16 tensor), a `.npy` file (2-D
    /// f32/f16, C order, little endian), or a store directory (or its `manifest.json`) in the
    /// format of [`super::store`]. Checks shapes, dtypes and the manifest; reads no rows.
    pub fn open(path: &Path, opts: SourceOptions) -> Result<Self, DataError> {
        Self::open_with_block_rows(path, opts, None)
    }

    /// [`ActivationSource::open`] with an explicit shuffle block size in rows (None: the default
    /// from [`BLOCK_BYTES`]). Smaller blocks mix better and read less sequentially.
    pub fn open_with_block_rows(
        path: &Path,
        opts: SourceOptions,
        block_rows: Option<usize>,
    ) -> Result<Self, DataError> {
        let ds = Dataset::open(path, opts.tensor.as_deref())?;
        let total = ds.n_rows();
        let (start, end) = opts.rows.unwrap_or((0, total));
        if start >= end || end > total {
            return Err(DataError::BadRange {
                path: path.to_path_buf(),
                start,
                end,
                n_rows: total,
            });
        }
        let row_bytes = ds.d * ds.segs[0].elem.size();
        let block_rows = block_rows.unwrap_or(BLOCK_BYTES / row_bytes).max(1) as u64;
        let mut blocks = Vec::new();
        let kept = subtract_ranges((start, end), &opts.exclude);
        for (i, s) in ds.segs.iter().enumerate() {
            let (g0, g1) = (ds.starts[i], ds.starts[i + 1]);
            for &(k0, k1) in &kept {
                let (lo, hi) = (g0.max(k0), g1.min(k1));
                let mut r = lo;
                while r < hi {
                    let len = block_rows.min(hi - r);
                    blocks.push(Block {
                        seg: i,
                        start: r - g0,
                        len,
                    });
                    r += len;
                }
            }
            debug_assert!(s.n_rows == g1 - g0);
        }
        let n_rows: u64 = kept.iter().map(|(a, b)| b - a).sum();
        if n_rows == 0 {
            return Err(DataError::NothingLeft {
                path: path.to_path_buf(),
                start,
                end,
            });
        }
        let cap = (opts.shuffle_buffer as u64).min(n_rows) as usize;
        let mut buf_data = Vec::new();
        let mut buf_ids = Vec::new();
        if cap > 0 {
            let too_large = || DataError::BufferTooLarge {
                path: path.to_path_buf(),
                rows: opts.shuffle_buffer,
                d: ds.d,
            };
            let floats = cap.checked_mul(ds.d).ok_or_else(too_large)?;
            buf_data
                .try_reserve_exact(floats)
                .map_err(|_| too_large())?;
            buf_ids.try_reserve_exact(cap).map_err(|_| too_large())?;
        }
        Ok(ActivationSource {
            ds,
            n_rows,
            shuffle: cap,
            seed: opts.seed,
            cycle: opts.cycle,
            order: (0..blocks.len()).collect(),
            blocks,
            block_rows,
            rows_read: 0,
            epoch: 0,
            in_epoch: 0,
            started: false,
            finished: false,
            cursor_block: 0,
            cursor_row: 0,
            rng: epoch_rng(opts.seed, 0, 1),
            buf_ids,
            buf_data,
            data_valid: true,
        })
    }

    /// Width of each row (also [`BatchSource::d`]).
    pub fn d(&self) -> usize {
        self.ds.d
    }

    /// Rows in the selected range (one epoch).
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// Rows handed out so far, over all epochs (store it to resume with [`Self::skip_rows`]).
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Index of the current epoch (0-based); it advances when the first row of the next epoch is
    /// handed out.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Shuffle block size in rows.
    pub fn block_rows(&self) -> u64 {
        self.block_rows
    }

    /// What the dataset is (format, d, rows, dtype, shards).
    pub fn info(&self) -> Info {
        self.ds.info()
    }

    /// Deterministically fast-forward as if `rows` more rows had been read: afterwards the source
    /// hands out exactly the batches an uninterrupted run would. Whole epochs cost nothing; rows
    /// inside an epoch cost one RNG draw each (nothing without shuffling), and only the buffer's
    /// current rows are read.
    /// A one-pass source skipped past its end returns 0 rows from then on.
    pub fn skip_rows(&mut self, rows: u64) -> Result<(), DataError> {
        let target = self.rows_read.saturating_add(rows);
        if !self.cycle && target >= self.n_rows {
            self.rows_read = self.n_rows;
            self.in_epoch = self.n_rows;
            self.finished = true;
            self.buf_ids.clear();
            self.buf_data.clear();
            return Ok(());
        }
        let (epoch, within) = (target / self.n_rows, target % self.n_rows);
        if !self.started || epoch != self.epoch {
            self.start_epoch(epoch, false)?;
            self.rows_read = epoch * self.n_rows;
        }
        if self.shuffle == 0 {
            // File order: place the cursor directly (O(blocks), no per-row work).
            let mut left = within;
            let mut b = 0;
            while b < self.blocks.len() && left >= self.blocks[b].len {
                left -= self.blocks[b].len;
                b += 1;
            }
            self.cursor_block = b;
            self.cursor_row = left;
            self.in_epoch = within;
            self.rows_read = target;
            return Ok(());
        }
        if self.rows_read < target {
            self.data_valid = false;
        }
        while self.rows_read < target {
            self.step(None)?;
        }
        debug_assert_eq!(self.in_epoch, within);
        Ok(())
    }

    /// Reset the stream to the start of `epoch` and fill the buffer (with row data if `data`).
    fn start_epoch(&mut self, epoch: u64, data: bool) -> Result<(), DataError> {
        self.epoch = epoch;
        self.in_epoch = 0;
        self.started = true;
        self.cursor_block = 0;
        self.cursor_row = 0;
        self.order = (0..self.blocks.len()).collect();
        if self.shuffle > 0 {
            self.order.shuffle(&mut epoch_rng(self.seed, epoch, 0));
        }
        self.rng = epoch_rng(self.seed, epoch, 1);
        self.buf_ids.clear();
        self.buf_data.clear();
        self.data_valid = data;
        while self.buf_ids.len() < self.shuffle {
            let Some(id) = self.next_stream() else { break };
            self.buf_ids.push(id);
            if data {
                let d = self.ds.d;
                let n = self.buf_data.len();
                self.buf_data.resize(n + d, 0.0);
                self.ds.read(id, &mut self.buf_data[n..])?;
            }
        }
        Ok(())
    }

    /// The next row of this epoch's block stream, if any.
    fn next_stream(&mut self) -> Option<RowId> {
        let b = *self.blocks.get(*self.order.get(self.cursor_block)?)?;
        let id = RowId {
            seg: b.seg,
            row: b.start + self.cursor_row,
        };
        self.cursor_row += 1;
        if self.cursor_row == b.len {
            self.cursor_block += 1;
            self.cursor_row = 0;
        }
        Some(id)
    }

    /// Load the rows of `buf_ids` into `buf_data` (after a skip).
    fn materialize(&mut self) -> Result<(), DataError> {
        let d = self.ds.d;
        self.buf_data.clear();
        self.buf_data.resize(self.buf_ids.len() * d, 0.0);
        for (i, id) in self.buf_ids.iter().enumerate() {
            self.ds.read(*id, &mut self.buf_data[i * d..(i + 1) * d])?;
        }
        self.data_valid = true;
        Ok(())
    }

    /// Hand out one row into `out` (or only advance the position when `out` is None).
    /// Returns false at the end of a one-pass source.
    fn step(&mut self, mut out: Option<&mut [f32]>) -> Result<bool, DataError> {
        let with_data = out.is_some();
        if self.finished {
            return Ok(false);
        }
        if !self.started {
            self.start_epoch(self.epoch, with_data)?;
        }
        if with_data && !self.data_valid {
            self.materialize()?;
        }
        if self.in_epoch == self.n_rows {
            if !self.cycle {
                self.finished = true;
                return Ok(false);
            }
            self.start_epoch(self.epoch + 1, with_data)?;
        }
        let d = self.ds.d;
        if self.shuffle == 0 {
            // A stream row always exists here: in_epoch < n_rows.
            if let Some(id) = self.next_stream() {
                if let Some(o) = out.as_mut() {
                    self.ds.read(id, o)?;
                }
            }
        } else {
            let j = self.rng.random_range(0..self.buf_ids.len());
            if let Some(o) = out.as_mut() {
                o.copy_from_slice(&self.buf_data[j * d..(j + 1) * d]);
            }
            match self.next_stream() {
                Some(id) => {
                    self.buf_ids[j] = id;
                    if with_data {
                        self.ds.read(id, &mut self.buf_data[j * d..(j + 1) * d])?;
                    }
                }
                None => {
                    self.buf_ids.swap_remove(j);
                    if with_data {
                        let last = self.buf_ids.len();
                        if j != last {
                            self.buf_data.copy_within(last * d..(last + 1) * d, j * d);
                        }
                        self.buf_data.truncate(last * d);
                    }
                }
            }
        }
        self.in_epoch += 1;
        self.rows_read += 1;
        Ok(true)
    }
}

impl BatchSource for ActivationSource {
    fn d(&self) -> usize {
        self.ds.d
    }

    fn next_batch(&mut self, out: &mut [f32]) -> Result<usize, DataError> {
        let d = self.ds.d;
        if out.is_empty() || !out.len().is_multiple_of(d) {
            return Err(DataError::BadBatch {
                path: self.ds.path.clone(),
                len: out.len(),
                d,
            });
        }
        let mut n = 0;
        for row in out.chunks_exact_mut(d) {
            if !self.step(Some(row))? {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Read the first `n` rows of the range (fewer if the range is shorter) in file order, without
/// shuffling, for init statistics (geometric median, input scaling). Returns `rows × d` values.
pub fn read_sample(path: &Path, opts: &SourceOptions, n: usize) -> Result<Vec<f32>, DataError> {
    let opts = SourceOptions {
        shuffle_buffer: 0,
        cycle: false,
        ..opts.clone()
    };
    let mut src = ActivationSource::open(path, opts)?;
    let d = src.d();
    let rows = (n as u64).min(src.n_rows()) as usize;
    let mut out = vec![0.0f32; rows * d];
    if rows > 0 {
        let got = src.next_batch(&mut out)?;
        out.truncate(got * d);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing (fixtures, synthetic datasets, converters)

/// One tensor to write with [`write_safetensors`]: raw little-endian bytes of `dtype`, C order.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// `shape.product() × dtype size` bytes.
    pub data: &'a [u8],
}

/// Write tensors as a safetensors file, atomically. Streams the data (no second copy in memory).
pub fn write_safetensors(path: &Path, tensors: &[RawTensor<'_>]) -> Result<(), DataError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        let bits = t.dtype.bitsize();
        if (numel * bits).div_ceil(8) != t.data.len() {
            return Err(DataError::BadLength {
                path: path.to_path_buf(),
                rows: t.shape.first().copied().unwrap_or(1),
                d: t.shape.iter().skip(1).product(),
                len: t.data.len() * 8 / bits.max(1),
            });
        }
        header.insert(
            t.name.to_string(),
            serde_json::json!({
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.data.len()],
            }),
        );
        offset += t.data.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    atomic_write_with(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for t in tensors {
            w.write_all(t.data)?;
        }
        Ok(())
    })
    .map_err(|source| DataError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write a `rows × d` matrix (row-major f32 `data`) as tensor `name` of a safetensors file,
/// stored as `elem` (f16/bf16 round to nearest), atomically.
pub fn write_safetensors_2d(
    path: &Path,
    name: &str,
    rows: usize,
    d: usize,
    data: &[f32],
    elem: Elem,
) -> Result<(), DataError> {
    if rows.checked_mul(d) != Some(data.len()) {
        return Err(DataError::BadLength {
            path: path.to_path_buf(),
            rows,
            d,
            len: data.len(),
        });
    }
    let bytes = elem.encode(data);
    write_safetensors(
        path,
        &[RawTensor {
            name,
            dtype: elem.to_safetensors(),
            shape: vec![rows, d],
            data: &bytes,
        }],
    )
}

/// Write an activation store (format `sparsa-activations/1`): one shard per entry of `shards`
/// (each row-major with width `d`, stored as `elem`), then `manifest.json` last, all atomic.
pub fn write_store(dir: &Path, d: usize, elem: Elem, shards: &[&[f32]]) -> Result<(), DataError> {
    write_store_with_positions(dir, d, elem, shards, None)
}

/// [`write_store`] with each row's in-context position (the `positions` tensor, u32, one slice
/// per shard with one entry per row), as `sparsa activations extract` records it.
pub fn write_store_with_positions(
    dir: &Path,
    d: usize,
    elem: Elem,
    shards: &[&[f32]],
    positions: Option<&[&[u32]]>,
) -> Result<(), DataError> {
    let mut entries = Vec::with_capacity(shards.len());
    for (i, s) in shards.iter().enumerate() {
        let file = format!("shard-{i:05}.safetensors");
        let path = dir.join(&file);
        let rows = s.len().checked_div(d).unwrap_or(0);
        match positions.map(|p| p.get(i).copied().unwrap_or_default()) {
            None => write_safetensors_2d(&path, ACTIVATIONS_TENSOR, rows, d, s, elem)?,
            Some(pos) => {
                if rows.checked_mul(d) != Some(s.len()) || pos.len() != rows {
                    return Err(DataError::BadLength {
                        path,
                        rows: pos.len(),
                        d,
                        len: s.len(),
                    });
                }
                let acts = elem.encode(s);
                let pos: Vec<u8> = pos.iter().flat_map(|p| p.to_le_bytes()).collect();
                write_safetensors(
                    &path,
                    &[
                        RawTensor {
                            name: ACTIVATIONS_TENSOR,
                            dtype: elem.to_safetensors(),
                            shape: vec![rows, d],
                            data: &acts,
                        },
                        RawTensor {
                            name: "positions",
                            dtype: Dtype::U32,
                            shape: vec![rows],
                            data: &pos,
                        },
                    ],
                )?
            }
        }
        entries.push(super::store::ShardEntry {
            file,
            n_tokens: rows as u64,
        });
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        d_model: d,
        dtype: elem.name().to_string(),
        n_tokens: entries.iter().map(|e| e.n_tokens).sum(),
        shards: entries,
        model: None,
        hook: None,
        layer: None,
        extra: Default::default(),
    };
    manifest.write(dir).map_err(|source| DataError::Write {
        path: dir.join(MANIFEST_FILE),
        source,
    })
}

#[cfg(test)]
mod tests;
