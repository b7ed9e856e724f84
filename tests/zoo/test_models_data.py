"""Tests for curvprobe.zoo.models and curvprobe.zoo.data (fast: tiny shapes, tiny training)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from curvprobe.zoo import data, models
from curvprobe.zoo.models import (
    MLP,
    CNNConfig,
    GPTConfig,
    MLPConfig,
    SmallCNN,
    TinyGPT,
    sample_cross_entropy,
    token_cross_entropy,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def one_thread():
    """Run single-threaded: 2-thread ops this small crawl on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ models


def test_parameter_counts_in_range():
    assert 100_000 <= n_params(TinyGPT()) <= 300_000
    assert n_params(TinyGPT()) == 110_848  # 2·98·64 + 2·(4·64² + 2·64·256)
    assert 100 <= n_params(MLP()) <= 1_000
    assert n_params(MLP(MLPConfig(widths=(8, 16, 3)))) == 8 * 16 + 16 + 16 * 3 + 3
    assert 100 <= n_params(SmallCNN()) <= 2_000


def test_output_shapes_and_dtypes():
    cfg = GPTConfig()
    idx = torch.randint(cfg.vocab_size, (3, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    logits = TinyGPT(cfg)(idx)
    assert logits.shape == (3, cfg.seq_len, cfg.vocab_size) and logits.dtype == torch.float32
    assert TinyGPT(cfg)(idx[:, :5]).shape == (3, 5, cfg.vocab_size)  # shorter sequences too
    assert MLP()(torch.zeros(5, 8)).shape == (5, 3)
    assert SmallCNN()(torch.zeros(5, 1, 8, 8)).shape == (5, 3)
    assert SmallCNN(CNNConfig(size=9))(torch.zeros(2, 1, 9, 9)).shape == (2, 3)
    assert TinyGPT(cfg).double()(idx).dtype == torch.float64


def test_models_have_no_buffers_and_no_bias_in_gpt():
    gpt = TinyGPT()
    assert list(gpt.buffers()) == []
    assert not any(name.endswith("bias") for name, _ in gpt.named_parameters())


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    for cls in (TinyGPT, MLP, SmallCNN):
        a, b, c = cls(seed=0), cls(seed=0), cls(seed=1)
        for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
            assert torch.equal(pa, pb), name
            assert torch.isfinite(pa).all(), name
            if not name.endswith("bias"):  # biases start at zero
                assert not torch.equal(pa, pc), name
    assert torch.equal(torch.get_rng_state(), state)


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="heads"):
        GPTConfig(n_embd=64, n_head=5)
    with pytest.raises(ValueError, match="activation"):
        MLPConfig(activation="relu")
    with pytest.raises(ValueError, match="widths"):
        MLPConfig(widths=(8,))


def test_causal_mask():
    torch.manual_seed(0)
    model = TinyGPT().eval()
    idx = torch.randint(98, (2, 32), generator=torch.Generator().manual_seed(1))
    t = 17
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % 98
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    assert (before[:, t:] - after[:, t:]).abs().amax(dim=-1).min() > 1e-4


def test_token_cross_entropy_matches_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    targets = torch.randint(7, (3, 5), generator=gen)
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    expected = -logp.gather(-1, targets[..., None]).squeeze(-1).mean(-1)
    got = token_cross_entropy(logits, targets)
    assert got.shape == (3,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    flat = sample_cross_entropy(logits[:, 0], targets[:, 0])
    torch.testing.assert_close(flat, -logp[:, 0].gather(-1, targets[:, :1]).squeeze(-1))


def _gpt_problem(dtype=torch.float64):
    model = TinyGPT(GPTConfig(n_embd=32, n_head=4, n_layer=2)).to(dtype).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(98, (4, 12), generator=gen)
    y = torch.randint(98, (4, 12), generator=gen)
    return model, params, x, y


def test_hvp_double_backward_through_gpt_float64():
    model, params, x, y = _gpt_problem()
    names = list(params)
    gen = torch.Generator().manual_seed(4)
    u = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}

    def loss(p):
        return token_cross_entropy(functional_call(model, p, (x,)), y).mean()

    def hvp_double_backward(vec):
        p = {k: t.clone().requires_grad_() for k, t in params.items()}
        g = torch.autograd.grad(loss(p), [p[k] for k in names], create_graph=True)
        dot = sum((gi * vec[k]).sum() for gi, k in zip(g, names))
        return dict(zip(names, torch.autograd.grad(dot, [p[k] for k in names])))

    def dot(a, b):
        return sum((a[k] * b[k]).sum() for k in names)

    with sdpa_kernel(SDPBackend.MATH):
        hv, hu = hvp_double_backward(v), hvp_double_backward(u)
        _, hv_fwd = jvp(grad(loss), (params,), (v,))  # forward-over-reverse
        eps = 1e-5
        g_plus = grad(loss)({k: params[k] + eps * v[k] for k in names})
        g_minus = grad(loss)({k: params[k] - eps * v[k] for k in names})
    fd = {k: (g_plus[k] - g_minus[k]) / (2 * eps) for k in names}
    scale = math.sqrt(dot(hv, hv))
    assert scale > 1e-3
    assert math.sqrt(dot({k: hv[k] - fd[k] for k in names}, {k: hv[k] - fd[k] for k in names})) < 1e-6 * scale
    for k in names:
        torch.testing.assert_close(hv[k], hv_fwd[k], rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(dot(u, hv), dot(v, hu), rtol=1e-10, atol=0.0)  # symmetry


def test_vmap_over_samples_with_batch_of_one():
    model, params, x, y = _gpt_problem()

    def sample_loss(p, xi, yi):
        return token_cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))[0]

    with sdpa_kernel(SDPBackend.MATH):
        per_sample = vmap(sample_loss, in_dims=(None, 0, 0))(params, x, y)
        per_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
        full_grad = grad(lambda p: token_cross_entropy(functional_call(model, p, (x,)), y).mean())(params)
    with torch.no_grad():
        torch.testing.assert_close(per_sample, token_cross_entropy(model(x), y))
    for k, g in full_grad.items():
        torch.testing.assert_close(per_grads[k].mean(0), g)


