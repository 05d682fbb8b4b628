#[path = "../../../tests/cases/mod.rs"]
mod cases;
use super::*;
use crate::data::npy::{header_bytes, write_npy_f32};
use half::{bf16, f16};
use proptest::prelude::*;
use safetensors::SafeTensors;
use std::collections::BTreeSet;

/// Row i = [i, i + 0.25, i + 0.5, ...]: every row identifies itself by its first value.
fn rows_data(n: usize, d: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| (0..d).map(move |j| i as f32 + j as f32 * 0.25))
        .collect()
}

fn opts(shuffle: usize, seed: u64, rows: Option<(u64, u64)>, cycle: bool) -> SourceOptions {
    SourceOptions {
        tensor: None,
        shuffle_buffer: shuffle,
        seed,
        rows,
        exclude: vec![],
        cycle,
    }
}

/// Read `rows` rows in batches of `batch` rows; returns the row ids (first column).
fn read_ids(src: &mut ActivationSource, rows: usize, batch: usize) -> Vec<u64> {
    let d = src.d();
    let mut ids = Vec::with_capacity(rows);
    let mut buf = vec![0.0f32; batch * d];
    while ids.len() < rows {
        let take = batch.min(rows - ids.len());
        let got = src.next_batch(&mut buf[..take * d]).unwrap();
        for r in 0..got {
            let row = &buf[r * d..(r + 1) * d];
            // The row's content must be intact, not only its id.
            for (j, v) in row.iter().enumerate() {
                assert_eq!(*v, row[0] + j as f32 * 0.25);
            }
            ids.push(row[0] as u64);
        }
        if got < take {
            break;
        }
    }
    ids
}

fn st_file(dir: &Path, name: &str, n: usize, d: usize) -> PathBuf {
    let p = dir.join(name);
    write_safetensors_2d(&p, "activations", n, d, &rows_data(n, d), Elem::F32).unwrap();
    p
}

fn err_of(path: &Path, o: SourceOptions) -> DataError {
    ActivationSource::open(path, o).unwrap_err()
}

// ------------------------------------------------------------------ formats and conversion

#[test]
fn reads_safetensors_npy_and_store_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (103, 5);
    let data = rows_data(n, d);
    let st = st_file(dir.path(), "a.safetensors", n, d);
    let np = dir.path().join("a.npy");
    write_npy_f32(&np, n, d, &data).unwrap();
    let store = dir.path().join("store");
    let cuts = [0, 10, 10, 57, n]; // includes an empty shard
    let shards: Vec<&[f32]> = cuts.windows(2).map(|w| &data[w[0] * d..w[1] * d]).collect();
    write_store(&store, d, Elem::F32, &shards).unwrap();

    for p in [&st, &np, &store, &store.join("manifest.json")] {
        let mut src = ActivationSource::open(p, opts(0, 0, None, false)).unwrap();
        assert_eq!(src.d(), d);
        assert_eq!(src.n_rows(), n as u64);
        let mut out = vec![0.0; (n + 7) * d];
        let got = src.next_batch(&mut out).unwrap();
        assert_eq!(got, n, "{}", p.display());
        assert_eq!(&out[..n * d], &data[..], "{}", p.display());
        assert_eq!(src.next_batch(&mut out).unwrap(), 0);
        assert_eq!(src.rows_read(), n as u64);
    }
    let info = inspect(&store).unwrap();
    assert_eq!(
        info,
        Info {
            format: Format::Store,
            d,
            n_rows: n as u64,
            dtype: Elem::F32,
            shards: 4,
            tensor: Some("activations".into()),
        }
    );
    assert_eq!(
        info.to_string(),
        "store, 4 shards, 103 rows × d 5, f32, tensor activations"
    );
    assert_eq!(inspect(&np).unwrap().format, Format::Npy);
    assert_eq!(inspect(&st).unwrap().shards, 1);
}

#[test]
fn shuffled_store_is_a_permutation_and_mixes_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (400, 3);
    let data = rows_data(n, d);
    let shards: Vec<&[f32]> = data.chunks(100 * d).collect();
    write_store(dir.path(), d, Elem::F32, &shards).unwrap();
    let mut first_shards = BTreeSet::new();
    for seed in 0..8 {
        let mut src = ActivationSource::open_with_block_rows(
            dir.path(),
            opts(16, seed, None, true),
            Some(25),
        )
        .unwrap();
        let ids = read_ids(&mut src, n, 64);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n as u64).collect::<Vec<_>>());
        first_shards.insert(ids[0] / 100);
    }
    assert!(
        first_shards.len() > 1,
        "shard order never changed: {first_shards:?}"
    );
}

