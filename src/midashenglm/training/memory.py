"""``midashenglm train --dry-run``: parameters and the memory each GPU needs, before a run.

:func:`estimate_memory` reads the model's shapes (a model built on the ``meta`` device
costs nothing, even at 7B) and which parameters train (``requires_grad``, so peft LoRA
is seen as it is), and adds up, per GPU and for each world size asked for:

* ``weights``: every parameter in the storage dtype (``precision``; the recipes keep
  the dtype they load, ``model.dtype``, and train in it: there are **no fp32 master
  weights**), plus buffers. FSDP shards the parameters over the N ranks.
* ``gradients``: trainable parameters only, in the storage dtype. FSDP: / N.
* ``optimizer``: bitsandbytes ``AdamW8bit``: 1 byte per state x 2 states, plus one
  fp32 absmax per 256-element block per state; tensors under 4,096 elements keep fp32
  states (8 bytes per element), as bitsandbytes does. torch ``AdamW``: two states in the
  parameter's dtype (8 bytes per element for fp32 weights, 4 for bf16). FSDP: / N.
* ``encoder_activations`` and ``decoder_activations``: what autograd keeps for the
  backward pass at the configured micro-batch, counted tensor by tensor as in
  Korthikanti et al. 2022 (*Reducing activation recomputation in large transformer
  models*, their 34·s·b·h bytes per layer), applied to the blocks as this project runs
  them (see :func:`decoder_layer_bytes`, :func:`encoder_block_bytes`; checked against
  what autograd really keeps in ``tests/test_training_memory.py``). Attention is SDPA
  (memory-efficient/flash kernels): no s² term beyond the float padding mask SDPA keeps
  per layer; the decoder's ``eager`` attention adds the attention matrices. peft LoRA
  adapters add their dropout output and mask and their rank-r output. With gradient
  checkpointing: every block's input plus one block's full activations (recomputed in
  the backward pass). Not divided by N: every rank runs its own micro-batch.
* ``logits``: answer positions x vocabulary x (activation bytes + 8): the logits, their
  fp32 copy for the loss and the fp32 log-softmax cross-entropy keeps for backward. The
  recipes form logits only where an answer token is predicted
  (:func:`midashenglm.training.recipe.answer_loss`): ``answer_fraction`` of the tokens.
* ``autocast_copies``: fp32 weights under bf16 autocast: the bf16 copies of the
  matmul weights that autograd keeps for backward (2 bytes per weight; with
  checkpointing only those outside the blocks and one block's).
* ``communication``: DDP (N > 1): its gradient buckets, one more copy of the
  gradients (``gradient_as_bucket_view=False``, torch's default). FSDP (N > 1,
  ``fully_shard`` per encoder block and decoder layer, then the root): the root's
  parameters unsharded, two blocks unsharded (the current one and the prefetched
  next), and the unsharded gradients of the largest unit before its reduce-scatter.
* ``allowance``: 1 GiB (CUDA context, cuBLAS and NCCL workspaces) + 10 % of the
  activation, logit, copy and communication terms (allocator fragmentation, temporaries).

The sum is a peak-of-backward upper bound: gradients fill while activations are freed,
and a frozen linear layer need not keep its input, so LoRA runs need somewhat less.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from midashenglm.errors import UserError
from midashenglm.training.lora import ParameterCount, parameter_counts

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

GIB = 2**30

ITEMS = (
    "weights",
    "gradients",
    "optimizer",
    "encoder_activations",
    "decoder_activations",
    "logits",
    "autocast_copies",
    "communication",
    "allowance",
)
LABELS = {
    "weights": "weights (+ buffers)",
    "gradients": "gradients",
    "optimizer": "optimiser states",
    "encoder_activations": "activations: encoder + projector",
    "decoder_activations": "activations: decoder",
    "logits": "logits + loss",
    "autocast_copies": "autocast weight copies",
    "communication": "DDP buckets / FSDP gathers",
    "allowance": "allowance (1 GiB + 10 %)",
}
# The terms FSDP shards over the ranks.
SHARDED = ("weights", "gradients", "optimizer")

PRECISIONS = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}
STRATEGIES = ("ddp", "fsdp")
OPTIMIZERS = ("adamw8bit", "adamw")

# bitsandbytes' 8-bit optimisers (bitsandbytes/optim/optimizer.py, init_state): blockwise
# quantisation with one fp32 absmax per 256 elements; small tensors keep fp32 states.
BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096

FIXED_ALLOWANCE_GIB = 1.0
ALLOWANCE_FRACTION = 0.10


@dataclass(frozen=True)
class Workload:
    """What one micro-batch puts through the model on one rank."""

    decoder_tokens: int  # padded decoder tokens (rows x longest), audio tokens included
    sequence_length: int  # longest row (only the eager attention term uses it)
    audio_seconds: float  # audio the encoder runs (rows x longest clip is an upper bound)
    encoder_frames: int  # 25 per second (40 ms patches)
    encoder_windows: int  # 10.08 s windows of 252 frames the frames fill
    audio_tokens: int  # projector outputs, 5 per second


@dataclass(frozen=True)
class GpuMemory:
    """Bytes one GPU needs, per item of :data:`ITEMS`, at one world size."""

    world_size: int
    items: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def gib(self, item: str | None = None) -> float:
        """One item (or the total, ``None``) in GiB."""
        return (self.total if item is None else self.items[item]) / GIB

    def fits(self, gpu_gib: float) -> bool:
        """Whether the total fits a GPU of ``gpu_gib`` GiB."""
        return self.total <= gpu_gib * GIB


@dataclass(frozen=True)
class MemoryEstimate:
    """Parameter counts and per-GPU memory for each world size (see the module docstring)."""

    parameters: dict[str, ParameterCount]  # audio_encoder, audio_projector, decoder, lora
    gpus: tuple[GpuMemory, ...]
    strategy: str
    optimizer: str
    precision: str  # storage dtype of the weights, e.g. "bfloat16"
    autocast: bool
    gradient_checkpointing: bool
    attention: str  # the decoder's attention implementation
    workload: Workload
    assumptions: tuple[str, ...] = field(default=())

    @property
    def total_parameters(self) -> int:
        return sum(c.total for c in self.parameters.values())

    @property
    def trainable_parameters(self) -> int:
        return sum(c.trainable for c in self.parameters.values())

    def gpu(self, world_size: int) -> GpuMemory:
        for gpu in self.gpus:
            if gpu.world_size == world_size:
                return gpu
        raise KeyError(f"no estimate for {world_size} GPU(s); have {[g.world_size for g in self.gpus]}")

    def fits(self, gpu_gib: float) -> dict[int, bool]:
        """World size -> whether each GPU's total fits ``gpu_gib`` GiB."""
        return {gpu.world_size: gpu.fits(gpu_gib) for gpu in self.gpus}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, settings, workload and bytes per item (``--json``)."""
        return {
            "parameters": {name: asdict(c) for name, c in self.parameters.items()},
            "total_parameters": self.total_parameters,
            "trainable_parameters": self.trainable_parameters,
            "strategy": self.strategy,
            "optimizer": self.optimizer,
            "precision": self.precision,
            "autocast": self.autocast,
            "gradient_checkpointing": self.gradient_checkpointing,
            "attention": self.attention,
            "workload": asdict(self.workload),
            "per_gpu_bytes": {
                str(gpu.world_size): {**{k: round(v) for k, v in gpu.items.items()}, "total": round(gpu.total)}
                for gpu in self.gpus
            },
            "assumptions": list(self.assumptions),
        }


# ----------------------------------------------------------------------------- estimate
def estimate_memory(
    model: nn.Module,
    *,
    world_sizes: Sequence[int] = (1,),
    strategy: str = "ddp",
    optimizer: str = "adamw8bit",
    precision: str | torch.dtype | None = None,
    autocast: bool = True,
    micro_batch_tokens: int,
    micro_batch_audio_seconds: float | None = None,
    sequence_length: int | None = None,
    gradient_checkpointing: bool = False,
    gradient_as_bucket_view: bool = False,
    answer_fraction: float = 1.0,
) -> MemoryEstimate:
    """Parameters (total / trainable per component) and memory per GPU for each world size.

    ``model``: a :class:`~midashenglm.modeling.model.MiDashengLM` (on any device, ``meta``
    included), possibly with peft LoRA on its decoder, or a wrapper holding one (DDP,
    peft); ``requires_grad`` says what trains. ``precision``: storage dtype of the weights
    ("bf16", "fp32", "fp16" or a ``torch.dtype``; default: the model's own). ``autocast``:
    activations in bf16 (the recipes' ``training.precision: bf16``); else in the storage
    dtype. ``micro_batch_tokens``: padded decoder tokens per micro-batch and rank (rows x
    longest, audio tokens included). ``micro_batch_audio_seconds``: audio the encoder runs
    per micro-batch (rows x longest clip bounds it); default: as if every decoder token
    were an audio token (5 per second). ``sequence_length``: longest row (default
    ``micro_batch_tokens``, the worst case), for SDPA's padding mask and eager attention.
    ``strategy``: "ddp" or "fsdp"; ``optimizer``: "adamw8bit" or "adamw";
    ``gradient_as_bucket_view``: what DDP is given (True: its buckets are the gradients).
    ``answer_fraction``: share of the decoder tokens whose logits are formed (1: all).
    Bytes per item: see the module docstring. Raises :class:`UserError` for an unknown
    strategy, optimiser or precision, or a world size or token count below 1.
    """
    core = _core_model(model)
    strategy = _choose(strategy, STRATEGIES, "strategy")
    optimizer = _choose(optimizer.lower().replace("_", "").replace("-", ""), OPTIMIZERS, "optimizer")
    dtype = _storage_dtype(core, precision)
    sizes = sorted({int(n) for n in world_sizes})
    if not sizes or sizes[0] < 1:
        raise UserError(f"world sizes must be positive integers, got {list(world_sizes)}")
    if micro_batch_tokens < 1:
        raise UserError(f"micro_batch_tokens must be positive, got {micro_batch_tokens}")

    s = torch.empty((), dtype=dtype).element_size()  # storage bytes per element
    e = 2 if autocast and s > 2 else s  # activation bytes per element (bf16 under autocast)
    config = core.config
    enc = config.audio_encoder_config
    text = config.text_config
    attention = getattr(getattr(_unwrap_peft(core.decoder), "config", text), "_attn_implementation", None) or "sdpa"

    workload = _workload(core, micro_batch_tokens, micro_batch_audio_seconds, sequence_length)
    params = _unique_parameters(core)
    trainable = [p for p in params if p.requires_grad]
    param_bytes = sum(p.numel() for p in params) * s
    buffer_bytes = sum(b.numel() * b.element_size() for b in core.buffers())
    grad_bytes = sum(p.numel() for p in trainable) * s
    optim_bytes = sum(_optimizer_bytes(p.numel(), optimizer, s) for p in trainable)

    enc_blocks = list(core.audio_encoder.blocks)
    dec_layers = _decoder_layers(core)
    trains = {name: any(p.requires_grad for p in getattr(core, name).parameters())
              for name in ("audio_encoder", "audio_projector", "decoder")}
    keep_encoder = trains["audio_encoder"]
    keep_projector = keep_encoder or trains["audio_projector"]
    keep_decoder = any(trains.values())

    # ------------------------------------------------------------------ activations
    frames, tokens = workload.encoder_frames, workload.decoder_tokens
    enc_activation = 0.0
    if keep_encoder:
        block = encoder_block_bytes(enc.embed_dim, enc.mlp_ratio, layerscale=enc.init_values is not None,
                                    storage_bytes=s, activation_bytes=e, autocast=autocast)
        lora = [_lora_bytes(b, e) for b in enc_blocks]
        # The encoder's residual stream has the patch embedding's dtype (bf16 under autocast).
        per_frame = _stack(block, lora, len(enc_blocks), enc.embed_dim * e, gradient_checkpointing)
        # Front end + patch embedding: the trainable BatchNorm keeps an fp32 copy of the
        # log-mel, the convolution its (cast) input: n_mels x 4 frames per patch.
        patch = enc.n_mels * enc.patch_stride[1]
        per_frame += patch * (4 + e) + _layer_norm_bytes(enc.embed_dim, s, e, autocast)
        enc_activation = per_frame * frames
    if keep_projector:
        hidden = text.hidden_size
        enc_activation += e * (config.subsample_factor * enc.embed_dim + 2 * hidden) * workload.audio_tokens

    dec_activation = logits = 0.0
    if keep_decoder:
        layer = decoder_layer_bytes(text, storage_bytes=s, activation_bytes=e, autocast=autocast,
                                    gated=_has_module(core.decoder, "gate_proj"),
                                    qk_norm=_has_module(core.decoder, "q_norm"))
        # SDPA turns transformers' boolean padding mask into a float bias in every layer
        # and keeps it: rows x length^2 elements, i.e. length per token.
        layer += e * workload.sequence_length
        if attention == "eager":
            # Korthikanti's attention-matrix term, as transformers' eager path keeps it:
            # the fp32 softmax and its cast for the product with V, per head and key.
            layer += (4 + e) * text.num_attention_heads * workload.sequence_length
        lora = [_lora_bytes(b, e) for b in dec_layers]
        per_token = _stack(layer, lora, len(dec_layers), text.hidden_size * s, gradient_checkpointing)
        per_token += _rms_norm_bytes(text.hidden_size, s, e)  # the final norm, input of lm_head
        dec_activation = per_token * tokens
        logits = math.ceil(tokens * answer_fraction) * text.vocab_size * (e + 8)

    # bf16 copies of fp32 matmul weights that autograd keeps for backward.
    autocast_copies = 0.0
    if autocast and s > 2 and keep_decoder:
        blocks = enc_blocks + dec_layers
        in_blocks = {id(p) for b in blocks for p in _matmul_weights(b)}
        outside = sum(p.numel() for p in _matmul_weights(core) if id(p) not in in_blocks)
        per_block = [sum(p.numel() for p in _matmul_weights(b)) for b in blocks]
        kept = max(per_block, default=0) if gradient_checkpointing else sum(per_block)
        autocast_copies = 2.0 * (outside + kept)

    # ------------------------------------------------------------------ per world size
    units = _fsdp_units(core, enc_blocks + dec_layers)
    gpus = []
    for n in sizes:
        shard = n if strategy == "fsdp" else 1
        items = {
            "weights": param_bytes / shard + buffer_bytes,
            "gradients": grad_bytes / shard,
            "optimizer": optim_bytes / shard,
            "encoder_activations": enc_activation,
            "decoder_activations": dec_activation,
            "logits": logits,
            "autocast_copies": autocast_copies,
            "communication": _communication(n, strategy, grad_bytes, units, s, gradient_as_bucket_view),
        }
        dynamic = sum(items[k] for k in ("encoder_activations", "decoder_activations", "logits",
                                         "autocast_copies", "communication"))
        items["allowance"] = FIXED_ALLOWANCE_GIB * GIB + ALLOWANCE_FRACTION * dynamic
        gpus.append(GpuMemory(n, items))

    return MemoryEstimate(
        parameters=parameter_counts(core),
        gpus=tuple(gpus),
        strategy=strategy,
        optimizer=optimizer,
        precision=str(dtype).removeprefix("torch."),
        autocast=autocast,
        gradient_checkpointing=gradient_checkpointing,
        attention=attention,
        workload=workload,
        assumptions=_assumptions(strategy, optimizer, s, e, attention, gradient_as_bucket_view),
    )


# ----------------------------------------------------------------- per-token formulas
def decoder_layer_bytes(text_config: Any, *, storage_bytes: int, activation_bytes: int,
                        autocast: bool = True, gated: bool = True, qk_norm: bool = False) -> float:
    """Bytes one decoder layer keeps for backward, per token (transformers' Qwen2/Qwen3/Llama).

    Two RMSNorms (each: an fp32 copy of its input, the normalised input, the output the
    next linear keeps), q/k/v after RoPE as SDPA keeps them (k, v repeated to every query
    head: with a padding mask transformers expands grouped KV heads before SDPA), SDPA's
    output and the copy ``o_proj`` keeps, SDPA's fp32 log-sum-exp, and the gated MLP's
    four h->f tensors (gate, SiLU(gate), up, their product). ``qk_norm`` (Qwen3) adds the
    per-head norms of q and k. For a GPT-2 layer this reduces to Korthikanti et al.'s
    34 s·b·h less the dropout masks these models do not have.
    """
    h = text_config.hidden_size
    a = text_config.num_attention_heads
    kv = getattr(text_config, "num_key_value_heads", None) or a
    d = getattr(text_config, "head_dim", None) or h // a
    f = text_config.intermediate_size
    e, s = activation_bytes, storage_bytes
    total = 2 * _rms_norm_bytes(h, s, e)
    if s != e:
        # fp32 norms under autocast: q, k, v (and gate, up) each keep a bf16 cast of the
        # norm's output, not one shared tensor: 3 + 2 casts where the formula counts 2.
        total += 3 * e * h
    total += 3 * a * d * e + 2 * a * d * e + 4 * a  # q, k, v; output + o_proj's copy; LSE
    total += (4 if gated else 2) * f * e
    if qk_norm:
        total += (4 + e) * (a + kv) * d  # fp32 copy + normalised value (its output feeds RoPE)
    return float(total)


def encoder_block_bytes(dim: int, mlp_ratio: float, *, layerscale: bool, storage_bytes: int,
                        activation_bytes: int, autocast: bool = True) -> float:
    """Bytes one Dasheng block keeps for backward, per frame.

    Two LayerNorms, the fused qkv output SDPA keeps, SDPA's output and ``proj``'s copy,
    fc1's output (GELU's input) and GELU's output, LayerScale inputs when present.
    """
    e = activation_bytes
    hidden = int(dim * mlp_ratio)
    total = 2 * _layer_norm_bytes(dim, storage_bytes, e, autocast)
    total += 3 * dim * e + 2 * dim * e + 2 * hidden * e
    if layerscale:
        total += 2 * dim * e
    return float(total)


def _rms_norm_bytes(h: int, s: int, e: int) -> float:
    # transformers' RMSNorm: x.float() (kept by pow and mul), the normalised value in the
    # input dtype (kept by the weight's mul), and its output as the next linear keeps it.
    return float((4 + s + e) * h)


def _layer_norm_bytes(dim: int, s: int, e: int, autocast: bool) -> float:
    # nn.LayerNorm: autocast runs it in fp32 (input kept in fp32), the next linear keeps
    # its bf16 cast; without autocast, its input and output in the storage dtype.
    return float((4 + e) * dim if autocast else 2 * s * dim)


def _stack(layer: float, lora: list[float], count: int, checkpoint_input: float, checkpointing: bool) -> float:
    """Per-token bytes of ``count`` identical blocks (+ their LoRA adapters)."""
    if not count:
        return 0.0
    if checkpointing:
        # Each block keeps its input; one block's full activations exist while it is recomputed.
        return count * checkpoint_input + layer + max(lora, default=0.0)
    return count * layer + sum(lora)


def _lora_bytes(block: nn.Module, e: int) -> float:
    """Per-token bytes peft LoRA adapters in ``block`` keep: dropout mask and output, A's output."""
    total = 0.0
    for module in block.modules():
        lora_a = getattr(module, "lora_A", None)
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(lora_a, nn.ModuleDict):
            continue
        for name, down in lora_a.items():
            fan_in, rank = _linear_shape(down)
            drop = dropouts[name] if isinstance(dropouts, nn.ModuleDict) and name in dropouts else None
            if isinstance(drop, nn.Dropout) and drop.p > 0:
                total += fan_in * (e + 1)  # a new tensor (A keeps it) and its bool mask
            total += rank * e  # A's output, kept by B
    return total


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[1]), int(weight.shape[0])
    return int(getattr(module, "in_features", 0)), int(getattr(module, "out_features", 0))


# ------------------------------------------------------------------------ helpers
def _optimizer_bytes(numel: int, optimizer: str, s: int) -> float:
    if optimizer == "adamw":
        return 2.0 * numel * s  # torch allocates exp_avg and exp_avg_sq like the parameter
    if numel < BNB_MIN_8BIT_SIZE:
        return 8.0 * numel
    return 2.0 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK)


