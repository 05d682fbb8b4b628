//! Save → load, exact resume, and bad input: each bad input gives a clear error, never a panic.

mod cases;
use sparsa::data::activations::{write_safetensors_2d, Elem};
use sparsa::data::npy::write_npy_f32;
use sparsa::sae::config::RunConfig;
use sparsa::sae::io::{load_sae, save_sae};
use sparsa::sae::metrics::{evaluate, Form};
use sparsa::sae::train::{DataSpec, Trainer};
use sparsa::util::progress::{Cancel, NoProgress};
use std::path::Path;

fn cfg(arch: &str, aux: &str, data: &str) -> RunConfig {
    let text = format!(
        r#"
[sae]
architecture = "{arch}"
d_sae = 32
k = 3
[aux]
kind = "{aux}"
dead_tokens = 256
density_window_tokens = 2048
[train]
batch_size = 64
steps = 24
lr = 3e-3
warmup_steps = 4
seed = 3
init_sample = 256
[data]
{data}
"#
    );
    RunConfig::from_toml(&text, &[], "test").unwrap()
}

const SYNTH: &str = "synthetic = { d = 12, n_features = 20, seed = 2 }";

fn trained(c: &RunConfig, steps: Option<u64>) -> Trainer {
    let data = DataSpec::open(c).unwrap();
    let mut t = Trainer::new(c.clone(), data.d(), &data.init_sample(c).unwrap()).unwrap();
    let mut src = data.training_source(c, 0).unwrap();
    t.run(
        src.as_mut(),
        None,
        &NoProgress,
        &Cancel::new(),
        steps,
        &mut |_| Ok(()),
    )
    .unwrap();
    t
}

#[test]
fn save_load_gives_identical_outputs() {
    for arch in ["topk", "mutual_choice", "feature_choice"] {
        let c = cfg(arch, "aux_zipf", SYNTH);
        let t = trained(&c, None);
        let dir = tempfile::tempdir().unwrap();
        let m = t.model();
        save_sae(dir.path(), &m).unwrap();
        let back = load_sae(dir.path()).unwrap();
        assert_eq!(back.params, m.params, "{arch}");
        assert_eq!(back.thresholds, m.thresholds, "{arch}");
        assert_eq!(back.meta, m.meta, "{arch}");
        assert_eq!(
            back.export_architecture(),
            if arch == "topk" { "topk" } else { "jumprelu" }
        );
        let data = DataSpec::open(&c).unwrap();
        for form in [Form::Training, Form::Inference] {
            let r1 = evaluate(
                &m,
                form,
                data.eval_source(&c, 512).unwrap().as_mut(),
                64,
                512,
                &NoProgress,
            )
            .unwrap();
            let r2 = evaluate(
                &back,
                form,
                data.eval_source(&c, 512).unwrap().as_mut(),
                64,
                512,
                &NoProgress,
            )
            .unwrap();
            assert_eq!(r1.fvu.to_bits(), r2.fvu.to_bits(), "{arch} {form:?}");
            assert_eq!(r1.l0_mean, r2.l0_mean);
        }
        // Folding the input scaling keeps the training-space reconstruction: the folded model's
        // FVU on raw data equals the trainer's on scaled data up to rounding.
        assert!(t.scale != 1.0);
    }
}

