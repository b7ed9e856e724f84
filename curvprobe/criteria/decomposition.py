"""The curvature part of the squared criteria, and the share of it a subspace captures.

At ``p = 2`` every squared criterion of a probing law centred at ``w*`` splits
into the pointwise part and the rest (``docs/estimators.md``, "The curvature
part"):

    Δ₂      = E_ε δ_k(w* + ε)²      = a_k² + C_k,       C_k   = Δ₂ − Δ₁²,
    Δ₂^(D)  = E_z δ_k(w* + U_D z)²  = a_k² + C_k^(D),   C_k^(D) = Δ₂^(D) − Δ₁²,

with ``a_k = δ_k(w*)`` exact (``Δ₁² = a_k²``). In the quadratic model
``C_k^(D) = a_k σ² tr B_k + σ² ‖c_k‖² + (σ⁴/4)(2 tr B_k² + tr(B_k)²)``: the
part driven by the gradient and curvature increments. The captured fraction

    F_k^(D) = C_k^(D) / C_k

is the share of the full-space change that the subspace holds. When
``a_k² ≫ C_k`` the plain ratio ``Δ₂^(D)/Δ₂ = (a_k² + C_k^(D))/(a_k² + C_k)``
is ≈ 1 whatever ``U_D`` is, and says nothing about the subspace; ``F`` does.

Standard errors. ``a_k`` is exact, so ``C`` has the standard error of its
criterion. With one ordering, ``F`` has the delta-method error
``sqrt(se_C(D)² + F² se_C²)/|C|`` (the subspace and full-space draws are
independent streams). With R orderings every quantity is the ordering mean of
its per-ordering value ``C_r = value_r − a_r²`` and the standard error follows
:func:`~curvprobe.criteria.engine.ordering_mean_stderr`: the spread across
orderings over R plus the Monte Carlo part ``ordering_mc_stderr``; ``F`` is
the ratio of the ordering means, its spread term taken from the linearised
per-ordering residuals ``(C_r^(D) − F C_r)/C̄`` (numerator and denominator
share the ordering).
"""

from __future__ import annotations

import xarray as xr

from curvprobe.criteria.spec import ESTIMATORS, SUBSPACE

__all__ = ["CURVATURE_VARIABLES", "curvature_decomposition", "estimates"]

CURVATURE_VARIABLES = ("curvature_part", "curvature_part_stderr", "captured_fraction",
                       "captured_fraction_stderr", "curvature_resolved", "delta1_share")
"""The variables :func:`curvature_decomposition` adds."""


