"""Side-by-side CPU throughput of the pruning-half models: `sparsa bench prune` against PyTorch.

Optional and never needed by the tests. Set-up (CPU-only use; the default PyPI wheel also works
once its CUDA libraries are installed):
    python3 -m venv venv && venv/bin/pip install torch numpy
Usage (from the repository root, after `cargo build --release -p sparsa-cli`):
    venv/bin/python bench/torch_cnn.py [--models lenet,lenet5,conv2,conv4,conv6,resnet20,vgg11,vgg16,vgg19]
        (sparsa's names, conv-4 or lenet-300-100, work too)
        [--batch 128] [--threads 2] [--steps 10] [--sparsa target/release/sparsa]
For each model it runs PyTorch and sparsa alternately, each in its own process (so peak RSS is
per model), with the same architecture, input shape, batch and thread count: LeNet-300-100 and
Conv-2/4/6 on 1x28x28, ResNet-20 and VGG-11/16/19 (BatchNorm) on 3x32x32, 10 classes, random
inputs, SGD with momentum (LeNet-5 on 1x28x28 too). Figures are the median step over --steps timed steps after one
warm-up step. It prints one JSON line per run and a table of sparsa/PyTorch ratios.
`--torch-only` skips sparsa."""
import argparse, json, os, resource, statistics, subprocess, sys, time

MODELS = {"lenet": "lenet-300-100", "lenet5": "lenet-5", "conv2": "conv-2", "conv4": "conv-4", "conv6": "conv-6",
          "resnet20": "resnet-20", "vgg11": "vgg-11", "vgg16": "vgg-16", "vgg19": "vgg-19"}


def build(name):
    import torch.nn as nn, torch.nn.functional as F

    def lenet():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                             nn.Linear(100, 10))

    def lenet5():  # 5x5 conv 6 (padding 2), pool, 5x5 conv 16, pool, 120, 84, 10; ReLU, max pooling
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                             nn.ReLU(), nn.Linear(84, 10))

    def conv_n(n):  # Frankle & Carbin: pairs of 3x3 convs (64, 128, 256), 2x2 max pool after each pair
        chans = [64, 64, 128, 128, 256, 256][:n]; layers = []; c = 1
        for i, o in enumerate(chans):
            layers += [nn.Conv2d(c, o, 3, padding=1), nn.ReLU()]; c = o
            if i % 2 == 1: layers.append(nn.MaxPool2d(2))
        side = 28
        for _ in range(n // 2): side //= 2
        layers += [nn.Flatten(), nn.Linear(c * side * side, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                   nn.Linear(256, 10)]
        return nn.Sequential(*layers)

    class Block(nn.Module):
        def __init__(s, i, o, stride):
            super().__init__()
            s.c1 = nn.Conv2d(i, o, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(o)
            s.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(o)
            s.sc = nn.Sequential()
            if stride != 1 or i != o:
                s.sc = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

        def forward(s, x):
            y = F.relu(s.b1(s.c1(x))); y = s.b2(s.c2(y)); return F.relu(y + s.sc(x))

    class ResNet20(nn.Module):
        def __init__(s):
            super().__init__()
            s.c = nn.Conv2d(3, 16, 3, 1, 1, bias=False); s.b = nn.BatchNorm2d(16)
            blocks = []; i = 16
            for o, st in [(16, 1), (32, 2), (64, 2)]:
                for j in range(3):
                    blocks.append(Block(i, o, st if j == 0 else 1)); i = o
            s.layers = nn.Sequential(*blocks); s.fc = nn.Linear(64, 10)

        def forward(s, x):
            x = F.relu(s.b(s.c(x))); x = s.layers(x); return s.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    vgg_cfg = {"vgg11": [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512],
               "vgg16": [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512],
               "vgg19": [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
                         512, 512, 512, 512]}

    class Vgg(nn.Module):  # OpenLTH's CIFAR VGG (four max pools, global average pool, 512 -> 10), as sparsa
        def __init__(s, cfg):
            super().__init__()
            layers = []; c = 3
            for v in cfg:
                if v == 'M': layers.append(nn.MaxPool2d(2))
                else: layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]; c = v
            s.f = nn.Sequential(*layers); s.fc = nn.Linear(512, 10)

        def forward(s, x):
            return s.fc(F.adaptive_avg_pool2d(s.f(x), 1).flatten(1))

    if name == "lenet": return lenet()
    if name == "lenet5": return lenet5()
    if name.startswith("conv"): return conv_n(int(name[4:]))
    if name == "resnet20": return ResNet20()
    return Vgg(vgg_cfg[name])


def torch_child(name, batch, steps, threads):
    import torch, torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build(name)
    shape = (batch, 1, 28, 28) if name.startswith("lenet") or name.startswith("conv") else (batch, 3, 32, 32)
    x = torch.randn(*shape); y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True); loss = F.cross_entropy(m(x), y); loss.backward(); opt.step()

    m.train(); step()
    tt = []
    for _ in range(steps):
        t = time.perf_counter(); step(); tt.append(time.perf_counter() - t)
    m.eval(); te = []
    with torch.no_grad():
        m(x)
        for _ in range(steps):
            t = time.perf_counter(); m(x); te.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torch", "model": MODELS[name], "batch": batch, "threads": torch.get_num_threads(),
                      "train_img_s": batch / statistics.median(tt), "eval_img_s": batch / statistics.median(te),
                      "peak_rss_mb": rss, "torch": torch.__version__}), flush=True)


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sparsa", default="target/release/sparsa")
    ap.add_argument("--torch-only", action="store_true")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        return torch_child(a.child, a.batch, a.steps, a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads))
    # Short names (conv4) or sparsa's (conv-4); anything else is refused before any run.
    short = {v: k for k, v in MODELS.items()}
    names = []
    for n in (n.strip() for n in a.models.split(",")):
        if n not in MODELS and n not in short:
            sys.exit(f"--models: unknown model {n!r}; expected one of {', '.join(MODELS)} "
                     f"(or {', '.join(MODELS.values())})")
        names.append(short.get(n, n))
    rows = []
    for name in names:
        t = run_json([sys.executable, __file__, "--child", name, "--batch", str(a.batch), "--steps", str(a.steps),
                      "--threads", str(a.threads)], env)[0]
        print(json.dumps(t), flush=True)
        if a.torch_only:
            continue
        s = run_json([a.sparsa, "bench", "prune", "--arch", MODELS[name], "--batch", str(a.batch), "--steps",
                      str(a.steps), "--threads", str(a.threads), "--sparsity", "0"], env)[0]
        print(json.dumps(s), flush=True)
        rows.append((MODELS[name], s["train_img_s"] / t["train_img_s"], s["eval_img_s"] / t["eval_img_s"],
                     s["peak_rss_mb"], t["peak_rss_mb"], t["train_img_s"], s["train_img_s"], t["eval_img_s"],
                     s["eval_img_s"]))
    if rows:
        print(f"{'model':14} {'torch train':>11} {'sparsa train':>12} {'ratio':>6} {'torch eval':>10} "
              f"{'sparsa eval':>11} {'ratio':>6} {'RSS sparsa/torch MB':>20}")
        for m, rt, re, rs, rtm, tt, st, te, se in rows:
            print(f"{m:14} {tt:11.0f} {st:12.0f} {rt:6.2f} {te:10.0f} {se:11.0f} {re:6.2f} "
                  f"{rs or float('nan'):9.0f}/{rtm:<9.0f}")


if __name__ == "__main__":
    main()
