"""The audio path (front end, encoder, projector) and the decoder prefill alone, for batches
of 30 s clips: the timings behind "achieved against peak" (``compare.py`` turns them into
fractions of the matmul peak and distances from the roofline).

Per batch size the four sides (audio path and prefill, MiDashengLM and the baseline) are
timed interleaved.
"""

from __future__ import annotations

from typing import Any

import torch

from midashenglm.bench.context import Bench, record
from midashenglm.bench.measure import Side
from midashenglm.bench.roofline import Spec

MODELS = ("midashenglm", "baseline")
STAGES = {"audio path": "audio", "prefill": "prefill"}  # stage -> roofline phase


def measure(b: Bench) -> list[dict[str, Any]]:
    seconds = b.settings.clip_seconds
    rows: list[dict[str, Any]] = []
    for batch in b.settings.efficiency_batches:
        if b.out_of_time(f"efficiency x{batch}"):
            continue
        sides = []
        for name in MODELS:
            model, processor = b.models.model(name), b.models.processor_for(name)

            def make(i: int, n: int = batch, p: Any = processor) -> Any:
                return p(conversations=b.conversations([seconds] * n)).to(b.device)

            def encode(batch_: Any, m: Any = model) -> Any:
                with torch.inference_mode():
                    return m.encode_audio(batch_["input_values"], batch_["audio_length"])

            def make_embeds(i: int, n: int = batch, m: Any = model, mk: Any = make) -> Any:
                inputs = mk(i, n)
                with torch.inference_mode():
                    embeds = m.embed(inputs["input_ids"], inputs["input_values"], inputs["audio_length"])
                return embeds, inputs["attention_mask"]

            def prefill(inputs: Any, m: Any = model) -> Any:
                embeds, mask = inputs
                with torch.inference_mode():
                    return m.decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)

            sides += [Side(f"{name}/audio path", encode, make), Side(f"{name}/prefill", prefill, make_embeds)]
        # Short runs on a shared machine are noisy: two more repeats than elsewhere.
        results = b.measure(f"efficiency x{batch}", sides, repeats=b.settings.repeats + 2)
        for side in sides:
            name, stage = side.name.split("/")
            result = results[side.name]
            if result.status != "ok":
                rows.append({"model": name, "stage": stage, "batch": batch, "status": result.status})
                continue
            work = b.work(name, [Spec(seconds, b.prompt.text_tokens, 1)] * batch, batch,
                          phases=(STAGES[stage],))
            rows.append(record(result, model=name, stage=stage, batch=batch, requests=batch, seconds=seconds,
                               macs=work[STAGES[stage]]["macs"], work=work))
    return rows
