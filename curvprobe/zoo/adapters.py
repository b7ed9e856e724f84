"""Adapters that turn Hugging Face ``transformers`` models into :class:`Problem`\\ s.

A Hugging Face model returns a ``ModelOutput`` and computes its own loss in
float32; a :class:`~curvprobe.core.problem.Problem` needs ``model(*inputs) ->
Tensor`` and one loss per sample in the problem's dtype. The adapters here
wrap the model in a small module that returns the logits tensor, and compute
the per-sample losses from those logits themselves (the model's ``loss``
output is never used).

The wrapped model is never mutated: it must already be in eval mode and use a
twice-differentiable attention implementation (``"eager"``, or ``"sdpa"``,
which :class:`Problem` runs through the SDPA math kernel). Anything else is
refused with an error that names the fix.

Parameter names in :attr:`Problem.param_names` are the model's own, prefixed
with ``model.`` (``model.transformer.h.0.attn.c_attn.weight``, say).

transformers reads attention masks and token ids in Python (padding warnings,
mask shortcuts), which ``torch.func.vmap`` over samples cannot trace. So
:func:`causal_lm` never hands the model a mask: it moves padding to the right,
where a causal model's real tokens cannot see it, and feeds token embeddings.

``transformers`` is an optional dependency (``pip install curvprobe[hf]``);
this module itself imports nothing from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import cast

import torch
from torch import Tensor, nn

from curvprobe.core.problem import Problem, math_attention

__all__ = ["TWICE_DIFFERENTIABLE_ATTENTION", "CausalLMLogits", "ClassCrossEntropy",
           "NextTokenCrossEntropy", "SequenceClassifierLogits", "causal_lm", "classifier"]

#: Attention implementations (``config._attn_implementation``) with a second
#: derivative: ``"eager"`` is plain tensor algebra, ``"sdpa"`` is routed
#: through the SDPA math kernel by :class:`Problem` (measured with
#: transformers 5.24 / torch 2.13 on CPU: without that kernel, "sdpa" fails
#: both forward-over-reverse and double backward; with it, it matches "eager").
TWICE_DIFFERENTIABLE_ATTENTION = ("eager", "sdpa")

#: Target value marking a position that takes no part in the loss.
IGNORE_INDEX = -100


# ------------------------------------------------------------------ checks
def _check_hf_model(model: nn.Module) -> None:
    """Refuse models in training mode or with a non-twice-differentiable attention."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:
        # Hugging Face models apply dropout both through nn.Dropout modules and
        # functionally (``p=dropout if module.training else 0``), so any module
        # in training mode may make the loss random.
        raise ValueError(
            f"model is in training mode ({', '.join(training[:4])}"
            f"{', ...' if len(training) > 4 else ''}): Hugging Face models apply dropout in "
            "training mode, so the loss would not be deterministic and Hessian-vector products "
            "would be wrong. Call model.eval() first."
        )
    impls: set[str] = set()
    for m in model.modules():
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
        if isinstance(impl, dict):
            impls.update(v for v in impl.values() if v is not None)
        elif impl is not None:
            impls.add(impl)
    bad = sorted(impls - set(TWICE_DIFFERENTIABLE_ATTENTION))
    if bad:
        raise ValueError(
            f"model uses attention implementation {', '.join(map(repr, bad))}, which has no "
            "second derivative here, so Hessian-vector products would fail or be wrong. Build or "
            "load the model with attn_implementation=\"eager\" (e.g. "
            "AutoModelForCausalLM.from_pretrained(name, attn_implementation=\"eager\") or "
            "model.set_attn_implementation(\"eager\")); \"sdpa\" works too."
        )


TOKENIZER_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""Keys of a tokenizer's padded batch that the adapters read (``token_type_ids`` must be all zero)."""


