//! Image datasets for the pruning half: the IDX format (MNIST, Fashion-MNIST; gzipped or raw) and
//! the in-memory [`ImageSet`] both IDX and CIFAR ([`super::cifar`]) load into, with per-channel
//! normalisation and training-only augmentation (random crop with zero padding, horizontal flip).
//!
//! IDX: a big-endian header `0x00 0x00 <type> <ndims>` (type 0x08 = u8), then `ndims` u32 sizes,
//! then the data in row-major order. Images are `idx3` (N × rows × cols), labels `idx1` (N).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::Rng;

/// Errors reading image datasets.
#[derive(Debug, thiserror::Error)]
pub enum ImageDataError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {format} file: {msg}")]
    Format {
        path: PathBuf,
        format: &'static str,
        msg: String,
    },
    #[error("no {what} found in {dir}: expected one of {candidates}")]
    Missing {
        dir: PathBuf,
        what: &'static str,
        candidates: String,
    },
    #[error("{dir}: the training and test sets do not match: training images are {train}, test images {test}")]
    Mismatch {
        dir: PathBuf,
        train: String,
        test: String,
    },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, ImageDataError>;

/// Checks that a dataset's training and test sets have the same image shape and class count (a
/// model built for one must run on the other).
pub fn check_pair(dir: &Path, train: &ImageSet, test: &ImageSet) -> Result<()> {
    let form = |s: &ImageSet| {
        format!(
            "{}×{}×{} in {} classes",
            s.channels, s.height, s.width, s.classes
        )
    };
    let (a, b) = (form(train), form(test));
    if a != b {
        return Err(ImageDataError::Mismatch {
            dir: dir.to_path_buf(),
            train: a,
            test: b,
        });
    }
    Ok(())
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read a file fully, un-gzipping it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path, format: &'static str) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| ImageDataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| ImageDataError::Format {
                path: path.to_path_buf(),
                format,
                msg: format!("corrupt or truncated gzip stream ({e}); download the file again"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Read an IDX file of u8 values (gzipped or raw).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path, "IDX")?;
    let bad = |msg: String| ImageDataError::Format {
        path: path.to_path_buf(),
        format: "IDX",
        msg,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "only {} bytes, shorter than the header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic bytes are {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || bytes.len() < 4 + 4 * nd {
        return Err(bad(format!("header with {nd} dimensions is truncated")));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[4 + 4 * nd..];
    if body.len() != n {
        return Err(bad(format!(
            "header promises {n} values ({dims:?}) but the file holds {}{}",
            body.len(),
            if body.len() < n { " (truncated)" } else { "" }
        )));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// A labelled image set held in memory as f32, layout (N, C, H, W).
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Per-channel mean and standard deviation of the pixel values.
    pub fn channel_stats(&self) -> Vec<(f64, f64)> {
        let plane = self.height * self.width;
        let mut out = Vec::with_capacity(self.channels);
        for c in 0..self.channels {
            let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
            for img in self.images.chunks_exact(self.image_size()) {
                for &v in &img[c * plane..(c + 1) * plane] {
                    s += v as f64;
                    s2 += (v as f64) * (v as f64);
                    n += 1.0;
                }
            }
            let mean = s / n.max(1.0);
            let var = (s2 / n.max(1.0) - mean * mean).max(0.0);
            out.push((mean, var.sqrt().max(1e-8)));
        }
        out
    }

    /// `x ← (x − mean_c) / std_c` per channel (use the training set's statistics for both sets).
    pub fn normalise(&mut self, stats: &[(f64, f64)]) {
        let plane = self.height * self.width;
        let size = self.image_size();
        for img in self.images.chunks_exact_mut(size) {
            for (c, &(m, s)) in stats.iter().enumerate().take(self.channels) {
                for v in &mut img[c * plane..(c + 1) * plane] {
                    *v = ((*v as f64 - m) / s) as f32;
                }
            }
        }
    }

    /// Per-channel minimum of the pixel values.
    pub fn channel_min(&self) -> Vec<f64> {
        let plane = self.height * self.width;
        (0..self.channels)
            .map(|c| {
                self.images
                    .chunks_exact(self.image_size())
                    .flat_map(|img| img[c * plane..(c + 1) * plane].iter())
                    .fold(f64::INFINITY, |m, &v| m.min(v as f64))
            })
            .map(|m| if m.is_finite() { m } else { 0.0 })
            .collect()
    }

    /// Keep only the first `n` examples.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_size());
        }
    }

    /// Assemble the examples at `idx` into an input tensor (B, C, H, W) and a label tensor (B),
    /// optionally augmented: zero-pad by `pad` pixels, take a random H×W crop, and flip
    /// horizontally with probability ½. `buf` is reused between calls.
    pub fn batch<R: Rng>(
        &self,
        idx: &[usize],
        augment: Option<(usize, &mut R)>,
        buf: &mut Vec<f32>,
    ) -> Result<(Tensor, Tensor)> {
        let size = self.image_size();
        buf.clear();
        buf.reserve(idx.len() * size);
        let mut labels = Vec::with_capacity(idx.len());
        match augment {
            None => {
                for &i in idx {
                    buf.extend_from_slice(&self.images[i * size..(i + 1) * size]);
                    labels.push(self.labels[i]);
                }
            }
            Some((pad, rng)) => {
                let (h, w) = (self.height, self.width);
                let plane = h * w;
                for &i in idx {
                    let img = &self.images[i * size..(i + 1) * size];
                    let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
                    let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
                    let flip = rng.random_bool(0.5);
                    for c in 0..self.channels {
                        let src = &img[c * plane..(c + 1) * plane];
                        for y in 0..h {
                            let sy = y as isize + dy;
                            for x in 0..w {
                                let xx = if flip { w - 1 - x } else { x };
                                let sx = xx as isize + dx;
                                let v = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize
                                {
                                    src[sy as usize * w + sx as usize]
                                } else {
                                    0.0
                                };
                                buf.push(v);
                            }
                        }
                    }
                    labels.push(self.labels[i]);
                }
            }
        }
        let x = Tensor::from_slice(
            buf.as_slice(),
            (idx.len(), self.channels, self.height, self.width),
            &Device::Cpu,
        )?;
        let y = Tensor::from_vec(labels, idx.len(), &Device::Cpu)?;
        Ok((x, y))
    }
}

