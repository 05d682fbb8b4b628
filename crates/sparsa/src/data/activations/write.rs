//! Writers: safetensors files and activation stores (fixtures, synthetic datasets, converters).

use super::*;
use crate::data::store::POSITIONS_TENSOR;
use crate::util::fs::atomic_write_with;
use std::io::Write;

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
        let pos = positions.map(|p| p.get(i).copied().unwrap_or_default());
        if rows.checked_mul(d) != Some(s.len()) || pos.is_some_and(|p| p.len() != rows) {
            return Err(DataError::BadLength {
                path,
                rows: pos.map_or(rows, <[u32]>::len),
                d,
                len: s.len(),
            });
        }
        let acts = elem.encode(s);
        let pos_bytes: Option<Vec<u8>> =
            pos.map(|p| p.iter().flat_map(|v| v.to_le_bytes()).collect());
        let mut tensors = vec![RawTensor {
            name: ACTIVATIONS_TENSOR,
            dtype: elem.to_safetensors(),
            shape: vec![rows, d],
            data: &acts,
        }];
        if let Some(bytes) = &pos_bytes {
            tensors.push(RawTensor {
                name: POSITIONS_TENSOR,
                dtype: Dtype::U32,
                shape: vec![rows],
                data: bytes,
            });
        }
        write_safetensors(&path, &tensors)?;
        entries.push(crate::data::store::ShardEntry {
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
