"""
The chunked LM-head loss (`nanogpt2.model.lm_head_loss`, `GPT.forward(..., return_logits=False)`) against the
plain path it replaces, `F.cross_entropy` over the full (N, vocab) logits: loss and gradients (hidden states,
head weight, every parameter of a GPT) with ignored targets, a tied head, a frozen head, under CPU bfloat16
autocast and under torch.compile; the trainer's losses with it equal those with the plain loss; and its step
peak memory (torch.profiler, the method bench.py uses) is a fraction of the plain path's.

    python -m pytest -q tests/test_fused_loss.py
"""

import pytest
import torch
import torch.nn.functional as F

import nanogpt2.model as model_module
from nanogpt2.model import GPT, GPTConfig, IGNORE_INDEX, ChunkedLMHeadLoss, lm_head_loss
from nanogpt2.peft import apply_lora

# ----------------------------------------------------------------------------------------------------
# helpers


def plain_loss(hidden, weight, targets, reduction="mean"):
    """The reference: GPT.forward's loss over the full logits."""
    logits = hidden.reshape(-1, hidden.size(-1)) @ weight.t()  # (N, V)
    return F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction)


def close(got, want, rel):
    """Equal to `rel` of the reference's norm (elementwise relative error means nothing at entries near 0)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert (got.double() - want.double()).norm() <= rel * want.double().norm(), (got - want).abs().max()


def problem(N=300, C=32, V=1000, seed=0, ignore_every=7):
    """Hidden states, a head of logits of order 1-10 (a peaked softmax), targets with some ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g).requires_grad_()
    weight = (torch.randn(V, C, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::ignore_every] = IGNORE_INDEX
    return hidden, weight, targets


def mm_calls(fn) -> int:
    """How many matmuls (mm / addmm) `fn` runs, from torch.profiler's op events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::addmm_"))


def tiny_gpt(vocab=97, tied=True, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab, tie_word_embeddings=tied))
    with torch.no_grad():  # logits of order 1-10, not GPT-2 init's near-uniform 0.1
        model.lm_head.weight.mul_(20.0)
    return model


def batch(vocab=97, B=3, T=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=g)  # (B, T)
    y = torch.randint(0, vocab, (B, T), generator=g)  # (B, T)
    y[0, :5] = IGNORE_INDEX  # a masked prompt
    y[2, -3:] = IGNORE_INDEX  # padding
    return x, y


def grads_of(model, x, y, fwd=None, **kw):
    """(logits, loss, {name: grad}) of model(x, y, **kw), called through `fwd` (e.g. the compiled model) when given."""
    model.zero_grad(set_to_none=True)
    logits, loss = (model if fwd is None else fwd)(x, y, **kw)
    loss.backward()
    return logits, loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------------------------------
# The function against F.cross_entropy


@pytest.mark.parametrize("chunk_rows", [None, 1, 64, 299, 300, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_gradients_equal_cross_entropy(chunk_rows, reduction):
    hidden, weight, targets = problem()
    want = plain_loss(hidden, weight, targets, reduction)
    want_h, want_w = torch.autograd.grad(want, (hidden, weight))
    got = lm_head_loss(hidden, weight, targets, reduction=reduction, chunk_rows=chunk_rows)
    got_h, got_w = torch.autograd.grad(got, (hidden, weight))
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    close(got_h, want_h, 1e-6)
    close(got_w, want_w, 1e-6)
    assert not got_h[::7].any()  # ignored rows get no gradient


@pytest.mark.parametrize("V", [1024, 1025, 5])
def test_vocabularies_on_and_off_the_row_alignment(V):
    """Rows padded to a multiple of LOSS_ROW_ALIGN (1025 -> 1088, 5 -> 64) or not padded at all (1024)."""
    hidden, weight, targets = problem(N=130, V=V)
    want = plain_loss(hidden, weight, targets)
    got = lm_head_loss(hidden, weight, targets, chunk_rows=50)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(want, (hidden, weight))):
        close(g, w, 1e-6)


def test_upstream_gradient_scales_both_gradients():
    """The backward multiplies the saved gradients by the incoming one (loss / micro_steps, a loss scale)."""
    hidden, weight, targets = problem()
    want = torch.autograd.grad(plain_loss(hidden, weight, targets) * 3.7, (hidden, weight))
    got = torch.autograd.grad(lm_head_loss(hidden, weight, targets, chunk_rows=64) * 3.7, (hidden, weight))
    for g, w in zip(got, want):
        close(g, w, 1e-6)


def test_confidently_wrong_rows_keep_their_large_loss():
    """A target far below the top logit (a loss of ~300 nats, e^-300 underflows float32) scores as
    F.cross_entropy does, not inf."""
    hidden = torch.zeros(2, 4)
    hidden[:, 0] = 1.0
    weight = torch.zeros(5, 4)
    weight[0, 0], weight[3, 0] = 200.0, -100.0
    targets = torch.tensor([3, 0])
    got, want = lm_head_loss(hidden, weight, targets), plain_loss(hidden, weight, targets)
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-6)


def test_no_scored_target_is_nan_with_zero_gradients():
    hidden, weight, targets = problem()
    targets = torch.full_like(targets, IGNORE_INDEX)
    want = plain_loss(hidden, weight, targets)
    got = lm_head_loss(hidden, weight, targets, chunk_rows=64)
    assert want.isnan() and got.isnan()
    for g in torch.autograd.grad(got, (hidden, weight)):
        assert torch.equal(g, torch.zeros_like(g))


def test_frozen_head_computes_no_weight_gradient():
    hidden, weight, targets = problem()
    weight.requires_grad_(False)
    want_h, = torch.autograd.grad(plain_loss(hidden, weight, targets), hidden)
    loss = lm_head_loss(hidden, weight, targets, chunk_rows=100)
    grad_h, grad_w, _ = loss.grad_fn.saved_tensors
    assert grad_w is None  # no (V, C) buffer kept
    close(torch.autograd.grad(loss, hidden)[0], want_h, 1e-6)
    # three chunks: a forward and a hidden-gradient matmul each; with the weight training, one more each;
    # with no gradient wanted (no_grad, or nothing requires grad), the forward's alone
    assert mm_calls(lambda: lm_head_loss(hidden, weight, targets, chunk_rows=100)) == 6
    assert mm_calls(lambda: lm_head_loss(hidden, weight.detach().requires_grad_(), targets, chunk_rows=100)) == 9
    with torch.no_grad():
        assert mm_calls(lambda: lm_head_loss(hidden, weight, targets, chunk_rows=100)) == 3
        assert lm_head_loss(hidden, weight, targets).grad_fn is None


def test_bfloat16_autocast_is_as_accurate_as_the_plain_path():
    """CPU bf16 autocast: matmuls in bf16, softmax in fp32, gradients in the inputs' fp32. Both paths round the
    logits and their gradient to bf16; ours must be as close to the float32 truth as the plain path is."""
    hidden, weight, targets = problem(N=256, C=64, V=500)
    exact = plain_loss(hidden, weight, targets)
    exact_grads = torch.autograd.grad(exact, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = plain_loss(hidden, weight, targets)
        plain_grads = torch.autograd.grad(plain, (hidden, weight))
        ours = lm_head_loss(hidden, weight, targets, chunk_rows=100)
        our_grads = torch.autograd.grad(ours, (hidden, weight))
    assert ours.dtype == torch.float32 and all(g.dtype == torch.float32 for g in our_grads)
    assert abs(ours.item() - exact.item()) <= 2 * abs(plain.item() - exact.item()) + 1e-3 * exact.item()
    for ours_g, plain_g, exact_g in zip(our_grads, plain_grads, exact_grads):
        our_err, plain_err = (ours_g - exact_g).norm(), (plain_g - exact_g).norm()
        assert our_err <= 1.5 * plain_err and our_err <= 1e-2 * exact_g.norm()


def test_compiles_without_a_graph_break_and_matches():
    hidden, weight, targets = problem(N=120, C=16, V=200)
    fn = lambda h, w, t: lm_head_loss(h, w, t, chunk_rows=50)  # noqa: E731
    explained = torch._dynamo.explain(fn)(hidden, weight, targets)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    # the chunk loop is one opaque call in the graph (the compiler runs the eager loop, not its own fusion)
    assert "nanogpt2.lm_head_loss_chunks" in explained.graphs[0].fwd_body_0.code
    torch._dynamo.reset()
    compiled = torch.compile(fn)
    got = compiled(hidden, weight, targets)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    want = plain_loss(hidden, weight, targets)
    want_grads = torch.autograd.grad(want, (hidden, weight))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        close(g, w, 1e-5)  # the compiler's fused kernels sum in another order
    torch._dynamo.reset()


def test_bad_reduction_is_refused():
    hidden, weight, targets = problem(N=4)
    with pytest.raises(ValueError, match="reduction"):
        lm_head_loss(hidden, weight, targets, reduction="none")


# ----------------------------------------------------------------------------------------------------
# Through a whole GPT


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_forward_without_logits_gives_every_gradient_of_the_plain_path(tied):
    """The tied head's one parameter gets the embedding's and the head's gradients summed, as autograd sums them."""
    model = tiny_gpt(tied=tied)
    x, y = batch()
    logits, want, want_grads = grads_of(model, x, y)
    assert logits.shape == (3, 32, 97)  # the default is unchanged: (logits, loss)
    none, got, got_grads = grads_of(model, x, y, return_logits=False)
    assert none is None
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(got_grads) == set(want_grads) == {n for n, _ in model.named_parameters()}
    for name in want_grads:
        close(got_grads[name], want_grads[name], 1e-5)  # the body's backward adds a few ulps to the head's 1e-7
    if tied:
        assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt_with_lora_and_a_frozen_tied_head():
    model = tiny_gpt()
    apply_lora(model, 4, 8.0, ["c_attn", "c_fc"])
    with torch.no_grad():  # non-zero B, so the adapters' A matrices get gradients too
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    x, y = batch()
    _, want, want_grads = grads_of(model, x, y)
    _, got, got_grads = grads_of(model, x, y, return_logits=False)
    assert model.lm_head.weight.grad is None and set(got_grads) == set(want_grads)
    assert all("lora_" in n for n in got_grads) and len(got_grads) == 8
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for name in want_grads:
        close(got_grads[name], want_grads[name], 1e-5)


def test_gpt_under_bfloat16_autocast():
    model = tiny_gpt()
    x, y = batch()
    _, exact, _ = grads_of(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain, plain_grads = grads_of(model, x, y)
        _, ours, our_grads = grads_of(model, x, y, return_logits=False)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(plain.item(), rel=1e-2)
    for name, g in plain_grads.items():
        assert our_grads[name].dtype == torch.float32
        assert (our_grads[name] - g).norm() <= 0.05 * g.norm() + 1e-6, name  # bf16 rounding on both sides


def test_compiled_gpt_matches_the_eager_plain_path():
    model = tiny_gpt()
    x, y = batch()
    _, want, want_grads = grads_of(model, x, y)
    torch._dynamo.reset()
    _, got, got_grads = grads_of(model, x, y, fwd=torch.compile(model), return_logits=False)
    torch._dynamo.reset()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for name in want_grads:
        close(got_grads[name], want_grads[name], 1e-4)


def test_return_logits_false_needs_targets():
    model = tiny_gpt()
    x, _ = batch()
    with pytest.raises(ValueError, match="pass targets"):
        model(x, return_logits=False)


def test_a_replaced_head_falls_back_to_the_plain_loss():
    """A head that is not a bias-free nn.Linear (here, one with a bias) is run as a module: same loss, no logits."""
    model = tiny_gpt(tied=False)
    model.lm_head = torch.nn.Linear(32, 97)
    x, y = batch()
    logits, want = model(x, y)
    none, got = model(x, y, return_logits=False)
    assert none is None and got.item() == want.item()


def test_step_peak_memory_is_a_fraction_of_the_plain_path(monkeypatch):
    """A vocabulary-heavy tiny GPT (8 x 64 rows, 20,000 symbols: 41 MB of logits): the plain step holds the
    logits, their log-softmax and their gradient at once; the chunked one a 1 MiB chunk."""
    from bench import _cpu_peak_bytes

    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 2 ** 20)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=20000))
    x = torch.randint(0, 20000, (8, 64))  # (B, T)

    def step(**kw):
        model(x, x, **kw)[1].backward()
        model.zero_grad(set_to_none=True)

    step(), step(return_logits=False)  # warm up
    plain, ours = _cpu_peak_bytes(step), _cpu_peak_bytes(lambda: step(return_logits=False))
    assert plain > 3 * 8 * 64 * 20000 * 4  # the method sees the plain path's three (N, V) buffers
    assert ours < plain / 2, (ours, plain)


def test_saved_tensors_are_only_the_gradients():
    """What the autograd graph keeps for the backward: (N, C) and (V, C) gradients and the count, no logits."""
    hidden, weight, targets = problem()
    loss = lm_head_loss(hidden, weight, targets, chunk_rows=64)
    assert isinstance(loss.grad_fn, ChunkedLMHeadLoss._backward_cls)
    shapes = [None if t is None else tuple(t.shape) for t in loss.grad_fn.saved_tensors]
    assert shapes == [(300, 32), (1000, 32), ()]
