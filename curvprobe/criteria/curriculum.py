"""Curriculum probing: stabilization measured along training, from the user's own loop.

:class:`CurriculumProbe` is a callback. Every ``every`` steps it builds a
:class:`Problem` from the current model (``make_problem(model)``, your data
and loss), computes every part of its
:class:`~curvprobe.criteria.spec.StabilizationSpec`
(:func:`~curvprobe.criteria.sweep.iter_parts`, merged as
:func:`curvprobe.stabilization` merges them), and appends
the result to one netCDF file along a ``step`` dimension. The file is
rewritten atomically at each call (a crash never leaves a half-written file),
and the top-D eigenvectors of the first k are kept beside it
(``<path>.eig.pt``) to warm-start the eigensolver at the next call — the next
checkpoint's Hessian is close to this one's. A new probe on an existing file
continues it: steps already recorded are skipped, so a resumed training run
can call the probe exactly as before.

Example::

    import torch
    from curvprobe import CurriculumProbe, Problem
    from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy
    from curvprobe.zoo.data import synthetic_classification

    X, y = synthetic_classification(512)
    model = MLP(MLPConfig())
    probe = CurriculumProbe(
        [16, 32, 64, 128], sigmas=[1e-2], dims=[1, 4], mc_samples=16, every=100,
        path="runs/curriculum.nc",
        make_problem=lambda m: Problem(m, sample_cross_entropy, X[:129], y[:129]),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1001):
        loss = sample_cross_entropy(model(X[129:]), y[129:]).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        model.eval()              # a model with dropout/batch-norm must be in eval mode
        probe(step, model)        # runs at steps 0, 100, ..., 1000
        model.train()

    ds = probe.load()             # dims step, k, sigma, dim, estimator
    ds["value"].sel(estimator="gm", dim=4, sigma=1e-2).plot.line(x="k", hue="step")

The model is never modified: the Problem copies the parameters, so training
continues from exactly where it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import xarray as xr
from tqdm import tqdm

from curvprobe.core.problem import Problem
from curvprobe.criteria.spec import StabilizationSpec, mc_samples_argument
from curvprobe.criteria.sweep import iter_parts, merge_parts, part_names
from curvprobe.criteria.validity import quadratic_validity
from curvprobe.results import atomic_write, load, save

__all__ = ["CurriculumProbe"]


class CurriculumProbe:
    """Run :func:`curvprobe.stabilization` every ``every`` training steps and
    append the results along ``step`` to the netCDF file ``path``.

    Calling the probe returns the new step's Dataset, or None when the step
    is skipped. Warm start: with ``subspace="per_k"`` the eigensolver of the
    first k starts from the previous call's eigenvectors of that k (those of
    later k from the k before, as in :func:`stabilization`); with
    ``subspace="fixed"`` there is no warm start.

    Parameters
    ----------
    ks : increasing ints
        Sample counts k (the problem needs ``max(ks) + 1`` samples).
    sigmas, dims, estimators, mc_samples, subspace, seed, tol, p, point_batch, eigen_kwargs, validity
        As in :func:`curvprobe.stabilization` (``validity=True`` runs the
        quadratic-validity sweep at ``max(ks)`` at every call).
    path : str or PathLike
        Results file (netCDF). Created on the first call; an existing file is
        continued (steps it holds are skipped).
    make_problem : callable ``model -> Problem``
        Builds the problem (data, loss, batch size, dtype) for the current
        model. It must not train or modify the model.
    every : int
        Probe when ``step % every == 0``.
    progress : bool
        Progress bar over the parts (k values) inside each call.
    num_samples : int, optional
        Deprecated name of ``mc_samples``.
    """

    def __init__(self, ks: Sequence[int], *, sigmas: Sequence[float], path: str | os.PathLike,
                 make_problem: Callable[[torch.nn.Module], Problem], dims: Sequence[int] = (1, 4, 16),
                 estimators: Sequence[str] | None = None, mc_samples: int = 32, every: int = 1,
                 subspace: str = "per_k", seed: int = 0, tol: float = 1e-3, p: float = 2,
                 point_batch: int = 8, eigen_kwargs: dict | None = None, validity: bool = False,
                 progress: bool = False, num_samples: int | None = None) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not callable(make_problem):
            raise TypeError("make_problem must be a callable model -> Problem")
        self.spec = StabilizationSpec(
            ks=tuple(ks), sigmas=tuple(sigmas), dims=tuple(dims),
            estimators=None if estimators is None else tuple(estimators),
            mc_samples=mc_samples_argument(mc_samples, num_samples, "CurriculumProbe"), p=p,
            subspace=subspace, seed=seed, tol=tol, point_batch=point_batch,
            eigen_options=eigen_kwargs or {})
        self.validity = bool(validity)
        self.progress = bool(progress)
        self.path = Path(path)
        self.eig_path = self.path.with_name(self.path.name + ".eig.pt")
        self.make_problem = make_problem
        self.every = int(every)
        self._init = None
        if self.eig_path.exists():
            self._init = torch.load(self.eig_path, map_location="cpu", weights_only=True)["vectors"]

    @property
    def ks(self) -> tuple[int, ...]:
        """The sample counts k of every call."""
        return self.spec.ks

    @property
    def steps(self) -> list[int]:
        """Steps recorded in the results file."""
        if not self.path.exists():
            return []
        return [int(s) for s in self.load()["step"].values]

    def load(self) -> xr.Dataset:
        """The results file (dims ``step``, ``k``, ``sigma``, ``dim``, ``estimator``)."""
        return load(self.path)

    def due(self, step: int) -> bool:
        """Whether :meth:`__call__` at ``step`` would run a measurement."""
        return int(step) % self.every == 0 and int(step) not in self.steps

    def __call__(self, step: int, model: torch.nn.Module) -> xr.Dataset | None:
        """Probe ``model`` at training ``step`` (if due) and append to the file."""
        step = int(step)
        if not self.due(step):
            return None
        problem = self.make_problem(model)
        if not isinstance(problem, Problem):
            raise TypeError(f"make_problem must return a curvprobe.Problem, got {type(problem).__name__}")
        t0 = time.perf_counter()
        validity = (quadratic_validity(problem, self.spec.sigmas, k=self.spec.max_k, seed=self.spec.seed)
                    if self.validity else None)
        datasets, first = [], None
        parts = iter_parts(problem, self.spec, init=self._init)
        for part in tqdm(parts, total=len(part_names(self.spec)), desc=f"probe step {step}",
                         disable=not self.progress, leave=False):
            datasets.append(part.dataset)
            if first is None and part.eigenspace is not None:
                first = part.eigenspace.vectors.detach().to("cpu", torch.float64).contiguous()
        ds = merge_parts(datasets, self.spec.estimators, validity=validity)
        ds = ds.expand_dims(step=[step])
        ds["step"].attrs["long_name"] = "training step"
        ds["wall_seconds"] = ("step", [time.perf_counter() - t0],
                              {"long_name": "wall time of the probe call", "units": "s"})
        combined = ds
        if self.path.exists():
            combined = xr.concat([self.load(), ds], dim="step", combine_attrs="override")
        for variable in combined.variables.values():
            variable.encoding = {}
        save(combined, self.path, overwrite=True)
        if first is not None:
            self._init = first
            saved = {"step": step, "k": self.ks[0], "vectors": self._init}
            atomic_write(self.eig_path, lambda h: torch.save(saved, h))
        return ds


