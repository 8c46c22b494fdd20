"""The engine's decoder passes: several sets of rows, each with its own KV cache, in one pass.

A decode step of a few rows reads every weight of the decoder to make a few tokens, so it
costs about as much as the prefill of a short prompt. When requests join a running batch,
the engine therefore runs the running rows' decode step *in the same pass* as the
newcomers' prefill: the linear layers (nearly all of the weights) run once over the tokens
of both sets, and only attention runs per set, against that set's cache. A join then costs
one pass over the weights less, and the running rows keep streaming while others join.

:class:`SegmentRunner` does this for the Llama family of decoders (Llama, Mistral, Qwen2,
Qwen3), built from the decoder's own modules (norms, projections, rotary embedding, MLP)
and its modelling file's rotary function, so the arithmetic is transformers'. Every other
decoder runs each set through its own transformers forward (:func:`forward_segments`), with
the same results and without the shared pass.

On a CPU, the runner also picks, by measuring once on the decoder's weights, how a decode
step of a few rows multiplies them (see :meth:`SegmentRunner._linear`).
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# What _weight_first_is_faster found for each decoder: every engine on it agrees, and it
# is measured once.
_WEIGHT_FIRST: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

# Decoders whose layers are (norm, attention with q/k/v/o projections and rotary positions,
# norm, MLP) with full attention everywhere.
FAMILY = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass
class Segment:
    """Rows sharing one KV cache and the tokens each adds in this pass.

    ``embeds`` (rows, new, hidden) are the new tokens' input embeddings, ``positions``
    (rows, new) their positions; ``mask`` (rows, cached + new), truthy where a column holds
    a real token, or None when no row has padding. The pass returns the logits of each
    row's last new token.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    cache: Any

    @property
    def rows(self) -> int:
        return self.embeds.shape[0]

    @property
    def new(self) -> int:
        return self.embeds.shape[1]


