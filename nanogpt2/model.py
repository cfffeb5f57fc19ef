"""
The GPT-2 language model, written out in full.

One file, read top to bottom: the config dataclass and the named presets, a KV cache for incremental
decoding, the attention mask, causal self-attention (fused `F.scaled_dot_product_attention` or an explicit
reference path), the MLP, the pre-LayerNorm block, the LM head's loss in chunks (`lm_head_loss`: the
cross-entropy without the (B*T, vocab) logits), and the `GPT` module with its init, forward, parameter
counts and FLOPs per token.

References:
  - Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2), and OpenAI's
    `gpt-2/src/model.py`;
  - Karpathy's nanoGPT `model.py`, whose module names this file keeps (they match HF's GPT-2 names, so
    checkpoints convert by renaming alone; see `nanogpt2/convert.py`).

Run it:
    from nanogpt2.model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128))
    logits, loss = model(idx, targets)              # (B, T, vocab), scalar
    _, loss = model(idx, targets, return_logits=False)   # the loss alone, without the (B, T, vocab) logits
    model = GPT.from_pretrained("gpt2")             # HF weights, no `transformers` needed
    model.gradient_checkpointing_enable()           # training recomputes each block in the backward (less memory)

The model knows nothing of tokenizers, data, training or PEFT.
"""

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # a target the loss skips (padding, prompt tokens, already-scored positions): PyTorch's default

# ----------------------------------------------------------------------------------------------------
# Config and presets


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (HF: n_positions)
    vocab_size: int = 50257  # GPT-2's 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: Optional[int] = None  # MLP hidden width; None means 4 * n_embd
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches (0 when fine-tuning)
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"  # GPT-2's GELU with the tanh approximation; see ACTIVATIONS
    scale_attn_weights: bool = True  # divide attention scores by sqrt(head size)
    scale_attn_by_inverse_layer_idx: bool = False  # also divide by (layer index + 1) (HF option)
    tie_word_embeddings: bool = True  # lm_head shares its weight with wte
    attn_impl: str = "sdpa"  # "sdpa" (fused kernels) or "reference" (matmul, mask, softmax, matmul)

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        if self.attn_impl not in ("sdpa", "reference"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'reference', not {self.attn_impl!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The released GPT-2 family (all with vocab 50257, block 1024). Parameter counts, tied head counted once:
# gpt2 124,439,808; gpt2-medium 354,823,168; gpt2-large 774,030,080; gpt2-xl 1,557,611,200;
# distilgpt2 81,912,576.
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
}


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Eager: PyTorch's one kernel. Under torch.compile: the same function written with a sigmoid, since
    0.5 (1 + tanh(z)) = sigmoid(2 z); the compiler fuses it into one loop, and a sigmoid is far cheaper than
    the tanh it would otherwise call (forward + backward 2.3x faster on a CPU; equal to 5e-7).
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 2 * sqrt(2 / pi) = 1.5957...
    return F.gelu(x, approximate="tanh")


# HF's `activation_function` names that we implement exactly. "gelu_new", "gelu_fast" and
# "gelu_pytorch_tanh" are the same tanh approximation written three ways.
ACTIVATIONS = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "tanh": torch.tanh,
}

