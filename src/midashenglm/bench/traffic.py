"""Bytes moved per phase: the memory side of the roofline (``costs.py`` is the compute side).

A decode step multiplies a few rows by every weight of the decoder: it is bound by
reading the weights (and the KV cache), not by its MACs. This module counts, in
*values* (multiply by the bytes per value of the dtype), what each phase moves
between memory and the cores:

* **weights read per pass**: every parameter of the networks a pass runs, read once
  per forward pass whatever the batch (the decoder's token-embedding table excepted: a
  lookup reads only the rows of the tokens; the LM head is read in full);
* **activations**: the operands of the matrix products, each linear (or convolution)
  layer's input and output once, and the queries, keys, values and output of the
  attention; element-wise work (norms, activations, residual adds) is left out, so
  this is a lower bound, and a tensor that stays in a cache is counted all the same
  ("roughly", as the roofline needs it);
* **KV cache**: written once per token (prefill and each decode step), and read by
  every decode step in full (step *i* attends to ``prompt + i`` positions).

The front end runs in fp32 whatever the model's dtype: :func:`front_end_bytes`.

``tests/test_bench_traffic.py`` checks the weights against the parameters of real
modules, the linear-layer activations against the inputs and outputs the layers see
(forward hooks), and the KV formulas against the cache's tensors, on tiny shapes.
"""

from __future__ import annotations

from midashenglm.bench.costs import (
    DashengShape,
    DecoderShape,
    WhisperShape,
    _pad_min,
    baseline_chunks,
)

FRONT_END_BYTES_PER_VALUE = 4  # the log-mel front ends always run in fp32


