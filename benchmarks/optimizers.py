"""Spectral Newton against AdamW, SGD, Muon and the scalar control, five seeds each (``docs/optimizer.md``).

Two tasks on data that ships with a package (no downloads):

* **digits** — scikit-learn's handwritten digits (1,797 8×8 images, 10
  classes), split once (seed 0) into 1,149 train / 288 validation / 360 test
  images, a small ResNet-style CNN (:class:`DigitsResNet`, 28,410 parameters,
  GroupNorm instead of batch-norm so the spectral probe sees a deterministic
  loss), batch 64, 15 epochs; metric: test accuracy (test loss also reported);
* **bytes** — the built-in byte-level transformer
  (:class:`~curvprobe.zoo.models.TinyGPT`, ``GPTConfig()``: 2 layers, width 64,
  110,848 parameters) on the standard-library corpus: 2,048 training and 256
  validation windows of 32 tokens from the "train" region, 512 test windows
  from the disjoint "probe" region, batch 32, 3 epochs; metric: test loss
  (mean next-token cross-entropy, nats).

Optimizers (one learning rate each, tuned; everything else fixed and shared):

* AdamW (betas 0.9/0.999);
* SGD with Nesterov momentum 0.9;
* Muon: ``torch.optim.Muon`` (Nesterov momentum 0.95, 5 Newton–Schulz steps,
  ``adjust_lr_fn="match_rms_adamw"`` so its lr is in AdamW units) on the 2-D
  matrices. It accepts only 2-D parameters, so convolution kernels go to
  :class:`FlatMuon`, the same arithmetic on ``c_out × (c_in·kh·kw)`` matrices,
  checked equal to ``torch.optim.Muon`` on 2-D parameters at start-up; biases,
  norm scales and the embedding go to AdamW with the same lr;
* ScalarSpectral: AdamW with ``lr · (s_ℓ / s̄)`` per layer (β = 1);
* SpectralNewton with α = 2, α = 1 and ``alpha="measured"`` (δ = 1e-2,
  momentum 0.95, the parameter split of :func:`~curvprobe.optim.param_groups`:
  the same split as Muon's).

Weight decay is 0 for every optimizer (no confound between coupled and
decoupled decay). The learning rate warms up linearly over the first 5 % of the
steps and then follows a cosine to 0. The two measured optimizers probe the
first 64 training images (digits) or 32 training windows (bytes) with K = 8
singular directions per layer at steps 0, 1/3 and 2/3 of training; their wall
time includes those measurements.

Protocol: for each optimizer, each lr of its grid (5 values, a factor √10
apart) is trained once (seed 100) on the training split and scored on the
validation split; the best lr is then trained with seeds 0–4 (initialisation
and batch order) and scored on the test split. Seeds are the outer loop and
optimizers the inner one, so changes of machine load spread over all
optimizers. Times are wall-clock per training step (forward, backward, step;
evaluation excluded) and the process CPU time, both from this one run.

    python benchmarks/optimizers.py [--seeds 5] [--device cpu|cuda] [--threads 1]
                                    [--figure docs/images/optimizers.png] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import matplotlib as mpl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvprobe import Problem
from curvprobe.optim import ScalarSpectral, SpectralNewton, SpectralProbe, param_groups
from curvprobe.zoo.data import token_sequences
from curvprobe.zoo.models import GPTConfig, TinyGPT, sample_cross_entropy, token_cross_entropy

mpl.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, NullFormatter

OPTIMIZERS = ("AdamW", "SGD", "Muon", "ScalarSpectral", "SN α=2", "SN α=1", "SN measured")
ADAMW_GRID = (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1)
LR_GRIDS = dict.fromkeys(OPTIMIZERS, ADAMW_GRID) | {"SGD": (0.01, 0.0316, 0.1, 0.316, 1.0)}
TUNING_SEED = 100
DAMPING = 1e-2
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's) quintic


# --------------------------------------------------------------------------- tasks

class Block(nn.Module):
    """``relu(x + GN(conv(relu(GN(conv(x))))))`` with 3×3 convolutions of c channels."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(4, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, c)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