# ----------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the positions already processed, preallocated for `max_len` positions.

    The model writes each layer's new keys/values into slots [length, length + T) and attends over
    [0, length + T); after the forward pass it advances `length` by T. Storage is allocated on first use
    with the dtype of the keys (so it follows autocast).
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.length = 0  # positions already in the cache
        self.k: list = [None] * n_layer
        self.v: list = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (B, nh, T, hs) for `layer`; return all keys/values so far (B, nh, length + T, hs)."""
        B, nh, T, hs = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} + {T} positions > max_len {self.max_len}")
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: torch.Tensor):
        """Keep only the batch rows in `index` (e.g. drop finished sequences)."""
        self.k = [None if k is None else k[index] for k in self.k]
        self.v = [None if v is None else v[index] for v in self.v]


class StaticKVCache:
    """A KV cache whose shapes never change, for compiled decoding (`torch.compile`, CUDA graphs).

    Every forward attends over all `max_len` slots, the ones not written yet masked out, and the slots to
    write come as a tensor (`cache_position`, (T,) int64), not as a Python count: a one-token decode step
    has the same shapes at every position, so it compiles once. The caller (nanogpt2/generate.py) keeps
    track of how many slots are filled; positions restart at 0 after `generate` crops the context.

    Given `batch_size`, `n_head`, `head_size`, `dtype` and `device`, the storage is allocated now, outside
    any compiled code, and marked as a static address: CUDA graphs (torch.compile's "reduce-overhead")
    then write into it in place instead of copying it, and a cache reused for the next request keeps its
    addresses, so the recorded graphs replay. Otherwise it is allocated on first use, like KVCache.
    """

    def __init__(self, n_layer: int, max_len: int, batch_size: Optional[int] = None, n_head: Optional[int] = None,
                 head_size: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None):
        self.max_len = max_len
        self.k: list = [None] * n_layer
        self.v: list = [None] * n_layer
        if batch_size is not None:
            for layer in range(n_layer):
                self.k[layer] = torch.zeros(batch_size, n_head, max_len, head_size, dtype=dtype, device=device)  # (B, nh, max_len, hs)
                self.v[layer] = torch.zeros(batch_size, n_head, max_len, head_size, dtype=dtype, device=device)  # (B, nh, max_len, hs)
                # guard=False: a new cache re-records CUDA graphs, never recompiles (older torch guarded by default)
                torch._dynamo.mark_static_address(self.k[layer], guard=False)
                torch._dynamo.mark_static_address(self.v[layer], guard=False)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor):
        """Write k, v (B, nh, T, hs) into slots `cache_position` of `layer`; return the whole cache
        (B, nh, max_len, hs)."""
        if self.k[layer] is None:
            B, nh, _, hs = k.shape
            self.k[layer] = k.new_zeros(B, nh, self.max_len, hs)
            self.v[layer] = v.new_zeros(B, nh, self.max_len, hs)
        elif self.k[layer].dtype != k.dtype:
            raise ValueError(f"this StaticKVCache holds {self.k[layer].dtype} keys but the model makes {k.dtype} ones "
                             "(autocast on or off since it was allocated?): allocate it with the compute dtype")
        self.k[layer].index_copy_(2, cache_position, k)
        self.v[layer].index_copy_(2, cache_position, v)
        return self.k[layer], self.v[layer]


# ----------------------------------------------------------------------------------------------------
# Attention mask


def build_attention_bias(attention_mask: Optional[torch.Tensor], T: int, past: int, dtype, device):
    """Additive attention bias (B or 1, 1, T, past + T): 0 where a query may attend, dtype-min elsewhere.

    Query i (absolute position past + i) sees key j when j <= past + i (causal) and attention_mask[b, j]
    is 1 (not padding). A fully masked row (a padding query) becomes a uniform average, never NaN, as in
    HF's GPT-2; its output is meaningless and ignored.
    """
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    return _bias(q_pos, S, attention_mask, dtype)


def build_static_attention_bias(attention_mask: Optional[torch.Tensor], cache_position: torch.Tensor, max_len: int, dtype):
    """The same bias for a StaticKVCache: (B or 1, 1, T, max_len), query i in slot cache_position[i] sees
    the slots up to its own (those after it hold nothing yet, or stale keys from before a crop) that
    attention_mask (B, max_len) marks 1."""
    return _bias(cache_position[:, None], max_len, attention_mask, dtype)


def _bias(q_pos: torch.Tensor, S: int, attention_mask: Optional[torch.Tensor], dtype):
    k_pos = torch.arange(S, device=q_pos.device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != S:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {S} (cache + input)")
        allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=q_pos.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


# ----------------------------------------------------------------------------------------------------
# Transformer block


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. `keep_attention = True` (off by default) makes the forward take the
    explicit path and keep the probabilities it computes, `last_attention` (B, nh, T, S) after the softmax and
    before dropout, detached: a window to look through (attention maps), costing nothing when off."""

    keep_attention = False

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config  # shared with the model, so `attn_impl` can be switched on a live model
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        head_size = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(head_size) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def forward(self, x, attn_bias=None, kv_cache: Optional[KVCache] = None, cache_position=None):
        B, T, C = x.size()  # (B, T, C)
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if isinstance(kv_cache, StaticKVCache):
            k, v = kv_cache.update(self.layer_idx, k, v, cache_position)  # (B, nh, max_len, hs)
        elif kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, S, hs), S = cache length + T
        dropout_p = self.attn_dropout.p if self.training else 0.0
        S = k.size(2)
        if attn_bias is None and S != T and T > 1:
            # More keys than queries (a cache, or extra keys such as a learned prefix) and no mask given: the
            # queries are the last T positions, each sees every key up to its own (bottom-right aligned), so
            # attention stays causal. (With S == T, is_causal / the triangle below does the same.)
            attn_bias = build_attention_bias(None, T, S - T, q.dtype, q.device)  # (1, 1, T, S)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)

        if self.config.attn_impl == "sdpa" and not self.keep_attention:
            # Flash / memory-efficient kernels when they apply; is_causal only when no explicit bias is needed.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=dropout_p,
                is_causal=attn_bias is None and T > 1, scale=self.scale,
            )  # (B, nh, T, hs)
        else:
            att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S)
            if attn_bias is not None:
                att = att + attn_bias
            elif T > 1:
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~causal, float("-inf"))
            att = F.softmax(att.float(), dim=-1).to(q.dtype)  # softmax in fp32 under autocast
            if self.keep_attention:
                self.last_attention = att.detach()  # (B, nh, T, S)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_bias=None, kv_cache=None, cache_position=None):
        x = x + self.attn(self.ln_1(x), attn_bias, kv_cache, cache_position)
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------------------------------
# The LM head and its loss, in chunks of rows

