//! NumPy `.npy` files: header parsing for the activation reader and an atomic `f32` writer.
//!
//! Format (NumPy NEP 1): the magic `\x93NUMPY`, a major/minor version byte pair, the header length
//! (u16 little endian for version 1, u32 for versions 2 and 3), then a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 576), }` padded with spaces and a
//! final `\n` so the data starts on a 64-byte boundary. The data follows in C order.

use super::elem::Elem;
use super::error::DataError;
use crate::util::fs::atomic_write_with;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The dtype descriptor exactly as written (e.g. `<f4`).
    pub descr: String,
    /// Whether the data is stored in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Byte offset of the first data element from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// The element type, if it is one the activation reader accepts (`<f4`, `<f2`; `|`/`=` byte
    /// order marks are read as little endian, the only byte order sparsa runs on).
    pub fn elem(&self) -> Option<Elem> {
        match self.descr.as_str() {
            "<f4" | "=f4" => Some(Elem::F32),
            "<f2" | "=f2" => Some(Elem::F16),
            _ => None,
        }
    }
}

/// Parse the header at the start of `bytes`. The error string says what is wrong; the caller adds
/// the file name.
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the `\\x93NUMPY` magic bytes (not a .npy file, or truncated)".into());
    }
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("header truncated".into());
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
            (n, 12)
        }
        v => {
            return Err(format!(
                "unsupported .npy format version {v} (expected 1, 2 or 3)"
            ))
        }
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("header says it is {len} bytes long but the file is shorter"))?;
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "header is not valid text".to_string())?;
    let descr = dict_value(text, "descr")?;
    let descr = descr
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let fortran = match dict_value(text, "fortran_order")?.trim() {
        "True" => true,
        "False" => false,
        other => {
            return Err(format!(
                "fortran_order is `{other}`, expected True or False"
            ))
        }
    };
    let shape_text = dict_value(text, "shape")?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("shape `{shape_text}` is not a tuple"))?;
    let mut shape = Vec::new();
    for part in inner.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        shape.push(
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("shape entry `{p}` is not a non-negative integer"))?,
        );
    }
    Ok(NpyHeader {
        descr,
        fortran_order: fortran,
        shape,
        data_offset: end,
    })
}

/// The raw text of the value of `key` in the header's dict literal (up to the next top-level comma
/// or closing brace).
fn dict_value<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let pos = text
        .find(&pat1)
        .map(|p| p + pat1.len())
        .or_else(|| text.find(&pat2).map(|p| p + pat2.len()))
        .ok_or_else(|| format!("header has no `{key}` entry"))?;
    let rest = text[pos..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("header entry `{key}` has no `:`"))?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(&rest[..i]),
            _ => {}
        }
    }
    Err(format!("header entry `{key}` is not terminated"))
}

/// The header bytes (magic through the padded dict) for a C-order array of `descr` and `shape`.
pub fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|n| n.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad with spaces so that magic(6) + version(2) + len(2) + dict + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    dict.extend(std::iter::repeat_n(' ', pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Write a 2-D `rows × d` f32 array (row-major `data`) as a `.npy` file (`<f4`, C order),
/// atomically (temp file + rename), so NumPy's `np.load` and sparsa's reader both open it.
pub fn write_npy_f32(path: &Path, rows: usize, d: usize, data: &[f32]) -> Result<(), DataError> {
    if rows.checked_mul(d) != Some(data.len()) {
        return Err(DataError::BadLength {
            path: path.to_path_buf(),
            rows,
            d,
            len: data.len(),
        });
    }
    let header = header_bytes("<f4", &[rows, d]);
    atomic_write_with(path, |w| {
        w.write_all(&header)?;
        for chunk in data.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    })
    .map_err(|source| DataError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_is_64_aligned() {
        for shape in [vec![3usize, 4], vec![0, 7], vec![123456789, 576], vec![5]] {
            let h = header_bytes("<f4", &shape);
            assert_eq!(h.len() % 64, 0);
            let p = parse_header(&h).unwrap();
            assert_eq!(p.shape, shape);
            assert_eq!(p.descr, "<f4");
            assert!(!p.fortran_order);
            assert_eq!(p.data_offset, h.len());
        }
    }

    #[test]
    fn parses_numpy_written_header() {
        // Byte-for-byte what numpy 1.26 writes for np.zeros((2, 3), np.float16).
        let dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }";
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&[1, 0]);
        let padded = format!("{dict:<117}\n");
        h.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        h.extend_from_slice(padded.as_bytes());
        let p = parse_header(&h).unwrap();
        assert_eq!(p.shape, vec![2, 3]);
        assert_eq!(p.elem(), Some(Elem::F16));
        assert_eq!(p.data_offset, 128);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_header(b"hello world, not numpy").is_err());
        let mut h = header_bytes("<f4", &[2, 2]);
        h.truncate(20);
        assert!(parse_header(&h).is_err());
    }

    #[test]
    fn write_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let e = write_npy_f32(&p, 2, 3, &[0.0; 5]).unwrap_err();
        assert!(e.to_string().contains("x.npy"), "{e}");
        assert!(!p.exists());
    }
}