def estimates(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """The estimate and its standard error over (k, sigma, dim, estimator).

    ``ordering_mean`` and ``ordering_stderr`` for a result over several
    orderings, else ``value`` and ``stderr``: what a table, a slope fit or a
    figure should read.
    """
    if "ordering_mean" in ds:
        return ds["ordering_mean"], ds["ordering_stderr"]
    return ds["value"], ds["stderr"]


def _over_orderings(x: xr.DataArray, mc: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Ordering mean of ``x`` (…, ordering) and its standard error with Monte Carlo part ``mc``."""
    R = x.sizes["ordering"]
    return x.mean("ordering"), (x.var("ordering", ddof=1) / R + mc**2) ** 0.5


def _captured(curv: xr.DataArray, curv_mean: xr.DataArray, mc: xr.DataArray,
              several: bool) -> tuple[xr.DataArray, xr.DataArray]:
    """``F = C^(D)/C`` per estimator and its standard error (see the module docstring).

    ``curv`` is per ordering when ``several`` (else equal to ``curv_mean``);
    ``mc`` the Monte Carlo standard error of each estimator's ``C``.
    """
    full = curv_mean.sel(estimator="full_mc", drop=True)
    fraction = curv_mean / full
    spread = xr.zeros_like(fraction)
    if several:
        residual = (curv - fraction * curv.sel(estimator="full_mc", drop=True)) / full
        spread = residual.var("ordering", ddof=1) / curv.sizes["ordering"]
    mc_full = mc.sel(estimator="full_mc", drop=True)
    se = (spread + (mc**2 + fraction**2 * mc_full**2) / full**2) ** 0.5
    return fraction, se


def curvature_decomposition(ds: xr.Dataset) -> xr.Dataset:
    """Add the curvature part and the captured fraction to a stabilization result.

    Parameters
    ----------
    ds : xarray.Dataset
        A :func:`curvprobe.stabilization` result (or a merge of its parts) at
        ``p = 2``; returned unchanged at another p or without ``a``.

    Returns
    -------
    xarray.Dataset
        ``ds`` with, over (k, sigma, dim, estimator) (NaN where undefined):
        ``curvature_part`` ``Δ − a_k²`` for the squared estimators (loss²;
        every one but ``delta1`` and ``sphere``) and ``curvature_part_stderr``;
        ``captured_fraction`` ``(Δ^(D) − a_k²)/(Δ₂ − a_k²)`` for the subspace
        estimators against ``full_mc`` (1) and ``captured_fraction_stderr``;
        over (k, sigma): ``curvature_resolved`` (the full-space curvature part
        exceeds two standard errors: only then is ``captured_fraction``
        informative) and ``delta1_share`` ``a_k²/Δ₂`` (the part of Δ₂ that is
        Δ₁²). With several orderings all are ordering averages.
    """
    if float(ds.attrs.get("p", 2.0)) != 2.0 or "a" not in ds:
        return ds
    names = [str(e) for e in ds["estimator"].values]
    squared = xr.DataArray([ESTIMATORS[e].moment == "p" for e in names], dims="estimator",
                           coords={"estimator": ds["estimator"]})
    several = "ordering" in ds["value"].dims
    curv = ds["value"] - ds["a"] ** 2
    if several:
        mc = ds["ordering_mc_stderr"]
        curv_mean, curv_se = _over_orderings(curv, mc)
    else:
        mc = curv_se = ds["stderr"]
        curv_mean = curv
    unit = {"units": "loss^2"}
    out = ds.assign(
        curvature_part=curv_mean.where(squared).assign_attrs(
            long_name="curvature part Δ − Δ₁² = Δ − a_k² of each squared criterion", **unit),
        curvature_part_stderr=curv_se.where(squared).assign_attrs(
            long_name="standard error of curvature_part (a_k is exact)", **unit))
    if "full_mc" not in names:
        return out
    subspace = xr.DataArray([ESTIMATORS[e].space == SUBSPACE for e in names], dims="estimator",
                            coords={"estimator": ds["estimator"]})
    fraction, fraction_se = _captured(curv, curv_mean, mc, several)
    full_mean = curv_mean.sel(estimator="full_mc", drop=True).isel(dim=0, drop=True)
    full_se = curv_se.sel(estimator="full_mc", drop=True).isel(dim=0, drop=True)
    a2 = (ds["a"] ** 2).mean("ordering") if several else ds["a"] ** 2
    full_value = (ds["ordering_mean"] if several else ds["value"]).sel(estimator="full_mc", drop=True)
    return out.assign(
        captured_fraction=fraction.where(subspace).assign_attrs(
            long_name="captured fraction (Δ₂^(D) − Δ₁²)/(Δ₂ − Δ₁²) against full_mc", units="1"),
        captured_fraction_stderr=fraction_se.where(subspace).assign_attrs(
            long_name="standard error of captured_fraction (delta method)", units="1"),
        curvature_resolved=(full_mean > 2 * full_se).assign_attrs(
            long_name="full-space curvature part Δ₂ − Δ₁² above two standard errors"),
        delta1_share=(a2 / full_value.isel(dim=0, drop=True)).assign_attrs(
            long_name="Δ₁²/Δ₂ = a_k²/Δ₂: the share of the full-space criterion that is pointwise",
            units="1"))