#[test]
fn f16_and_bf16_convert_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<f32> = vec![0.0, -1.5, 3.140625, 65504.0, 1e-3, -2.0e-5, 1234.5, 0.1];
    for elem in [Elem::F16, Elem::BF16, Elem::F32] {
        let p = dir.path().join(format!("x-{elem}.safetensors"));
        write_safetensors_2d(&p, "acts", 2, 4, &vals, elem).unwrap();
        let info = inspect(&p).unwrap();
        assert_eq!(info.dtype, elem);
        assert_eq!(info.tensor.as_deref(), Some("acts"));
        let got = read_sample(&p, &SourceOptions::default(), 10).unwrap();
        let want: Vec<f32> = vals
            .iter()
            .map(|v| match elem {
                Elem::F16 => f16::from_f32(*v).to_f32(),
                Elem::BF16 => bf16::from_f32(*v).to_f32(),
                Elem::F32 => *v,
            })
            .collect();
        assert_eq!(got, want, "{elem}");
        if elem != Elem::F32 {
            // The rounding is real: some value is not exactly representable.
            assert_ne!(got, vals, "{elem}");
        }
    }
    // Exact values: 1.5 in f16 is 0x3E00, in bf16 0x3FC0.
    let p = dir.path().join("exact.safetensors");
    let f16b = 0x3E00u16.to_le_bytes();
    let bf16b = 0x3FC0u16.to_le_bytes();
    write_safetensors(
        &p,
        &[RawTensor {
            name: "activations",
            dtype: Dtype::F16,
            shape: vec![1, 1],
            data: &f16b,
        }],
    )
    .unwrap();
    assert_eq!(
        read_sample(&p, &SourceOptions::default(), 1).unwrap(),
        [1.5]
    );
    write_safetensors(
        &p,
        &[RawTensor {
            name: "activations",
            dtype: Dtype::BF16,
            shape: vec![1, 1],
            data: &bf16b,
        }],
    )
    .unwrap();
    assert_eq!(
        read_sample(&p, &SourceOptions::default(), 1).unwrap(),
        [1.5]
    );
    // npy f16
    let np = dir.path().join("h.npy");
    let mut bytes = header_bytes("<f2", &[1, 2]);
    bytes.extend_from_slice(&0x3E00u16.to_le_bytes());
    bytes.extend_from_slice(&0xC000u16.to_le_bytes()); // -2.0
    std::fs::write(&np, &bytes).unwrap();
    assert_eq!(
        read_sample(&np, &SourceOptions::default(), 5).unwrap(),
        [1.5, -2.0]
    );
    assert_eq!(inspect(&np).unwrap().dtype, Elem::F16);
}

#[test]
fn writer_output_is_valid_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "v.safetensors", 7, 3);
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("activations").unwrap();
    assert_eq!(t.shape(), &[7, 3]);
    assert_eq!(t.dtype(), Dtype::F32);
}

