//! Recovery on synthetic ground truth: each allocation rule learns the dictionary.

use sparsa::sae::compare::{train_and_evaluate, variant_config, Variant};
use sparsa::sae::config::{Architecture, AuxKind, RunConfig};
use sparsa::util::progress::{Cancel, NoProgress};

fn base() -> RunConfig {
    let text = r#"
[sae]
architecture = "topk"
d_sae = 96
k = 4
[aux]
kind = "aux_k"
dead_tokens = 20000
density_window_tokens = 20000
[train]
batch_size = 512
steps = 1500
lr = 4e-3
warmup_steps = 20
seed = 0
init_sample = 2048
[data.synthetic]
d = 32
n_features = 48
mean_active = 3.0
zipf_exponent = 0.3
complexity_spread = 2.0
noise_std = 0.005
seed = 7
"#;
    RunConfig::from_toml(text, &[], "test").unwrap()
}

fn check(arch: Architecture) {
    let cfg = variant_config(
        &base(),
        Variant {
            architecture: arch,
            aux: AuxKind::AuxK,
        },
    );
    let r = train_and_evaluate(&cfg, None, 4096, &NoProgress, &Cancel::new(), &mut |_| {
        Ok(())
    })
    .unwrap()
    .unwrap();
    let (mmcs, recovered) = r.recovery.unwrap();
    eprintln!(
        "{}: fvu {:.4} L0 {:.2} mmcs {mmcs:.3} recovered {recovered:.3}",
        arch.name(),
        r.eval.fvu,
        r.eval.l0_mean
    );
    assert!(mmcs >= 0.9, "{}: MMCS {mmcs}", arch.name());
    assert!(recovered >= 0.9, "{}: recovered {recovered}", arch.name());
}

#[test]
fn topk_recovers_the_dictionary() {
    check(Architecture::TopK);
}

#[test]
fn mutual_choice_recovers_the_dictionary() {
    check(Architecture::MutualChoice);
}

#[test]
fn feature_choice_recovers_the_dictionary() {
    check(Architecture::FeatureChoice);
}
