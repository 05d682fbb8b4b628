//! The format readers: memory-mapped safetensors, `.npy` and store shards as [`Segment`]s, and
//! the concatenated [`Dataset`] they form.

use super::*;
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::fs::File;

/// One memory-mapped file holding a `[n_rows, d]` matrix at byte `offset`.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) mmap: Mmap,
    pub(super) offset: usize,
    pub(super) n_rows: u64,
    pub(super) d: usize,
    pub(super) elem: Elem,
    pub(super) tensor: Option<String>,
}

impl Segment {
    /// Convert local row `row` into `out` (length d) and check it is finite.
    pub(super) fn read_row(
        &self,
        row: u64,
        dataset_row: u64,
        out: &mut [f32],
    ) -> Result<(), DataError> {
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
    let name = choose_tensor(path, &tensors, tensor)?;
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

/// The tensor to read: the one asked for, else `activations`, else the file's only matrix (a
/// file of one tensor that is no matrix is returned and refused by the rank check).
fn choose_tensor(
    path: &Path,
    tensors: &std::collections::HashMap<String, &safetensors::tensor::TensorInfo>,
    tensor: Option<&str>,
) -> Result<String, DataError> {
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
    Ok(match tensor {
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
    if let Some((s, p)) = m.missing_shard(dir) {
        return Err(DataError::ShardMissing {
            manifest: manifest_path.to_path_buf(),
            shard: s.file.clone(),
            shard_path: p,
        });
    }
    let mut segs: Vec<Segment> = Vec::with_capacity(m.shards.len());
    for s in &m.shards {
        let p = dir.join(&s.file);
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
pub(super) struct Dataset {
    pub(super) path: PathBuf,
    pub(super) format: Format,
    pub(super) segs: Vec<Segment>,
    /// `starts[i]` = dataset row of segment i's first row; `starts[len]` = total rows.
    pub(super) starts: Vec<u64>,
    pub(super) d: usize,
}

impl Dataset {
    pub(super) fn open(path: &Path, tensor: Option<&str>) -> Result<Self, DataError> {
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

    pub(super) fn n_rows(&self) -> u64 {
        self.starts[self.segs.len()]
    }

    pub(super) fn read(&self, id: RowId, out: &mut [f32]) -> Result<(), DataError> {
        let seg = &self.segs[id.seg];
        seg.read_row(id.row, self.starts[id.seg] + id.row, out)
    }

    pub(super) fn info(&self) -> Info {
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

/// A row: segment index and row inside the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowId {
    pub(super) seg: usize,
    pub(super) row: u64,
}