#[test]
fn tensor_selection() {
    let dir = tempfile::tempdir().unwrap();
    let a = Elem::F32.encode(&rows_data(4, 2));
    let b = Elem::F32.encode(&[9.0; 6]);
    let ids = 7i64.to_le_bytes().repeat(4);
    let t = |name, shape: Vec<usize>, data| RawTensor {
        name,
        dtype: Dtype::F32,
        shape,
        data,
    };
    // "activations" wins among several matrices.
    let p = dir.path().join("many.safetensors");
    write_safetensors(
        &p,
        &[t("other", vec![2, 3], &b), t("activations", vec![4, 2], &a)],
    )
    .unwrap();
    assert_eq!(inspect(&p).unwrap().d, 2);
    // A named tensor is used.
    let mut o = SourceOptions {
        tensor: Some("other".into()),
        ..Default::default()
    };
    assert_eq!(read_sample(&p, &o, 9).unwrap(), vec![9.0; 6]);
    // The only 2-D tensor is used even with a 1-D side tensor.
    let p2 = dir.path().join("one.safetensors");
    write_safetensors(
        &p2,
        &[
            t("resid", vec![4, 2], &a),
            RawTensor {
                name: "token_ids",
                dtype: Dtype::I64,
                shape: vec![4],
                data: &ids,
            },
        ],
    )
    .unwrap();
    assert_eq!(inspect(&p2).unwrap().tensor.as_deref(), Some("resid"));
    // Ambiguous.
    let p3 = dir.path().join("amb.safetensors");
    write_safetensors(&p3, &[t("x", vec![2, 3], &b), t("y", vec![4, 2], &a)]).unwrap();
    let e = inspect(&p3).unwrap_err();
    assert!(matches!(e, DataError::AmbiguousTensor { .. }), "{e}");
    assert!(e.to_string().contains("`x`") && e.to_string().contains("amb.safetensors"));
    // Missing name.
    o.tensor = Some("nope".into());
    let e = read_sample(&p, &o, 1).unwrap_err();
    assert!(matches!(e, DataError::TensorNotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope") && e.to_string().contains("activations [4, 2] F32"));
}

// ------------------------------------------------------------------ bad input

fn assert_msg(e: &DataError, parts: &[&str]) {
    let s = e.to_string();
    for p in parts {
        assert!(s.contains(p), "error `{s}` lacks `{p}`");
    }
}

#[test]
fn missing_file_and_unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_of(
        &dir.path().join("nope.safetensors"),
        opts(0, 0, None, false),
    );
    assert!(matches!(e, DataError::NotFound { .. }));
    assert_msg(&e, &["nope.safetensors", "no such file"]);
    let txt = dir.path().join("acts.csv");
    std::fs::write(&txt, "1,2\n").unwrap();
    let e = err_of(&txt, opts(0, 0, None, false));
    assert!(matches!(e, DataError::UnknownFormat { .. }));
    assert_msg(&e, &["acts.csv", ".safetensors", ".npy", "manifest.json"]);
    // A directory without a manifest.
    let e = err_of(dir.path(), opts(0, 0, None, false));
    assert!(matches!(e, DataError::UnknownFormat { .. }), "{e}");
}

#[test]
fn corrupt_and_truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let good = st_file(dir.path(), "good.safetensors", 10, 4);
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("tiny", vec![1, 2, 3]),
        (
            "garbage",
            b"this is definitely not a safetensors file".to_vec(),
        ),
        ("truncated", bytes[..bytes.len() - 5].to_vec()),
        ("header_cut", bytes[..20].to_vec()),
        ("huge_header_len", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
        ("bad_json", {
            let mut b = bytes.clone();
            b[8] = b'#';
            b
        }),
    ];
    cases::each(cases, |(name, b)| {
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, b).unwrap();
        let e = err_of(&p, opts(0, 0, None, false));
        assert!(
            matches!(e, DataError::CorruptSafetensors { .. }),
            "{name}: {e}"
        );
        assert_msg(
            &e,
            &[&format!("{name}.safetensors"), "corrupt or truncated"],
        );
    });
}

#[test]
fn wrong_rank_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let v = Elem::F32.encode(&[1.0; 24]);
    for shape in [vec![24], vec![2, 3, 4]] {
        let p = dir.path().join(format!("r{}.safetensors", shape.len()));
        write_safetensors(
            &p,
            &[RawTensor {
                name: "activations",
                dtype: Dtype::F32,
                shape: shape.clone(),
                data: &v,
            }],
        )
        .unwrap();
        let e = err_of(&p, opts(0, 0, None, false));
        assert!(matches!(e, DataError::WrongRank { .. }), "{e}");
        assert_msg(&e, &["activations", "2-D", &format!("{shape:?}")]);
    }
    let eight = vec![0u8; 8 * 6];
    for dt in [Dtype::I64, Dtype::F64] {
        let p = dir.path().join(format!("{dt}.safetensors"));
        write_safetensors(
            &p,
            &[RawTensor {
                name: "activations",
                dtype: dt,
                shape: vec![2, 3],
                data: &eight,
            }],
        )
        .unwrap();
        let e = err_of(&p, opts(0, 0, None, false));
        assert!(matches!(e, DataError::WrongDtype { .. }), "{e}");
        assert_msg(&e, &[&dt.to_string(), "f32, f16 or bf16", "activations"]);
    }
    // npy: f8, big endian, 3-D, fortran order, truncated, not npy at all.
    let np = |name: &str, descr: &str, shape: &[usize], fortran: bool, data: usize| {
        let p = dir.path().join(name);
        let mut b = header_bytes(descr, shape);
        if fortran {
            let pos = b.windows(5).position(|w| w == b"False").unwrap();
            b.splice(pos..pos + 5, b"True ".iter().copied());
        }
        b.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(&p, b).unwrap();
        err_of(&p, opts(0, 0, None, false))
    };
    let e = np("f8.npy", "<f8", &[2, 3], false, 48);
    assert!(matches!(e, DataError::WrongDtype { .. }), "{e}");
    assert_msg(&e, &["f8.npy", "<f8", "<f4"]);
    let e = np("be.npy", ">f4", &[2, 3], false, 24);
    assert!(matches!(e, DataError::NpyLayout { .. }), "{e}");
    assert_msg(&e, &["be.npy", "big-endian"]);
    let e = np("r3.npy", "<f4", &[2, 3, 1], false, 24);
    assert!(matches!(e, DataError::WrongRank { .. }), "{e}");
    let e = np("fo.npy", "<f4", &[2, 3], true, 24);
    assert!(matches!(e, DataError::NpyLayout { .. }), "{e}");
    assert_msg(&e, &["Fortran"]);
    let e = np("short.npy", "<f4", &[2, 3], false, 23);
    assert!(matches!(e, DataError::CorruptNpy { .. }), "{e}");
    assert_msg(&e, &["short.npy", "truncated"]);
    let p = dir.path().join("empty.npy");
    std::fs::write(&p, b"").unwrap();
    let e = err_of(&p, opts(0, 0, None, false));
    assert!(matches!(e, DataError::CorruptNpy { .. }), "{e}");
    let p = dir.path().join("junk.npy");
    std::fs::write(&p, b"PK\x03\x04 zip").unwrap();
    let e = err_of(&p, opts(0, 0, None, false));
    assert!(matches!(e, DataError::CorruptNpy { .. }), "{e}");
}