class DigitsResNet(nn.Module):
    """Stem conv 1→16, a residual block, conv 16→32 with stride 2, a residual block,
    global mean pool, linear 32→10: (B, 1, 8, 8) → (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_norm = nn.GroupNorm(4, 16)
        self.block1 = Block(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.down_norm = nn.GroupNorm(4, 32)
        self.block2 = Block(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(F.relu(self.stem_norm(self.stem(x))))
        x = self.block2(F.relu(self.down_norm(self.down(x))))
        return self.head(x.mean(dim=(2, 3)))


@dataclass
class Task:
    """A model family, its loss, its splits and its schedule."""

    name: str
    metric: str
    make_model: Callable[[int], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]  # per-sample losses (B,)
    splits: dict[str, tuple[Tensor, Tensor]]
    batch_size: int
    epochs: int
    probe_samples: int
    top_k: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.splits["train"][0].shape[0] / self.batch_size)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.metric == "accuracy" else a < b


def digits_task(device: torch.device, epochs: int) -> Task:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = {"test": order[:360], "val": order[360:648], "train": order[648:]}

    def make_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return DigitsResNet()

    return Task("digits", "accuracy", make_model, sample_cross_entropy,
                {k: (X[i].to(device), y[i].to(device)) for k, i in parts.items()},
                batch_size=64, epochs=epochs, probe_samples=64, top_k=8)


def bytes_task(device: torch.device, epochs: int) -> Task:
    X, Y = token_sequences(2048 + 256, 32, split="train", seed=0)
    Xt, Yt = token_sequences(512, 32, split="probe", seed=0)
    splits = {"train": (X[:2048], Y[:2048]), "val": (X[2048:], Y[2048:]), "test": (Xt, Yt)}
    return Task("bytes", "loss", lambda seed: TinyGPT(GPTConfig(), seed=seed), token_cross_entropy,
                {k: (a.to(device), b.to(device)) for k, (a, b) in splits.items()},
                batch_size=32, epochs=epochs, probe_samples=32, top_k=8)


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, split: str) -> dict[str, float]:
    """Mean loss (and accuracy for classification) over a split, in chunks of 256."""
    X, y = task.splits[split]
    total, correct = 0.0, 0
    for a in range(0, X.shape[0], 256):
        out = model(X[a:a + 256])
        total += float(task.loss_fn(out, y[a:a + 256]).double().sum())
        if task.metric == "accuracy":
            correct += int((out.argmax(-1) == y[a:a + 256]).sum())
    scores = {"loss": total / X.shape[0]}
    if task.metric == "accuracy":
        scores["accuracy"] = correct / X.shape[0]
    return scores


# --------------------------------------------------------------------------- Muon for conv kernels

def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """torch.optim.Muon's quintic Newton–Schulz orthogonalisation of a 2-D ``G``, in bfloat16."""
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if tall else X


class FlatMuon(torch.optim.Optimizer):
    """torch.optim.Muon's update for parameters of any rank ≥ 2, seen as (out, rest) matrices.

    ``B ← μB + (1−μ)g``, ``M = g + μ(B − g)``, ``O = NS5(M)``,
    ``W ← W(1 − lr λ) − 0.2 √max(m, n) · lr · O`` (``adjust_lr_fn="match_rms_adamw"``).
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(p.shape[0], -1)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                buf.lerp_(g, 1 - group["momentum"])
                update = newton_schulz(g.lerp(buf, group["momentum"]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.view_as(p), alpha=-group["lr"] * 0.2 * math.sqrt(max(g.shape)))


def check_flat_muon() -> float:
    """Largest difference between FlatMuon and torch.optim.Muon over 5 steps on 2-D parameters."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(24, 40, generator=gen), torch.randn(40, 24, generator=gen)]
    ours = [nn.Parameter(w.clone()) for w in start]
    theirs = [nn.Parameter(w.clone()) for w in start]
    a = FlatMuon(ours, lr=0.02, weight_decay=0.1)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(5):
        grads = [torch.randn(w.shape, generator=gen) for w in start]
        for params, opt in ((ours, a), (theirs, b)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(ours, theirs))