# -------------------------------------------------------------------- data


def test_tokenizer_round_trip_and_unknowns():
    tok = data.ByteTokenizer()
    assert tok.vocab_size <= 100
    text = "def f(x):\n\treturn {'a': x ** 2}  # ~!@$%^&*|\\`\"<>?"
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert int(ids.min()) >= 1 and int(ids.max()) < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.encode(text.encode()).tolist() == ids.tolist()
    assert tok.encode("é\r").tolist() == [tok.unk_id] * 3  # two UTF-8 bytes + carriage return
    assert len(set(tok.encode("".join(map(chr, range(32, 127))) + "\t\n").tolist())) == tok.vocab_size - 1
    with pytest.raises(ValueError, match="token ids outside"):
        tok.decode([tok.vocab_size])


def test_stdlib_corpus_is_deterministic_and_bounded():
    a, b = data.stdlib_corpus(50_000), data.stdlib_corpus(50_000)
    assert a == b
    assert len(a.encode("utf-8")) <= 50_000 + 3  # + replacement chars of a cut sequence
    assert a.startswith(data.stdlib_corpus(1_000)[:900])
    assert "import" in a and "def " in a


def test_token_sequences_shapes_shift_and_determinism():
    x, y = data.token_sequences(64, 16, seed=0)
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = data.token_sequences(64, 16, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.token_sequences(64, 16, seed=1)[0])
    assert torch.equal(data.token_sequences(10, 16, seed=0)[0], x[:10])  # prefix-stable order


def test_splits_are_disjoint_and_large_enough():
    seq_len = 32
    tokens = data.corpus_tokens()
    n = tokens.numel()
    for split in data.SPLITS:
        x, y = data.token_sequences(2_000, seq_len, split=split)
        assert x.shape == (2_000, seq_len)
        offsets = data.window_offsets(2_000, seq_len, n, split=split)
        torch.testing.assert_close(tokens[offsets + seq_len], y[:, -1])
        assert len(set(offsets.tolist())) == 2_000
    train = data.window_offsets(2_000, seq_len, n, split="train")
    probe = data.window_offsets(2_000, seq_len, n, split="probe")
    train_tokens = set((train[:, None] + torch.arange(seq_len + 1)).flatten().tolist())
    probe_tokens = set((probe[:, None] + torch.arange(seq_len + 1)).flatten().tolist())
    assert not train_tokens & probe_tokens
    assert max(train_tokens) < data.split_range(n, "probe")[0] <= min(probe_tokens)
    with pytest.raises(ValueError, match="windows"):
        data.window_offsets(10**6, seq_len, n, split="probe")
    with pytest.raises(ValueError, match="split"):
        data.token_sequences(4, seq_len, split="test")


