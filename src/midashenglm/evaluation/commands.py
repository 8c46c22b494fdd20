"""The evaluation suite's commands: ``evaluate``, ``benchmark`` and ``report``.

Only the command line lives here; the work is in :mod:`~midashenglm.evaluation.scoring`,
:mod:`~midashenglm.evaluation.runner` and :mod:`~midashenglm.evaluation.report`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from midashenglm import jsonl
from midashenglm.cli_options import (
    DeviceOption,
    DtypeOption,
    MaxNumSeqsOption,
    ModelOption,
    model_or_default,
)
from midashenglm.errors import UserError
from midashenglm.evaluation import tasks as T
from midashenglm.terminal import markup_text, printable_text, quote_name

# benchmark: exit 2 when more than this fraction of the rows attempted in a run failed.
DEFAULT_MAX_ERROR_RATE = 0.0  # as `run`: any failed row exits 1 unless tolerated


def register(app: typer.Typer) -> None:
    _register_evaluate(app)
    _register_benchmark(app)
    _register_report(app)


def _format_value(metric: str, value: float) -> str:
    """A value as the paper shows it: x100, two decimals (0.0372 -> "3.72")."""
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.2f}"


def _register_evaluate(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        files: Annotated[list[Path], typer.Argument(
            help="Result files in the official JSONL format (one JSON object per line with "
                 "dataset_name, model_output and the reference: text, label or answer).")],
        metric: Annotated[str | None, typer.Option(
            help="Metric to use instead of the dataset's own: wer, cer, accuracy, "
                 "gender_accuracy, map, qa_accuracy, qa_accuracy_strict, "
                 "muchomusic_accuracy, fense, date, mecat, bleu, meteor, rouge_l, cider_d, "
                 "spice, spider.")] = None,
        lang: Annotated[str | None, typer.Option(
            help="WER: language of rows that name none (no 'lang' field, no <|xx|> tag "
                 "in the prompt), e.g. en, zh, yue, th.")] = None,
        model_name: Annotated[str | None, typer.Option(
            help="mAP: split outputs by this model's rule instead of each row's "
                 "model_name (MiDashengLM ';', Qwen ';' or ',', Kimi ',').")] = None,
        sbert_model: Annotated[str | None, typer.Option(
            help="FENSE/DATE: Sentence-BERT folder or cached Hub name "
                 "[default: paraphrase-TinyBERT-L6-v2, or $MIDASHENGLM_SBERT_MODEL].")] = None,
        echecker: Annotated[str | None, typer.Option(
            help="FENSE/DATE: fluency-error detector .ckpt file or name looked up in "
                 "$FENSE_DATA [default: echecker_clotho_audiocaps_base, or "
                 "$MIDASHENGLM_ECHECKER]; 'none' turns the penalty off.")] = None,
        echecker_tokenizer: Annotated[str | None, typer.Option(
            help="FENSE/DATE: tokenizer folder of the error detector [default: the "
                 "checkpoint's model_type, bert-base-uncased, from the HF cache].")] = None,
        mecat_metric: Annotated[str, typer.Option(
            help="MECAT: score each group with 'date' (MECAT's metric) or 'fense'.")] = "date",
        device: Annotated[str, typer.Option(help="FENSE/DATE: torch device.")] = "cpu",
        batch_size: Annotated[int, typer.Option(help="FENSE/DATE: batch size.")] = 32,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print one JSON object per file: file, dataset, metric, value "
                           "(a fraction), count, skipped, skipped_reasons, empty_outputs, and "
                           "'beside' (documented deviations, e.g. qa_accuracy_strict).")] = False,
        details: Annotated[bool, typer.Option(
            help="Add each metric's details (per-category values, unpenalised FENSE...).")
        ] = False,
        max_problems: Annotated[int, typer.Option(
            help="How many unscored lines to list per file (all are counted).")] = 10,
    ) -> None:
        """Score result files with the paper's metrics and print a table (or JSON lines).

        The metric comes from each file's dataset_name (LibriSpeech -> WER, NSynth ->
        accuracy, FSD50K -> mAP, MuChoMusic -> closed-QA accuracy, AudioCaps -> FENSE...)
        unless --metric is given. Lines that cannot be scored (invalid JSON, missing or
        empty fields) are listed on stderr as FILE:LINE: reason and counted as skipped.
        The table shows values x100, as the paper does (3.72 is 3.72 % WER, 66.52 a
        FENSE of 0.6652); --json keeps fractions (0.0372).
        """
        from rich.console import Console
        from rich.table import Table

        from midashenglm.evaluation.scoring import score_file

        out, err = Console(), Console(stderr=True, soft_wrap=True)
        options = {
            "lang": lang, "model_name": model_name, "sbert_model": sbert_model,
            "echecker_model": echecker, "echecker_tokenizer": echecker_tokenizer,
            "mecat_metric": mecat_metric, "device": device, "batch_size": batch_size,
        }
        results, failed = [], 0
        for path in files:
            try:
                with err.status(f"scoring {markup_text(quote_name(path))}"):
                    result = score_file(path, metric, **options)
            except (UserError, FileNotFoundError, ValueError) as error:
                where = "" if str(path) in str(error) else f"{quote_name(path)}: "
                err.print(f"[bold red]error:[/] {markup_text(f'{where}{error}')}", highlight=False)
                failed += 1
                continue
            for problem in result.problems[:max_problems]:
                err.print(f"[yellow]skipped[/] {markup_text(str(problem))}", highlight=False)
            if len(result.problems) > max_problems:
                err.print(f"[yellow]skipped[/] {markup_text(quote_name(path))}: ... and "
                          f"{len(result.problems) - max_problems} more", highlight=False)
            for note in result.empty_outputs[:max_problems]:
                err.print(f"[yellow]empty output, scored as a wrong answer[/] {markup_text(str(note))}",
                          highlight=False)
            results.append(result)
            if as_json:
                jsonl.print_line(result.to_json(details=details))

        if not as_json and results:
            table = Table(title="Evaluation")
            for column in ("file", "dataset", "metric", "value (x100)", "count", "skipped"):
                table.add_column(column, justify="right" if column in (
                    "value (x100)", "count", "skipped") else "left")
            for r in results:
                table.add_row(markup_text(quote_name(Path(r.file).name)), markup_text(r.dataset or "-"), r.metric,
                              _format_value(r.metric, r.value), str(r.count), str(r.skipped))
            out.print(table)
            for r in results:
                for name, value in r.beside.items():
                    out.print(f"{quote_name(Path(r.file).name)}: beside {r.metric}, {name} = "
                              f"{_format_value(name, value)} (x100, a documented deviation)",
                              highlight=False, markup=False)
            if details:
                for r in results:
                    out.print(f"[bold]{markup_text(quote_name(r.file))}[/] {r.metric} details:", highlight=False)
                    out.print_json(json.dumps(r.details, default=str))
        if failed:
            raise typer.Exit(2)


# ---------------------------------------------------------------------------- benchmark
def _parse_options(values: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UserError(f"--option {value!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = val
    return options


def _task_table() -> Any:
    from rich.table import Table

    table = Table(title="benchmark tasks", show_lines=False)
    for col in ("task", "dataset_name", "metric", "table"):
        table.add_column(col, no_wrap=True)  # names must stay whole to be copied
    table.add_column("MiDashengLM prompt")
    for task in T.TASKS.values():
        prompt = task.prompts[T.MIDASHENGLM].text.replace("\n", "\\n")
        table.add_row(task.name, task.dataset_name, task.metric,
                      str(task.paper_table or "-"), prompt)
    return table


def _register_benchmark(app: typer.Typer) -> None:

    @app.command("benchmark")
    def benchmark(
        task: Annotated[str, typer.Option(
            "--task", "-t",
            help="Benchmark task, e.g. librispeech-test-clean, nsynth, mmau, mecat-caption. "
                 "'--task list' prints every task with its dataset, metric and prompt.")],
        model: ModelOption = None,
        data: Annotated[str | None, typer.Option(
            "--data", "-d",
            help="The dataset: its folder in the published layout (see docs/benchmarks.md), "
                 "or a manifest file (.jsonl/.json/.csv/.tsv with an 'audio' column plus the "
                 "reference fields).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o",
            help="Result file (official JSONL). Default: results/MODEL_DATASET.jsonl. An "
                 "existing file is resumed: its items are skipped, new rows appended.")] = None,
        limit: Annotated[int | None, typer.Option(
            help="Only the first N items of the dataset (a later run without it completes "
                 "the file).")] = None,
        max_num_seqs: MaxNumSeqsOption = 32,
        device: DeviceOption = "auto",
        dtype: DtypeOption = "auto",
        max_new_tokens: Annotated[int | None, typer.Option(
            help="Longest answer in tokens. Default per task kind (ASR 440, captions 128, "
                 "labels 32, ...).")] = None,
        prompt_style: Annotated[str, typer.Option(
            help="Whose published prompt to ask: midashenglm, qwen2.5-omni (with its system "
                 "prompt) or kimi-audio.")] = T.MIDASHENGLM,
        system_prompt: Annotated[str, typer.Option(
            help="System prompt for the midashenglm prompt style. Default: none, as in "
                 "caption/ask/run and the server (the paper's prompt table gives none).")] = "",
        model_name: Annotated[str | None, typer.Option(
            help="model_name written to the rows. Default: the checkpoint folder's name.")] = None,
        option: Annotated[list[str] | None, typer.Option(
            "--option",
            help="Loader option KEY=VALUE, e.g. split=test-other, subset=all, seed=1 "
                 "(repeatable; see docs/benchmarks.md).")] = None,
        retry_errors: Annotated[bool, typer.Option(
            help="Run again the items recorded with an error.")] = False,
        no_score: Annotated[bool, typer.Option(
            "--no-score", help="Only write the result file.")] = False,
        max_error_rate: Annotated[float, typer.Option(
            min=0.0, max=1.0,
            help="Largest fraction of the rows attempted in this run that may fail (error rows) "
                 "and still exit 0; above it the job exits 1, as `run` does. Default 0.")] = DEFAULT_MAX_ERROR_RATE,
    ) -> None:
        """Run a model over a benchmark with the paper's prompt; write and score the results.

        Reads a local copy of the dataset in its published layout (or a manifest), asks
        the task's published prompt, appends one row per item to the official JSONL
        result file (resumable: a rerun skips what is there; a clip that fails becomes a
        row with an 'error' field) and prints the paper's metric (x100). Exits with
        status 2 when the file could not be scored or every row is an error, and 1 when
        the error rows exceed --max-error-rate of the rows attempted (as `run`).
        """
        from rich.console import Console

        from midashenglm.evaluation.runner import make_engine, run_benchmark

        console = Console()
        if task.strip().lower() == "list":
            # Wide enough for whole names and prompts, also when piped.
            Console(width=max(console.width, 150)).print(_task_table())
            return
        if data is None:
            raise UserError("--data is required (or pass --task list)")
        chosen = T.get_task(task)  # an unknown task or data path fails before the model loads
        if not Path(data).expanduser().exists():
            raise UserError(f"--data {quote_name(data)}: no such file or folder")
        options = _parse_options(option)
        model = model_or_default(model)  # without --model: the shipped default model
        with console.status(f"loading {markup_text(quote_name(model))}"):
            engine = make_engine(model, device=device, dtype=dtype, batch_size=max_num_seqs)
        summary = run_benchmark(
            model, chosen, data, engine=engine, out=out, limit=limit,
            max_new_tokens=max_new_tokens, prompt_style=prompt_style,
            system_prompt=system_prompt or None, model_name=model_name,
            retry_errors=retry_errors, score=not no_score, loader_options=options,
        )
        console.print(f"wrote {summary.written} rows to {markup_text(quote_name(summary.out))} "
                      f"({summary.errors} errors, {summary.skipped} already there)",
                      highlight=False)
        problem = None
        if summary.score is not None and summary.score.count > 0:
            console.print(_format_score(summary.score), highlight=False, markup=False)
        elif not no_score:
            why = summary.score_error or "no row could be scored"
            problem = f"error: {quote_name(summary.out)} was not scored: {printable_text(str(why))}"
        too_many = _error_summary(console, summary, max_error_rate)
        every = bool(summary.errors) and summary.errors == summary.written
        message = too_many if every else (problem or too_many)
        if message:
            Console(stderr=True, soft_wrap=True).print(message, highlight=False, markup=False)
            # 2: the job could not do its work; 1: it did, but more rows failed than tolerated.
            raise typer.Exit(2 if problem or every else 1)


def _error_summary(console: Any, summary: Any, max_error_rate: float) -> str | None:
    """Print the error rows of this run (count + first examples); the exit reason, if any."""
    attempted = summary.written
    if not summary.errors:
        return None
    rate = summary.errors / attempted
    console.print(f"{summary.errors} of {attempted} rows attempted failed ({100 * rate:.1f} %); "
                  f"first {len(summary.error_examples)}:", highlight=False, markup=False)
    for example in summary.error_examples:
        console.print(f"  error: {printable_text(str(example))}", highlight=False, markup=False)
    if summary.errors == attempted:
        return (f"error: every row attempted ({attempted}) failed; see the errors above "
                f"(rerun them with --retry-errors)")
    if rate > max_error_rate:
        return (f"error: {summary.errors} of {attempted} rows failed ({100 * rate:.1f} %), more "
                f"than --max-error-rate {max_error_rate:g}")
    return None


def _format_score(score: Any) -> str:
    value = getattr(score, "value", None)
    metric = getattr(score, "metric", "?")
    count = getattr(score, "count", "?")
    shown = f"{100 * value:.2f}" if isinstance(value, int | float) else str(value)
    return f"score: {metric} = {shown} (x100, {count} rows scored)"


# ---------------------------------------------------------------------------- report
def _register_report(app: typer.Typer) -> None:

    @app.command("report")
    def report(
        results_dir: Annotated[Path, typer.Argument(
            help="Folder of result files (*.jsonl in the official format, e.g. what "
                 "'midashenglm benchmark' wrote).")],
        out: Annotated[Path | None, typer.Option(
            "--out", "-o",
            help="Markdown file to write. Default: RESULTS_DIR/report.md; the bar chart goes "
                 "beside it as the same name with .png.")] = None,
        device: Annotated[str, typer.Option(help="FENSE/DATE: torch device.")] = "cpu",
        sbert_model: Annotated[str | None, typer.Option(
            help="FENSE: Sentence-BERT folder or cached Hub name (default: "
                 "paraphrase-TinyBERT-L6-v2).")] = None,
        echecker: Annotated[str | None, typer.Option(
            help="FENSE: fluency-error detector checkpoint; 'none' turns the penalty "
                 "off.")] = None,
    ) -> None:
        """Score a folder of result files and compare them with the paper (markdown + chart).

        Every *.jsonl is scored with its dataset's metric and shown beside the paper's
        numbers (MiDashengLM and the Qwen2.5-Omni / Kimi-Audio baselines, tables 7-12),
        with the metric's direction and the difference to the paper; a bar chart (PNG)
        goes beside the markdown file.
        """
        from rich.console import Console

        from midashenglm.evaluation.report import write_report

        path, chart = write_report(results_dir, out, device=device, sbert_model=sbert_model,
                                   echecker_model=echecker)
        console = Console()
        console.print(markup_text(f"wrote {quote_name(path)}" + (f" and {quote_name(chart)}" if chart else "")),
                      highlight=False)
