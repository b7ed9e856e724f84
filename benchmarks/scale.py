"""Scale benchmark: data-parallel ranks, language-model memory, a ≈30M-parameter eigensolve, GPU projection.

    python benchmarks/scale.py                       # every section, CPU, 2 ranks
    python benchmarks/scale.py --sections ranks      # one section
    python benchmarks/scale.py --device cuda --nproc 8

Sections (one run prints one Markdown table per section):

- ``ranks``: one batched HVP over 1,024 samples of the built-in transformer,
  and a small ``stabilization`` run on it, with ``--nproc`` ranks × 1 thread
  against 1 rank × 1 thread (each under ``torchrun``; best of three, the
  results compared for equality).
- ``gpt2``: a GPT-2-small-shaped causal LM (``transformers`` GPT2 config,
  124M parameters, vocabulary 50,257, T = 256, random init): t(HVP)/t(gradient)
  on one chunk, and the peak resident memory of one HVP against one gradient on
  that chunk, each in a fresh process.
- ``lm30m``: the certified top-16 eigenspace at tol 1e-2 of a ≈30M-parameter
  causal LM on 4 sequences of 256 tokens: HVPs, wall time, peak resident memory.
- ``projection``: FLOP counts of one forward, gradient and HVP per token of a
  d6-sized model (measured with ``torch.utils.flop_counter``), turned into
  stage I–III times of a stabilization curve on 1 and 8 H100 GPUs from the
  public peak throughput (assumptions printed with the table).

Ratios are measured inside this one run; the machine and its load are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
SECTIONS = ("ranks", "gpt2", "lm30m", "projection")
KS, SIGMAS, DIMS, MC = [64, 128, 256, 512], [1e-3, 1e-2], [1, 4], 16
LM30M_BASIS = 32  # the ≈30M eigensolve's basis: 32 float32 vectors ≈ 3.7 GB (ARPACK's 2·16 + 1)
LM30M_CHUNK = 1  # sequences per chunk of the ≈30M model's HVPs
LM30M_MISS_BOUND = 0.05  # certified at curvprobe probe's default miss_bound
LM30M_GUARD_STEPS = 80  # the most guard steps to reach it


# --------------------------------------------------------------------- utilities
def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water() -> int:
    """This process's resident high-water mark (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024