#[test]
fn interrupted_and_resumed_run_is_bit_identical() {
    for (arch, aux) in [
        ("topk", "aux_k"),
        ("mutual_choice", "aux_zipf"),
        ("feature_choice", "aux_k"),
    ] {
        let c = cfg(arch, aux, SYNTH);
        let full = trained(&c, None);

        let dir = tempfile::tempdir().unwrap();
        let data = DataSpec::open(&c).unwrap();
        let mut t = Trainer::new(c.clone(), data.d(), &data.init_sample(&c).unwrap()).unwrap();
        let mut src = data.training_source(&c, 0).unwrap();
        let end = t
            .run(
                src.as_mut(),
                Some(dir.path()),
                &NoProgress,
                &Cancel::new(),
                Some(11),
                &mut |_| Ok(()),
            )
            .unwrap();
        assert_eq!(end, sparsa::sae::train::RunEnd::Stopped);
        drop(t);
        let mut r = Trainer::resume(dir.path()).unwrap();
        assert_eq!(r.state.step, 11);
        let mut src = data.training_source(&r.cfg, r.state.tokens).unwrap();
        r.run(
            src.as_mut(),
            Some(dir.path()),
            &NoProgress,
            &Cancel::new(),
            None,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(r.params, full.params, "{arch}: weights differ after resume");
        assert_eq!(
            r.state, full.state,
            "{arch}: trainer state differs after resume"
        );
    }
}

#[test]
fn resume_reads_file_data_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 700;
    let d = 10;
    let data: Vec<f32> = (0..rows * d)
        .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
        .collect();
    let path = dir.path().join("acts.npy");
    write_npy_f32(&path, rows, d, &data).unwrap();
    let mut c = cfg(
        "topk",
        "aux_k",
        &format!(
            "path = {:?}\nshuffle_buffer = 128\nholdout_tokens = 100",
            path
        ),
    );
    c.train.steps = 16;
    let full = trained(&c, None);
    let ck = dir.path().join("run");
    let ds = DataSpec::open(&c).unwrap();
    let mut t = Trainer::new(c.clone(), ds.d(), &ds.init_sample(&c).unwrap()).unwrap();
    let mut src = ds.training_source(&c, 0).unwrap();
    t.run(
        src.as_mut(),
        Some(&ck),
        &NoProgress,
        &Cancel::new(),
        Some(7),
        &mut |_| Ok(()),
    )
    .unwrap();
    let mut r = Trainer::resume(&ck).unwrap();
    let mut src = ds.training_source(&r.cfg, r.state.tokens).unwrap();
    r.run(
        src.as_mut(),
        None,
        &NoProgress,
        &Cancel::new(),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(r.params, full.params);
}

fn err_of<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.expect_err("expected an error").to_string()
}