LOSS_CHUNK_BYTES = 128 * 2 ** 20  # float32 logits per chunk in lm_head_loss: at most 128 MiB (667 rows of 50,257)
LOSS_ROW_ALIGN = 64  # the chunk buffers' rows are this many logits apart (50,257 -> 50,304): aligned for the BLAS


@torch.library.custom_op("nanogpt2::lm_head_loss_chunks", mutates_args=())
def _lm_head_loss_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         compute_dtype: torch.dtype, chunk_rows: int, need_hidden_grad: bool,
                         need_weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk loop of ChunkedLMHeadLoss (see there): hidden (N, C), weight (V, C), targets (N,) ->
    (the summed loss over the scored targets, a float32 scalar; d(sum)/d(hidden) (N, C) or an empty tensor;
    d(sum)/d(weight) (V, C) or an empty tensor). A custom op, so that torch.compile calls it as one kernel
    (no graph break) and runs this eager loop, tuned below, rather than fusing its own."""
    N, V = hidden.size(0), weight.size(0)
    grad_h = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)  # (N, C)
    grad_w = torch.zeros_like(weight) if need_weight_grad else weight.new_empty(0)  # (V, C)
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are spelled out below
        w = weight.to(compute_dtype)  # (V, C)
        rows = min(N, chunk_rows)
        # One chunk's buffers, allocated once: (rows, V) logits then their gradient, rows `stride` apart. An odd
        # row length (50,257) misaligns every row of the matmul's output: at 512 x 384 x 50,257 in float32 MKL
        # takes 297 ms to write it packed against 224 ms padded to 50,304 (2 threads); cuBLAS wants 16-byte rows.
        stride = -(-V // LOSS_ROW_ALIGN) * LOSS_ROW_ALIGN
        buf = hidden.new_empty(rows, stride, dtype=compute_dtype)  # (rows, stride)
        buf32 = buf if compute_dtype == torch.float32 else torch.empty_like(buf, dtype=torch.float32)  # (rows, stride)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, N, rows):
            h = hidden[s:s + rows].to(compute_dtype)  # (n, C)
            t = targets[s:s + rows, None]  # (n, 1)
            n = h.size(0)
            scored = t != IGNORE_INDEX  # (n, 1)
            t = t.clamp(min=0)  # (n, 1) an index on every row; ignored rows are masked below
            logits = torch.mm(h, w.t(), out=buf[:n, :V])  # (n, V), rows `stride` apart
            p = buf32[:n]  # (n, stride) float32: the logits, then -inf in the padding, which softmax makes 0
            if buf32 is not buf:
                p[:, :V].copy_(logits)
            p[:, V:].fill_(float("-inf"))
            top = p.amax(dim=-1, keepdim=True)  # (n, 1) (amax: 8 ms here where max with its indices takes 30)
            target_logit = p.gather(1, t)  # (n, 1)
            p = torch.softmax(p, dim=-1, out=p)  # (n, stride) in place (a packed buffer: a strided one is 7x slower)
            # softmax's largest entry is exp(top - top) / sum = 1 / sum, read back as its amax
            row_loss = (top - target_logit) - torch.log(p.amax(dim=-1, keepdim=True))  # (n, 1) logsumexp - target logit
            loss += torch.where(scored, row_loss, 0.0).sum()
            if not (need_hidden_grad or need_weight_grad):
                continue
            p.scatter_add_(1, t, -scored.float())  # (n, stride) softmax - one_hot(target) on the scored rows
            d = (p if buf32 is buf else buf[:n].copy_(p))[:, :V]  # (n, V) in the compute dtype
            if need_hidden_grad:
                grad_h[s:s + n] = (d @ w).masked_fill_(~scored, 0.0)  # (n, C)
            if need_weight_grad:
                h = h.masked_fill(~scored, 0.0)  # (n, C) ignored rows add nothing to the weight's gradient
                if grad_w.dtype == compute_dtype:
                    grad_w.addmm_(d.t(), h)  # (V, C) += (V, n) @ (n, C)
                else:
                    grad_w += d.t() @ h  # (V, C) in the compute dtype, summed in the weight's
    return loss, grad_h, grad_w


@_lm_head_loss_chunks.register_fake
def _(hidden, weight, targets, compute_dtype, chunk_rows, need_hidden_grad, need_weight_grad):
    return (hidden.new_empty((), dtype=torch.float32),
            torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0),
            torch.empty_like(weight) if need_weight_grad else weight.new_empty(0))


class ChunkedLMHeadLoss(torch.autograd.Function):
    """Cross-entropy of the LM head, `hidden @ weight.T`, without the (N, vocab) logits: the rows go through in
    chunks, and each chunk's gradients are made right away, in the forward, and kept for the backward.

    Per chunk of n rows: the logits (n, V) in the compute dtype, their softmax in float32, the chunk's summed loss;
    then, when gradients are wanted, d(summed loss)/d(logits) = softmax - one_hot(target), in the compute dtype,
    goes through the two matmuls to the hidden states (n, C) and, when the weight trains, to the weight (V, C,
    summed over the chunks); ignored rows are zeroed on the C side (their rows of the hidden gradient, their
    hidden states in the weight's), not across V. One chunk's (n, V) buffers are allocated once and reused (a
    float32 one; one in the compute dtype under autocast), with rows padded to a multiple of LOSS_ROW_ALIGN; what
    is kept for the backward is (N, C) and, when wanted, (V, C). The backward scales these by the incoming
    gradient (over the number of scored targets for the mean), so d(loss)/d(logits) is rounded to the compute
    dtype unscaled: under float16 its entries stay in [-1, 1] whatever the GradScaler's scale. The loop is the
    custom op `nanogpt2::lm_head_loss_chunks`: under torch.compile one opaque call in the graph.

    Each row's loss is (max - target logit) + log(sum exp(logit - max)), the log of the sum read back from the
    softmax as -log(its largest entry) (the one at the argmax, 1 / sum, never tiny), so a confidently wrong row keeps
    its large loss where -log(softmax at the target) would underflow. The last bits depend on the chunk size: the
    loss and the weight gradient are sums over the chunks, and a BLAS may block a matmul by its shape.

    forward(hidden (N, C), weight (V, C), targets (N,) int64 (IGNORE_INDEX: no loss), compute_dtype, chunk_rows,
    need_hidden_grad, need_weight_grad, mean) -> the summed (mean=False) or mean loss over the scored targets, a
    float32 scalar (the mean of none is nan, as in F.cross_entropy; its gradients are zero). Call it through
    `lm_head_loss`, which picks the dtype, the chunk and the flags. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk_rows, need_hidden_grad, need_weight_grad, mean):
        loss, grad_h, grad_w = _lm_head_loss_chunks(hidden, weight, targets, compute_dtype, chunk_rows,
                                                    need_hidden_grad, need_weight_grad)
        count = (targets != IGNORE_INDEX).sum()  # scored targets
        ctx.mean = mean
        ctx.save_for_backward(grad_h if need_hidden_grad else None, grad_w if need_weight_grad else None, count)
        return loss / count if mean else loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count.clamp(min=1) if ctx.mean else grad_out  # no scored target: zero gradients
        return (None if grad_h is None else grad_h * scale, None if grad_w is None else grad_w * scale,
                None, None, None, None, None, None)