# ---------------------------------------------------------------------------- weights
def dasheng_weight_values(shape: DashengShape, decoder_hidden: int) -> int:
    """Parameters of the Dasheng encoder and the 5 Hz projector (read once per pass)."""
    d, h = shape.embed_dim, int(shape.embed_dim * shape.mlp_ratio)
    bias = 3 * d if shape.qkv_bias else 0
    block = (2 * d  # norm1
             + 3 * d * d + bias + d * d + d  # qkv, proj
             + 2 * d  # norm2
             + d * h + h + h * d + d)  # fc1, fc2
    freq_patches = max(1, shape.n_mels // shape.freq_stride)
    stem = (2 * shape.n_mels  # init_bn
            + d * shape.freq_stride * shape.patch_stride + d  # patch embedding (a conv)
            + d * shape.window_patches + d * freq_patches)  # time and frequency positions
    k, out = shape.subsample_factor, decoder_hidden
    projector = k * d * out + out + out * out + out
    return stem + shape.depth * block + 2 * d + projector


def baseline_weight_values(shape: WhisperShape, decoder_hidden: int) -> int:
    """Parameters of the Qwen2.5-Omni-style encoder and its projection (read once per pass)."""
    d, f = shape.d_model, shape.ffn_dim
    stem = d * shape.n_mels * 3 + d + d * d * 3 + d  # conv1, conv2
    layer = (4 * d * d + 3 * d  # q (bias), k (none), v (bias), out (bias)
             + d * f + f + f * d + d  # fc1, fc2
             + 4 * d)  # two LayerNorms
    return stem + shape.layers * layer + 2 * d + d * decoder_hidden + decoder_hidden


def decoder_weight_values(shape: DecoderShape) -> int:
    """Decoder parameters read by one forward pass: every layer, the final norm and the
    LM head; not the token-embedding table (a lookup reads only the rows it needs)."""
    q, kv, hidden = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.hidden
    layer = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * shape.intermediate + 2 * hidden
    if shape.qkv_bias:
        layer += q + 2 * kv
    if shape.o_bias:
        layer += hidden
    if shape.qk_norm:
        layer += 2 * shape.head_dim
    return shape.layers * layer + hidden + shape.vocab * hidden


# ------------------------------------------------------------------------ activations
def dasheng_activation_values(num_samples: int, shape: DashengShape, decoder_hidden: int,
                              *, executed: bool = False) -> dict[str, int]:
    """Activations of one clip's audio path: ``linear`` (inputs and outputs of the patch
    embedding, of every linear layer and of the projector) and ``attention`` (q, k, v
    read, output written). ``executed``: windows padded to the longest, as one clip runs."""
    n = _pad_min(num_samples)
    frames = 1 + n // shape.hop_length
    patches = frames // shape.patch_stride
    d, h = shape.embed_dim, int(shape.embed_dim * shape.mlp_ratio)
    win = shape.window_patches
    windows = [min(win, patches - start) for start in range(0, patches, win)]
    if executed:
        windows = [max(windows)] * len(windows)
    tokens = sum(windows)
    patch_embed = shape.n_mels * frames + d * patches
    per_token = (d + 3 * d) + (d + d) + (d + h) + (h + d)  # qkv, proj, fc1, fc2
    groups = patches // shape.subsample_factor
    projector = groups * (shape.subsample_factor * d + decoder_hidden) + groups * 2 * decoder_hidden
    return {
        "linear": patch_embed + shape.depth * tokens * per_token + projector,
        "attention": shape.depth * tokens * 4 * d,
    }


def baseline_activation_values(num_samples: int, shape: WhisperShape, decoder_hidden: int, *,
                               pad_to_samples: int | None = None, executed: bool = False) -> dict[str, int]:
    """Activations of one clip's Qwen2.5-Omni-style audio path (as :func:`dasheng_activation_values`):
    the two convolutions per 2 s chunk, the linear layers on the real frames (packed), the
    attention inside chunks, and the projection of the pooled frames."""
    n = _pad_min(num_samples)
    run = max(n, pad_to_samples) if pad_to_samples else n
    if pad_to_samples:
        run = -(-run // pad_to_samples) * pad_to_samples
    frames = run // shape.hop_length
    d, f = shape.d_model, shape.ffn_dim
    chunks = baseline_chunks(frames, shape.n_window)
    conv_frames = chunks if not executed else [max(chunks)] * len(chunks)
    after = [-(-c // 2) for c in conv_frames]
    convs = sum(shape.n_mels * c + d * c for c in conv_frames) + sum(d * c + d * a for c, a in
                                                                      zip(conv_frames, after, strict=True))
    tokens = [-(-c // 2) for c in chunks]
    per_token = 3 * (d + d) + (d + d) + (d + f) + (f + d)  # q, k, v, out, fc1, fc2
    attn_tokens = tokens if not executed else [max(tokens)] * len(tokens)
    pooled = (sum(tokens) - 2) // 2 + 1
    return {
        "linear": convs + shape.layers * sum(tokens) * per_token + pooled * (d + decoder_hidden),
        "attention": shape.layers * sum(attn_tokens) * 4 * d,
    }


def decoder_activation_values(tokens: int, shape: DecoderShape, *, logits_tokens: int = 1) -> dict[str, int]:
    """Activations of ``tokens`` positions through the decoder: the embedding rows looked up,
    the inputs and outputs of every linear layer, the LM head on ``logits_tokens`` positions,
    and the attention's queries and output (its keys and values are the KV cache: see
    :func:`kv_values_per_token`)."""
    q, kv, hidden, inter = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.hidden, shape.intermediate
    per_token = (3 * hidden + q + 2 * kv) + (q + hidden) + 2 * (hidden + inter) + (inter + hidden)
    return {
        "embedding": tokens * hidden,
        "linear": shape.layers * tokens * per_token + logits_tokens * (hidden + shape.vocab),
        "attention": shape.layers * tokens * 2 * q,
    }


# --------------------------------------------------------------------------- KV cache
def kv_values_per_token(shape: DecoderShape) -> int:
    """Keys and values of every layer for one position."""
    return shape.layers * 2 * shape.kv_heads * shape.head_dim


def decode_kv_read_values(prompt_tokens: int, new_tokens: int, shape: DecoderShape) -> int:
    """KV cache read by the decode steps of one sequence: step i (of ``new_tokens - 1``)
    attends to ``prompt_tokens + i`` positions, its own included."""
    steps = max(new_tokens - 1, 0)
    return kv_values_per_token(shape) * (steps * prompt_tokens + steps * (steps + 1) // 2)


# ------------------------------------------------------------------------- front ends
def front_end_bytes(num_samples: int, n_fft: int, hop_length: int, n_mels: int,
                    *, pad_to_samples: int | None = None) -> int:
    """The log-mel front end, in fp32: the waveform read, the power spectrum written and
    read, the log-mel written (roughly: the FFT's own passes are left out)."""
    n = _pad_min(num_samples)
    if pad_to_samples:
        n = -(-max(n, pad_to_samples) // pad_to_samples) * pad_to_samples
    frames = 1 + n // hop_length
    return FRONT_END_BYTES_PER_VALUE * (n + 2 * frames * (n_fft // 2 + 1) + frames * n_mels)
