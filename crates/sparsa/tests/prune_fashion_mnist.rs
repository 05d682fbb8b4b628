//! On the real Fashion-MNIST (fetched through `sparsa::data::fetch`), one epoch of
//! LeNet-300-100 reaches at least 80 % test accuracy, and its dead-neuron rates are sane.

use candle_core::DType;
use sparsa::data::fetch::{ensure, Asset};
use sparsa::nn::models::{Arch, InputSpec, Net};
use sparsa::nn::schedule::Decay;
use sparsa::prune::runner::{load_dataset, DataConfig, Dataset};
use sparsa::prune::train::{train, TrainConfig, TrainJob};
use sparsa::util::progress::{Cancel, NoProgress};

#[test]
fn one_epoch_of_lenet_reaches_80_percent() {
    let dir = ensure(Asset::FashionMnist).expect("fetch Fashion-MNIST");
    let cfg = DataConfig {
        dataset: Dataset::FashionMnist,
        dir: None,
        train_subset: 0,
        test_subset: 0,
        input: Default::default(),
    };
    let (tr, te) = load_dataset(&cfg, &dir).unwrap();
    assert_eq!((tr.len(), te.len()), (60_000, 10_000));
    let input = InputSpec {
        channels: 1,
        height: 28,
        width: 28,
        classes: 10,
    };
    let mut net = Net::new(Arch::Lenet300100, input, 0, DType::F32).unwrap();
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 128,
        lr: 0.05,
        warmup_epochs: 0.1,
        decay: Decay::Cosine,
        momentum: 0.9,
        weight_decay: 5e-4,
        augment: false,
        pad: 4,
        eval_batch: 1000,
        reference: false,
    };
    let mut on_epoch = |_: &sparsa::prune::train::EpochMetrics| Ok(());
    let out = train(
        &mut net,
        TrainJob {
            train: &tr,
            test: &te,
            config: &tc,
            data_seed: 0,
            start_step: 0,
            capture_at: None,
            progress: &NoProgress,
            cancel: &Cancel::new(),
            on_epoch: &mut on_epoch,
        },
    )
    .unwrap();
    let m = &out.epochs[0];
    assert!(m.test_acc >= 0.80, "test accuracy {}", m.test_acc);
    let d = &m.train_dnr;
    assert_eq!(d.layers.len(), 2);
    assert_eq!(d.layers[0].units, 300);
    assert!(d.global_dynamic > 0.0 && d.global_dynamic < 1.0);
    let s = m.test_dnr.global_static.unwrap();
    assert!(s <= m.test_dnr.global_dynamic, "static {s} > dynamic");
}