/// The range the network's inputs are mapped to (`data.input` in a pruning config).
///
/// Loaders give pixels in [0, 1]; statistics always come from the training set and are applied
/// to both sets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum InputRange {
    /// `(x − mean_c) / std_c` per channel: zero mean, unit variance, values of both signs.
    #[default]
    Normalize,
    /// Pixels as loaded, in [0, 1]: non-negative, as AP's argument needs for the first layer.
    Unit,
    /// `(x − min_c) / std_c`: the normalisation shifted so the training set's smallest value is
    /// 0 (the same scale as `normalize`, non-negative on the training set).
    NormalizeNonneg,
}

impl InputRange {
    pub const ALL: [InputRange; 3] = [
        InputRange::Normalize,
        InputRange::Unit,
        InputRange::NormalizeNonneg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InputRange::Normalize => "normalize",
            InputRange::Unit => "unit",
            InputRange::NormalizeNonneg => "normalize-nonneg",
        }
    }

    /// Map the pixels of `train` and `test` (both in [0, 1] as loaded) to this range, with
    /// statistics from `train`.
    pub fn apply(self, train: &mut ImageSet, test: &mut ImageSet) {
        match self {
            InputRange::Unit => {}
            InputRange::Normalize => {
                let stats = train.channel_stats();
                train.normalise(&stats);
                test.normalise(&stats);
            }
            InputRange::NormalizeNonneg => {
                let stats: Vec<(f64, f64)> = train
                    .channel_stats()
                    .into_iter()
                    .zip(train.channel_min())
                    .map(|((_, sd), min)| (min, sd))
                    .collect();
                train.normalise(&stats);
                test.normalise(&stats);
            }
        }
    }
}

impl std::str::FromStr for InputRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        InputRange::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("unknown input range `{s}`; use normalize, unit or normalize-nonneg")
            })
    }
}