#[test]
fn inconsistent_manifests() {
    let root = tempfile::tempdir().unwrap();
    let d = 4;
    let data = rows_data(30, d);
    let edit = |dir: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mp = dir.join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&mp, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    type Break<'a> = Box<dyn Fn(&Path) + 'a>;
    type Check = Box<dyn Fn(&DataError)>;
    // (name, how the good store is broken, what the error must say)
    let table: Vec<(&str, (Break, Check))> = vec![
        (
            "missing",
            (
                Box::new(|s| std::fs::remove_file(s.join("shard-00001.safetensors")).unwrap()),
                Box::new(|e| {
                    assert!(matches!(e, DataError::ShardMissing { .. }), "{e}");
                    assert_msg(
                        e,
                        &["manifest.json", "shard-00001.safetensors", "re-extract"],
                    );
                }),
            ),
        ),
        (
            "wrong_d",
            (
                Box::new(|s| edit(s, &|v| v["d_model"] = 5.into())),
                Box::new(|e| {
                    assert!(
                        matches!(
                            e,
                            DataError::ShardMismatch {
                                field: "d_model",
                                ..
                            }
                        ),
                        "{e}"
                    );
                    assert_msg(e, &["shard-00000.safetensors", "d_model = 4", "says 5"]);
                }),
            ),
        ),
        (
            "rows",
            (
                Box::new(|s| {
                    edit(s, &|v| {
                        v["shards"][1]["n_tokens"] = 21.into();
                        v["n_tokens"] = 31.into();
                    })
                }),
                Box::new(|e| {
                    assert!(
                        matches!(
                            e,
                            DataError::ShardMismatch {
                                field: "n_tokens",
                                ..
                            }
                        ),
                        "{e}"
                    );
                    assert_msg(e, &["shard-00001.safetensors", "n_tokens = 20", "says 21"]);
                }),
            ),
        ),
        (
            "total",
            (
                Box::new(|s| edit(s, &|v| v["n_tokens"] = 99.into())),
                Box::new(|e| {
                    assert!(matches!(e, DataError::Manifest { .. }), "{e}");
                    assert_msg(e, &["n_tokens", "99", "30"]);
                }),
            ),
        ),
        (
            "dtype",
            (
                Box::new(|s| edit(s, &|v| v["dtype"] = "bf16".into())),
                Box::new(|e| {
                    assert!(
                        matches!(e, DataError::ShardMismatch { field: "dtype", .. }),
                        "{e}"
                    );
                }),
            ),
        ),
        (
            "dtype_bad",
            (
                Box::new(|s| edit(s, &|v| v["dtype"] = "int8".into())),
                Box::new(|e| assert_msg(e, &["dtype", "int8", "f32, f16, bf16"])),
            ),
        ),
        (
            "format",
            (
                Box::new(|s| edit(s, &|v| v["format"] = "something-else/2".into())),
                Box::new(|e| assert_msg(e, &["format", "something-else/2", MANIFEST_FORMAT])),
            ),
        ),
        (
            "no_shards",
            (
                Box::new(|s| {
                    edit(s, &|v| {
                        v["shards"] = serde_json::json!([]);
                        v["n_tokens"] = 0.into();
                    })
                }),
                Box::new(|e| assert_msg(e, &["shards", "empty"])),
            ),
        ),
        (
            "json",
            (
                Box::new(|s| std::fs::write(s.join("manifest.json"), "{ not json").unwrap()),
                Box::new(|e| assert!(matches!(e, DataError::Manifest { .. }), "{e}")),
            ),
        ),
        (
            // Shards that disagree with each other on d.
            "d_between",
            (
                Box::new(|s| {
                    let p = s.join("shard-00001.safetensors");
                    write_safetensors_2d(&p, "activations", 10, 2, &rows_data(10, 2), Elem::F32)
                        .unwrap();
                }),
                Box::new(|e| {
                    assert!(
                        matches!(e, DataError::DMismatch { d_a: 4, d_b: 2, .. }),
                        "{e}"
                    );
                    assert_msg(e, &["shard-00000.safetensors", "shard-00001.safetensors"]);
                }),
            ),
        ),
        (
            // A corrupt shard is reported by its own path.
            "corrupt_shard",
            (
                Box::new(|s| {
                    std::fs::write(s.join("shard-00000.safetensors"), b"xxxxxxxxxxxxxxxx").unwrap()
                }),
                Box::new(|e| {
                    assert!(matches!(e, DataError::CorruptSafetensors { .. }), "{e}");
                    assert_msg(e, &["shard-00000.safetensors"]);
                }),
            ),
        ),
    ];
    cases::each_named(table, |(corrupt, check)| {
        // Each case breaks its own copy of a good two-shard store.
        let dir = tempfile::tempdir_in(root.path()).unwrap();
        write_store(
            dir.path(),
            d,
            Elem::F32,
            &[&data[..10 * d], &data[10 * d..]],
        )
        .unwrap();
        corrupt(dir.path());
        check(&err_of(dir.path(), opts(0, 0, None, false)));
    });
}

