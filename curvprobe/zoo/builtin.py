"""Built-in problems: a cached reference model plus held-out data as a Problem.

This joins :mod:`curvprobe.zoo.models` (trained, cached reference models) and
:mod:`curvprobe.zoo.data` (built-in corpora) into the :class:`Problem` that the
command line, the benchmarks and the notebooks probe.
"""

from __future__ import annotations

import torch

from curvprobe.core.problem import Problem
from curvprobe.zoo import data, models

BUILTIN = ("tiny-gpt", "mlp", "cnn")

#: Seed of the probe samples of "mlp"/"cnn" (training used seed 0).
PROBE_SEED = 1


def builtin_data(name: str, num_samples: int, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe samples of a built-in model: held-out windows of the standard
    library corpus (``split="probe"``) for "tiny-gpt", fresh draws of the
    synthetic task otherwise."""
    if name == "tiny-gpt":
        return data.token_sequences(num_samples, config.seq_len, split="probe")
    if name == "mlp":
        return data.synthetic_classification(num_samples, config.widths[0], config.widths[-1],
                                             seed=PROBE_SEED)
    if name == "cnn":
        return data.synthetic_images(num_samples, config.size, config.num_classes, seed=PROBE_SEED)
    raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN)}")


def builtin_problem(name: str = "tiny-gpt", *, num_samples: int = 1024, batch_size: int = 256,
                    dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    cache_dir=None, progress: bool = True, distributed: bool = False) -> Problem:
    """The trained built-in model ``name`` on ``num_samples`` held-out samples.

    Trains and caches the model on first use (:func:`curvprobe.zoo.models.pretrained`).
    ``dtype`` defaults to the model's float32; ``distributed``: data parallel over the
    running ``torch.distributed`` process group.
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN)}")
    model, config = models.pretrained(name, cache_dir=cache_dir, progress=progress)
    inputs, targets = builtin_data(name, num_samples, config)
    loss_fn = models.token_cross_entropy if name == "tiny-gpt" else models.sample_cross_entropy
    return Problem(model, loss_fn, inputs, targets, batch_size=batch_size, dtype=dtype, device=device,
                   distributed=distributed)