/// Pair an idx3 image file and an idx1 label file into an [`ImageSet`] with pixels in [0, 1].
pub fn load_idx_pair(images: &Path, labels: &Path, classes: usize) -> Result<ImageSet> {
    let im = read_idx(images)?;
    let lb = read_idx(labels)?;
    if im.dims.len() != 3 {
        return Err(ImageDataError::Format {
            path: images.to_path_buf(),
            format: "IDX",
            msg: format!(
                "image file has dimensions {:?}, expected N × rows × cols",
                im.dims
            ),
        });
    }
    if lb.dims.len() != 1 || lb.dims[0] != im.dims[0] {
        return Err(ImageDataError::Format {
            path: labels.to_path_buf(),
            format: "IDX",
            msg: format!(
                "label file has dimensions {:?}, expected one label per image ({})",
                lb.dims, im.dims[0]
            ),
        });
    }
    if let Some(&bad) = lb.data.iter().find(|&&l| l as usize >= classes) {
        return Err(ImageDataError::Format {
            path: labels.to_path_buf(),
            format: "IDX",
            msg: format!("label {bad} is out of range for {classes} classes"),
        });
    }
    Ok(ImageSet {
        images: im.data.iter().map(|&b| b as f32 / 255.0).collect(),
        labels: lb.data.iter().map(|&b| b as u32).collect(),
        channels: 1,
        height: im.dims[1],
        width: im.dims[2],
        classes,
    })
}

fn find(dir: &Path, stem: &str, what: &'static str) -> Result<PathBuf> {
    let names = [
        stem.to_string(),
        format!("{stem}.gz"),
        stem.replacen("-idx", ".idx", 1),
        format!("{}.gz", stem.replacen("-idx", ".idx", 1)),
    ];
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageDataError::Missing {
            dir: dir.to_path_buf(),
            what,
            candidates: names.join(", "),
        })
}

/// Load MNIST-layout data (MNIST or Fashion-MNIST) from a directory holding
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; returns (train, test).
pub fn load_mnist_dir(dir: &Path) -> Result<(ImageSet, ImageSet)> {
    let [tr_im, tr_lb, te_im, te_lb] = mnist_files(dir)?;
    let train = load_idx_pair(&tr_im, &tr_lb, 10)?;
    let test = load_idx_pair(&te_im, &te_lb, 10)?;
    Ok((train, test))
}

/// The four files [`load_mnist_dir`] reads: training images, training labels, test images, test
/// labels.
pub fn mnist_files(dir: &Path) -> Result<[PathBuf; 4]> {
    Ok([
        find(dir, "train-images-idx3-ubyte", "training images")?,
        find(dir, "train-labels-idx1-ubyte", "training labels")?,
        find(dir, "t10k-images-idx3-ubyte", "test images")?,
        find(dir, "t10k-labels-idx1-ubyte", "test labels")?,
    ])
}