fn train_on(path: &Path) -> Result<u64, sparsa::sae::SaeError> {
    let c = cfg("topk", "none", &format!("path = {:?}", path));
    let data = DataSpec::open(&c)?;
    let sample = data.init_sample(&c)?;
    let mut t = Trainer::new(c.clone(), data.d(), &sample)?;
    let mut src = data.training_source(&c, 0)?;
    t.run(
        src.as_mut(),
        None,
        &NoProgress,
        &Cancel::new(),
        None,
        &mut |_| Ok(()),
    )?;
    Ok(t.state.step)
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    // One case per kind of bad input; every case runs (table-driven).
    type Case<'a> = Box<dyn Fn() + 'a>;
    let table: Vec<(&str, Case)> = vec![
        (
            "missing file",
            Box::new(|| {
                // Missing file.
                let e = err_of(train_on(&p("nope.safetensors")));
                assert!(
                    e.contains("nope.safetensors") && e.contains("no such file"),
                    "{e}"
                );
            }),
        ),
        (
            "corrupt safetensors",
            Box::new(|| {
                // Corrupt safetensors.
                std::fs::write(
                    p("bad.safetensors"),
                    b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
                )
                .unwrap();
                let e = err_of(train_on(&p("bad.safetensors")));
                assert!(
                    e.contains("bad.safetensors") && e.contains("safetensors"),
                    "{e}"
                );
            }),
        ),
        (
            "wrong rank",
            Box::new(|| {
                // Wrong rank: a 1-D tensor.
                let one_d: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
                sparsa::data::activations::write_safetensors(
                    &p("rank.safetensors"),
                    &[sparsa::data::activations::RawTensor {
                        name: "activations",
                        dtype: safetensors::Dtype::F32,
                        shape: vec![8],
                        data: &one_d,
                    }],
                )
                .unwrap();
                let e = err_of(train_on(&p("rank.safetensors")));
                assert!(
                    e.contains("rank.safetensors") && (e.contains("2-D") || e.contains("rank")),
                    "{e}"
                );
            }),
        ),
        (
            "wrong dtype",
            Box::new(|| {
                // Wrong dtype: i64.
                let ints: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
                sparsa::data::activations::write_safetensors(
                    &p("dtype.safetensors"),
                    &[sparsa::data::activations::RawTensor {
                        name: "activations",
                        dtype: safetensors::Dtype::I64,
                        shape: vec![4, 4],
                        data: &ints,
                    }],
                )
                .unwrap();
                let e = err_of(train_on(&p("dtype.safetensors")));
                assert!(e.contains("dtype.safetensors") && e.contains("I64"), "{e}");
            }),
        ),
        (
            "non-finite values",
            Box::new(|| {
                // NaN in a batch (beyond the init sample, so it is the training batch that catches it).
                let mut vals: Vec<f32> = (0..2000 * 4).map(|i| (i % 7) as f32 - 3.0).collect();
                vals[1500 * 4 + 2] = f32::NAN;
                write_safetensors_2d(
                    &p("nan.safetensors"),
                    "activations",
                    2000,
                    4,
                    &vals,
                    Elem::F32,
                )
                .unwrap();
                let e = err_of(train_on(&p("nan.safetensors")));
                assert!(e.contains("NaN") || e.contains("nan"), "{e}");
                // Inf in the init sample.
                vals[1500 * 4 + 2] = 0.0;
                vals[3] = f32::INFINITY;
                write_safetensors_2d(
                    &p("inf.safetensors"),
                    "activations",
                    2000,
                    4,
                    &vals,
                    Elem::F32,
                )
                .unwrap();
                let e = err_of(train_on(&p("inf.safetensors")));
                assert!(e.to_lowercase().contains("inf"), "{e}");
            }),
        ),
        (
            "config errors",
            Box::new(|| {
                // Config errors: k = 0, k > F, unknown architecture, unreadable key.
                let base = "[sae]\narchitecture = \"topk\"\nd_sae = 8\nk = 2\n[train]\nsteps = 1\n[data]\npath = \"x.npy\"\n";
                let e = err_of(RunConfig::from_toml(base, &["sae.k=0".into()], "c.toml"));
                assert!(e.contains("sae.k") && e.contains("at least 1"), "{e}");
                let e = err_of(RunConfig::from_toml(base, &["sae.k=9".into()], "c.toml"));
                assert!(e.contains("exceeds sae.d_sae"), "{e}");
                let e = err_of(RunConfig::from_toml(
                    base,
                    &["sae.architecture=gated".into()],
                    "c.toml",
                ));
                // The override is at fault, so the error names it and not the file (issue 12).
                assert!(
                    e.contains("gated")
                        && e.contains("--set sae.architecture")
                        && !e.contains("c.toml"),
                    "{e}"
                );
                let e = err_of(RunConfig::from_toml(
                    &format!("{base}\n[aux]\nkin = \"aux_k\"\n"),
                    &[],
                    "c.toml",
                ));
                assert!(e.contains("kin"), "{e}");
                let e = err_of(RunConfig::from_toml("[sae\narchitecture=", &[], "c.toml"));
                assert!(e.contains("c.toml"), "{e}");
            }),
        ),
        (
            "broken SAE directory",
            Box::new(|| {
                // Loading a broken SAE directory.
                let e = err_of(load_sae(&p("no-sae")));
                assert!(e.contains("cfg.json"), "{e}");
                let sae_dir = p("sae");
                std::fs::create_dir_all(&sae_dir).unwrap();
                std::fs::write(
                    sae_dir.join("cfg.json"),
                    r#"{"architecture":"gated","d_in":4,"d_sae":8}"#,
                )
                .unwrap();
                let e = err_of(load_sae(&sae_dir));
                assert!(e.contains("unsupported architecture `gated`"), "{e}");
                std::fs::write(
                    sae_dir.join("cfg.json"),
                    r#"{"architecture":"topk","d_in":4,"d_sae":8,"k":2}"#,
                )
                .unwrap();
                std::fs::write(sae_dir.join("sae_weights.safetensors"), b"truncated").unwrap();
                let e = err_of(load_sae(&sae_dir));
                assert!(
                    e.contains("sae_weights.safetensors") && e.contains("corrupt"),
                    "{e}"
                );
            }),
        ),
    ];
    cases::each_named(table, |check| check());
}