#[test]
fn empty_dataset_and_bad_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "a.safetensors", 10, 3);
    for r in [(5, 5), (7, 3), (0, 11), (10, 12)] {
        let e = err_of(&p, opts(0, 0, Some(r), false));
        assert!(matches!(e, DataError::BadRange { .. }), "{e}");
        assert_msg(
            &e,
            &["a.safetensors", &format!("[{}, {})", r.0, r.1), "10 rows"],
        );
    }
    let z = dir.path().join("z.safetensors");
    write_safetensors_2d(&z, "activations", 0, 3, &[], Elem::F32).unwrap();
    let e = err_of(&z, opts(0, 0, None, false));
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e}");
    let z = dir.path().join("z.npy");
    write_npy_f32(&z, 4, 0, &[]).unwrap();
    let e = err_of(&z, opts(0, 0, None, false));
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e}");
}

#[test]
fn non_finite_rows_are_reported_with_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = 3;
    let mut a = rows_data(20, d);
    let mut b = rows_data(20, d);
    b[7 * d + 2] = f32::NAN;
    a[3 * d] = f32::INFINITY;
    for (shuffle, cycle) in [(0, false), (8, true)] {
        let store = dir.path().join(format!("s{shuffle}"));
        write_store(&store, d, Elem::F32, &[&rows_data(20, d), &b]).unwrap();
        let mut src =
            ActivationSource::open_with_block_rows(&store, opts(shuffle, 1, None, cycle), Some(4))
                .unwrap();
        let mut out = vec![0.0; 50 * d];
        let e = src.next_batch(&mut out).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::NonFinite {
                    row: 7,
                    dataset_row: 27,
                    col: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_msg(&e, &["shard-00001.safetensors", "row 7", "NaN", "finite"]);
    }
    let p = dir.path().join("inf.npy");
    write_npy_f32(&p, 20, d, &a).unwrap();
    let e = read_sample(&p, &SourceOptions::default(), 20).unwrap_err();
    assert_msg(&e, &["inf.npy", "row 3", "inf"]);
    // f16 overflow to Inf is caught too (65520 rounds to +Inf in f16).
    let p = dir.path().join("h.safetensors");
    write_safetensors_2d(&p, "activations", 1, 2, &[1.0, 70000.0], Elem::F16).unwrap();
    let e = read_sample(&p, &SourceOptions::default(), 1).unwrap_err();
    assert!(matches!(e, DataError::NonFinite { col: 1, .. }), "{e}");
    // A range that excludes the bad row reads fine.
    let p = dir.path().join("inf2.npy");
    write_npy_f32(&p, 20, d, &a).unwrap();
    let ok = read_sample(&p, &opts(0, 0, Some((4, 20)), false), 100).unwrap();
    assert_eq!(ok.len(), 16 * d);
}