/// Encode an IDX u8 array (used by tests and tools that write fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn write_set(dir: &Path, prefix: &str, n: usize, gzip: bool) {
        let img: Vec<u8> = (0..n * 4 * 4).map(|i| (i % 256) as u8).collect();
        let lab: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let (a, b) = (encode_idx(&[n, 4, 4], &img), encode_idx(&[n], &lab));
        let (a, b, ext) = if gzip {
            (gz(&a), gz(&b), ".gz")
        } else {
            (a, b, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), a).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), b).unwrap();
    }

    #[test]
    fn input_ranges() {
        let d = tempfile::tempdir().unwrap();
        // Training pixels 0..=255 cover the whole byte range; test pixels are shifted.
        write_set(d.path(), "train", 32, false);
        let img: Vec<u8> = (0..8 * 16).map(|i| (3 * i % 200 + 20) as u8).collect();
        let lab: Vec<u8> = (0..8).map(|i| i as u8).collect();
        std::fs::write(
            d.path().join("t10k-images-idx3-ubyte"),
            encode_idx(&[8, 4, 4], &img),
        )
        .unwrap();
        std::fs::write(
            d.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[8], &lab),
        )
        .unwrap();
        let load = |r: InputRange| {
            let (mut tr, mut te) = load_mnist_dir(d.path()).unwrap();
            r.apply(&mut tr, &mut te);
            (tr, te)
        };
        // unit: [0, 1], the pixel bytes / 255.
        let (tr, te) = load(InputRange::Unit);
        for v in tr.images.iter().chain(&te.images) {
            assert!((0.0..=1.0).contains(v), "{v}");
        }
        assert_eq!(tr.images[0], 0.0);
        assert_eq!(tr.images[255], 1.0);
        assert_eq!(te.images[0], 20.0 / 255.0);
        // normalize: zero mean and unit variance on the training set, negative values present.
        let (tr, _) = load(InputRange::Normalize);
        let (m, sd) = tr.channel_stats()[0];
        assert!(m.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5, "{m} {sd}");
        assert!(tr.images.iter().any(|&v| v < -1.0));
        // normalize-nonneg: the same scale, shifted so the training minimum is 0.
        let (trn, ten) = load(InputRange::NormalizeNonneg);
        assert!(trn.images.iter().chain(&ten.images).all(|&v| v >= 0.0));
        assert_eq!(trn.channel_min()[0], 0.0);
        let (_, sd) = trn.channel_stats()[0];
        assert!((sd - 1.0).abs() < 1e-5);
        for (a, b) in trn.images.iter().zip(&tr.images) {
            assert!((a - b - (trn.images[0] - tr.images[0])).abs() < 1e-5);
        }
        assert_eq!(
            "normalize-nonneg".parse::<InputRange>(),
            Ok(InputRange::NormalizeNonneg)
        );
        assert!("zscore".parse::<InputRange>().unwrap_err().contains("unit"));
    }

    #[test]
    fn loads_gzipped_and_raw() {
        let d = tempfile::tempdir().unwrap();
        write_set(d.path(), "train", 6, true);
        write_set(d.path(), "t10k", 3, false);
        let (tr, te) = load_mnist_dir(d.path()).unwrap();
        assert_eq!((tr.len(), te.len()), (6, 3));
        assert_eq!((tr.height, tr.width, tr.channels), (4, 4, 1));
        assert_eq!(tr.labels, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(tr.images[17], 17.0 / 255.0);
    }

    #[test]
    fn truncated_and_corrupt_files_give_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x-idx3-ubyte");
        let mut full = encode_idx(&[2, 3, 3], &[1u8; 18]);
        full.truncate(full.len() - 5);
        std::fs::write(&p, &full).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("x-idx3-ubyte"), "{e}");

        let mut g = gz(&encode_idx(&[2, 3, 3], &[1u8; 18]));
        let cut = g.len() / 2;
        g.truncate(cut);
        std::fs::write(&p, &g).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");

        std::fs::write(&p, [1u8, 2, 3, 4, 5, 6]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");

        let e = load_mnist_dir(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }

    #[test]
    fn mismatched_label_count_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("i");
        let b = d.path().join("l");
        std::fs::write(&a, encode_idx(&[2, 2, 2], &[0; 8])).unwrap();
        std::fs::write(&b, encode_idx(&[3], &[0; 3])).unwrap();
        assert!(load_idx_pair(&a, &b, 10).is_err());
    }

    #[test]
    fn augmentation_keeps_shape_and_flips() {
        let set = ImageSet {
            images: (0..9).map(|v| v as f32).collect(),
            labels: vec![1],
            channels: 1,
            height: 3,
            width: 3,
            classes: 2,
        };
        let mut buf = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64_compat(1);
        let mut seen_flip = false;
        for _ in 0..50 {
            let (x, _) = set.batch(&[0], Some((0, &mut rng)), &mut buf).unwrap();
            let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                v == (0..9).map(|v| v as f32).collect::<Vec<_>>()
                    || v == vec![2., 1., 0., 5., 4., 3., 8., 7., 6.]
            );
            seen_flip |= v[0] == 2.0;
        }
        assert!(seen_flip);
        let (x, _) = set.batch(&[0, 0], Some((4, &mut rng)), &mut buf).unwrap();
        assert_eq!(x.dims(), &[2, 1, 3, 3]);
    }

    trait SeedCompat {
        fn seed_from_u64_compat(s: u64) -> Self;
    }
    impl SeedCompat for rand::rngs::StdRng {
        fn seed_from_u64_compat(s: u64) -> Self {
            <Self as rand::SeedableRng>::seed_from_u64(s)
        }
    }
}
