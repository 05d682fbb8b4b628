//! Throughput and memory of the activation input layer.
//!
//! ```text
//! cargo run --release -p sparsa --example activations_bench -- [rows] [d] [shuffle_buffer]
//! ```
//! Writes a synthetic dataset (f32 safetensors, f32 .npy, and a 4-shard bf16 store) to a temporary
//! directory, then reads one full epoch of each (each case twice, to show the cold
//! and warm figures) in batches of 4096 rows and prints rows/s, MB/s of
//! f32 handed out, and the process's anonymous resident memory (heap; mapped file pages are
//! cache and are not counted), plus the cost of `skip_rows`.

use sparsa::data::activations::{
    write_safetensors_2d, write_store, ActivationSource, BatchSource, Elem, SourceOptions,
};
use sparsa::data::npy::write_npy_f32;
use std::path::Path;
use std::time::Instant;

fn rss_anon_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn epoch(path: &Path, shuffle: usize, n: u64) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let opts = SourceOptions {
        shuffle_buffer: shuffle,
        seed: 1,
        cycle: true,
        ..Default::default()
    };
    let mut src = ActivationSource::open(path, opts)?;
    let d = src.d();
    let batch = 4096;
    let mut out = vec![0.0f32; batch * d];
    let t = Instant::now();
    let mut done = 0u64;
    let mut checksum = 0.0f64;
    while done < n {
        let rows = (batch as u64).min(n - done) as usize;
        let got = src.next_batch(&mut out[..rows * d])?;
        checksum += out[0] as f64;
        done += got as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(checksum);
    Ok((done as f64 / secs, rss_anon_mb()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (n, d, shuffle) = (arg(1, 100_000), arg(2, 576), arg(3, 65_536));
    let dir = tempfile::tempdir()?;
    let data: Vec<f32> = (0..n * d)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let st = dir.path().join("acts.safetensors");
    let np = dir.path().join("acts.npy");
    let store = dir.path().join("store");
    let t = Instant::now();
    write_safetensors_2d(&st, "activations", n, d, &data, Elem::F32)?;
    write_npy_f32(&np, n, d, &data)?;
    let per = n.div_ceil(4) * d;
    let shards: Vec<&[f32]> = data.chunks(per).collect();
    write_store(&store, d, Elem::BF16, &shards)?;
    let write_s = t.elapsed().as_secs_f64();
    drop(data);
    let mb = (n * d * 4) as f64 / 1e6;
    println!(
        "dataset: {n} rows x d={d} ({mb:.0} MB as f32); shuffle_buffer {shuffle} rows = {:.0} MB; wrote 3 copies in {write_s:.1} s",
        (shuffle * d * 4) as f64 / 1e6
    );
    println!(
        "{:<34} {:>12} {:>10} {:>14}",
        "source", "rows/s", "MB/s", "RssAnon MB"
    );
    let cases: [(&str, &Path, usize); 5] = [
        ("safetensors f32, file order", &st, 0),
        ("npy f32, file order", &np, 0),
        ("safetensors f32, shuffled", &st, shuffle),
        ("store 4 shards bf16, file order", &store, 0),
        ("store 4 shards bf16, shuffled", &store, shuffle),
    ];
    // Each case twice: the first pass also pays for page faults on the fresh mapping.
    for (name, p, s) in cases.iter().chain(cases.iter()) {
        let (name, p, s) = (*name, *p, *s);
        let (rps, rss) = epoch(p, s, n as u64)?;
        println!(
            "{name:<34} {rps:>12.0} {:>10.0} {rss:>14.0}",
            rps * (d * 4) as f64 / 1e6
        );
    }
    let opts = SourceOptions {
        shuffle_buffer: shuffle,
        seed: 1,
        cycle: true,
        ..Default::default()
    };
    let mut src = ActivationSource::open(&st, opts)?;
    let skip = 3 * n as u64 + n as u64 / 2;
    let t = Instant::now();
    src.skip_rows(skip)?;
    let mut out = vec![0.0f32; d];
    src.next_batch(&mut out)?;
    println!(
        "skip_rows({skip}) (3.5 epochs, shuffled) + first row: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