#[test]
fn source_is_send_and_boxable() {
    fn assert_send<T: Send>() {}
    assert_send::<ActivationSource>();
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "a.safetensors", 6, 2);
    let mut b: Box<dyn BatchSource> =
        Box::new(ActivationSource::open(&p, opts(2, 0, None, true)).unwrap());
    let mut out = [0.0; 8];
    assert_eq!(b.next_batch(&mut out).unwrap(), 4);
    assert_eq!(b.d(), 2);
}

#[test]
fn bad_batch_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "a.safetensors", 10, 3);
    let mut src = ActivationSource::open(&p, opts(0, 0, None, false)).unwrap();
    for len in [0, 4, 7] {
        let mut out = vec![0.0; len];
        let e = src.next_batch(&mut out).unwrap_err();
        assert!(matches!(e, DataError::BadBatch { .. }), "{e}");
        assert_msg(&e, &["a.safetensors", "d = 3"]);
    }
}

#[test]
fn absurd_shape_is_rejected_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wide.npy");
    // A header claiming a huge width is rejected by the size check, before any buffer exists.
    let mut b = header_bytes("<f4", &[1, usize::MAX / 8]);
    b.extend_from_slice(&[0u8; 4]);
    std::fs::write(&p, b).unwrap();
    let e = err_of(&p, opts(4, 0, None, true));
    assert!(matches!(e, DataError::CorruptNpy { .. }), "{e}");
}

// ------------------------------------------------------------------ streaming semantics

#[test]
fn one_pass_returns_fewer_then_zero_and_cycle_always_fills() {
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "a.safetensors", 10, 2);
    for shuffle in [0, 4] {
        let mut src = ActivationSource::open(&p, opts(shuffle, 3, None, false)).unwrap();
        let mut out = vec![0.0; 4 * 2];
        let counts: Vec<usize> = (0..5).map(|_| src.next_batch(&mut out).unwrap()).collect();
        assert_eq!(counts, [4, 4, 2, 0, 0]);
        let mut src = ActivationSource::open(&p, opts(shuffle, 3, None, true)).unwrap();
        for _ in 0..20 {
            assert_eq!(src.next_batch(&mut out).unwrap(), 4);
        }
        assert_eq!(src.rows_read(), 80);
        assert_eq!(src.epoch(), 7);
    }
}

#[test]
fn shuffle_changes_order_and_epochs_differ() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let p = st_file(dir.path(), "a.safetensors", n, 2);
    let mut src = ActivationSource::open(&p, opts(256, 9, None, true)).unwrap();
    let ids = read_ids(&mut src, 2 * n, 100);
    let (e0, e1) = ids.split_at(n);
    let identity: Vec<u64> = (0..n as u64).collect();
    assert_ne!(e0, &identity[..]);
    assert_ne!(e0, e1);
    // Different seeds give different orders; the same seed the same order.
    let again = read_ids(
        &mut ActivationSource::open(&p, opts(256, 9, None, true)).unwrap(),
        n,
        37,
    );
    assert_eq!(again, e0);
    let other = read_ids(
        &mut ActivationSource::open(&p, opts(256, 10, None, true)).unwrap(),
        n,
        37,
    );
    assert_ne!(other, e0);
    // No shuffling means file order.
    let plain = read_ids(
        &mut ActivationSource::open(&p, opts(0, 9, None, true)).unwrap(),
        n,
        64,
    );
    assert_eq!(plain, identity);
}

#[test]
fn range_split_is_disjoint_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let n = 250u64;
    let data = rows_data(n as usize, 2);
    let shards: Vec<&[f32]> = data.chunks(60 * 2).collect();
    write_store(dir.path(), 2, Elem::F32, &shards).unwrap();
    let split = 187;
    let mut train = ActivationSource::open_with_block_rows(
        dir.path(),
        opts(32, 5, Some((0, split)), false),
        Some(16),
    )
    .unwrap();
    let mut held = ActivationSource::open(dir.path(), opts(0, 5, Some((split, n)), false)).unwrap();
    assert_eq!(train.n_rows() + held.n_rows(), n);
    let a: BTreeSet<u64> = read_ids(&mut train, 10_000, 33).into_iter().collect();
    let b: BTreeSet<u64> = read_ids(&mut held, 10_000, 33).into_iter().collect();
    assert_eq!(a.len() as u64, split);
    assert_eq!(b.len() as u64, n - split);
    assert!(a.is_disjoint(&b));
    assert_eq!(a.union(&b).count() as u64, n);
    assert!(a.iter().all(|&i| i < split));
    // read_sample takes the first rows of the range.
    let s = read_sample(dir.path(), &opts(64, 5, Some((split, n)), true), 3).unwrap();
    assert_eq!(s, data[split as usize * 2..(split as usize + 3) * 2]);
    let s = read_sample(dir.path(), &opts(0, 0, Some((240, n)), false), 100).unwrap();
    assert_eq!(s.len(), 10 * 2);
}

