//! Run identity: what, besides the configuration, a run directory's results depend on.
//!
//! A run directory is named by a hash of its configuration, so a rerun resumes or reuses it.
//! The configuration alone is not enough: results also depend on the code that produced them and
//! on the data files. `identity.json` records
//! - the sparsa version (`CARGO_PKG_VERSION`) and [`RUN_FORMAT`], a number bumped by hand whenever
//!   a change alters what a run computes or the files it writes (training, pruning, DNR, layout);
//! - the kernel set the engine ran on ([`crate::nn::fast::direct::kernel_set`]): the direct
//!   AVX-512 kernels, the AVX2 build of the sparse convolution and the portable fallback sum in
//!   different orders, so their float results differ in the last bits;
//! - a fingerprint of the data: each file's name, size in bytes and SHA-256 of its bytes as stored.
//!
//! [`check_or_record`] refuses to resume or reuse a directory whose recorded identity differs
//! (or that has results but no identity: made before identities existed), naming each
//! difference; with `allow_mismatch` it continues and appends the new identity to the record, so
//! a mixed directory stays visibly mixed.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout::RunLayout;
use super::{io_err, PruneError, Result};
use crate::util::fs::atomic_write;

/// Bumped by hand when a change alters what a run computes or writes. History: 1 = run
/// directories before identities were recorded; 2 = identities, input ranges, `reinit`, iterative
/// SNIP/SynFlow, start-state digests in `metrics.json`; 3 = training, evaluation and DNR probes
/// on the fused `nn::fast` engine (float results differ from the candle path's); 4 = direct
/// AVX-512 kernels for small-channel convolutions and linear evaluation, and the kernel set in
/// the identity; 5 = sparse-weight kernels for pruned convolutions (`nn::fast::sparse_conv`:
/// another summation order for layers below the density threshold); 6 = Winograd F(2×2, 3×3)
/// for 3×3 convolutions of more than 64 output channels (`nn::fast::winograd`: another
/// summation order for VGG's and Conv-4/6's wide layers); 7 = sparse convolutions of small maps
/// on planes of several images side by side (another summation order for their weight
/// gradient, and the sparse switch reads their smaller waste).
pub const RUN_FORMAT: u32 = 7;

/// One data file's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// File name (without the directory, which differs between machines).
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the bytes as stored (gzipped or not), hex.
    pub sha256: String,
}

/// The code and data a run directory's results were made with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunIdentity {
    pub sparsa_version: String,
    pub run_format: u32,
    /// The engine's kernel set ("" in records made before it was recorded).
    #[serde(default)]
    pub kernels: String,
    pub data: Vec<DataFile>,
}

impl RunIdentity {
    /// This build's identity for the given data fingerprint.
    pub fn current(data: Vec<DataFile>) -> Self {
        RunIdentity {
            sparsa_version: env!("CARGO_PKG_VERSION").to_string(),
            run_format: RUN_FORMAT,
            kernels: crate::nn::fast::direct::kernel_set().to_string(),
            data,
        }
    }

    /// Human-readable differences from `recorded` (empty when identical).
    pub fn differences(&self, recorded: &RunIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if self.sparsa_version != recorded.sparsa_version {
            out.push(format!(
                "sparsa version {} (recorded {})",
                self.sparsa_version, recorded.sparsa_version
            ));
        }
        if self.run_format != recorded.run_format {
            out.push(format!(
                "run format {} (recorded {})",
                self.run_format, recorded.run_format
            ));
        }
        if self.kernels != recorded.kernels {
            out.push(format!(
                "kernels {} (recorded {})",
                self.kernels,
                if recorded.kernels.is_empty() {
                    "none"
                } else {
                    &recorded.kernels
                }
            ));
        }
        let names = |v: &[DataFile]| v.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        if names(&self.data) != names(&recorded.data) {
            out.push(format!(
                "data files {:?} (recorded {:?})",
                names(&self.data),
                names(&recorded.data)
            ));
        } else {
            for (a, b) in self.data.iter().zip(&recorded.data) {
                if a.bytes != b.bytes || a.sha256 != b.sha256 {
                    out.push(format!(
                        "data file {}: {} bytes, sha256 {}… (recorded {} bytes, sha256 {}…)",
                        a.name,
                        a.bytes,
                        &a.sha256[..a.sha256.len().min(12)],
                        b.bytes,
                        &b.sha256[..b.sha256.len().min(12)]
                    ));
                }
            }
        }
        out
    }
}

/// `identity.json`: the identity the directory was created with, and any identities that were
/// later mixed in with `--allow-identity-mismatch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdentityRecord {
    pub created: RunIdentity,
    #[serde(default)]
    pub mixed_in: Vec<RunIdentity>,
}

