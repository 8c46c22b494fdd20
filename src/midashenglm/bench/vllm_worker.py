"""One engine of ``midashenglm bench vllm``, started once and kept warm: ours
(``midashenglm.inference.Engine``, in the project's venv) or vLLM's offline ``LLM`` (in
vLLM's own venv, where this project is not installed).

The bench (``bench/vllm.py``) runs this file by path with each engine's Python and sends
it commands, one JSON object a line, on stdin; the replies go, one JSON object a line, to
the file descriptor named by ``--reply-fd`` (stdout and stderr are the engine's log). So
only the standard library is imported at the top: the engines load inside ``main``.

Commands: ``{"op": "run", "requests": [...]}`` (each request: ``wav`` a path, ``system``,
``question``, ``max_tokens``): the WAV files are read first, then the clock runs from
handing every request to the engine at once until the last result (greedy,
``ignore_eos``); the reply gives the wall time and the tokens made. ``{"op": "quit"}``
ends the worker. The first reply says the engine is ready (or why it is not).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
import traceback
from typing import Any


class OurEngine:
    """midashenglm.inference.Engine, its encoder cache off (every clip is new anyway)."""

    name = "ours"

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        from midashenglm.inference import Engine

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        self.engine = Engine.from_pretrained(spec["model"], device=spec["device"], dtype=spec["dtype"],
                                             encoder_cache_items=0, max_num_seqs=spec["max_num_seqs"])

    def inputs(self, requests: list[dict[str, Any]]) -> list[Any]:
        from midashenglm.conversation import build_conversation
        from midashenglm.inference import Request, SamplingParams

        return [Request(build_conversation(_read(r["wav"]), r["question"], system_prompt=r.get("system")),
                        SamplingParams(max_new_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True))
                for r in requests]

    def run(self, inputs: list[Any]) -> dict[str, Any]:
        results = self.engine.generate(inputs)
        errors = [r.error for r in results if r.error]
        return {"output_tokens": sum(r.completion_tokens for r in results),
                "prompt_tokens": sum(r.prompt_tokens for r in results), "errors": errors[:3]}

    def info(self) -> dict[str, Any]:
        import torch
        import transformers

        import midashenglm

        return {"versions": {"midashenglm": getattr(midashenglm, "__version__", "?"),
                             "torch": torch.__version__, "transformers": transformers.__version__,
                             "python": platform.python_version()},
                "torch_threads": torch.get_num_threads(),
                "interop_threads": torch.get_num_interop_threads(),
                "engine": self.engine.config.to_dict()}


class VllmEngine:
    """vLLM's offline ``LLM.chat`` with OpenAI-style messages (base64 WAV ``input_audio``)."""

    name = "vllm"

    def __init__(self, spec: dict[str, Any]) -> None:
        from vllm import LLM

        self.llm = LLM(model=spec["model"], **spec["vllm_kwargs"])

    def inputs(self, requests: list[dict[str, Any]]) -> list[Any]:
        from vllm import SamplingParams

        messages, params = [], []
        for r in requests:
            audio = base64.b64encode(_read(r["wav"])).decode("ascii")
            chat = [{"role": "system", "content": r["system"]}] if r.get("system") else []
            chat.append({"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                {"type": "text", "text": r["question"]}]})
            messages.append(chat)
            params.append(SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True))
        return [messages, params]

    def run(self, inputs: list[Any]) -> dict[str, Any]:
        messages, params = inputs
        outputs = self.llm.chat(messages, params, use_tqdm=False)
        return {"output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs), "errors": []}

    def info(self) -> dict[str, Any]:
        import torch
        import transformers
        import vllm

        config = self.llm.llm_engine.vllm_config
        return {"versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                             "transformers": transformers.__version__, "python": platform.python_version()},
                "frontend_torch_threads": torch.get_num_threads(),
                "engine": {k: getattr(config.scheduler_config, k, None)
                           for k in ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill")}
                | {"enable_prefix_caching": getattr(config.cache_config, "enable_prefix_caching", None),
                   "compilation_mode": str(getattr(config.compilation_config, "mode", "?"))}}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def serve(engine: Any, reply: Any) -> None:
    def send(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")
        reply.flush()

    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        try:
            inputs = engine.inputs(command["requests"])
            profile = command.get("profile")
            if profile:
                out = _profiled(engine, inputs, profile)
            else:
                start = time.perf_counter()
                out = engine.run(inputs)
                out["wall_s"] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - sent back; the bench stops on it
            out = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        send(out)


def _profiled(engine: Any, inputs: list[Any], path: str) -> dict[str, Any]:
    """The run under torch.profiler (operators, by self CPU time) and cProfile (Python
    functions, by cumulative time); both tables written to ``path``."""
    import cProfile
    import io
    import pstats

    import torch

    python = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        python.enable()
        out = engine.run(inputs)
        python.disable()
        out["wall_s"] = time.perf_counter() - start
    text = io.StringIO()
    pstats.Stats(python, stream=text).sort_stats("cumulative").print_stats(45)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"wall {out['wall_s']:.3f} s (under the profilers)\n\n== torch.profiler, by self CPU time ==\n")
        f.write(table + "\n\n== cProfile, by cumulative time ==\n" + text.getvalue())
    return out


def main() -> int:
    # Run by path: this folder (which holds bench/vllm.py) must not shadow the vllm package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("ours", "vllm"), required=True)
    parser.add_argument("--spec", required=True, help="JSON file: model folder and engine settings")
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args()
    reply = os.fdopen(args.reply_fd, "w", encoding="utf-8")
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    start = time.perf_counter()
    try:
        engine = (OurEngine if args.engine == "ours" else VllmEngine)(spec)
        info = engine.info()
    except Exception as err:  # noqa: BLE001 - reported to the bench, which says it in one line
        reply.write(json.dumps({"error": f"{type(err).__name__}: {err}",
                                "traceback": traceback.format_exc()[-3000:]}) + "\n")
        reply.flush()
        return 1
    reply.write(json.dumps({"ready": True, "startup_s": time.perf_counter() - start, **info}) + "\n")
    reply.flush()
    serve(engine, reply)
    return 0


if __name__ == "__main__":  # the guard vLLM's spawned processes need
    sys.exit(main())