#[test]
fn skip_past_end_of_one_pass_source() {
    let dir = tempfile::tempdir().unwrap();
    let p = st_file(dir.path(), "a.safetensors", 10, 2);
    let mut src = ActivationSource::open(&p, opts(4, 0, None, false)).unwrap();
    src.skip_rows(25).unwrap();
    assert_eq!(src.rows_read(), 10);
    assert_eq!(src.next_batch(&mut [0.0; 4]).unwrap(), 0);
}

// ------------------------------------------------------------------ files from other writers

/// `np.save` (numpy 2.4.6) of `np.array([[1.5, -2.0, 0.25], [3.0, 65504.0, -0.125]], np.float16)`.
const NUMPY_F16: &[u8] = &[
    147, 78, 85, 77, 80, 89, 1, 0, 118, 0, 123, 39, 100, 101, 115, 99, 114, 39, 58, 32, 39, 60,
    102, 50, 39, 44, 32, 39, 102, 111, 114, 116, 114, 97, 110, 95, 111, 114, 100, 101, 114, 39, 58,
    32, 70, 97, 108, 115, 101, 44, 32, 39, 115, 104, 97, 112, 101, 39, 58, 32, 40, 50, 44, 32, 51,
    41, 44, 32, 125, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
    32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
    32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 10, 0, 62, 0, 192, 0, 52, 0, 66,
    255, 123, 0, 176,
];

/// `safetensors.numpy.save` (safetensors 0.8.0) of `activations` = float32
/// `[[1.0, -2.5], [1e-3, 7.0], [0.0, -0.0]]` and `token_ids` = int64 `[5, 6, 7]` (stored first, so
/// the activations start at a non-zero data offset).
const PY_SAFETENSORS: &[u8] = &[
    136, 0, 0, 0, 0, 0, 0, 0, 123, 34, 116, 111, 107, 101, 110, 95, 105, 100, 115, 34, 58, 123, 34,
    100, 116, 121, 112, 101, 34, 58, 34, 73, 54, 52, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
    91, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48,
    44, 50, 52, 93, 125, 44, 34, 97, 99, 116, 105, 118, 97, 116, 105, 111, 110, 115, 34, 58, 123,
    34, 100, 116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
    58, 91, 51, 44, 50, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34,
    58, 91, 50, 52, 44, 52, 56, 93, 125, 125, 32, 32, 32, 32, 32, 32, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0,
    0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 32, 192, 111, 18, 131, 58, 0, 0,
    224, 64, 0, 0, 0, 0, 0, 0, 0, 128,
];

#[test]
fn reads_files_written_by_numpy_and_python_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("np.npy");
    std::fs::write(&p, NUMPY_F16).unwrap();
    let info = inspect(&p).unwrap();
    assert_eq!(
        (info.format, info.d, info.n_rows, info.dtype),
        (Format::Npy, 3, 2, Elem::F16)
    );
    let v = read_sample(&p, &SourceOptions::default(), 2).unwrap();
    assert_eq!(v, [1.5, -2.0, 0.25, 3.0, 65504.0, -0.125]);

    let p = dir.path().join("py.safetensors");
    std::fs::write(&p, PY_SAFETENSORS).unwrap();
    let info = inspect(&p).unwrap();
    assert_eq!((info.d, info.n_rows, info.dtype), (2, 3, Elem::F32));
    let v = read_sample(&p, &SourceOptions::default(), 3).unwrap();
    assert_eq!(v, [1.0, -2.5, 1e-3, 7.0, 0.0, -0.0]);
    let o = SourceOptions {
        tensor: Some("token_ids".into()),
        ..Default::default()
    };
    let e = read_sample(&p, &o, 3).unwrap_err();
    assert!(matches!(e, DataError::WrongRank { .. }), "{e}");
}

// ------------------------------------------------------------------ properties