def peak_during(fn) -> tuple[int, float]:
    """(peak resident bytes above the level just before, seconds) while ``fn`` runs."""
    base, peak, done = rss(), [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    thread = threading.Thread(target=poll)
    thread.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    return max(peak[0], rss()) - base, seconds


def best_of(fn, repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torchrun(nproc: int, args: list[str]) -> None:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([exe, "--standalone", "--nproc-per-node", str(nproc), str(HERE), *args],
                   env=env, check=True)


def child(args: list[str]) -> dict:
    """Run this script in a fresh process (``--worker ...``) and read its JSON line."""
    out = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- workers
def worker_ranks(out: Path, device: str) -> None:
    """Under torchrun: time one batched HVP over 1,024 samples and a stabilization run."""
    import warnings

    from curvprobe import stabilization
    from curvprobe.core.distributed import init_from_environment, world
    from curvprobe.results import save
    from curvprobe.zoo.builtin import builtin_problem

    group = init_from_environment(device, timeout_s=600) if "RANK" in os.environ else world()
    torch.set_num_threads(1)
    problem = builtin_problem("tiny-gpt", num_samples=1024, batch_size=64, progress=False,
                              device=device, distributed=group.size > 1)
    V = torch.randn(problem.num_params, 8, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).to(problem.device)
    hv = problem.hvp(V)
    t_hvp = best_of(lambda: problem.hvp(V))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ds = stabilization(problem, KS, sigmas=SIGMAS, dims=DIMS, mc_samples=MC, seed=0, tol=1e-2)
        t_stab = time.perf_counter() - t0
    if group.is_writer:
        torch.save({"hvp": hv.cpu(), "t_hvp": t_hvp, "t_stab": t_stab}, out / f"ranks{group.size}.pt")
        save(ds.drop_vars(["stage_seconds", "stage"]), out / f"ranks{group.size}.nc", overwrite=True)


def gpt2_problem(n_layer: int, n_embd: int, n_head: int, vocab: int, seq: int, num: int, device: str,
                 batch_size: int | None = None):
    """A randomly initialised GPT-2-shaped causal LM on ``num`` random
    sequences, ``batch_size`` of them per chunk (default all)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from curvprobe.zoo.adapters import causal_lm

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=seq,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, vocab, (num, seq), generator=torch.Generator().manual_seed(1))
    return causal_lm(model, ids, batch_size=batch_size or num, device=device)


def worker_gpt2(op: str, device: str) -> None:
    """One gradient or one HVP of GPT-2 small on one sequence of 256 tokens: peak memory and time."""
    problem = gpt2_problem(12, 768, 12, 50257, 256, 1, device)
    v = torch.randn(problem.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = v.to(problem.device)
    fn = (lambda: problem.gradient()) if op == "gradient" else (lambda: problem.hvp(v))
    fn()  # warm-up (allocator, kernels)
    peak, _ = peak_during(fn)
    seconds = best_of(fn, 2)
    print(json.dumps({"op": op, "peak_bytes": peak, "seconds": seconds, "N": problem.num_params}))


def worker_lm30m(device: str, basis_dtype: str) -> None:
    """Certified top-16 eigenspace at tol 1e-2 of a ≈30M-parameter causal LM on 4 × 256 tokens,
    one sequence per chunk (an HVP's activations: 0.9 GiB, against 1.8 GiB for all four). Every
    allocation above 64 KiB is mapped on its own (as ``MALLOC_MMAP_THRESHOLD_=65536`` would), so
    freed N-sized tensors leave the resident set instead of fragmenting glibc's heap."""
    from eigensolver_memory import map_large_allocations

    from curvprobe import top_eigenspace

    map_large_allocations()

    problem = gpt2_problem(6, 512, 8, 20000, 256, 4, device, batch_size=LM30M_CHUNK)
    op = problem.hessian_operator()
    kwargs = {"basis_dtype": getattr(torch, basis_dtype)} if basis_dtype != "float64" else {}
    result = {}

    def solve() -> None:
        es = top_eigenspace(op, 16, tol=1e-2, seed=0, basis_size=LM30M_BASIS, guard_steps=LM30M_GUARD_STEPS,
                            max_miss_probability=LM30M_MISS_BOUND, **kwargs)
        result.update(hvps=es.num_matvecs, converged=int(es.converged.sum()), certified=bool(es.certified),
                      miss_probability=float(es.miss_probability),
                      max_residual=float(es.residuals.max()), top=float(es.values[0]))

    peak, seconds = peak_during(solve)
    print(json.dumps({"N": problem.num_params, "peak_bytes": peak, "rss_bytes": rss(),
                      "high_water_bytes": high_water(), "seconds": seconds,
                      "basis_dtype": basis_dtype, **result}))


# --------------------------------------------------------------------- sections
def section_ranks(nproc: int, device: str) -> None:
    import numpy as np

    from curvprobe.results import load

    with tempfile.TemporaryDirectory() as tmp:
        torchrun(1, ["--worker", "ranks", "--out", tmp, "--device", device])
        torchrun(nproc, ["--worker", "ranks", "--out", tmp, "--device", device])
        one, many = torch.load(Path(tmp) / "ranks1.pt"), torch.load(Path(tmp) / f"ranks{nproc}.pt")
        a, b = load(Path(tmp) / "ranks1.nc"), load(Path(tmp) / f"ranks{nproc}.nc")
    hvp_diff = float((one["hvp"] - many["hvp"]).abs().max() / one["hvp"].abs().max())
    ds_diff = float(np.nanmax(np.abs(a["value"].values - b["value"].values) / np.abs(a["value"].values)))
    print(f"\n## Data-parallel ranks ({nproc} × 1 thread vs 1 × 1 thread), built-in transformer\n")
    print("| figure | 1 rank s | ranks s | speed-up | max rel. difference | target |")
    print("|---|---|---|---|---|---|")
    print(f"| batched HVP (8 vectors) over 1,024 samples | {one['t_hvp']:.2f} | {many['t_hvp']:.2f} | "
          f"{one['t_hvp'] / many['t_hvp']:.2f}× | {hvp_diff:.1e} | ≥ 1.7×, equal |")
    print(f"| stabilization k = {KS}, σ = {SIGMAS}, D = {DIMS}, S = {MC} | {one['t_stab']:.1f} | "
          f"{many['t_stab']:.1f} | {one['t_stab'] / many['t_stab']:.2f}× | {ds_diff:.1e} | ≥ 1.6×, equal |")


def section_gpt2(device: str) -> None:
    grad = child(["--worker", "gpt2", "--op", "gradient", "--device", device])
    hvp = child(["--worker", "gpt2", "--op", "hvp", "--device", device])
    print(f"\n## GPT-2-small-shaped causal LM (N = {grad['N']:,}, vocabulary 50,257, T = 256, one "
          "sequence per chunk, float32)\n")
    print("| op | seconds | peak resident MiB above the loaded model |")
    print("|---|---|---|")
    for row in (grad, hvp):
        print(f"| {row['op']} | {row['seconds']:.2f} | {row['peak_bytes'] / 2**20:.0f} |")
    print(f"\nt(HVP)/t(gradient) = {hvp['seconds'] / grad['seconds']:.2f} (target ≤ 3); "
          f"peak(HVP)/peak(gradient) = {hvp['peak_bytes'] / grad['peak_bytes']:.2f} (target ≤ 2)")


def section_lm30m(device: str, basis_dtype: str) -> None:
    row = child(["--worker", "lm30m", "--device", device, "--basis-dtype", basis_dtype])
    print(f"\n## Top-16 eigenspace at tol 1e-2, ≈30M-parameter causal LM (N = {row['N']:,}; GPT-2 config "
          f"6 layers, width 512, vocabulary 20,000), 4 sequences × 256 tokens, {LM30M_CHUNK} per chunk; "
          f"miss bound {LM30M_MISS_BOUND}, at most {LM30M_GUARD_STEPS} guard steps; allocations above "
          "64 KiB mapped on their own (glibc mmap threshold)\n")
    print("| basis storage | HVPs | wall s | converged | certified (miss probability) | max rel. residual "
          "| resident GiB at the end | peak resident (VmHWM) | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    peak = row["high_water_bytes"]
    print(f"| {row['basis_dtype']} (basis_size {LM30M_BASIS}) | {row['hvps']} | {row['seconds']:.0f} | "
          f"{row['converged']}/16 | {row['certified']} ({row['miss_probability']:.3f}) | "
          f"{row['max_residual']:.1e} | {row['rss_bytes'] / 2**30:.2f} | "
          f"{peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB) | certified, ≤ 8 GB |")


def flops_per_token(n_layer: int, n_embd: int, n_head: int, vocab: int, seq: int) -> dict[str, float]:
    """Measured FLOPs per token of a forward, a gradient and an HVP of a GPT-2-shaped model."""
    from torch.utils.flop_counter import FlopCounterMode

    problem = gpt2_problem(n_layer, n_embd, n_head, vocab, seq, 1, "cpu")
    v = torch.randn(problem.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = {"N": float(problem.num_params)}
    for name, fn in (("forward", lambda: problem.per_sample_losses()), ("gradient", problem.gradient),
                     ("hvp", lambda: problem.hvp(v))):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        out[name] = counter.get_total_flops() / seq
    return out


def section_projection() -> None:
    """Stage I–III times of a stabilization curve on H100s, from measured FLOPs per token."""
    # d6-sized: 6 layers, width 768, GPT-2 vocabulary; measured at T = 256 (attention is a small share)
    f = flops_per_token(6, 768, 12, 50257, 256)
    tokens_per_seq, K, n_k, D, S, n_sigma, hvps = 1024, 512, 12, 16, 64, 3, 80
    # stage I: an eigensolve of `hvps` HVPs over k sequences at each k (the grid sums to ≈ K·n_k/2)
    stage = {"I (eigenspaces, 80 HVPs per k)": hvps * f["hvp"] * tokens_per_seq * K * n_k / 2,
             # stage II: D products on sample k+1 plus the gradients (≈ one gradient over K sequences)
             "II (coefficients c_k, B_k)": (D * f["hvp"] * n_k + f["gradient"] * K) * tokens_per_seq,
             # stage III: S perturbed points × D × σ, forward over K+1 sequences (all-k engine)
             "III (Monte Carlo forwards)": S * 2 * n_sigma * f["forward"] * tokens_per_seq * (K + 1)}
    peak, mfu, scaling = 495e12, 0.35, 0.9  # H100 SXM dense TF32 tensor-core peak (float32 HVPs)
    print(f"\n## Projected stabilization curve on H100 GPUs (d6-sized model, N = {f['N']:,.0f})\n")
    print(f"Measured per token: forward {f['forward'] / 1e6:.0f} MFLOP, gradient {f['gradient'] / 1e6:.0f} "
          f"MFLOP, HVP {f['hvp'] / 1e6:.0f} MFLOP (HVP/forward = {f['hvp'] / f['forward']:.1f}).")
    print(f"Assumptions: {tokens_per_seq} tokens per sequence, K = {K}, {n_k} values of k, D = {D}, "
          f"S = {S}, {n_sigma} σ, {hvps} HVPs per eigensolve; peak {peak / 1e12:.0f} TFLOP/s per GPU "
          f"(dense TF32 tensor cores, the float32 path; BF16 would halve the times), {mfu:.0%} "
          f"utilisation, {scaling:.0%} data-parallel efficiency on 8 GPUs.\n")
    print("| stage | PFLOP | 1 × H100 | 8 × H100 |")
    print("|---|---|---|---|")
    for name, flops in stage.items():
        one = flops / (peak * mfu)
        print(f"| {name} | {flops / 1e15:.1f} | {one / 60:.1f} min | {one / (8 * scaling) / 60:.1f} min |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--basis-dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--op", default="hvp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ranks":
        return worker_ranks(Path(args.out), args.device)
    if args.worker == "gpt2":
        return worker_gpt2(args.op, args.device)
    if args.worker == "lm30m":
        return worker_lm30m(args.device, args.basis_dtype)
    print(f"# curvprobe scale benchmark (torch {torch.__version__}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, device {args.device})")
    chosen = args.sections.split(",")
    if "ranks" in chosen:
        section_ranks(args.nproc, args.device)
    if "gpt2" in chosen:
        section_gpt2(args.device)
    if "lm30m" in chosen:
        section_lm30m(args.device, args.basis_dtype)
    if "projection" in chosen:
        section_projection()
    return None


if __name__ == "__main__":
    main()
