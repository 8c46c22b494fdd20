"""Every fenced shell command and Python snippet of README.md and docs/*.md runs (issue 10).

Snippets run offline on a tiny local model and generated clips, each shell command via
``bash -c`` in a scratch folder (one per doc file) with the venv first on PATH and
``HF_HUB_OFFLINE=1``, each file's Python snippets in one subprocess, in document order.
A snippet that cannot run here is in ``SKIP`` below with its reason; ``OPTIONS_ONLY``
commands (long-lived servers) run with ``--help`` appended, which makes click reject an
unknown option without starting anything. A ``SKIP``/``OPTIONS_ONLY`` entry that no longer
matches a snippet fails ``test_skip_list_is_current``; ``test_skip_list`` prints the list
(``pytest -s``, or ``-rs`` for the per-snippet skips).

Placeholders (``DIR``, ``CHECKPOINT``, ``--model M``, the Hub id, ``FILE``, ...) and GPU
settings are replaced in ``docs_snippets.substitute_shell`` / ``substitute_python``; the
substitutions for single snippets are in ``EXTRA`` below.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import REPO, SHARED, clip
from tests.docs_snippets import DRIVER, Snippet, all_snippets, substitute_python, substitute_shell

VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 60

# (file, what the command or the python snippet's first statement starts with, reason).
# "block:" before the prefix skips the whole fenced block that starts with that command.
SKIP: list[tuple[str, str, str]] = [
    ("docs/training-memory.md", "config = MiDashengLMConfig(",
     "the worked examples' numbers are asserted by tests/test_training_memory.py (this snippet "
     "imports peft and builds the 7B on meta: ~8 s)"),
    ("docs/dasheng-parity.md", "block:make dasheng-venv",
     "installs a second venv: torch + torchaudio from PyPI, a ~7 GB download"),
    ("docs/dasheng-parity.md", ".venv/bin/python scripts/dasheng_parity.py",
     "needs the reference venv .venv-dasheng (make dasheng-venv, ~7 GB download)"),
    ("docs/dasheng-parity.md", ".venv/bin/python scripts/bench_encoder.py",
     "long run (times the base-size encoder, ~1.5 min; part (a) needs .venv-dasheng)"),
    ("docs/dasheng-parity.md", ".venv/bin/python -m pytest tests/test_dasheng_parity.py",
     "a test file of this suite (make test runs it)"),
    ("docs/efficiency.md", "midashenglm bench all --scale cpu --out docs/bench",
     "long run (bench all --scale cpu, ~8 min) that rewrites docs/bench"),
    ("docs/efficiency.md", "midashenglm bench ttft --scale cpu",
     "long run (several minutes at --scale cpu)"),
    ("docs/efficiency.md", "bash scripts/bench_gpu.sh", "needs a GPU (full-size 7B, bf16)"),
    ("docs/evaluation-metrics.md", "block:hf download sentence-transformers/paraphrase-TinyBERT-L6-v2",
     "downloads from the Hub and GitHub (the paper's FENSE models)"),
    ("docs/serving.md", "python scripts/loadtest_server.py",
     "long run (200 requests, ~1 min), or needs a running server"),
    ("docs/serving.md", "python scripts/attack_server.py",
     "long run (every attack, ~1 min); tests/test_attack_server.py runs its --quick subset"),
    ("docs/vllm.md", "vllm serve mispeech/midashenglm-7b", "needs vLLM (make vllm-env) and the 7B checkpoint from the Hub"),
    ("docs/vllm.md", "PATH=.venv-vllm/bin:$PATH", "needs vLLM's venv (make vllm-env); starts a long-lived server"),
    ("docs/vllm.md", "vllm serve CHECKPOINT", "needs vLLM's venv (make vllm-env); starts a long-lived server"),
    ("docs/vllm.md", "make vllm-env", "installs vLLM's CPU build from PyPI (~3.5 GB)"),
    ("docs/vllm.md", ".venv/bin/python scripts/check_vllm.py", "needs vLLM's venv (make vllm-env); ~5 min"),
    ("docs/vllm.md", "midashenglm bench vllm --out docs/bench/vllm",
     "needs vLLM's venv (make vllm-env); ~8 min run that rewrites docs/bench/vllm"),
    ("docs/curation.md", "midashenglm train configs/sft.yaml",
     "paper-scale training (tests/test_training_recipes.py trains the tiny configs)"),
]

# Long-lived servers: run with --help appended (every option name is checked, nothing starts).
OPTIONS_ONLY: list[tuple[str, str, str]] = [
    ("docs/serving.md", "midashenglm serve", "starts a long-lived server (covered by tests/test_serve_*.py)"),
    ("docs/serving.md", "MIDASHENGLM_API_KEY=$(cat key.txt) midashenglm serve",
     "starts a long-lived server (covered by tests/test_serve_*.py)"),
    ("docs/efficiency.md", "midashenglm bench all --scale tiny --quick",
     "long run (over 60 s on the 2-core development machine, although the doc says seconds)"),
    ("docs/efficiency.md", "python -m midashenglm.bench all ...",
     "long run (the same as bench all; `...` is run as --scale tiny --quick)"),
    ("docs/curation.md", "midashenglm curate clips/ --out curated/ --writer http",
     "needs an LLM endpoint (tests/test_curation_pipeline.py runs one that misbehaves)"),
    ("docs/curation.md", "midashenglm curate manifest.jsonl --out curated/ --ray",
     "starts Ray (~30 s; tests/test_curation_pipeline.py compares Ray with local)"),
    ("docs/curation.md", "midashenglm curate shards/ --out curated/ --ray=auto",
     "needs a running Ray cluster"),
]

# Substitutions for single snippets: (file, prefix) -> [(old, new)], applied before the general ones.
EXTRA: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("docs/curation.md", "midashenglm curate clips/ --out curated/"): [("clips/", "manifest.jsonl")],
    ("docs/data.md", "midashenglm data synth --out corpus/train"): [("--hours 20", "--clips 6")],
    ("docs/data.md", "midashenglm data synth --out corpus/heldout"): [("--clips 600", "--clips 6")],
    ("docs/benchmarks.md", "midashenglm benchmark --model CHECKPOINT --task TASK"): [
        ("--task TASK", "--task librispeech-test-clean"),
        ("DATASET_FOLDER_OR_MANIFEST", "manifest.jsonl"),
        ("[--option KEY=VALUE]", ""),  # loader options are per dataset; the generic manifest has none
    ],
    ("docs/efficiency.md", "python -m midashenglm.bench all ..."): [("all ...", "all --scale tiny --quick")],
    ("docs/vllm.md", "midashenglm run jobs.jsonl --out results.jsonl --endpoint"): [
        ("http://gpu-host:8000/v1", "{server}/v1"),
        ("--served-model midashenglm", "--served-model checkpoint"),
    ],
    ("docs/serving.md", "client = OpenAI("): [
        ("http://127.0.0.1:8000/v1", "{server}/v1"),
        ("stream=True,", "stream=True, max_tokens=4,"),
    ],
}

# Python snippets that continue an earlier one: code run before them (same process).
PREAMBLE: dict[tuple[str, str], str] = {
    ("docs/inference.md", 'processor = MiDashengLMProcessor.from_pretrained("DIR")'):
        "from midashenglm import MiDashengLM\nmodel = MiDashengLM.from_pretrained(MODEL_DIR)\n",
}

# Snippets that document a failing case: the exit status they must end with (none today).
EXPECT_RC: dict[tuple[str, str], int] = {}

# Snippets that need the live server of the `server` fixture.
NEEDS_SERVER = {("docs/vllm.md", "midashenglm run jobs.jsonl --out results.jsonl --endpoint"),
                ("docs/serving.md", "client = OpenAI(")}

SNIPPETS = all_snippets(REPO)


def matches(entry: tuple[str, str], s: Snippet) -> bool:
    file, prefix = entry[0], entry[1]
    if s.file != file:
        return False
    if prefix.startswith("block:"):
        return s.block.startswith(f"{file}: {prefix[len('block:'):]}")
    return s.head.startswith(prefix)


def lookup(table, s: Snippet):
    if isinstance(table, dict):
        for key, value in table.items():
            if matches(key, s):
                return value
        return None
    for entry in table:
        if matches(entry, s):
            return entry
    return None


# ---- the scratch folders --------------------------------------------------------------------

def write_results(path: Path, name: str, n: int, fallback: list[dict]) -> None:
    src = SHARED / "fixtures" / "official-outputs" / name
    if src.is_file():
        lines = src.read_text(encoding="utf-8").splitlines()[:n]
    else:  # a user's clone without ../shared: rows in the same format
        lines = [json.dumps(r) for r in fallback]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    # Named "checkpoint": `serve` names the model after the folder, as the docs' client expects.
    path = tmp_path_factory.mktemp("docs-model") / "checkpoint"
    shutil.copytree(tiny_checkpoint, path)
    return path


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs-files")
    sf.write(d / "clip.wav", clip(2.0, seed=1), 16000)
    sf.write(d / "talk.flac", clip(3.0, seed=2), 16000)
    espeak = shutil.which("espeak-ng")
    if espeak:
        subprocess.run([espeak, "-w", str(d / "speech.wav"), "Hello world, this is a test."],
                       check=True, capture_output=True)
    else:
        sf.write(d / "speech.wav", clip(2.0, seed=3), 16000)
    import av

    with av.open(str(d / "other.mp3"), "w") as out:
        stream = out.add_stream("mp3", rate=16000, layout="mono")
        wave = clip(1.5, seed=4)
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    jobs = [{"audio": "clip.wav"}, {"audio": "talk.flac", "prompt": "Is there music?"}]
    (d / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jobs))
    items = [{"audio": "clip.wav", "text": "hello world"}, {"audio": "speech.wav", "text": "this is a test"}]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (d / "manifest.csv").write_text("audio,text\nclip.wav,hello world\nspeech.wav,this is a test\n")
    wer_rows = [{"dataset_name": "LibriSpeech_test-clean", "audio": f"{i}.flac", "lang": "en",
                 "text": "hello world", "prompt": "Transcribe the speech into text <|en|>",
                 "model_output": "hello word", "model_name": "MiDashengLM"} for i in range(3)]
    label_rows = [{"dataset_name": "NSynth", "audio": f"{i}.wav", "label": ["guitar"],
                   "prompt": "p", "model_output": "guitar", "model_name": "MiDashengLM"} for i in range(3)]
    (d / "results").mkdir()
    write_results(d / "results" / "MiDashengLM_LibriSpeech_test-clean.jsonl",
                  "MiDashengLM_LibriSpeech_test-clean.jsonl", 40, wer_rows)
    write_results(d / "RESULTS.jsonl", "MiDashengLM_LibriSpeech_test-clean.jsonl", 40, wer_rows)
    write_results(d / "MiDashengLM_NSynth.jsonl", "MiDashengLM_NSynth.jsonl", 200, label_rows)
    (d / "key.txt").write_text("secret-key\n")
    return d


@pytest.fixture(scope="session")
def workdirs(template_dir, tmp_path_factory):
    """One scratch folder per doc file, so that one file's outputs never feed another's."""
    made: dict[str, Path] = {}

    def get(file: str) -> Path:
        if file not in made:
            made[file] = tmp_path_factory.mktemp("docs-run-" + file.replace("/", "-").replace(".md", ""))
            shutil.copytree(template_dir, made[file], dirs_exist_ok=True)
        return made[file]

    return get


def environment(model_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MIDASHENGLM_MODEL=str(model_dir),
               PYTHONPATH=str(REPO), NO_COLOR="1", COLUMNS="200")
    env.pop("MIDASHENGLM_API_KEY", None)
    return env


@pytest.fixture(scope="session")
def server(model_dir):
    """`midashenglm serve` on the tiny model, for the client snippets (started on first use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(VENV_BIN / "midashenglm"), "serve", "--model", str(model_dir), "--port", str(port),
         "--device", "cpu"],
        env=environment(model_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail("the server did not start:\n" + (proc.stdout.read() or ""))
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def fill(subs, server_url):
    return [(old, new.replace("{server}", server_url or "")) for old, new in subs or ()]


# ---- the tests ------------------------------------------------------------------------------

SHELL = [s for s in SNIPPETS if s.kind == "shell"]
PYTHON = [s for s in SNIPPETS if s.kind == "python"]


def test_snippets_found():
    assert len(SHELL) > 20 and len(PYTHON) >= 5, [s.id for s in SNIPPETS]


@pytest.mark.parametrize("snippet", SHELL, ids=[f"{s.file}:{s.line}" for s in SHELL])
def test_shell_snippet(snippet, model_dir, workdirs, request):
    skip = lookup(SKIP, snippet)
    if skip:
        pytest.skip(f"not run: {skip[2]}")
    key = next((k for k in NEEDS_SERVER if matches(k, snippet)), None)
    server_url = request.getfixturevalue("server") if key else None
    cmd = substitute_shell(snippet.text, str(model_dir), fill(lookup(EXTRA, snippet), server_url))
    if lookup(OPTIONS_ONLY, snippet):
        cmd += " --help"
    cwd = workdirs(snippet.file)
    try:
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=environment(model_dir),
                              capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{snippet.file}:{snippet.line} took over {TIMEOUT_S} s: {cmd}")
    expected = lookup(EXPECT_RC, snippet) or 0
    assert proc.returncode == expected, (
        f"{snippet.file}:{snippet.line}: exit {proc.returncode} (expected {expected})\n"
        f"doc:  {snippet.text}\nran:  {cmd}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def python_outcomes(model_dir, workdirs, tmp_path_factory, request):
    """Each file's Python snippets in one process, in document order: id -> (ok, output)."""
    outcomes: dict[str, tuple[bool, str]] = {}

    def run_file(file: str) -> None:
        todo = [s for s in PYTHON if s.file == file and not lookup(SKIP, s)]
        server_url = None
        if any(matches(k, s) for s in todo for k in NEEDS_SERVER):
            server_url = request.getfixturevalue("server")
        payload = [{"id": s.id,
                    "preamble": f"MODEL_DIR = {str(model_dir)!r}\n" + (lookup(PREAMBLE, s) or ""),
                    "source": substitute_python(s.text, str(model_dir), fill(lookup(EXTRA, s), server_url))}
                   for s in todo]
        spec = tmp_path_factory.mktemp("docs-py") / "snippets.json"
        spec.write_text(json.dumps(payload))
        driver = spec.with_name("driver.py")
        driver.write_text(DRIVER)
        try:
            proc = subprocess.run([sys.executable, str(driver), str(spec)], cwd=workdirs(file),
                                  env=environment(model_dir), capture_output=True, text=True,
                                  timeout=TIMEOUT_S * max(1, len(todo)), stdin=subprocess.DEVNULL)
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            out = f"timed out\n{e.stdout or ''}{e.stderr or ''}"
        for s in todo:
            section = out.split(f"=== snippet {s.id}\n", 1)[-1].split("\n=== snippet ", 1)[0]
            outcomes[s.id] = (f"=== OK {s.id}" in out, section if f"=== snippet {s.id}" in out else out)

    def get(s: Snippet) -> tuple[bool, str]:
        if s.id not in outcomes:
            run_file(s.file)
        return outcomes[s.id]

    return get


@pytest.mark.parametrize("snippet", PYTHON, ids=[f"{s.file}:{s.line}" for s in PYTHON])
def test_python_snippet(snippet, python_outcomes):
    skip = lookup(SKIP, snippet)
    if skip:
        pytest.skip(f"not run: {skip[2]}")
    ok, output = python_outcomes(snippet)
    assert ok, f"{snippet.file}:{snippet.line} ({snippet.head}) failed:\n{output[-4000:]}"


def skip_list_text() -> str:
    lines = ["Doc snippets not run by tests/test_docs_snippets.py:"]
    for s in SNIPPETS:
        entry = lookup(SKIP, s)
        if entry:
            lines.append(f"  SKIPPED  {s.file}:{s.line}  {s.head[:90]}\n           -> {entry[2]}")
        elif lookup(OPTIONS_ONLY, s):
            lines.append(f"  OPTIONS  {s.file}:{s.line}  {s.head[:90]}\n           -> only --help: "
                         f"{lookup(OPTIONS_ONLY, s)[2]}")
    return "\n".join(lines)


def test_skip_list(record_property):
    text = skip_list_text()
    record_property("docs_snippets_not_run", text)
    print("\n" + text)


def test_skip_list_is_current():
    stale = [entry for entry in SKIP + OPTIONS_ONLY if not any(matches(entry, s) for s in SNIPPETS)]
    stale += [key for key in [*EXTRA, *PREAMBLE, *EXPECT_RC, *NEEDS_SERVER]
              if not any(matches(key, s) for s in SNIPPETS)]
    assert not stale, f"entries that match no snippet any more (remove or update them): {stale}"