def _communication(n: int, strategy: str, grad_bytes: float, units: list[tuple[int, int]], s: int,
                   bucket_view: bool) -> float:
    if n == 1:
        return 0.0  # one process: the model is not wrapped
    if strategy == "ddp":
        return 0.0 if bucket_view else grad_bytes
    root, *blocks = units
    largest = max((p for p, _ in blocks), default=0)
    grads = max(t for _, t in units)
    return float((root[0] + 2 * largest + grads) * s)


def _fsdp_units(core: nn.Module, blocks: list[nn.Module]) -> list[tuple[int, int]]:
    """(parameters, trainable) of the root unit, then of each block, as FSDP2 wraps them."""
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = [p for p in _unique_parameters(core) if id(p) not in in_blocks]
    units = [(sum(p.numel() for p in root), sum(p.numel() for p in root if p.requires_grad))]
    for block in blocks:
        ps = list(block.parameters())
        units.append((sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)))
    return units


def _workload(core: nn.Module, tokens: int, audio_seconds: float | None, sequence_length: int | None) -> Workload:
    config = core.config
    enc = config.audio_encoder_config
    rate = config.audio_tokens_per_second
    if audio_seconds is None:
        audio_seconds = tokens / rate
    frames = math.ceil(audio_seconds * enc.sample_rate / enc.samples_per_patch)
    return Workload(
        decoder_tokens=int(tokens),
        sequence_length=int(sequence_length or tokens),
        audio_seconds=float(audio_seconds),
        encoder_frames=frames,
        encoder_windows=math.ceil(frames / enc.window_patches),
        audio_tokens=frames // config.subsample_factor,
    )


