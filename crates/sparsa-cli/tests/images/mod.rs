//! A small synthetic image set in IDX files, for CLI tests of the pruning commands.

use std::path::Path;

/// 8×8 images of 4 classes: a bright 4×4 block in quadrant `class`, plus noise.
pub fn write_images(dir: &Path, n_train: usize, n_test: usize) {
    use sparsa::data::idx::encode_idx;
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 120) as u8
    };
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut img = Vec::with_capacity(n * 64);
        let mut lab = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 4;
            lab.push(c as u8);
            for y in 0..8 {
                for x in 0..8 {
                    let q = (y / 4) * 2 + x / 4;
                    // Overlapping intensities, so accuracy falls as weights go.
                    img.push(if q == c { 90 } else { 60 } + noise());
                }
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[n, 8, 8], &img),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[n], &lab),
        )
        .unwrap();
    }
}