# --------------------------------------------------------------------------- optimizers

def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_probe(task: Task, model: nn.Module, every: int) -> SpectralProbe:
    X, y = task.splits["train"]
    X, y = X[:task.probe_samples], y[:task.probe_samples]
    return SpectralProbe(model, lambda net: Problem(net, task.loss_fn, X, y, batch_size=task.probe_samples),
                         every=every, top_k=task.top_k)


def build(name: str, model: nn.Module, lr: float, probe: Callable[[], SpectralProbe]
          ) -> tuple[list[torch.optim.Optimizer], SpectralProbe | None]:
    """The optimizers that together update every parameter, and the probe if one is used."""
    groups = param_groups(model)
    if name == "AdamW":
        return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)], None
    if name == "SGD":
        return [torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)], None
    if name == "Muon":
        matrices, rest = groups[0]["params"], groups[1]["params"]
        flat = [p for p in matrices if p.dim() == 2]
        kernels = [p for p in matrices if p.dim() > 2]
        opts: list[torch.optim.Optimizer] = [
            torch.optim.Muon(flat, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, lr=lr, weight_decay=0.0)]
        if kernels:
            opts.append(FlatMuon(kernels, lr=lr))
        return opts, None
    if name == "ScalarSpectral":
        p = probe()
        return [ScalarSpectral(model.parameters(), p, lr=lr, weight_decay=0.0)], p
    alpha = {"SN α=2": 2.0, "SN α=1": 1.0, "SN measured": "measured"}[name]
    p = probe() if alpha == "measured" else None
    return [SpectralNewton(groups, lr=lr, alpha=alpha, damping=DAMPING, weight_decay=0.0, probe=p)], p


# --------------------------------------------------------------------------- training

@dataclass
class Run:
    """One training run: metrics per epoch (epoch 0 = before training) and its costs."""

    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, wall, loss[, accuracy]
    steps: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    step_wall: float = 0.0
    probe: float = 0.0
    alphas: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (used, raw fit)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(task: Task, name: str, lr: float, seed: int, split: str, device: torch.device) -> Run:
    """Train a fresh model (seed) with optimizer ``name`` at ``lr``; score ``split`` after every epoch."""
    model = task.make_model(seed).to(device)
    total = task.epochs * task.steps_per_epoch
    opts, probe = build(name, model, lr, lambda: make_probe(task, model, every=max(1, total // 3)))
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, total)) for o in opts]
    X, y = task.splits["train"]
    gen = torch.Generator().manual_seed(seed)
    run = Run(curve=[{"epoch": 0, "wall": 0.0, **evaluate(task, model, split)}])
    for epoch in range(1, task.epochs + 1):
        order = torch.randperm(X.shape[0], generator=gen).to(device)
        for a in range(0, X.shape[0], task.batch_size):
            idx = order[a:a + task.batch_size]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = task.loss_fn(model(X[idx]), y[idx]).mean()
            if not math.isfinite(float(loss.detach())):  # diverged: NaN from here on
                nan = dict.fromkeys(run.curve[0], math.nan)
                run.curve += [{**nan, "epoch": e, "wall": run.wall} for e in range(epoch, task.epochs + 1)]
                return run
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            for o in opts:
                o.step()
            for s in schedules:
                s.step()
            sync(device)
            run.step_wall += time.perf_counter() - t1
            run.wall += time.perf_counter() - t0
            run.cpu += time.process_time() - c0
            run.steps += 1
        run.curve.append({"epoch": epoch, "wall": run.wall, **evaluate(task, model, split)})
    if probe is not None:
        run.probe = probe.seconds
    if name == "SN measured":
        state = opts[0].state
        run.alphas = {n: (state[p]["alpha"], state[p]["alpha_raw"]) for n, p in model.named_parameters()
                      if "alpha" in state[p]}
    return run