def _core_model(model: nn.Module) -> nn.Module:
    """The MiDashengLM inside ``model`` (itself, or under DDP / peft wrappers)."""
    for module in model.modules():
        if all(hasattr(module, n) for n in ("audio_encoder", "audio_projector", "decoder", "config")):
            return module
    raise TypeError(f"{type(model).__name__} holds no MiDashengLM (audio_encoder, audio_projector, decoder)")


def _unwrap_peft(decoder: nn.Module) -> nn.Module:
    get_base = getattr(decoder, "get_base_model", None)
    return get_base() if callable(get_base) else decoder


def _decoder_layers(core: nn.Module) -> list[nn.Module]:
    # The same blocks FSDP wraps and gradient checkpointing recomputes (transformers'
    # ``_no_split_modules``: Qwen2DecoderLayer, ...).
    names = set(getattr(_unwrap_peft(core.decoder), "_no_split_modules", None) or [])
    return [m for m in core.decoder.modules() if type(m).__name__ in names]


def _has_module(root: nn.Module, suffix: str) -> bool:
    return any(name.endswith("." + suffix) for name, _ in root.named_modules())


def _matmul_weights(root: nn.Module) -> Iterable[nn.Parameter]:
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            yield module.weight


def _unique_parameters(core: nn.Module) -> list[nn.Parameter]:
    return list(core.parameters())  # parameters() skips a tensor shared twice (tied embeddings)