@pytest.mark.parametrize(
    ("make", "x_shape"),
    [
        (lambda s: data.synthetic_classification(300, seed=s), (300, 8)),
        (lambda s: data.synthetic_images(300, seed=s), (300, 1, 8, 8)),
    ],
)
def test_synthetic_data_deterministic(make, x_shape):
    state = torch.get_rng_state()
    (x, y), (x2, y2), (x3, _) = make(0), make(0), make(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == x_shape and x.dtype == torch.float32
    assert y.shape == (300,) and y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1, 2}
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)


def test_synthetic_classification_shares_teacher_across_seeds():
    # same teacher: a model fitted on seed 0 beats chance on seed 1
    x, y = data.synthetic_classification(2_000, seed=0)
    xt, yt = data.synthetic_classification(2_000, seed=1)
    model, _ = models.train(MLP(), x, y, sample_cross_entropy, steps=150, lr=1e-2,
                            batch_size=64, seed=0, progress=False)
    with torch.no_grad():
        assert sample_cross_entropy(model(xt), yt).mean() < 0.9 * math.log(3)


# --------------------------------------------------------- train, pretrained


def test_train_is_deterministic_and_reduces_loss():
    x, y = data.synthetic_images(256, seed=0)
    runs = [models.train(SmallCNN(), x, y, sample_cross_entropy, steps=60, lr=1e-2,
                         batch_size=32, seed=0, progress=False) for _ in range(2)]
    (m1, l1), (m2, l2) = runs
    assert not m1.training and len(l1) == 60
    assert l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert sum(l1[-10:]) < sum(l1[:10])


def test_pretrained_mlp_trains_then_reloads_from_cache(tmp_path, monkeypatch):
    torch.set_num_threads(2)  # pretrained() trains on one thread, then restores this
    model, config = models.pretrained("mlp", cache_dir=tmp_path, steps=40, progress=False)
    assert torch.get_num_threads() == 2
    assert isinstance(config, MLPConfig) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mlp-") and files[0].suffix == ".pt"
    payload = torch.load(files[0], weights_only=True)
    assert len(payload["losses"]) == 40 and payload["recipe"]["steps"] == 40

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained() retrained instead of reading the cache")

    monkeypatch.setattr(models, "train", no_training)
    again, config2 = models.pretrained("mlp", cache_dir=tmp_path, steps=40)
    assert config2 == config and not again.training
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.layers[0].weight, MLP(config).layers[0].weight)  # it trained
    with pytest.raises(AssertionError, match="retrained"):  # another recipe is another file
        models.pretrained("mlp", cache_dir=tmp_path, steps=41)


def test_pretrained_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="tiny-gpt") as info:
        models.pretrained("gpt-5", cache_dir=tmp_path)
    assert "mlp" in str(info.value) and "cnn" in str(info.value)


def test_cache_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVPROBE_CACHE", str(tmp_path / "env"))
    assert models.cache_directory() == tmp_path / "env"
    assert models.cache_directory(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("CURVPROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_directory() == tmp_path / "xdg" / "curvprobe"


def test_config_round_trips_through_json_dict():
    import dataclasses
    import json

    for cfg in (GPTConfig(), MLPConfig(), CNNConfig()):
        restored = type(cfg)(**json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert restored == cfg


def test_gpt_logits_match_reference_attention():
    """SDPA path equals an explicit softmax(QKᵀ/√d + causal mask)V on the same weights."""
    model, _, x, _ = _gpt_problem()
    block = model.blocks[0]
    h = F.rms_norm(model.wte(x), (32,))
    cos, sin = models.rotary_tables(x.shape[1], 8, model.config.rope_base, like=h)
    B, T, C = h.shape
    hn = F.rms_norm(h, (C,))
    split = lambda t: t.reshape(B, T, 4, 8).transpose(1, 2)  # noqa: E731
    q = F.rms_norm(models.apply_rotary(split(block.attn.c_q(hn)), cos, sin), (8,))
    k = F.rms_norm(models.apply_rotary(split(block.attn.c_k(hn)), cos, sin), (8,))
    v = split(block.attn.c_v(hn))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
    ref = block.attn.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    with torch.no_grad():
        torch.testing.assert_close(block.attn(hn, cos, sin), ref.detach())


def test_rotary_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    cos, sin = models.rotary_tables(20, 16, 10_000.0, like=q)
    rq = models.apply_rotary(q.expand(20, 16), cos, sin)
    rk = models.apply_rotary(k.expand(20, 16), cos, sin)
    scores = rq @ rk.T  # scores[m, n] = <R_m q, R_n k>
    torch.testing.assert_close(scores[3, 1], scores[15, 13])
    torch.testing.assert_close(scores[0, 7], scores[11, 18])
    assert not torch.isclose(scores[3, 1], scores[3, 2])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(20))  # rotations
