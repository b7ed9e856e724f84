"""Hugging Face adapters: per-sample losses, exact HVPs and padding, on a tiny GPT-2.

Models are built offline from configs (no hub access). Ground truth comes from
the Hugging Face model itself, called directly (no wrapper, no Problem):
cross-entropy from its logits, its own float32 ``loss``, and a dense Hessian.
"""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, jacfwd  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, GPT2Config  # noqa: E402

import curvprobe  # noqa: E402
from curvprobe.core.problem import math_attention  # noqa: E402
from curvprobe.criteria.engine import subspace_derivatives  # noqa: E402
from curvprobe.zoo.adapters import NextTokenCrossEntropy, causal_lm, classifier  # noqa: E402

VOCAB = 13
IMPLS = ["eager", "sdpa"]


def gpt2(impl: str = "eager", seed: int = 0, dtype: torch.dtype = torch.float64, **overrides):
    """Tiny GPT-2 in eval mode. A fresh config per model: transformers writes
    the attention implementation into the config object it is given."""
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=VOCAB, n_positions=8,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    return model.to(dtype).eval()


def token_ids(n: int, T: int, seed: int = 0, low: int = 0) -> torch.Tensor:
    return torch.randint(low, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def manual_ce(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE of each unpadded sequence, from the model's own logits."""
    with torch.no_grad(), math_attention():
        logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core
    machine their synchronisation made this module 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return token_ids(5, 6)


@pytest.fixture(scope="module")
def dense(ids):
    """Dense Hessian (N, N) of the mean per-sequence CE of the eager model.

    Built on the bare Hugging Face model through its own ``input_ids`` path.
    ``jacfwd(grad(f))``, not ``torch.func.hessian``: on torch 2.13,
    ``hessian`` (= ``jacfwd(jacrev)``) is wrong for affine layer norms, whose
    input and weight both depend on w (see ``test_subspace_derivatives_*``).
    """
    model = gpt2("eager")
    named = [(n, p) for n, p in model.named_parameters()]
    names, shapes = [n for n, _ in named], [p.shape for _, p in named]
    w0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(w):
        params = dict(zip(names, (t.view(s) for t, s in zip(w.split([s.numel() for s in shapes]), shapes))))
        logits = functional_call(model, params, (), {"input_ids": ids, "use_cache": False}).logits
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(1).mean()

    H = jacfwd(grad(f))(w0)
    assert rel_err(H, H.T) < 1e-12
    return H


# ------------------------------------------------------------- (a) losses
@pytest.mark.parametrize("impl", IMPLS)
def test_per_sample_loss_is_next_token_cross_entropy(ids, impl):
    model = gpt2(impl)
    problem = causal_lm(model, ids, batch_size=2)
    losses = problem.per_sample_losses()
    assert losses.dtype == torch.float64 and losses.shape == (5,)
    torch.testing.assert_close(losses, manual_ce(model, ids), rtol=0, atol=1e-13)
    # the model's own (float32) loss: the mean over all tokens, equal here
    # because every sequence has the same length
    with torch.no_grad(), math_attention():
        hf_loss = model(input_ids=ids, labels=ids).loss
    assert abs(float(problem.loss()) - float(hf_loss)) <= 1e-6 * abs(float(hf_loss))


def test_param_names_are_readable_and_cover_the_model(ids):
    model = gpt2()
    problem = causal_lm(model, ids)
    assert problem.param_names[0] == "model.transformer.wte.weight"
    assert set(problem.param_names) == {f"model.{n}" for n, _ in model.named_parameters()}
    assert problem.num_params == sum(p.numel() for p in model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(problem.params, flat)


def test_float32_model_in_float64_problem_matches_float64_model(ids):
    p32 = causal_lm(gpt2(dtype=torch.float32), ids, dtype=torch.float64)
    p64 = causal_lm(gpt2(dtype=torch.float32).double(), ids)
    assert p32.dtype == torch.float64
    torch.testing.assert_close(p32.per_sample_losses(), p64.per_sample_losses(), rtol=0, atol=1e-14)
    v = torch.randn(p32.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(p32.hvp(v), p64.hvp(v)) <= 1e-12


def test_low_precision_logits_refused():
    loss = NextTokenCrossEntropy(torch.float64)
    with pytest.raises(TypeError, match=r"float32 logits for a torch\.float64 problem"):
        loss(torch.zeros(2, 4, VOCAB), torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------- (b) HVPs
@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse", "batched_double_backward"])
@pytest.mark.parametrize("impl", IMPLS)
def test_hvp_matches_dense_hessian(ids, dense, impl, mode):
    """Both attention implementations against one dense Hessian (eager, no
    wrapper): "sdpa" goes through the SDPA math kernel inside Problem."""
    model = gpt2("eager")
    if impl == "sdpa":
        other = gpt2("sdpa", seed=1)
        other.load_state_dict(model.state_dict())
        model = other
    assert model.config._attn_implementation == impl
    problem = causal_lm(model, ids, batch_size=2)
    gen = torch.Generator().manual_seed(2)
    V = torch.randn(problem.num_params, 5, generator=gen, dtype=torch.float64)
    assert rel_err(problem.hvp(V, mode=mode), dense @ V) <= 1e-10
    assert rel_err(problem.hvp(V[:, 0], mode=mode), dense @ V[:, 0]) <= 1e-10


# ------------------------------------------------------- (d) padding mask
def padded(ids: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``ids`` (3, 6) padded to length 8: left by 2, right by 2, 1 + 1."""
    out = torch.full((3, 8), pad, dtype=torch.long)
    mask = torch.zeros(3, 8, dtype=torch.long)
    for i, left in enumerate((2, 0, 1)):
        out[i, left:left + 6] = ids[i]
        mask[i, left:left + 6] = 1
    return out, mask


# transformers 4.x builds the SDPA padding mask with float32's minimum, which overflows
# in a float64 model ("value cannot be converted to type float"): eager attention there
SDPA_PADDED_FLOAT64 = int(transformers.__version__.split(".")[0]) >= 5
needs_sdpa_padding = pytest.mark.skipif(not SDPA_PADDED_FLOAT64, reason="transformers 4.x: SDPA padding mask "
                                        "overflows in float64 (use eager attention)")


@pytest.mark.parametrize("impl", [pytest.param(i, marks=needs_sdpa_padding) if i == "sdpa" else i
                                  for i in IMPLS])
def test_attention_mask_excludes_padding(impl):
    base = token_ids(3, 6, seed=3, low=1)
    model = gpt2(impl)
    ids_pad, mask = padded(base)
    problem = causal_lm(model, ids_pad, attention_mask=mask)
    # each padded sequence has the loss of its unpadded self, from the bare model
    torch.testing.assert_close(problem.per_sample_losses(), manual_ce(model, base), rtol=0, atol=1e-13)
    # what sits in the padding does not matter, and a bool mask works alike
    other_pad, _ = padded(base, pad=7)
    torch.testing.assert_close(causal_lm(model, other_pad, attention_mask=mask.bool()).per_sample_losses(),
                               problem.per_sample_losses(), rtol=0, atol=1e-14)
    # ... nor for curvature: HVPs equal those of the unpadded problem
    unpadded = causal_lm(model, base)
    V = torch.randn(problem.num_params, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for k, start in ((1, 0), (2, 1), (3, 0)):
        assert rel_err(problem.hvp(V, k, start=start), unpadded.hvp(V, k, start=start)) <= 1e-10
    # without the mask the padding would count: the test can tell
    assert (causal_lm(model, ids_pad).per_sample_losses() - problem.per_sample_losses()).abs().max() > 1e-3


def test_attention_mask_validation():
    model = gpt2()
    ids = token_ids(2, 6)
    holes = torch.tensor([[1, 1, 0, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="padding between real tokens"):
        causal_lm(model, ids, attention_mask=holes)
    with pytest.raises(ValueError, match="fewer than two real tokens"):
        causal_lm(model, ids, attention_mask=torch.tensor([[0, 0, 0, 0, 0, 1], [1] * 6]))
    with pytest.raises(ValueError, match=r"0 \(padding\) and 1"):
        causal_lm(model, ids, attention_mask=torch.full((2, 6), 2))
    with pytest.raises(ValueError, match="shape of input_ids"):
        causal_lm(model, ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        causal_lm(model, ids[:, :1])


def test_non_causal_model_refused():
    """A bidirectional model would see the token it predicts."""
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0,
                     attention_probs_dropout_prob=0, is_decoder=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bert = AutoModelForCausalLM.from_config(cfg).double().eval()
    with pytest.raises(ValueError, match="not a causal decoder-only LM"):
        causal_lm(bert, token_ids(2, 6))


# ---------------------------------------------------------- (c) criteria
@needs_sdpa_padding
def test_stabilization_runs_on_padded_sdpa_problem():
    """Padding + "sdpa" + vmap over samples (per-sample subspace derivatives):
    the path where transformers' mask code breaks vmap if handed a mask."""
    base = token_ids(5, 6, seed=5, low=1)
    ids_pad = torch.zeros(5, 8, dtype=torch.long)
    mask = torch.zeros(5, 8, dtype=torch.long)
    for i in range(5):
        left = i % 3
        ids_pad[i, left:left + 6], mask[i, left:left + 6] = base[i], 1
    problem = causal_lm(gpt2("sdpa", pad_token_id=0), ids_pad, attention_mask=mask)
    ds = curvprobe.stabilization(problem, [2, 4], sigmas=[1e-3], dims=[1, 2], mc_samples=4)
    assert ds["value"].shape == (2, 1, 2, ds.sizes["estimator"])
    assert np.isfinite(ds["value"].values).all()
    assert np.isfinite(ds["eigenvalues"].values).all()


# ------------------------------------------------- (e) refusals, no mutation
def test_training_mode_refused_and_model_left_alone(ids):
    model = gpt2().train()
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        causal_lm(model, ids)
    assert model.training  # not switched behind the caller's back
    model.eval()
    model.transformer.h[0].attn.train()  # one submodule in training mode is enough
    with pytest.raises(ValueError, match="training mode"):
        causal_lm(model, ids)


def test_model_not_mutated(ids):
    model = gpt2("sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    problem = causal_lm(model, ids)
    problem.hvp(torch.ones(problem.num_params, dtype=torch.float64))
    problem.per_sample_losses(problem.params + 0.1)
    assert not any(m.training for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_untwice_differentiable_attention_refused(ids):
    model = gpt2()
    model.config._attn_implementation = "flex_attention"  # this test's own model
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        causal_lm(model, ids)


# ------------------------------------------------------------- classifier
def bert_classifier(num_labels: int = 3):
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0,
                     attention_probs_dropout_prob=0, num_labels=num_labels, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    return model.double().eval()


def test_classifier_losses_and_hvp():
    model = bert_classifier()
    ids = token_ids(4, 6, seed=6, low=1)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    labels = torch.tensor([0, 2, 1, 2])
    problem = classifier(model, ids, labels, attention_mask=mask, batch_size=3)
    assert problem.param_names[0].startswith("model.bert.")

    def direct():
        with math_attention():
            logits = model(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(logits, labels, reduction="none")

    with torch.no_grad():
        torch.testing.assert_close(problem.per_sample_losses(), direct(), rtol=0, atol=1e-13)
    # HVP against double backward through the bare model (no functional_call)
    params = list(model.parameters())
    v = torch.randn(problem.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = torch.autograd.grad(direct().mean(), params, create_graph=True)
    flat_g = torch.cat([t.reshape(-1) for t in g])
    hv = torch.autograd.grad(flat_g @ v, params)
    assert rel_err(problem.hvp(v), torch.cat([t.reshape(-1) for t in hv])) <= 1e-10


def test_classifier_validation():
    ids = token_ids(3, 6)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        classifier(bert_classifier(), ids, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        classifier(bert_classifier(), ids, torch.zeros(3))
    with pytest.raises(ValueError, match="single-label classification only"):
        classifier(bert_classifier(num_labels=1), ids, torch.zeros(3, dtype=torch.long))


# ------------------------------------- subspace derivatives through LayerNorm
def test_subspace_derivatives_match_hvps(ids):
    problem = causal_lm(gpt2(), ids)
    U = torch.linalg.qr(torch.randn(problem.num_params, 3, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(8)))[0]
    g, H = subspace_derivatives(problem, U, range(3))
    for i in range(3):
        assert rel_err(g[i], U.T @ problem.gradient(k=i + 1, start=i)) <= 1e-10
        assert rel_err(H[i], U.T @ problem.hvp(U, i + 1, start=i)) <= 1e-10


def test_dict_batch_with_attention_mask_equals_the_keyword_path():
    model = gpt2()
    ids = token_ids(5, 7, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[3, 5:] = 0  # right padding
    keyword = causal_lm(model, ids, attention_mask=mask, batch_size=2)
    batch = causal_lm(model, {"input_ids": ids, "attention_mask": mask}, batch_size=2)
    v = torch.randn(keyword.num_params, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for a, b in ((keyword.per_sample_losses(), batch.per_sample_losses()),
                 (keyword.gradient(), batch.gradient()), (keyword.hvp(v), batch.hvp(v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="unknown"):
        causal_lm(model, {"input_ids": ids, "pixel_values": ids})
    with pytest.raises(ValueError, match="given twice"):
        causal_lm(model, {"input_ids": ids, "attention_mask": mask}, attention_mask=mask)