impl IdentityRecord {
    /// Read `<run_dir>/identity.json`, `None` when absent.
    pub fn read(run_dir: &Path) -> Result<Option<Self>> {
        let p = RunLayout::new(run_dir).identity();
        if !p.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PruneError::Corrupt {
                path: p,
                msg: e.to_string(),
            })
    }

    fn write(&self, run_dir: &Path) -> Result<()> {
        let p = RunLayout::new(run_dir).identity();
        let s = serde_json::to_vec_pretty(self).map_err(|e| PruneError::Corrupt {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        atomic_write(&p, &s).map_err(io_err(&p))
    }
}

/// SHA-256 fingerprints of `paths` (name, size, hash), in the given order.
pub fn fingerprint_files(paths: &[PathBuf]) -> Result<Vec<DataFile>> {
    paths
        .iter()
        .map(|p| {
            let mut f = std::fs::File::open(p).map_err(io_err(p))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut bytes = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(io_err(p))?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                h.update(&buf[..n]);
            }
            Ok(DataFile {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes,
                sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            })
        })
        .collect()
}

/// What [`check_or_record`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCheck {
    /// A new directory: the identity was recorded.
    Recorded,
    /// The recorded identity matches.
    Matches,
    /// It differed and `allow_mismatch` was set: these differences were accepted and the identity
    /// appended to the record.
    MismatchAllowed(Vec<String>),
}

/// Compare `current` with the identity recorded in `run_dir` (recording it when the directory is
/// new). A directory that already holds results but no identity counts as a mismatch.
pub fn check_or_record(
    run_dir: &Path,
    current: &RunIdentity,
    allow_mismatch: bool,
) -> Result<IdentityCheck> {
    let diffs = match IdentityRecord::read(run_dir)? {
        Some(rec) => {
            let d = current.differences(&rec.created);
            if d.is_empty() {
                return Ok(IdentityCheck::Matches);
            }
            if !allow_mismatch {
                return Err(mismatch(run_dir, &d));
            }
            let mut rec = rec;
            if !rec.mixed_in.contains(current) {
                rec.mixed_in.push(current.clone());
                rec.write(run_dir)?;
            }
            d
        }
        None => {
            if !has_results(run_dir) {
                IdentityRecord {
                    created: current.clone(),
                    mixed_in: Vec::new(),
                }
                .write(run_dir)?;
                return Ok(IdentityCheck::Recorded);
            }
            let d = vec![
                "no identity recorded: the results were made by a sparsa without run identities"
                    .to_string(),
            ];
            if !allow_mismatch {
                return Err(mismatch(run_dir, &d));
            }
            IdentityRecord {
                created: RunIdentity {
                    sparsa_version: "unknown".into(),
                    run_format: 1,
                    kernels: String::new(),
                    data: Vec::new(),
                },
                mixed_in: vec![current.clone()],
            }
            .write(run_dir)?;
            d
        }
    };
    Ok(IdentityCheck::MismatchAllowed(diffs))
}

fn mismatch(run_dir: &Path, diffs: &[String]) -> PruneError {
    PruneError::IdentityMismatch {
        dir: run_dir.to_path_buf(),
        differences: diffs.join("; "),
    }
}

/// Whether any round of any cell has a record (or the directory has any cell at all).
fn has_results(run_dir: &Path) -> bool {
    std::fs::read_dir(super::layout::RunLayout::new(run_dir).cells())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: &str, sha: &str) -> RunIdentity {
        RunIdentity {
            sparsa_version: v.into(),
            run_format: RUN_FORMAT,
            kernels: crate::nn::fast::direct::kernel_set().into(),
            data: vec![DataFile {
                name: "train.gz".into(),
                bytes: 10,
                sha256: sha.into(),
            }],
        }
    }

    #[test]
    fn records_matches_refuses_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        let a = id("0.1.0", "aaaa");
        assert_eq!(
            check_or_record(d.path(), &a, false).unwrap(),
            IdentityCheck::Recorded
        );
        assert_eq!(
            check_or_record(d.path(), &a, false).unwrap(),
            IdentityCheck::Matches
        );
        let b = id("0.1.0", "bbbb");
        let e = check_or_record(d.path(), &b, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.gz") && e.contains("--allow-identity-mismatch"),
            "{e}"
        );
        let IdentityCheck::MismatchAllowed(diffs) = check_or_record(d.path(), &b, true).unwrap()
        else {
            panic!("override must be reported as a mismatch")
        };
        assert_eq!(diffs.len(), 1);
        let rec = IdentityRecord::read(d.path()).unwrap().unwrap();
        assert_eq!(rec.created, a);
        assert_eq!(rec.mixed_in, vec![b.clone()]);
        // Still refused without the flag, and the version is named.
        let c = id("9.9.9", "aaaa");
        let e = check_or_record(d.path(), &c, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("9.9.9"), "{e}");
    }

    #[test]
    fn results_without_identity_are_a_mismatch() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("cells/x")).unwrap();
        let a = id("0.1.0", "aaaa");
        let e = check_or_record(d.path(), &a, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no identity recorded"), "{e}");
        assert!(matches!(
            check_or_record(d.path(), &a, true).unwrap(),
            IdentityCheck::MismatchAllowed(_)
        ));
    }

    #[test]
    fn fingerprint_names_sizes_and_hashes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.bin");
        std::fs::write(&p, b"abc").unwrap();
        let f = fingerprint_files(&[p]).unwrap();
        assert_eq!(f[0].name, "f.bin");
        assert_eq!(f[0].bytes, 3);
        // SHA-256("abc").
        assert_eq!(
            f[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
