"""Work per phase (MACs and bytes moved) and the roofline time it allows on this machine.

The roofline time of a phase is ``max(2 x MACs / matmul peak, bytes / memory bandwidth)``,
both limits measured in the same run (``peak.py``); a workload's is the sum over its
phases: ``audio`` (front end, encoder, projector), ``prefill`` and ``decode``. A
measurement divided by its roofline time is its distance from the limit (>= 1; below 1
the limits were measured wrong, e.g. under load, and the report says so).

Weights are read once per forward pass, so the bytes depend on how the requests are
batched: :func:`workload_work` takes ``rows``, the most rows a pass may hold, and counts
the fewest passes any schedule with that many rows needs: ``ceil(requests / rows)``
audio and prefill passes, ``ceil(decode tokens / rows)`` decode steps. That is the limit
for the *work asked* (the tokens each request wants, prompts at their own length); work
a loop adds (padding, rows run past their answer) shows up as distance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from midashenglm.bench import costs, traffic

PHASES = ("audio", "prefill", "decode")


@dataclass(frozen=True)
class Spec:
    """One request of a workload: clip length, prompt tokens around the audio, answer length."""

    seconds: float
    text_tokens: int
    new_tokens: int


def request_work(model: str, spec: Spec, *, dasheng: costs.DashengShape, whisper: costs.WhisperShape,
                 decoder: costs.DecoderShape, bytes_per_value: int,
                 pad_to_seconds: float | None = None) -> dict[str, dict[str, int]]:
    """MACs and bytes of one request per phase, *without* the weights (they are per pass).

    Also gives ``prompt_tokens`` and ``decode_tokens`` (tokens made by decode steps).
    """
    cost = costs.request_cost(model, spec.seconds, dasheng=dasheng, whisper=whisper, decoder=decoder,
                              text_tokens=spec.text_tokens, new_tokens=spec.new_tokens,
                              kv_bytes_per_value=bytes_per_value, pad_to_seconds=pad_to_seconds)
    n = round(spec.seconds * costs.SAMPLE_RATE)
    if model == "midashenglm":
        act = traffic.dasheng_activation_values(n, dasheng, decoder.hidden)
        front = traffic.front_end_bytes(n, dasheng.n_fft, dasheng.hop_length, dasheng.n_mels)
    else:
        pad = round(pad_to_seconds * costs.SAMPLE_RATE) if pad_to_seconds else None
        act = traffic.baseline_activation_values(n, whisper, decoder.hidden, pad_to_samples=pad)
        front = traffic.front_end_bytes(n, whisper.n_fft, whisper.hop_length, whisper.n_mels,
                                        pad_to_samples=pad)
    prompt = cost.prefill_tokens
    steps = max(spec.new_tokens - 1, 0)
    kv = traffic.kv_values_per_token(decoder)
    prefill_act = traffic.decoder_activation_values(prompt, decoder, logits_tokens=1)
    decode_act = traffic.decoder_activation_values(steps, decoder, logits_tokens=steps)
    bpv = bytes_per_value
    return {
        "audio": {"macs": cost.encoder + cost.projector,
                  "bytes": front + bpv * (act["linear"] + act["attention"])},
        "prefill": {"macs": cost.prefill,
                    "bytes": bpv * (sum(prefill_act.values()) + prompt * kv)},
        "decode": {"macs": cost.decode,
                   "bytes": bpv * (sum(decode_act.values()) + steps * kv
                                   + traffic.decode_kv_read_values(prompt, spec.new_tokens, decoder))},
        "prompt_tokens": prompt,
        "decode_tokens": steps,
    }


def weight_bytes(model: str, *, dasheng: costs.DashengShape, whisper: costs.WhisperShape,
                 decoder: costs.DecoderShape, bytes_per_value: int) -> dict[str, int]:
    """Weights read by one pass of the audio path and one pass of the decoder."""
    audio = (traffic.dasheng_weight_values(dasheng, decoder.hidden) if model == "midashenglm"
             else traffic.baseline_weight_values(whisper, decoder.hidden))
    return {"audio": bytes_per_value * audio, "decoder": bytes_per_value * traffic.decoder_weight_values(decoder)}


def workload_work(model: str, specs: Iterable[Spec], *, rows: int, shapes: dict[str, Any],
                  bytes_per_value: int, pad_to_seconds: float | None = None,
                  phases: tuple[str, ...] = PHASES, prefill_skipped: float = 0.0) -> dict[str, Any]:
    """MACs and bytes per phase of a whole workload run with at most ``rows`` rows a pass.

    ``phases`` keeps some phases only (the encoder section times the audio path and the
    prefill apart); ``prefill_skipped`` is the fraction of prompt tokens a cache let the
    loop skip (the engine's prompt heads), taken off the prefill's MACs and bytes.
    """
    specs = list(specs)
    rows = max(1, int(rows))
    total = {p: {"macs": 0, "bytes": 0} for p in PHASES}
    prompt_tokens = decode_tokens = 0
    for spec in specs:
        work = request_work(model, spec, **shapes, bytes_per_value=bytes_per_value, pad_to_seconds=pad_to_seconds)
        for p in PHASES:
            total[p]["macs"] += work[p]["macs"]
            total[p]["bytes"] += work[p]["bytes"]
        prompt_tokens += work["prompt_tokens"]
        decode_tokens += work["decode_tokens"]
    weights = weight_bytes(model, **shapes, bytes_per_value=bytes_per_value)
    passes = {"audio": math.ceil(len(specs) / rows), "prefill": math.ceil(len(specs) / rows),
              "decode": math.ceil(decode_tokens / rows)}
    total["audio"]["bytes"] += passes["audio"] * weights["audio"]
    total["prefill"]["bytes"] += passes["prefill"] * weights["decoder"]
    total["decode"]["bytes"] += passes["decode"] * weights["decoder"]
    if prefill_skipped:
        keep = max(0.0, 1.0 - prefill_skipped)
        total["prefill"] = {k: round(v * keep) for k, v in total["prefill"].items()}
    out: dict[str, Any] = {p: {**total[p], "passes": passes[p]} for p in PHASES if p in phases}
    out["rows"] = rows
    out["prompt_tokens"] = prompt_tokens
    out["decode_tokens"] = decode_tokens
    return out


def roofline(work: dict[str, Any], flops_per_s: float | None, bytes_per_s: float | None) -> dict[str, Any] | None:
    """Roofline seconds per phase and in all: ``max(2 MACs / peak, bytes / bandwidth)``,
    with the phase's ``bound`` ("compute" or "memory"). None without both limits."""
    if not flops_per_s or not bytes_per_s:
        return None
    out: dict[str, Any] = {"phases": {}, "seconds": 0.0}
    for phase in PHASES:
        if phase not in work:
            continue
        compute = 2 * work[phase]["macs"] / flops_per_s
        memory = work[phase]["bytes"] / bytes_per_s
        seconds = max(compute, memory)
        if seconds == 0:
            continue
        out["phases"][phase] = {"seconds": seconds, "compute_s": compute, "memory_s": memory,
                                "bound": "compute" if compute >= memory else "memory"}
        out["seconds"] += seconds
    return out


def total_macs(work: dict[str, Any]) -> int:
    return sum(work[p]["macs"] for p in PHASES if p in work)


def total_bytes(work: dict[str, Any]) -> int:
    return sum(work[p]["bytes"] for p in PHASES if p in work)