def _from_batch(input_ids: Tensor | Mapping[str, Tensor],
                attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``input_ids`` and ``attention_mask`` from a tokenizer's padded dict batch (or as given)."""
    if not isinstance(input_ids, Mapping):
        return input_ids, attention_mask
    batch = dict(input_ids)
    unknown = sorted(set(batch) - set(TOKENIZER_KEYS))
    if "input_ids" not in batch or unknown:
        raise ValueError(f"a dict batch needs 'input_ids' (and optionally 'attention_mask'); got keys "
                         f"{sorted(batch)}{' — unknown: ' + str(unknown) if unknown else ''}")
    if attention_mask is not None and "attention_mask" in batch:
        raise ValueError("attention_mask given twice: in the dict batch and as a keyword")
    types = batch.get("token_type_ids")
    if types is not None and bool(torch.as_tensor(types).any()):
        raise ValueError("token_type_ids other than 0 are not supported (single-segment sequences)")
    return batch["input_ids"], batch.get("attention_mask", attention_mask)


def _check_ids(input_ids: Tensor, attention_mask: Tensor | None,
               min_len: int) -> tuple[Tensor, Tensor | None]:
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"input_ids must be an integer tensor (n, T), got dtype {input_ids.dtype} "
                         f"and shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] < min_len:
        raise ValueError(f"sequences must have at least {min_len} tokens, got T={input_ids.shape[1]}")
    input_ids = input_ids.long()
    if attention_mask is None:
        return input_ids, None
    attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    if attention_mask.dtype == torch.bool:
        attention_mask = attention_mask.long()
    if attention_mask.is_floating_point() or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only, "
                         "as an integer or bool tensor")
    return input_ids, attention_mask.long()


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- wrappers
_VMAP_DATA_DEPENDENT = "data-dependent control flow"


class _LogitsWrapper(nn.Module):
    """Base: holds the Hugging Face model as the submodule ``model`` (so
    parameter names read ``model.<hf name>``) and mirrors its ``training``
    flag without calling ``.train()``/``.eval()`` on it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def _call(self, **kwargs) -> Tensor:
        if _accepts(self.model, "use_cache"):  # encoders (BERT in transformers 4.x) have no cache
            kwargs["use_cache"] = False
        try:
            out = self.model(**kwargs, return_dict=True)
        except RuntimeError as e:
            if _VMAP_DATA_DEPENDENT in str(e):
                raise RuntimeError(
                    f"{type(self.model).__name__} reads its inputs in Python (transformers' padding "
                    "checks and mask shortcuts), which torch.func.vmap over samples cannot trace; "
                    "per-sample subspace derivatives (curvprobe.criteria.engine.subspace_derivatives) "
                    "are unavailable for these inputs. Inputs without padding (no attention_mask) "
                    "avoid most of these checks."
                ) from e
            raise
        logits = out["logits"] if isinstance(out, dict) else getattr(out, "logits", out)
        if not isinstance(logits, Tensor):
            raise TypeError(f"model output has no logits tensor (got {type(out).__name__})")
        return logits


class CausalLMLogits(_LogitsWrapper):
    """``forward(input_ids (b, T) long) -> logits (b, T, V)``, in the parameters' dtype.

    Embeds the tokens with the model's own input embedding
    (``model.get_input_embeddings()``) and calls
    ``model(inputs_embeds=…, use_cache=False, return_dict=True)``: with token
    ids, some models (GPT-2 with a ``pad_token_id``) inspect them in Python,
    which breaks ``torch.func.vmap`` over samples. Models without an input
    embedding or an ``inputs_embeds`` argument get ``input_ids``. No attention
    mask is passed: :func:`causal_lm` moves padding to the right, where a
    causal model's real positions never see it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        get = getattr(model, "get_input_embeddings", None)
        embed = get() if callable(get) else None
        self._embeds = isinstance(embed, nn.Module) and _accepts(model, "inputs_embeds")

    def forward(self, input_ids: Tensor) -> Tensor:
        """Token ids (b, T) long -> logits (b, T, V) in the model's dtype."""
        if self._embeds:
            # nn.Module.__getattr__ is typed Tensor | Module: name the method's type
            get_embeddings = cast(Callable[[], nn.Module], self.model.get_input_embeddings)
            return self._call(inputs_embeds=get_embeddings()(input_ids))
        return self._call(input_ids=input_ids)