def _storage_dtype(core: nn.Module, precision: str | torch.dtype | None) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        return precision
    if precision is None:
        return next((p.dtype for p in core.parameters() if p.is_floating_point()), torch.float32)
    key = str(precision).lower().removeprefix("torch.")
    if key not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[key]


def _choose(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise UserError(f"{what} {value!r}: choose one of {', '.join(allowed)}")
    return value


def _assumptions(strategy: str, optimizer: str, s: int, e: int, attention: str, bucket_view: bool) -> tuple[str, ...]:
    lines = [
        f"weights and gradients in the storage dtype ({s} bytes), no fp32 master copy; "
        f"activations in {e}-byte elements",
        "optimiser: " + ("AdamW8bit, 2 bytes/param + absmax (fp32 states below 4,096 elements)"
                         if optimizer == "adamw8bit" else f"torch AdamW, 2 states x {s} bytes/param"),
        f"decoder attention: {attention}"
        + (" (memory-efficient kernels, no s^2 term)" if attention != "eager" else " (keeps the s^2 matrices)"),
        "FSDP shards weights, gradients and optimiser states; activations are per rank"
        if strategy == "fsdp" else
        "DDP replicates everything" + ("" if bucket_view else "; its buckets add a copy of the gradients"),
        "allowance: 1 GiB + 10 % of activations, logits, copies and communication buffers",
    ]
    return tuple(lines)


# ------------------------------------------------------------------------ tables
def format_table(estimate: MemoryEstimate, *, gpu_gib: float | None = None) -> Table:
    """GiB per item (rows) and world size (columns); a last row says whether each fits ``gpu_gib``."""
    from rich.table import Table

    table = Table(title=(f"Estimated memory per GPU ({estimate.strategy.upper()}, {estimate.optimizer}, "
                         f"{estimate.precision}{' + bf16 autocast' if estimate.autocast else ''}"
                         f"{', gradient checkpointing' if estimate.gradient_checkpointing else ''})"))
    table.add_column("GiB per GPU")
    for gpu in estimate.gpus:
        table.add_column(f"{gpu.world_size} GPU{'s' if gpu.world_size > 1 else ''}", justify="right")
    for item in ITEMS:
        table.add_row(LABELS[item], *(_gib(gpu.items[item]) for gpu in estimate.gpus))
    table.add_row("[bold]total[/]", *(f"[bold]{gpu.gib():.1f}[/]" for gpu in estimate.gpus))
    if gpu_gib is not None:
        table.add_row(f"fits {gpu_gib:g} GiB",
                      *("[green]yes[/]" if gpu.fits(gpu_gib) else "[red]no[/]" for gpu in estimate.gpus))
    w = estimate.workload
    table.caption = (f"micro-batch: {w.decoder_tokens:,} decoder tokens, {w.audio_seconds:g} s of audio "
                     f"({w.encoder_frames:,} encoder frames in ~{w.encoder_windows} windows)")
    return table


def parameter_table(estimate: MemoryEstimate) -> Table:
    """Total and trainable parameters per component (LoRA adapters on their own row)."""
    from rich.table import Table

    table = Table(title="Parameters")
    table.add_column("component")
    table.add_column("total", justify="right")
    table.add_column("trainable", justify="right")
    for name, count in estimate.parameters.items():
        table.add_row("LoRA adapters" if name == "lora" else name, f"{count.total:,}", f"{count.trainable:,}")
    table.add_row("[bold]total[/]", f"[bold]{estimate.total_parameters:,}[/]",
                  f"[bold]{estimate.trainable_parameters:,}[/]")
    return table


def _gib(value: float) -> str:
    return "-" if not value else f"{value / GIB:.2f}"
