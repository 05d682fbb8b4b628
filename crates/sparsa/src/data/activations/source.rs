//! The streaming, shuffled [`ActivationSource`] over a [`Dataset`] (see the module docs of
//! `activations` for the shuffle and its determinism).

use super::files::{Dataset, RowId};
use super::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