class SegmentRunner:
    """One pass of a Llama-family decoder over several :class:`Segment`, linear layers shared."""

    def __init__(self, decoder: Any, *, weight_first: bool | None = None) -> None:
        self.decoder = decoder
        self.model = decoder.model
        attention = self.model.layers[0].self_attn
        self._rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        # See _linear; None: measure which way is faster on this machine (once per decoder).
        if weight_first is None:
            weight_first = _WEIGHT_FIRST.get(decoder)
            if weight_first is None:
                weight_first = _WEIGHT_FIRST[decoder] = self._weight_first_is_faster()
        self.weight_first = weight_first

    @staticmethod
    def supports(decoder: Any) -> bool:
        config = getattr(decoder, "config", None)
        model = getattr(decoder, "model", None)
        if config is None or model is None or getattr(config, "model_type", None) not in FAMILY:
            return False
        if not full_attention(config) or (config.model_type == "mistral" and getattr(config, "sliding_window", None)):
            return False
        layers = getattr(model, "layers", None)
        needed = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        mlp = ("gate_proj", "up_proj", "down_proj", "act_fn")
        return bool(layers) and all(hasattr(layer, name) for layer in layers for name in needed) and all(
            hasattr(layer.mlp, name) for layer in layers for name in mlp) and all(
            hasattr(model, name) for name in ("embed_tokens", "rotary_emb", "norm")) and hasattr(decoder, "lm_head")

    def __call__(self, segments: list[Segment]) -> list[torch.Tensor]:
        x = torch.cat([s.embeds.reshape(-1, s.embeds.shape[-1]) for s in segments])
        bounds, start = [], 0
        for s in segments:
            bounds.append((start, start + s.rows * s.new))
            start += s.rows * s.new
        rotary = [self.model.rotary_emb(s.embeds, s.positions) for s in segments]
        masks = [_attention_mask(s) for s in segments]
        for index, layer in enumerate(self.model.layers):
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q, k, v = self._linear(attention.q_proj, h), self._linear(attention.k_proj, h), self._linear(attention.v_proj, h)
            outputs = []
            for s, (a, b), (cos, sin), mask in zip(segments, bounds, rotary, masks, strict=True):
                shape = (s.rows, s.new, -1, attention.head_dim)
                qs, ks, vs = q[a:b].view(shape), k[a:b].view(shape), v[a:b].view(shape)
                if hasattr(attention, "q_norm"):  # Qwen3: RMSNorm over each head
                    qs, ks = attention.q_norm(qs), attention.k_norm(ks)
                qs, ks = self._rotary(qs.transpose(1, 2), ks.transpose(1, 2), cos, sin)
                ks, vs = s.cache.layers[index].update(ks, vs.transpose(1, 2))
                groups = qs.shape[1] // ks.shape[1]
                if groups > 1 and mask is not None and qs.is_cuda:
                    # CUDA's fused kernels take grouped heads only without a mask (as
                    # transformers does it): repeat the KV heads instead.
                    ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
                out = F.scaled_dot_product_attention(
                    qs, ks, vs, attn_mask=mask, scale=attention.scaling,
                    enable_gqa=qs.shape[1] != ks.shape[1],
                )
                outputs.append(out.transpose(1, 2).reshape(b - a, -1))
            x = x + self._linear(attention.o_proj, outputs[0] if len(outputs) == 1 else torch.cat(outputs))
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            x = x + mlp.down_proj(mlp.act_fn(self._linear(mlp.gate_proj, h)) * self._linear(mlp.up_proj, h))
        # Only each row's last token needs the norm and the LM head.
        last = torch.cat([torch.arange(s.rows, device=x.device) * s.new + (a + s.new - 1)
                          for s, (a, _) in zip(segments, bounds, strict=True)])
        logits = self._linear(self.decoder.lm_head, self.model.norm(x[last]))
        return list(logits.split([s.rows for s in segments]))

    # A decode step multiplies a handful of rows by every weight matrix and takes the time
    # to read the weights. CPU BLAS libraries compute ``x @ W.T`` for so few rows with a
    # kernel that reaches less of the memory bandwidth than ``W @ x.T`` does (on the
    # development CPU with MKL: 16.9 -> 14.0 ms for all linear layers of a 30 M decoder at
    # 8 rows, where ``W`` has at least as many rows as columns; with weights in cache, or
    # more rows, or wide inputs, the usual way is faster). Which way wins depends on the
    # machine, so it is measured once, on the decoder's own weights.
    _FEW_ROWS = 8

    def _eligible(self, layer: torch.nn.Linear) -> bool:
        weight = layer.weight
        return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[0] >= weight.shape[1]

    def _linear(self, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not self.weight_first or x.shape[0] > self._FEW_ROWS or not self._eligible(layer):
            return layer(x)
        out = torch.mm(layer.weight, x.t()).t()
        return (out + layer.bias if layer.bias is not None else out).contiguous()

    @torch.inference_mode()
    def _weight_first_is_faster(self, budget_bytes: int = 256 << 20) -> bool:
        """Time both ways over enough of the decoder's weights to leave the caches."""
        layers, size = [], 0
        for layer in self.decoder.modules():
            if isinstance(layer, torch.nn.Linear) and self._eligible(layer) and size < budget_bytes:
                layers.append(layer)
                size += layer.weight.numel() * layer.weight.element_size()
        if not layers:
            return False
        inputs = {layer.in_features: torch.randn(self._FEW_ROWS, layer.in_features) for layer in layers}
        best = {False: float("inf"), True: float("inf")}
        for _ in range(3):
            for way in (False, True):
                self.weight_first = way
                start = time.perf_counter()
                for layer in layers:
                    self._linear(layer, inputs[layer.in_features])
                best[way] = min(best[way], time.perf_counter() - start)
        return best[True] < 0.9 * best[False]  # a clear win only


def full_attention(config: Any) -> bool:
    """True when every layer attends to the whole sequence (no sliding windows)."""
    return set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}


def _attention_mask(segment: Segment) -> torch.Tensor | None:
    """Boolean (rows, 1, new, cached + new): real columns, causal among the new tokens, and
    each token always sees itself (a padding query attending to nothing would give NaN)."""
    new = segment.new
    if segment.mask is None and new == 1:
        return None
    width = segment.mask.shape[1] if segment.mask is not None else segment.cache.get_seq_length() + new
    device = segment.embeds.device
    columns = torch.arange(width, device=device)
    queries = torch.arange(width - new, width, device=device)
    allowed = columns[None, :] <= queries[:, None]  # (new, width)
    if segment.mask is not None:
        allowed = allowed & segment.mask.bool()[:, None, :]
    else:
        allowed = allowed.expand(segment.rows, new, width)
    allowed = allowed | (columns[None, None, :] == queries[None, :, None])
    return allowed[:, None]


def forward_segments(decoder: Any, runner: SegmentRunner | None, segments: list[Segment]) -> list[torch.Tensor]:
    """Logits of each segment's rows (last new token): one shared pass with a runner, else one
    transformers forward per segment."""
    if runner is not None:
        return runner(segments)
    logits = []
    for s in segments:
        mask = s.mask
        if mask is not None and s.new == 1 and getattr(decoder.config, "_attn_implementation", None) == "sdpa" \
                and full_attention(decoder.config):
            # A one-token query needs no causal mask: a ready 4-D mask skips building one
            # (sliding-window layers need theirs built).
            mask = mask.bool()[:, None, None, :]
        out = decoder(inputs_embeds=s.embeds, attention_mask=mask, position_ids=s.positions,
                      cache=s.cache, use_cache=True, logits_to_keep=1)
        logits.append(out.logits[:, -1])
    return logits