class SequenceClassifierLogits(_LogitsWrapper):
    """``forward(input_ids (b, T) long[, attention_mask (b, T) long]) -> logits (b, C)``.

    Calls ``model(input_ids=…, attention_mask=…, use_cache=False,
    return_dict=True)``.
    """

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Token ids (b, T) long and an optional 0/1 mask (b, T) -> logits (b, C)."""
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        return self._call(input_ids=input_ids, **kwargs)


# ------------------------------------------------------------------ losses
def _check_logits_dtype(logits: Tensor, dtype: torch.dtype) -> None:
    if torch.finfo(logits.dtype).eps > torch.finfo(dtype).eps:
        raise TypeError(
            f"the model returned {logits.dtype} logits for a {dtype} problem (the model casts its "
            "output down); losses and Hessians would lose precision"
        )


class NextTokenCrossEntropy:
    """Per-sequence mean next-token cross-entropy from logits.

    ``loss(logits (b, T, V), targets (b, T − 1) long) -> (b,)``:

        ℓ_i = (1/|V_i|) Σ_{t ∈ V_i} −log softmax(logits[i, t])[targets[i, t]],

    where ``targets[i, t]`` is the token at position ``t + 1`` and
    ``V_i = {t : targets[i, t] ≠ -100}`` are the valid target positions.
    Computed in the logits' dtype, which must be at least as precise as
    ``dtype`` (the problem's).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_logits_dtype(logits, self.dtype)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        valid = targets != IGNORE_INDEX
        picked = logp.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
        # where (not a multiply): padded positions may hold non-finite logits
        nll = torch.where(valid, -picked, torch.zeros((), dtype=picked.dtype, device=picked.device))
        return nll.sum(-1) / valid.sum(-1).to(nll.dtype)

    def __repr__(self) -> str:
        return f"NextTokenCrossEntropy(dtype={self.dtype})"


class ClassCrossEntropy:
    """Per-sample cross-entropy ``ℓ_i = −log softmax(logits[i])[labels[i]]``.

    ``loss(logits (b, C), labels (b,) long) -> (b,)``, in the logits' dtype
    (at least as precise as ``dtype``).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check_logits_dtype(logits, self.dtype)
        logp = torch.log_softmax(logits, dim=-1)
        return -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        return f"ClassCrossEntropy(dtype={self.dtype})"


def _resolve_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    for p in model.parameters():
        if p.requires_grad:
            return p.dtype
    raise ValueError("model has no trainable parameters")


def _pack_left(input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Move each sequence's real tokens to the front: ``(ids (n, T), lengths (n,))``.

    Real tokens must form one contiguous block per row (left and/or right
    padding, no holes); row ``i`` is rotated left by its number of leading pads.
    """
    n, T = input_ids.shape
    if attention_mask is None:
        return input_ids, torch.full((n,), T, dtype=torch.long, device=input_ids.device)
    lengths = attention_mask.sum(1)
    first = attention_mask.argmax(1)
    pos = torch.arange(T, device=input_ids.device)
    block = (pos >= first[:, None]) & (pos < (first + lengths)[:, None])
    holes = (block != (attention_mask == 1)).any(1).nonzero().flatten()
    if holes.numel():
        more = " ..." if holes.numel() > 5 else ""
        raise ValueError(f"attention_mask rows {holes[:5].tolist()}{more} have "
                         "padding between real tokens; only left or right padding is supported")
    index = (pos[None, :] + first[:, None]) % T
    return input_ids.gather(1, index), lengths


def _causal_targets(packed: Tensor, lengths: Tensor) -> Tensor:
    """``targets[i, t] = packed[i, t + 1]`` if ``t + 1 < lengths[i]``, else -100: (n, T − 1)."""
    targets = packed[:, 1:].clone()
    pos = torch.arange(1, packed.shape[1], device=packed.device)
    targets[pos[None, :] >= lengths[:, None]] = IGNORE_INDEX
    return targets


def _check_equivalence(model: nn.Module, wrapper: CausalLMLogits, input_ids: Tensor,
                       attention_mask: Tensor | None, packed: Tensor, lengths: Tensor) -> None:
    """Certify the wrapper against the model's own masked forward on a few rows.

    On the first row and the first padded row: (1) ``model(input_ids,
    attention_mask, position_ids = cumsum(mask) − 1)`` must give, at the real
    positions, the logits the wrapper gives for the packed row; (2) changing
    the last real token must leave the logits before it unchanged. A model
    that is not causal (it would see the token it predicts, or the right
    padding) or that treats ``inputs_embeds`` differently from ``input_ids``
    fails here instead of giving wrong losses. Relative tolerance:
    sqrt(machine epsilon) of the model's dtype.
    """
    rows = [0]
    if attention_mask is not None:
        padded = (lengths < input_ids.shape[1]).nonzero().flatten()
        rows += padded[:1].tolist()
    rows = sorted(set(rows))
    device = next(model.parameters()).device
    ids, lens = input_ids[rows].to(device), lengths[rows]
    mask = (torch.ones_like(ids) if attention_mask is None else attention_mask[rows]).to(device)
    kwargs = {"attention_mask": mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
    rows_packed = packed[rows].to(device)
    with torch.no_grad(), math_attention():
        ref = model(input_ids=ids, **kwargs, use_cache=False, return_dict=True).logits
        got = wrapper(rows_packed)
        last = (lens - 1).to(device)
        changed = rows_packed.clone()
        r = torch.arange(len(rows), device=device)
        changed[r, last] = (changed[r, last] + 1) % got.shape[-1]
        got_changed = wrapper(changed)

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max()) / max(float(a.abs().max()), 1.0) if a.numel() else 0.0

    tol = torch.finfo(got.dtype).eps ** 0.5
    for j, L in enumerate(lens.tolist()):
        err = rel(ref[j][mask[j] == 1], got[j, :L])
        leak = rel(got[j, :L - 1], got_changed[j, :L - 1])
        if not (err <= tol and leak <= tol):
            raise ValueError(
                f"{type(model).__name__} is not a causal decoder-only LM as causal_lm feeds it "
                f"(sequence {rows[j]}: relative logit difference {err:.2e} from the model's own masked "
                f"forward, {leak:.2e} at earlier positions when the last token changes; tolerance "
                f"{tol:.1e}). Bidirectional models see the token they predict, and a model that treats "
                "inputs_embeds differently from input_ids cannot be packed. Build the Problem by hand."
            )


# ---------------------------------------------------------------- builders
def causal_lm(model: nn.Module, input_ids: Tensor | Mapping[str, Tensor], *,
              attention_mask: Tensor | None = None,
              batch_size: int = 256, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None, distributed: bool = False) -> Problem:
    """Problem whose samples are sequences and whose loss is next-token cross-entropy.

    Sample ``i`` is the sequence ``x_i = input_ids[i]`` with ``T_i`` real
    tokens; its loss is the mean cross-entropy of predicting each real token
    from the logits at the real token before it:

        ℓ_i(w) = 1/(T_i − 1) Σ_{t=0}^{T_i−2} −log softmax(z_{i,t}(w))[x_{i,t+1}],

    where ``z_{i,t}(w)`` (V,) are the logits at the ``t``-th real token,
    computed in the problem's dtype. Padding (``attention_mask == 0``) may sit
    on the left and/or right of each row. The sequences are stored with their
    real tokens moved to the front and fed without a mask, so real token ``t``
    sits at position ``t`` and sees only real tokens — what the model gives
    with the mask and ``position_ids = cumsum(mask) − 1``, as it does in
    ``generate``. This is checked on the first row and the first padded row
    when the Problem is built (``ValueError`` if the model is not causal).

    Parameters
    ----------
    model : transformers causal LM (``GPT2LMHeadModel``, ``*ForCausalLM``, …)
        ``model(input_ids=…, attention_mask=…, use_cache=False,
        return_dict=True).logits`` of shape (b, T, V). Must be in eval mode
        and use ``"eager"`` or ``"sdpa"`` attention (a ``ValueError`` names the
        fix otherwise); never modified. Its ``loss`` output is not used (it is
        float32 whatever the model's dtype).
    input_ids : LongTensor (n, T), T ≥ 2, or a tokenizer's dict batch
        Token ids; row order defines the sample order ``k``. A dict (what
        ``tokenizer(texts, padding=True, return_tensors="pt")`` returns)
        supplies ``input_ids`` and ``attention_mask``.
    attention_mask : (n, T) of 0/1 (int or bool), optional
        1 for real tokens, 0 for padding; at least two real tokens per row,
        contiguous.
    batch_size : int
        Sequences per chunk. Peak memory is dominated by the (b, T, V) logits
        and their double-backward buffers, not by the parameters.
    dtype : torch.dtype, optional
        Dtype of the parameters, the logits and the loss (default: the
        model's).
    device : torch.device or str, optional
        Device (default: the model's).

    Returns
    -------
    Problem
        Inputs ``(packed_ids,)`` (n, T) long; targets (n, T − 1) long holding
        the next real token, ``-100`` where there is none; parameter names
        prefixed ``model.`` (``model.transformer.h.0.attn.c_attn.weight``);
        per-sample losses (n,) float64.
    """
    _check_hf_model(model)
    input_ids, attention_mask = _check_ids(*_from_batch(input_ids, attention_mask), min_len=2)
    packed, lengths = _pack_left(input_ids, attention_mask)
    short = (lengths < 2).nonzero().flatten()
    if short.numel():
        raise ValueError(f"sequences {short[:5].tolist()}{' ...' if short.numel() > 5 else ''} have fewer "
                         "than two real tokens, so no next-token target")
    wrapper = CausalLMLogits(model)
    _check_equivalence(model, wrapper, input_ids, attention_mask, packed, lengths)
    dtype = _resolve_dtype(model, dtype)
    return Problem(wrapper, NextTokenCrossEntropy(dtype), packed, _causal_targets(packed, lengths),
                   batch_size=batch_size, dtype=dtype, device=device, distributed=distributed)


def classifier(model: nn.Module, input_ids: Tensor | Mapping[str, Tensor], labels: Tensor, *,
               attention_mask: Tensor | None = None, batch_size: int = 256,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Problem:
    """Problem for a sequence classifier with per-sample cross-entropy.

        ℓ_i(w) = −log softmax(z_i(w))[y_i],   z_i (C,) the logits of sequence i,

    computed in the problem's dtype.

    Parameters
    ----------
    model : transformers ``*ForSequenceClassification``
        ``model(input_ids=…, attention_mask=…, use_cache=False,
        return_dict=True).logits`` of shape (b, C), single-label
        classification (``num_labels ≥ 2``). Eval mode, ``"eager"`` or
        ``"sdpa"`` attention; never modified.
    input_ids : LongTensor (n, T), or a tokenizer's dict batch
        Token ids; row order defines the sample order ``k``. A dict supplies
        ``input_ids`` and ``attention_mask``.
    labels : integer Tensor (n,)
        Class labels, values in ``[0, C)``.
    attention_mask : (n, T) of 0/1, optional
        Passed to the model as is (dropped if it has no zeros). With padding,
        transformers builds the attention mask with Python-level checks on its
        values, so :func:`curvprobe.criteria.engine.subspace_derivatives` (``vmap`` over samples)
        raises for most models; losses, gradients and HVPs work.
    batch_size, dtype, device
        As in :func:`causal_lm`.

    Returns
    -------
    Problem with inputs ``(input_ids[, attention_mask])``, targets ``labels``
    (n,) long, parameter names prefixed ``model.``.
    """
    _check_hf_model(model)
    config = getattr(model, "config", None)
    problem_type = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if problem_type not in (None, "single_label_classification") or num_labels == 1:
        raise ValueError(f"classifier() handles single-label classification only; the model is set up "
                         f"for {problem_type or 'regression'} (problem_type={problem_type!r}, "
                         f"num_labels={num_labels})")
    input_ids, attention_mask = _check_ids(*_from_batch(input_ids, attention_mask), min_len=1)
    labels = torch.as_tensor(labels)
    if labels.shape != (input_ids.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices of shape ({input_ids.shape[0]},), "
                         f"got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    labels = labels.long()
    if num_labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"labels must be in [0, {num_labels - 1}]")
    if attention_mask is not None and bool((attention_mask == 1).all()):
        attention_mask = None
    dtype = _resolve_dtype(model, dtype)
    inputs = (input_ids,) if attention_mask is None else (input_ids, attention_mask)
    return Problem(SequenceClassifierLogits(model), ClassCrossEntropy(dtype), inputs, labels,
                   batch_size=batch_size, dtype=dtype, device=device)