def lm_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                 chunk_rows: Optional[int] = None) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction) without materialising the
    logits (see ChunkedLMHeadLoss): hidden (..., C), weight (V, C), targets (...) -> a float32 scalar.

    The matmuls run in the autocast dtype under autocast (else in hidden's), the softmax in float32, as in
    `GPT.forward`'s plain path; gradients reach hidden and weight in their own dtypes, the weight's only when it
    requires grad (a frozen head, tied or not, costs no weight gradient), none under no_grad.
    chunk_rows: the most rows per chunk (default: LOSS_CHUNK_BYTES of float32 logits); the rows are split into
    chunks of equal size (the last may be smaller), as few as that allows.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    C, V = hidden.size(-1), weight.size(0)
    hidden, targets = hidden.reshape(-1, C), targets.reshape(-1)  # (N, C), (N,)
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    most = max(1, chunk_rows or LOSS_CHUNK_BYTES // (4 * V))
    n_chunks = max(1, -(-hidden.size(0) // most))
    rows = -(-hidden.size(0) // n_chunks)  # equal chunks: 2,048 rows of at most 667 -> 4 of 512
    grad = torch.is_grad_enabled()
    return ChunkedLMHeadLoss.apply(hidden, weight, targets, compute_dtype, max(1, rows),
                                   grad and hidden.requires_grad, grad and weight.requires_grad, reduction == "mean")


# ----------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned absolute positions
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.gradient_checkpointing = False  # recompute each block in the backward (gradient_checkpointing_enable)
        if config.tie_word_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # one matrix: input embedding and output head

        # GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer)
        # (two residual branches per block add up variance along the depth).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # --- forward ---------------------------------------------------------------------------------------

    def forward(self, idx, targets=None, attention_mask=None, position_ids=None, kv_cache: Optional[KVCache] = None,
                logits_to_keep: int = 0, cache_position: Optional[torch.Tensor] = None, return_logits: bool = True):
        """
        idx: (B, T) token ids. targets: (B, T) ids aligned with the logits (the next token for each
        position, nanoGPT convention), -100 where no loss is wanted. attention_mask, position_ids, kv_cache,
        cache_position: as for `body`. logits_to_keep: when > 0, the head runs on the last that many
        positions only (HF's name; decoding needs the last one, and the head is a third of GPT-2 small's
        multiply-adds). return_logits=False (with targets): only the loss, through `lm_head_loss`, which never
        holds the (B, T, vocab) logits (the training step's default; same loss and gradients to float rounding).
        Returns (logits (B, T, vocab) — (B, logits_to_keep, vocab) when set; None when not return_logits —,
        loss or None).
        """
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, not {logits_to_keep}")
        if logits_to_keep and targets is not None:
            raise ValueError("logits_to_keep and targets exclude each other: the loss needs every position's logits")
        if not return_logits and targets is None:
            raise ValueError("return_logits=False returns only the loss: pass targets")
        x = self.body(idx, attention_mask, position_ids, kv_cache, cache_position)  # (B, T, C)
        if not return_logits and type(self.lm_head) is nn.Linear and self.lm_head.bias is None:
            return None, lm_head_loss(x, self.lm_head.weight, targets)  # scalar, no (B, T, vocab) logits
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, K, C)
        logits = self.lm_head(x)  # (B, T or K, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return (logits if return_logits else None), loss  # a head replaced by another module: the plain loss

    def body(self, idx, attention_mask=None, position_ids=None, kv_cache: Optional[KVCache] = None,
             cache_position: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The transformer without its head: (B, T) ids -> the final hidden states (B, T, C), after `ln_f`.

        What a classification head or a distillation loss reads; `forward` puts the LM head on top.
        attention_mask: (B, past + T) with 1 for real tokens and 0 for padding (left or right).
        position_ids: (B, T), default past..past+T-1. kv_cache: a KVCache to read from and append to
        (incremental decoding). With a StaticKVCache instead: cache_position (T,) int64, the cache slots of
        the T inputs (also their positions unless position_ids is given), and attention_mask, if any, covers
        all max_len slots. inputs_embeds: (B, T, C) vectors taken in place of the token embeddings (idx is then
        None; HF's name), e.g. learned ones; the position embeddings are added to them as to any token's.
        """
        B, T = idx.size() if inputs_embeds is None else inputs_embeds.shape[:2]
        device = idx.device if inputs_embeds is None else inputs_embeds.device
        static = isinstance(kv_cache, StaticKVCache)
        if static:  # slots and positions come as a tensor: no Python count that would change the graph
            if cache_position is None:
                raise ValueError("a StaticKVCache needs cache_position, the (T,) slots of the inputs")
            past = None
            if position_ids is None:
                position_ids = cache_position[None]  # (1, T)
        else:
            past = kv_cache.length if kv_cache is not None else 0
            if past + T > self.config.block_size:
                raise ValueError(f"cannot forward {past + T} positions: block_size is {self.config.block_size}")
            if position_ids is None:
                position_ids = torch.arange(past, past + T, dtype=torch.long, device=device)[None]  # (1, T)

        tok_emb = self.transformer.wte(idx) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        pos_emb = self.transformer.wpe(position_ids)  # (1 or B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)

        # The causal mask is implicit (is_causal) unless padding or a cache offset needs an explicit one.
        attn_bias = None
        if static:
            attn_bias = build_static_attention_bias(attention_mask, cache_position, kv_cache.max_len, x.dtype)  # (B|1, 1, T, max_len)
        elif attention_mask is not None or (past > 0 and T > 1):
            attn_bias = build_attention_bias(attention_mask, T, past, x.dtype, x.device)  # (B|1, 1, T, S)

        # Gradient checkpointing: keep only each block's input and run the block again in the backward, with the
        # RNG state of its forward (the same dropout masks), so the gradients are those of the plain pass.
        recompute = getattr(self, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            if recompute:
                x = checkpoint(block, x, attn_bias, kv_cache, cache_position, use_reentrant=False,
                               preserve_rng_state=True)  # (B, T, C)
            else:
                x = block(x, attn_bias, kv_cache, cache_position)  # (B, T, C)
        if kv_cache is not None and not static:
            kv_cache.length += T
        return self.transformer.ln_f(x)  # (B, T, C)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (positional table) to `block_size` positions, e.g. GPT-2's 1024 -> 256 (nanoGPT's
        model surgery)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in [1, {self.config.block_size}], not {block_size}")
        self.config.block_size = block_size
        old = self.transformer.wpe.weight
        self.transformer.wpe.weight = nn.Parameter(old[:block_size].detach().clone(), requires_grad=old.requires_grad)

    @property
    def context_length(self) -> int:
        """How many tokens one sequence may hold (forward inputs plus cache): block_size here. A subclass that
        spends some positions on something else says fewer; generate and evaluate read this, not block_size."""
        return self.config.block_size

    def new_kv_cache(self, max_len: Optional[int] = None, static: bool = False, batch_size: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None):
        """An empty cache for up to `max_len` positions (default: context_length): a KVCache that grows, or with
        static=True a StaticKVCache of fixed shape (for torch.compile); with `batch_size` (and `dtype`, the
        keys' dtype: the autocast dtype under autocast, default the weights') a static cache is allocated
        now, on the model's device."""
        max_len = max_len or self.context_length
        if max_len > self.context_length:
            raise ValueError(f"max_len {max_len} is longer than the model's context ({self.context_length} tokens)")
        if not static:
            return KVCache(self.config.n_layer, max_len)
        if batch_size is None:
            return StaticKVCache(self.config.n_layer, max_len)
        weight = self.transformer.wte.weight
        return StaticKVCache(self.config.n_layer, max_len, batch_size, self.config.n_head,
                             self.config.n_embd // self.config.n_head, dtype or weight.dtype, weight.device)

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Gradient checkpointing on (or off): in training with gradients on, each block's activations are not kept
        but recomputed in the backward (torch.utils.checkpoint, non-reentrant, RNG state preserved): the activation
        memory of one block instead of n_layer, for one more forward of the blocks. Losses and gradients are the
        plain pass's; eval mode, no_grad and decoding are untouched."""
        self.gradient_checkpointing = bool(enable)

    def set_attn_impl(self, impl: str):
        """Switch every layer between "sdpa" and "reference" attention."""
        if impl not in ("sdpa", "reference"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'reference', not {impl!r}")
        self.config.attn_impl = impl

    # --- sizes and FLOPs -------------------------------------------------------------------------------

    def param_counts(self) -> dict:
        """Parameter counts: total (a tied head counted once), trainable, embeddings (wte + wpe)."""
        params = list(self.parameters())  # .parameters() yields a shared tensor once
        return dict(
            total=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            embeddings=self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel(),
        )

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM-appendix form used for MFU:
        6 * N for the weight matmuls (2 forward, 4 backward per parameter; N excludes the position
        table, which is a lookup) plus 12 * n_layer * seq_len * n_embd for attention scores and mixing."""
        T = seq_len or self.config.block_size
        n = self.param_counts()["total"] - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * self.config.n_layer * T * self.config.n_embd

    # --- entry points implemented elsewhere ----------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides) -> "GPT":
        """GPT-2 weights by name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"), by OpenAI size
        ("124M", "355M", "774M", "1558M"), or from a local HF folder or OpenAI TensorFlow folder; `overrides` may set
        dropout or attn_impl. See nanogpt2/convert.py."""
        from nanogpt2.convert import load_pretrained

        return load_pretrained(name_or_dir, **overrides)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 eos_token_id=None, attention_mask=None, generator=None, **kwargs):
        """Sample continuations of idx (B, T) with a KV cache -> (B, T + new) ids: new = max_new_tokens, or
        fewer when every row stopped (eos_token_id or a stop string) earlier; rows that stopped before the
        others are padded (pad_token_id, default eos_token_id). More options (repetition_penalty,
        stop_strings, stream, ...) and their meaning: nanogpt2/generate.py."""
        from nanogpt2.generate import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                        eos_token_id=eos_token_id, attention_mask=attention_mask, generator=generator, **kwargs)