fn prop_dataset(n: usize, d: usize, shards: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_data(n, d);
    let per = n.div_ceil(shards).max(1);
    let parts: Vec<&[f32]> = data.chunks(per * d).collect();
    write_store(dir.path(), d, Elem::F32, &parts).unwrap();
    let p = dir.path().to_path_buf();
    (dir, p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every epoch hands out exactly the range's rows, each once, whatever the buffer, block size,
    /// shard layout, seed and batch size.
    #[test]
    fn each_epoch_is_a_permutation_of_the_range(
        n in 1usize..200,
        d in 1usize..4,
        shards in 1usize..5,
        shuffle in 0usize..80,
        block in 1usize..40,
        seed in any::<u64>(),
        batch in 1usize..50,
        lo_frac in 0.0f64..0.5,
        hi_frac in 0.5f64..1.0,
    ) {
        let (_g, p) = prop_dataset(n, d, shards);
        let lo = (n as f64 * lo_frac) as u64;
        let hi = ((n as f64 * hi_frac).ceil() as u64).clamp(lo + 1, n as u64);
        let mut src = ActivationSource::open_with_block_rows(
            &p, opts(shuffle, seed, Some((lo, hi)), true), Some(block)).unwrap();
        let m = (hi - lo) as usize;
        let ids = read_ids(&mut src, 3 * m, batch);
        let want: Vec<u64> = (lo..hi).collect();
        for e in 0..3 {
            let mut epoch = ids[e * m..(e + 1) * m].to_vec();
            epoch.sort_unstable();
            prop_assert_eq!(&epoch, &want);
        }
    }

    /// With excluded ranges, every epoch hands out exactly the range's rows outside them (the
    /// training side of a spread holdout), and skipping stays exact.
    #[test]
    fn excluded_rows_are_never_handed_out(
        n in 2usize..200,
        shards in 1usize..4,
        shuffle in 0usize..60,
        block in 1usize..30,
        seed in any::<u64>(),
        batch in 1usize..40,
        holes in proptest::collection::vec((0u64..220, 0u64..30), 0..6),
        k in 0usize..300,
    ) {
        let (_g, p) = prop_dataset(n, 2, shards);
        let exclude: Vec<(u64, u64)> = holes.iter().map(|&(a, l)| (a, a + l)).collect();
        let want: Vec<u64> = (0..n as u64)
            .filter(|r| !exclude.iter().any(|&(a, b)| (a..b).contains(r)))
            .collect();
        prop_assert_eq!(
            subtract_ranges((0, n as u64), &exclude).iter().map(|(a, b)| b - a).sum::<u64>(),
            want.len() as u64
        );
        let o = SourceOptions { exclude: exclude.clone(), ..opts(shuffle, seed, None, true) };
        let open = || ActivationSource::open_with_block_rows(&p, o.clone(), Some(block));
        if want.is_empty() {
            let e = open().unwrap_err();
            prop_assert!(matches!(e, DataError::NothingLeft { .. }), "{}", e);
            return Ok(());
        }
        let mut src = open().unwrap();
        let m = want.len();
        prop_assert_eq!(src.n_rows(), m as u64);
        let ids = read_ids(&mut src, 2 * m + k, batch);
        for e in 0..2 {
            let mut epoch = ids[e * m..(e + 1) * m].to_vec();
            epoch.sort_unstable();
            prop_assert_eq!(&epoch, &want);
        }
        let mut b = open().unwrap();
        b.skip_rows(k as u64).unwrap();
        prop_assert_eq!(&read_ids(&mut b, 2 * m, batch)[..], &ids[k..k + 2 * m]);
    }

    /// skip_rows(k) on a fresh source, or a partial read then skip_rows(k - j), gives exactly the
    /// batches an uninterrupted run gives after k rows.
    #[test]
    fn skip_rows_resumes_exactly(
        n in 1usize..150,
        shards in 1usize..4,
        shuffle in 0usize..60,
        block in 1usize..30,
        seed in any::<u64>(),
        k in 0usize..400,
        j_frac in 0.0f64..1.0,
        batch in 1usize..40,
        cycle in any::<bool>(),
    ) {
        let (_g, p) = prop_dataset(n, 2, shards);
        let o = opts(shuffle, seed, None, cycle);
        let open = || ActivationSource::open_with_block_rows(&p, o.clone(), Some(block)).unwrap();
        let tail = 2 * n + 5;
        let mut a = open();
        let full = read_ids(&mut a, k + tail, batch);
        let expect = &full[k.min(full.len())..];

        let mut b = open();
        b.skip_rows(k as u64).unwrap();
        prop_assert_eq!(b.rows_read(), (k as u64).min(if cycle { u64::MAX } else { n as u64 }));
        prop_assert_eq!(&read_ids(&mut b, tail, batch)[..], expect);

        let j = (k as f64 * j_frac) as usize;
        let mut c = open();
        let _ = read_ids(&mut c, j, batch.max(1));
        c.skip_rows((k - j) as u64).unwrap();
        prop_assert_eq!(&read_ids(&mut c, tail, 7)[..], expect);
    }
}