def final(task: Task, run: Run) -> float:
    return run.curve[-1][task.metric]


def tune(task: Task, device: torch.device, grids: dict[str, Sequence[float]]
         ) -> dict[str, list[tuple[float, float]]]:
    """``{optimizer: [(lr, validation metric), ...]}``, one run per grid point."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in OPTIMIZERS}
    for name in OPTIMIZERS:
        for lr in grids[name]:
            out[name].append((lr, final(task, train(task, name, lr, TUNING_SEED, "val", device))))
    return out


def best_lr(task: Task, scores: list[tuple[float, float]]) -> float:
    best = scores[0]
    for lr, value in scores[1:]:
        if math.isfinite(value) and (not math.isfinite(best[1]) or task.better(value, best[1])):
            best = (lr, value)
    return best[0]


# --------------------------------------------------------------------------- report

def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; NaN if any value is NaN (a diverged run)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def results_table(task: Task, lrs: dict[str, float], runs: dict[str, list[Run]],
                  tuning: dict[str, list[tuple[float, float]]]) -> str:
    """Markdown: tuned lr, validation score, test score mean ± sd over seeds, costs."""
    accuracy = task.metric == "accuracy"
    scale, unit = (100.0, "%") if accuracy else (1.0, "")
    extra = " test loss (nats) |" if accuracy else ""
    lines = [(f"| optimizer | lr | val {task.metric} | test {task.metric} (mean ± sd) |{extra} "
              "ms/step (wall) | of which step() | CPU ms/step | total s | probe s |"),
             "|---|---|---|---|" + ("---|" if accuracy else "") + "---|---|---|---|---|"]
    for name in OPTIMIZERS:
        rs = runs[name]
        m, s = mean_sd([final(task, r) * scale for r in rs])
        loss = "{:.3f} ± {:.3f} | ".format(*mean_sd([r.curve[-1]["loss"] for r in rs])) if accuracy else ""
        val = dict(tuning[name])[lrs[name]] * scale
        per = lambda attr, rs=rs: 1e3 * statistics.fmean(getattr(r, attr) / max(r.steps, 1) for r in rs)  # noqa: E731
        lines.append(
            f"| {name} | {lrs[name]:.3g} | {val:.3f}{unit} | **{m:.3f} ± {s:.3f}**{unit} | {loss}"
            f"{per('wall'):.1f} | {per('step_wall'):.1f} | {per('cpu'):.1f} | "
            f"{statistics.fmean(r.wall for r in rs):.1f} | {statistics.fmean(r.probe for r in rs):.1f} |")
    return "\n".join(lines)


def grid_table(task: Task, tuning: dict[str, list[tuple[float, float]]]) -> str:
    scale = 100.0 if task.metric == "accuracy" else 1.0
    lines = [f"| optimizer | validation {task.metric} at each lr (seed {TUNING_SEED}) |", "|---|---|"]
    for name in OPTIMIZERS:
        cells = ", ".join(f"{lr:.3g}: {v * scale:.3f}" for lr, v in tuning[name])
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def alpha_table(runs: list[Run]) -> str:
    """Per layer, over seeds: the α in use after the last refresh (clipped to [0, 2]) and the raw fit."""
    lines = ["| layer | α in use at the end (mean ± sd) | raw fit, last refresh (mean ± sd, seeds defined) |",
             "|---|---|---|"]
    for n in runs[0].alphas:
        used = mean_sd([r.alphas[n][0] for r in runs])
        defined = [r.alphas[n][1] for r in runs if math.isfinite(r.alphas[n][1])]
        raw = "{:.2f} ± {:.2f}".format(*mean_sd(defined)) if defined else "undefined"
        lines.append(f"| `{n}` | {used[0]:.2f} ± {used[1]:.2f} | {raw} ({len(defined)}/{len(runs)}) |")
    return "\n".join(lines)


def figure(tasks: list[Task], runs: dict[str, dict[str, list[Run]]], path: str) -> None:
    """Test metric against epoch and against wall time: mean line and ±1 sd band over seeds."""
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, task in enumerate(tasks):
        scale = 100.0 if task.metric == "accuracy" else 1.0
        label = "test accuracy (%)" if task.metric == "accuracy" else "test loss (nats/token)"
        for i, name in enumerate(OPTIMIZERS):
            rs = runs[task.name][name]
            values = torch.tensor([[c[task.metric] * scale for c in r.curve] for r in rs])
            mean, sd = values.mean(0), values.std(0) if len(rs) > 1 else torch.zeros(values.shape[1])
            epochs = [c["epoch"] for c in rs[0].curve]
            walls = torch.tensor([[c["wall"] for c in r.curve] for r in rs]).mean(0)
            # wall time on a log axis, from the end of epoch 1 (epoch 0 is at t = 0)
            for ax, x, a in ((axes[row][0], epochs, 0), (axes[row][1], walls.tolist(), 1)):
                ax.plot(x[a:], mean[a:], color=colors(i), label=name, lw=1.6,
                        ls="--" if name.startswith("SN") else "-")
                ax.fill_between(x[a:], (mean - sd)[a:], (mean + sd)[a:], color=colors(i), alpha=0.15, lw=0)
        for ax, xlabel in ((axes[row][0], "epoch"), (axes[row][1], "training wall time (s)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.set_title(f"{task.name}: {label} against {xlabel.split(' (')[0]}")
            ax.grid(alpha=0.3, which="both")
            if task.metric == "accuracy":
                ax.set_ylim(80, 100)
            else:
                ax.set_ylim(top=float(runs[task.name]["AdamW"][0].curve[1]["loss"]) + 0.3)
        axes[row][1].set_xscale("log")
        axes[row][1].xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes[row][1].xaxis.set_minor_formatter(NullFormatter())
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", default="docs/images/optimizers.png")
    parser.add_argument("--quick", action="store_true", help="1 epoch each, two grid points, 2 seeds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    difference = check_flat_muon()
    if difference > 1e-6:
        raise RuntimeError(f"FlatMuon differs from torch.optim.Muon on 2-D parameters by {difference}")
    epochs = {"digits": 1, "bytes": 1} if args.quick else {"digits": 15, "bytes": 3}
    grids = {k: v[1:3] for k, v in LR_GRIDS.items()} if args.quick else LR_GRIDS
    seeds = range(2 if args.quick else args.seeds)
    tasks = [digits_task(device, epochs["digits"]), bytes_task(device, epochs["bytes"])]
    print(f"torch {torch.__version__}, Python {platform.python_version()}, device {device}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"FlatMuon vs torch.optim.Muon on 2-D: max |difference| {difference:.1e}\n")
    all_runs: dict[str, dict[str, list[Run]]] = {}
    for task in tasks:
        n = {k: v[0].shape[0] for k, v in task.splits.items()}
        params = sum(p.numel() for p in task.make_model(0).parameters())
        print(f"## {task.name}: {params:,} parameters; train/val/test {n['train']}/{n['val']}/{n['test']}; "
              f"batch {task.batch_size}; {task.epochs} epochs = {task.epochs * task.steps_per_epoch} steps; "
              f"{len(seeds)} seeds; lr grids { {k: list(v) for k, v in grids.items()} }\n", flush=True)
        tuning = tune(task, device, grids)
        lrs = {name: best_lr(task, tuning[name]) for name in OPTIMIZERS}
        runs: dict[str, list[Run]] = {name: [] for name in OPTIMIZERS}
        for seed in seeds:
            for name in OPTIMIZERS:
                runs[name].append(train(task, name, lrs[name], seed, "test", device))
        all_runs[task.name] = runs
        print(results_table(task, lrs, runs, tuning) + "\n")
        print(grid_table(task, tuning) + "\n")
        print(alpha_table(runs["SN measured"]) + "\n", flush=True)
    figure(tasks, all_runs, args.figure)
    print(f"figure: {args.figure}; total {time.perf_counter() - start:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
