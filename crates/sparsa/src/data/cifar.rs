//! CIFAR-10 and CIFAR-100 in their binary format.
//!
//! CIFAR-10: `data_batch_{1..5}.bin` and `test_batch.bin`, records of 1 label byte + 3072 pixel
//! bytes (1024 red, 1024 green, 1024 blue, each 32×32 row-major). CIFAR-100: `train.bin` and
//! `test.bin`, records of 2 label bytes (coarse, fine) + 3072 pixel bytes; the fine label (100
//! classes) is used. Pixels are scaled to [0, 1].

use std::path::{Path, PathBuf};

use super::idx::{read_maybe_gz, ImageDataError, ImageSet};

/// Which CIFAR variant a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

const PIXELS: usize = 3 * 32 * 32;

/// Decode one CIFAR binary file.
pub fn read_cifar_file(path: &Path, kind: CifarKind) -> Result<ImageSet, ImageDataError> {
    let bytes = read_maybe_gz(path, "CIFAR binary")?;
    let rec = kind.label_bytes() + PIXELS;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(ImageDataError::Format {
            path: path.to_path_buf(),
            format: "CIFAR binary",
            msg: format!(
                "{} bytes is not a whole number of {rec}-byte records (truncated, or not {kind:?})",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1] as usize;
        if label >= kind.classes() {
            return Err(ImageDataError::Format {
                path: path.to_path_buf(),
                format: "CIFAR binary",
                msg: format!(
                    "record {i} has label {label}, out of range for {} classes",
                    kind.classes()
                ),
            });
        }
        labels.push(label as u32);
        images.extend(r[kind.label_bytes()..].iter().map(|&b| b as f32 / 255.0));
    }
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: kind.classes(),
    })
}

fn concat(sets: Vec<ImageSet>) -> Option<ImageSet> {
    let mut it = sets.into_iter();
    let mut first = it.next()?;
    for s in it {
        first.images.extend(s.images);
        first.labels.extend(s.labels);
    }
    Some(first)
}

/// Load (train, test) from a CIFAR binary directory.
pub fn load_cifar_dir(dir: &Path, kind: CifarKind) -> Result<(ImageSet, ImageSet), ImageDataError> {
    let files = cifar_files(dir, kind)?;
    let (test_path, train_paths) = files.split_last().ok_or_else(|| ImageDataError::Missing {
        dir: dir.to_path_buf(),
        what: "CIFAR binary files",
        candidates: String::new(),
    })?;
    let mut train = Vec::new();
    for p in train_paths {
        train.push(read_cifar_file(p, kind)?);
    }
    let test = read_cifar_file(test_path, kind)?;
    let train = concat(train).ok_or_else(|| ImageDataError::Missing {
        dir: dir.to_path_buf(),
        what: "CIFAR training batches",
        candidates: "data_batch_1.bin … or train.bin".into(),
    })?;
    Ok((train, test))
}

/// The files [`load_cifar_dir`] reads: the training batches in order, then the test batch.
pub fn cifar_files(dir: &Path, kind: CifarKind) -> Result<Vec<PathBuf>, ImageDataError> {
    let names: Vec<String> = match kind {
        CifarKind::Cifar10 => (1..=5)
            .map(|i| format!("data_batch_{i}.bin"))
            .chain(["test_batch.bin".to_string()])
            .collect(),
        CifarKind::Cifar100 => vec!["train.bin".into(), "test.bin".into()],
    };
    names
        .iter()
        .map(|name| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ImageDataError::Missing {
                    dir: dir.to_path_buf(),
                    what: "CIFAR binary file",
                    candidates: name.to_string(),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, kind: CifarKind) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            if kind == CifarKind::Cifar100 {
                out.push((i % 20) as u8);
            }
            out.push((i % kind.classes()) as u8);
            out.extend((0..PIXELS).map(|p| ((p + i) % 256) as u8));
        }
        out
    }

    #[test]
    fn loads_cifar10_and_100() {
        let d = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            std::fs::write(
                d.path().join(format!("data_batch_{i}.bin")),
                records(3, CifarKind::Cifar10),
            )
            .unwrap();
        }
        std::fs::write(
            d.path().join("test_batch.bin"),
            records(2, CifarKind::Cifar10),
        )
        .unwrap();
        let (tr, te) = load_cifar_dir(d.path(), CifarKind::Cifar10).unwrap();
        assert_eq!((tr.len(), te.len(), tr.classes), (15, 2, 10));
        assert_eq!(tr.labels[..3], [0, 1, 2]);
        // Record 1's first red pixel is byte value 1; its first green pixel is (1024 + 1) % 256.
        assert_eq!(tr.images[PIXELS], 1.0 / 255.0);
        assert_eq!(tr.images[PIXELS + 1024], 1.0 / 255.0);

        std::fs::write(d.path().join("train.bin"), records(4, CifarKind::Cifar100)).unwrap();
        std::fs::write(d.path().join("test.bin"), records(1, CifarKind::Cifar100)).unwrap();
        let (tr, _) = load_cifar_dir(d.path(), CifarKind::Cifar100).unwrap();
        assert_eq!(tr.classes, 100);
        assert_eq!(tr.labels, vec![0, 1, 2, 3]);
    }

    #[test]
    fn truncated_file_and_missing_dir_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("test_batch.bin");
        let mut r = records(2, CifarKind::Cifar10);
        r.truncate(r.len() - 10);
        std::fs::write(&p, r).unwrap();
        let e = read_cifar_file(&p, CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("truncated") && e.contains("test_batch.bin"),
            "{e}"
        );
        let e = load_cifar_dir(d.path(), CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
        // A label out of range.
        let mut r = records(1, CifarKind::Cifar10);
        r[0] = 42;
        std::fs::write(&p, r).unwrap();
        assert!(read_cifar_file(&p, CifarKind::Cifar10).is_err());
    }
}
