//! Text corpora as ordered lists of documents.
//!
//! Sources (see `shared/spec/data.md`):
//! - a folder of `*.txt` files (the State of the Union addresses): one document per file, in
//!   byte order of the file names (for SOTU: chronological, `1790_george_washington_n.txt` …);
//! - a Wikipedia-summaries JSON (`summaries_en-us.json`): an object `{title: {"extract": …}}` or
//!   an array of such objects; one document per non-empty `extract`, in order of the titles
//!   (serde_json's map order: sorted by title);
//! - a single `*.txt` file: one document.
//!
//! The order is deterministic, so an extraction (and its resume) sees the same document stream
//! every time. Document ids are positions in that order.

use std::path::{Path, PathBuf};

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Position in the corpus order (what activation stores record as `doc_ids`).
    pub id: u32,
    /// File name or title.
    pub name: String,
    /// The text.
    pub text: String,
}

/// Errors reading a corpus.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The path does not exist.
    #[error("corpus {path} does not exist; pass a folder of .txt files, a .txt file or a Wikipedia-summaries .json (or use `--corpus sotu` / `--corpus wiki`, fetched with `sparsa fetch`)", path = .path.display())]
    Missing { path: PathBuf },
    /// A file could not be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid UTF-8.
    #[error("{path} is not UTF-8 text; corpora must be UTF-8", path = .path.display())]
    NotUtf8 { path: PathBuf },
    /// A JSON corpus has the wrong structure.
    #[error("{path}: {reason}; expected Wikipedia summaries: {{\"Title\": {{\"extract\": \"text…\"}}, …}} or a list of objects with `extract`", path = .path.display())]
    BadJson { path: PathBuf, reason: String },
    /// The source holds no document.
    #[error("corpus {path} holds no documents ({what})", path = .path.display())]
    Empty { path: PathBuf, what: &'static str },
    /// More documents than the u32 ids can number.
    #[error("corpus {path} has more than 2^32 documents", path = .path.display())]
    TooMany { path: PathBuf },
}

/// Read the documents at `path` (a folder of `*.txt`, a `.txt` file or a summaries `.json`).
pub fn load(path: &Path) -> Result<Vec<Document>, CorpusError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CorpusError::Missing {
            path: path.to_path_buf(),
        },
        _ => CorpusError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let docs = if meta.is_dir() {
        load_txt_dir(path)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        load_summaries_json(path)?
    } else {
        let text = read_text(path)?;
        vec![(file_name(path), text)]
    };
    let docs: Vec<(String, String)> = docs
        .into_iter()
        .filter(|(_, t)| !t.trim().is_empty())
        .collect();
    if docs.is_empty() {
        return Err(CorpusError::Empty {
            path: path.to_path_buf(),
            what: if meta.is_dir() {
                "no non-empty .txt file"
            } else {
                "no non-empty text"
            },
        });
    }
    if docs.len() > u32::MAX as usize {
        return Err(CorpusError::TooMany {
            path: path.to_path_buf(),
        });
    }
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, (name, text))| Document {
            id: i as u32,
            name,
            text,
        })
        .collect())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_text(path: &Path) -> Result<String, CorpusError> {
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| CorpusError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

fn load_txt_dir(dir: &Path) -> Result<Vec<(String, String)>, CorpusError> {
    let io = |source| CorpusError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "txt") {
            files.push(p);
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| Ok((file_name(p), read_text(p)?)))
        .collect()
}

fn load_summaries_json(path: &Path) -> Result<Vec<(String, String)>, CorpusError> {
    let text = read_text(path)?;
    let bad = |reason: String| CorpusError::BadJson {
        path: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let extract = |name: &str, item: &serde_json::Value| -> Result<String, CorpusError> {
        match item.get("extract") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Null) | None => Ok(String::new()),
            Some(_) => Err(bad(format!("entry `{name}` has a non-string `extract`"))),
        }
    };
    match &v {
        // serde_json's map is ordered by key: a deterministic order.
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(title, item)| Ok((title.clone(), extract(title, item)?)))
            .collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item
                    .get("title")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{i}"));
                Ok((name.clone(), extract(&name, item)?))
            })
            .collect(),
        _ => Err(bad("the top level is neither an object nor an array".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_dir_in_name_order_skipping_empty_and_other_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.txt"), "second").unwrap();
        std::fs::write(d.path().join("a.txt"), "first").unwrap();
        std::fs::write(d.path().join("c.txt"), "  \n").unwrap();
        std::fs::write(d.path().join("a.json"), "{}").unwrap();
        let docs = load(d.path()).unwrap();
        let names: Vec<_> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert_eq!(docs[1].id, 1);
        assert_eq!(docs[1].text, "second");
    }

    #[test]
    fn summaries_object_and_array() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        std::fs::write(
            &p,
            r#"{"Zeta": {"title": "Zeta", "extract": "z text"}, "Alpha": {"extract": "a text"}, "Empty": {"extract": ""}}"#,
        )
        .unwrap();
        let docs = load(&p).unwrap();
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            ["a text", "z text"]
        );
        std::fs::write(&p, r#"[{"title": "T", "extract": "t"}, {"extract": "u"}]"#).unwrap();
        let docs = load(&p).unwrap();
        assert_eq!(docs[0].name, "T");
        assert_eq!(docs[1].text, "u");
    }

    #[test]
    fn bad_inputs_give_typed_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(&d.path().join("nope")),
            Err(CorpusError::Missing { .. })
        ));
        assert!(matches!(load(d.path()), Err(CorpusError::Empty { .. })));
        let p = d.path().join("s.json");
        std::fs::write(&p, "[1, 2").unwrap();
        assert!(matches!(load(&p), Err(CorpusError::BadJson { .. })));
        std::fs::write(&p, r#"{"A": {"extract": 3}}"#).unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.to_string().contains("non-string `extract`"), "{e}");
        let t = d.path().join("x.txt");
        std::fs::write(&t, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(load(&t), Err(CorpusError::NotUtf8 { .. })));
    }
}
