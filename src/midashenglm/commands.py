"""Model commands: ``info`` (inspect a checkpoint) and ``init`` (write a random or assembled one).

Registered by :mod:`midashenglm.cli` like every area's commands; heavy imports
(torch, transformers, the model) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from midashenglm.errors import UserError
from midashenglm.terminal import markup_text, quote_name

console = Console()


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("init")(init)


# ------------------------------------------------------------------------------- info
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder (or a Hub id in the local cache).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Parameters per component, audio token rate, context window, dtype and config summary.

    Reads only config.json and the safetensors headers, so it is instant even for 7B.
    """
    from midashenglm.modeling.weights import load_config, resolve_checkpoint, weight_files

    folder = resolve_checkpoint(checkpoint)
    config = load_config(folder)
    counts, dtypes = _count_parameters(weight_files(folder))
    enc, text = config.audio_encoder_config, config.text_config
    rate = config.audio_tokens_per_second
    context = getattr(text, "max_position_embeddings", None)
    summary: dict[str, Any] = {
        "checkpoint": str(folder),
        "parameters": counts,
        "dtype": sorted(dtypes),
        "audio_tokens_per_second": rate,
        "context_window_tokens": context,
        "max_audio_seconds_in_context": context / rate if context else None,
        "audio_token_id": config.audio_token_id,
        "encoder": {
            "embed_dim": enc.embed_dim,
            "depth": enc.depth,
            "num_heads": enc.num_heads,
            "layerscale": enc.init_values is not None,
            "window_seconds": enc.target_length * enc.hop_length / enc.sample_rate,
            "n_mels": enc.n_mels,
            "sample_rate": enc.sample_rate,
        },
        "projector": {"subsample_factor": config.subsample_factor},
        "decoder": {
            "model_type": text.model_type,
            "hidden_size": text.hidden_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": getattr(text, "num_key_value_heads", None),
            "intermediate_size": getattr(text, "intermediate_size", None),
            "vocab_size": text.vocab_size,
            "tie_word_embeddings": getattr(text, "tie_word_embeddings", False),
        },
        "tokenizer": (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file(),
    }
    if as_json:
        print(json.dumps(summary))
        return

    table = Table(title=f"MiDashengLM checkpoint: {markup_text(quote_name(folder))}", show_header=True)
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    total = counts["total"]
    for name, value in counts.items():
        if name != "total":
            table.add_row(name, f"{value:,}", f"{100 * value / max(total, 1):.1f} %")
    table.add_row("[bold]total[/]", f"[bold]{total:,}[/]", "100 %")
    console.print(table)
    facts = Table(show_header=False, box=None)
    facts.add_row("dtype", ", ".join(sorted(dtypes)))
    facts.add_row("audio tokens", f"{rate:g} per second ({1 / rate * 1000:.0f} ms each)")
    if context:
        facts.add_row("context window", f"{context:,} tokens (~{context / rate / 60:.0f} min of audio alone)")
    facts.add_row(
        "encoder",
        f"Dasheng D={enc.embed_dim} depth={enc.depth} heads={enc.num_heads}, "
        f"{enc.n_mels} mels, windows of {enc.target_length * enc.hop_length / enc.sample_rate:.2f} s",
    )
    facts.add_row("projector", f"{config.subsample_factor} frames -> 1 token, MLP to {text.hidden_size}")
    facts.add_row(
        "decoder",
        f"{text.model_type}: hidden {text.hidden_size}, {text.num_hidden_layers} layers, "
        f"{text.num_attention_heads} heads / {getattr(text, 'num_key_value_heads', '?')} KV, "
        f"vocab {text.vocab_size:,}",
    )
    facts.add_row("audio token id", str(config.audio_token_id))
    facts.add_row("tokenizer", "yes" if summary["tokenizer"] else "no (pass one when loading)")
    console.print(facts)


def _count_parameters(files: list[Path]) -> tuple[dict[str, int], set[str]]:
    """Parameter counts per component from the weight files, without loading tensors."""
    from midashenglm.modeling.weights import iter_tensors, open_safetensors

    counts = {"audio_encoder": 0, "audio_projector": 0, "decoder": 0, "other": 0}
    dtypes: set[str] = set()

    def add(key: str, numel: int) -> None:
        if "running_" in key or key.endswith("num_batches_tracked") or ".front_end." in key:
            return  # buffers, not parameters
        part = key.split(".", 1)[0]
        counts[part if part in counts else "other"] += numel

    for file in files:
        if file.suffix != ".safetensors":
            for key, tensor in iter_tensors([file]):
                add(key, tensor.numel())
                dtypes.add(str(tensor.dtype).removeprefix("torch."))
            continue
        with open_safetensors(file) as shard:
            for key in shard.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = shard.get_slice(key)
                numel = 1
                for dim in piece.get_shape():
                    numel *= dim
                add(key, numel)
                dtypes.add(_SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
    if not counts["other"]:
        del counts["other"]
    counts["total"] = sum(counts.values())
    return counts, dtypes


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I64": "int64", "F8_E4M3": "float8_e4m3fn"}


# ------------------------------------------------------------------------------- init
def init(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the checkpoint to.")],
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder size: tiny, base, 0.6B or 1.2B. Default: tiny, or the size of --encoder-weights."),
    ] = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            help="Decoder preset (tiny, qwen2.5-omni-7b, qwen3-0.6b), a JSON file holding a "
            "transformers text config (with model_type), or that JSON inline: "
            "'{\"model_type\": \"qwen3\", ...}'. Default: tiny, or the config of --decoder-weights."
        ),
    ] = None,
    encoder_weights: Annotated[
        str | None,
        typer.Option(
            help="Pretrained encoder: an original Dasheng .pt file (dasheng_06b.pt) or a MiDashengLM "
            "checkpoint folder or Hub id (its audio_encoder.* weights and BatchNorm statistics)."
        ),
    ] = None,
    decoder_weights: Annotated[
        str | None,
        typer.Option(
            help="Pretrained decoder: a transformers causal LM folder or Hub id "
            "(Qwen/Qwen2.5-7B-Instruct), or Qwen2.5-Omni's thinker (Qwen/Qwen2.5-Omni-7B)."
        ),
    ] = None,
    decoder_gguf: Annotated[
        str | None,
        typer.Option(help="A GGUF file in --decoder-weights to load the decoder (and its tokenizer) from."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer folder or Hub id. Default: the tokenizer of --decoder-weights, else the "
            "project's small offline tokenizer (for the real decoder presets pass the Qwen "
            "tokenizer, e.g. Qwen/Qwen2.5-Omni-7B)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the weights.")] = 0,
    dtype: Annotated[str, typer.Option(help="Stored dtype: float32, bfloat16 or float16.")] = "float32",
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 5GB.")] = "5GB",
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Write a model and its tokenizer in the published layout: random, or from pretrained parts.

    Random weights are the starting point for training from scratch, and what speed
    benchmarks use when no trained weights are at hand. With --encoder-weights and
    --decoder-weights it assembles the alignment stage's starting point (a pretrained
    Dasheng + a pretrained text decoder; only the projector is new).
    """
    from midashenglm.modeling.config import (
        DECODER_PRESETS,
        ENCODER_PRESETS,
        DashengConfig,
        MiDashengLMConfig,
        build_text_config,
    )
    from midashenglm.modeling.weights import resolve_dtype
    from midashenglm.processing import MiDashengLMProcessor

    if encoder is not None and encoder not in ENCODER_PRESETS:
        raise UserError(f"--encoder {encoder!r}: choose one of {', '.join(ENCODER_PRESETS)}")
    text_config = _decoder_config(decoder, DECODER_PRESETS) if decoder is not None else None
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {quote_name(out)}: is a file; give a folder for the checkpoint")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {quote_name(out)}: folder is not empty (pass --force to write into it)")
    torch_dtype = resolve_dtype(dtype)

    # Pretrained parts first: their configs replace the presets (an explicit one must agree).
    enc = _pretrained_encoder(encoder_weights) if encoder_weights is not None else None
    if enc is not None and encoder is not None:
        _check_agrees(f"--encoder {encoder}", ENCODER_PRESETS[encoder], enc.config.to_dict(),
                      f"--encoder-weights {enc.source}")
    encoder_config = enc.config if enc is not None else DashengConfig.from_preset(encoder or "tiny")
    dec = None
    if decoder_weights is not None or decoder_gguf is not None:
        expect = (f"--decoder {decoder}", text_config) if text_config is not None else None
        with console.status(f"loading the decoder {markup_text(decoder_weights or decoder_gguf or '')}"):
            dec = _pretrained_decoder(decoder_weights, decoder_gguf, torch_dtype,
                                      want_tokenizer=tokenizer is None, expect=expect)
        text_config = dec.text_config
    if text_config is None:
        text_config = dict(DECODER_PRESETS["tiny"])

    tok = dec.tokenizer if dec is not None and tokenizer is None else _load_tokenizer(tokenizer)
    added = _add_chat_tokens(tok)  # ChatML and audio tokens the tokenizer lacks
    processor = MiDashengLMProcessor(tok)
    if "vocab_size" not in text_config:
        # Not given: the decoder's embedding fits the tokenizer written beside it (a
        # transformers default such as Qwen2's 151,936 would give ids it cannot decode).
        text_config = {**text_config, "vocab_size": len(processor.tokenizer)}
    vocab_size = getattr(build_text_config(text_config), "vocab_size", None) or 0
    if len(processor.tokenizer) > vocab_size and dec is None:  # a pretrained decoder is resized
        raise UserError(
            f"the tokenizer has {len(processor.tokenizer)} tokens but the decoder's vocab_size "
            f"is {vocab_size}"
        )
    config = MiDashengLMConfig(
        audio_encoder_config=encoder_config.to_dict(),
        text_config=text_config,
        audio_token_id=processor.audio_token_id,
    )
    shape = f"encoder {encoder_config.embed_dim} x {encoder_config.depth}, decoder {config.text_config.model_type}"
    with console.status(f"initialising the model ({markup_text(shape)})"):
        model = _assemble(config, enc, dec, seed=seed, dtype=torch_dtype, vocab=len(processor.tokenizer))
        gen = model.generation_config
        gen.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        gen.pad_token_id = processor.tokenizer.pad_token_id
        gen.bos_token_id = None
        model.save_pretrained(out, max_shard_size=max_shard_size, dtype=torch_dtype)
        processor.save_pretrained(out)
    if added:
        rows = model.config.text_config.vocab_size
        resized = f"; decoder embeddings resized {vocab_size:,} -> {rows:,} rows" if rows != vocab_size else ""
        console.print(f"added special tokens to the tokenizer: {markup_text(' '.join(added))}{resized}",
                      soft_wrap=True)
    params = sum(p.numel() for p in model.parameters())
    shown = markup_text(quote_name(out))  # quoted as a shell word: the command can be pasted
    console.print(f"wrote {shown} ({params:,} parameters, {dtype}){_origins(enc, dec, seed)}; "
                  f"inspect it with: midashenglm info {shown}", soft_wrap=True)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _decoder_config(name: str, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A preset, a JSON file, or inline JSON (text starting with ``{``): a transformers text config."""
    if name in presets:
        return dict(presets[name])
    path = Path(name)
    if name.lstrip().startswith(("{", "[")):  # before any file check: names have length limits
        source, text = "--decoder (inline JSON)", name
    elif _is_file(path):
        source = f"--decoder {path}"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{source}: cannot read it ({err})") from None
    else:
        raise UserError(
            f"--decoder {name!r}: not a preset ({', '.join(presets)}), a JSON file, "
            "nor inline JSON (a text config starting with '{')"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "text_config" in data:
        data = data["text_config"]  # a whole MiDashengLM config.json works too
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: expected a JSON object (a transformers text config with model_type), "
            f"found a JSON {type(data).__name__}"
        )
    model_type = data.get("model_type")
    if model_type is None:
        raise UserError(f"{source}: the config has no model_type")
    from transformers import CONFIG_MAPPING

    from midashenglm.modeling.config import _QWEN2_ALIASES, build_text_config

    if not isinstance(model_type, str) or (model_type not in CONFIG_MAPPING and model_type not in _QWEN2_ALIASES):
        raise UserError(
            f"{source}: model_type {model_type!r} is not a transformers model type "
            "(for example qwen2, qwen3, llama or qwen2_5_omni_text)"
        )
    try:
        build_text_config(data)
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{source}: not a valid {model_type} config ({err})") from None
    return data


def _load_tokenizer(name: str | None) -> Any:
    if name is None:
        from midashenglm.tokenizer import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise UserError(f"--tokenizer {name}: cannot load it ({err})") from None


# ------------------------------------------------------------ init: pretrained parts
@dataclass
class _Pretrained:
    """A pretrained part for ``init``: its config, its tensors (the part's own key names)."""

    source: str  # what the summary line names
    tensors: Callable[[], Iterator[tuple[str, Any]]]
    config: Any = None  # the encoder's DashengConfig
    text_config: dict[str, Any] = field(default_factory=dict)  # the decoder's
    tokenizer: Any = None
    tied: bool = False  # the decoder's lm_head is its input embedding (may be absent from the files)


def _pretrained_encoder(spec: str) -> _Pretrained:
    """--encoder-weights: an original Dasheng .pt, or a MiDashengLM checkpoint's audio_encoder.*."""
    from midashenglm.checkpoint import CheckpointError, load_dasheng_checkpoint
    from midashenglm.modeling.weights import (
        load_config,
        normalize_key,
        resolve_checkpoint,
        weight_files,
    )

    path = Path(spec).expanduser()
    if path.suffix == ".pt" or _is_file(path):
        if not _is_file(path):
            raise UserError(f"--encoder-weights {quote_name(path)}: no such file")
        try:
            encoder = load_dasheng_checkpoint(path)
        except CheckpointError as err:
            raise UserError(f"--encoder-weights {_one_line(err)}") from None
        state = encoder.state_dict()
        return _Pretrained(str(spec), lambda: iter(state.items()), config=encoder.config)
    try:
        folder = resolve_checkpoint(spec)
        config = load_config(folder).audio_encoder_config
        files = weight_files(folder)
    except CheckpointError as err:
        raise UserError(f"--encoder-weights {_one_line(err)}") from None

    def own_name(key: str) -> str | None:
        name = normalize_key(key)  # init_bn.1.* -> init_bn.*, stored front-end constants dropped
        if name is None or not name.startswith("audio_encoder."):
            return None
        return name.removeprefix("audio_encoder.")

    if next(_read_tensors(files, own_name, names_only=True), None) is None:
        raise UserError(f"--encoder-weights {quote_name(folder)}: holds no audio_encoder.* weights")
    return _Pretrained(str(spec), lambda: _read_tensors(files, own_name), config=config)


def _pretrained_decoder(
    spec: str | None,
    gguf: str | None,
    dtype: Any,
    *,
    want_tokenizer: bool,
    expect: tuple[str, dict[str, Any]] | None,
) -> _Pretrained:
    """--decoder-weights (+ --decoder-gguf): a transformers causal LM, or Qwen2.5-Omni's thinker.

    ``expect``: an explicit --decoder, checked against the config before any weight is read
    (a GGUF's config comes with its weights).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

    def check(text_config: dict[str, Any]) -> None:
        if expect is not None:
            _check_agrees(expect[0], expect[1], text_config, f"--decoder-weights {spec}")

    if spec is None:  # --decoder-gguf PATH alone: the folder is the file's
        if gguf is None or not _is_file(Path(gguf)):
            raise UserError(
                f"--decoder-gguf {gguf}: no such file; or give --decoder-weights, the folder or Hub id holding it"
            )
        spec, gguf = str(Path(gguf).parent), Path(gguf).name
    elif gguf is None and spec.endswith(".gguf") and _is_file(Path(spec)):
        spec, gguf = str(Path(spec).parent), Path(spec).name
    from midashenglm.modeling.weights import _looks_local

    if _looks_local(spec) and not Path(spec).expanduser().exists():
        raise UserError(f"--decoder-weights {quote_name(spec)}: no such folder")
    if gguf is not None and Path(spec).is_dir() and not _is_file(Path(spec) / gguf):
        raise UserError(f"--decoder-gguf {gguf}: no such file in {quote_name(spec)}")
    option = f"--decoder-weights {spec}" + (f" --decoder-gguf {gguf}" if gguf else "")
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    if gguf is None:  # the config says what it is (a GGUF's would be parsed twice)
        try:
            raw, _ = PretrainedConfig.get_config_dict(spec)
        except (OSError, ValueError) as err:
            raise UserError(f"{option}: cannot read its config.json ({_one_line(err)})") from None
        if raw.get("model_type") in ("midashenglm", "miaudiollm"):
            raise UserError(
                f"{option}: a MiDashengLM checkpoint, not a text decoder (it can be --encoder-weights)"
            )
        if raw.get("model_type") == "qwen2_5_omni":
            omni = _omni_text_config(raw, option)
            check(omni)
            return _omni_thinker(spec, omni, option, want_tokenizer=want_tokenizer)
        check(raw)
    try:
        if gguf:  # dequantised: a plain causal LM whatever kernels transformers has for packed blocks
            from transformers import GgufConfig

            model_kwargs = {**kwargs, "quantization_config": GgufConfig(gguf_file=gguf, dequantize=True)}
        else:
            model_kwargs = kwargs
        llm = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **model_kwargs)
        tok = AutoTokenizer.from_pretrained(spec, **kwargs) if want_tokenizer else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UserError(
            f"{option}: cannot load it as a transformers causal LM ({_one_line(err)})"
        ) from None
    text_config = _clean_text_config(llm.config.to_dict())
    check(text_config)
    state = llm.state_dict()
    source = f"{spec} ({gguf})" if gguf else spec
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    return _Pretrained(
        source, lambda: iter(state.items()), text_config=text_config, tokenizer=tok, tied=tied
    )


def _omni_text_config(raw: dict[str, Any], option: str) -> dict[str, Any]:
    """The text config of a Qwen2.5-Omni config.json (``thinker_config.text_config``)."""
    thinker = raw.get("thinker_config") or {}
    text = dict(thinker.get("text_config") or {})
    if not text.get("hidden_size"):
        raise UserError(f"{option}: a Qwen2.5-Omni config without thinker_config.text_config")
    text.setdefault("model_type", "qwen2_5_omni_text")
    for holder in (thinker, raw):  # older configs keep the flag a level up
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in holder:
            text["tie_word_embeddings"] = holder["tie_word_embeddings"]
    return _clean_text_config(text)


def _omni_thinker(spec: str, text: dict[str, Any], option: str, *, want_tokenizer: bool) -> _Pretrained:
    """Qwen2.5-Omni: its thinker's text model (``thinker.model.*``, ``thinker.lm_head.*``) is a
    Qwen2 causal LM; the audio and vision towers, the talker and token2wav are not read."""
    from transformers import AutoTokenizer, PretrainedConfig

    from midashenglm.checkpoint import CheckpointError
    from midashenglm.modeling.weights import resolve_checkpoint, weight_files

    try:
        folder = resolve_checkpoint(spec)
        files = weight_files(folder)
    except CheckpointError as err:
        raise UserError(f"{option}: {_one_line(err)}") from None

    def own_name(key: str) -> str | None:
        if not key.startswith(("thinker.model.", "thinker.lm_head.")):
            return None  # the audio and vision towers, the talker, token2wav
        return key.removeprefix("thinker.")

    tok = None
    if want_tokenizer:  # a neutral config: AutoTokenizer would parse the Omni config.json itself
        tok = AutoTokenizer.from_pretrained(str(folder), config=PretrainedConfig())
    return _Pretrained(
        f"{spec} (Qwen2.5-Omni thinker)",
        lambda: _read_tensors(files, own_name),
        text_config=text,
        tokenizer=tok,
        tied=bool(text.get("tie_word_embeddings", False)),
    )


def _clean_text_config(data: dict[str, Any]) -> dict[str, Any]:
    """A loaded model's config as a text_config: without where it came from and how it was stored."""
    dropped = {"_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype",
               "quantization_config", "architectures", "id2label", "label2id"}
    return {k: v for k, v in data.items() if k not in dropped}


def _read_tensors(files: list[Path], own_name: Callable[[str], str | None], *,
                  names_only: bool = False) -> Iterator[tuple[str, Any]]:
    """(own name, tensor) of the stored keys that ``own_name`` maps; other tensors are not read."""
    from midashenglm.modeling.weights import iter_tensors, open_safetensors

    for file in files:
        if file.suffix != ".safetensors":
            yield from ((n, t) for k, t in iter_tensors([file]) if (n := own_name(k)) is not None)
            continue
        with open_safetensors(file) as shard:
            for key in shard.keys():  # noqa: SIM118 - safe_open is not a dict
                name = own_name(key)
                if name is not None:
                    yield name, None if names_only else shard.get_tensor(key)


def _check_agrees(given: str, explicit: dict[str, Any], actual: dict[str, Any], source: str) -> None:
    """An explicit --encoder/--decoder must describe the shape the weights have (the keys both state)."""
    from midashenglm.modeling.config import _QWEN2_ALIASES

    def norm(key: str, value: Any) -> Any:
        return "qwen2" if key == "model_type" and value in _QWEN2_ALIASES else value

    keys = ("model_type", "embed_dim", "depth", "num_heads", "hidden_size", "intermediate_size",
            "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
    differ = [f"{k} {explicit[k]} vs {actual[k]}" for k in keys
              if k in explicit and k in actual and norm(k, explicit[k]) != norm(k, actual[k])]
    if differ:
        raise UserError(
            f"{given} disagrees with {source} ({', '.join(differ)}): leave {given.split()[0]} out"
        )


def _add_chat_tokens(tokenizer: Any) -> list[str]:
    """Add the ChatML and audio special tokens the processor needs and the tokenizer lacks."""
    from midashenglm.processing import (
        AUDIO_BOS_TOKEN,
        AUDIO_EOS_TOKEN,
        AUDIO_TOKEN,
        IM_END,
        IM_START,
    )

    vocab = tokenizer.get_vocab()
    needed = (IM_START, IM_END, AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN)
    missing = [t for t in needed if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return missing


def _assemble(
    config: Any, enc: _Pretrained | None, dec: _Pretrained | None, *, seed: int, dtype: Any, vocab: int
) -> Any:
    """The model of ``config``: pretrained parts copied in (every key checked), the rest random.

    A pretrained decoder whose embedding has fewer than ``vocab`` rows (the tokenizer's
    length, tokens added) is resized (transformers: new rows drawn around the mean of the old).
    """
    import torch

    from midashenglm.checkpoint import CheckpointError
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.modeling.projector import AudioProjector
    from midashenglm.modeling.weights import load_state

    torch.manual_seed(seed)
    if dec is None:
        model = MiDashengLM(config)  # random everywhere, as without pretrained parts
    else:  # no random decoder to throw away: allocate once, fill part by part
        model = MiDashengLM.build_empty(config, dtype, "cpu")
        enc_config = config.audio_encoder_config
        if enc is None:
            model.audio_encoder.load_state_dict(DashengEncoder(enc_config).state_dict())
        projector = AudioProjector(
            enc_config.embed_dim, config.text_config.hidden_size, config.subsample_factor
        )
        model.audio_projector.load_state_dict(projector.state_dict())
    parts = ((enc, model.audio_encoder, "--encoder-weights"), (dec, model.decoder, "--decoder-weights"))
    for part, module, option in parts:
        if part is None:
            continue
        optional = {"lm_head.weight"} if part.tied else set()
        try:
            load_state(module, part.tensors(), source=f"{option} {part.source}", optional=optional)
        except CheckpointError as err:
            raise UserError(_one_line(err)) from None
    if dec is not None and dec.tied:
        model.decoder.tie_weights()
    if vocab > config.text_config.vocab_size:
        model.decoder.resize_token_embeddings(vocab)
        model.config.text_config.vocab_size = vocab
    return model


def _origins(enc: _Pretrained | None, dec: _Pretrained | None, seed: int) -> str:
    """Which parts are pretrained, and from where (nothing when all are random)."""
    if enc is None and dec is None:
        return ""
    random = f"random (seed {seed})"
    origin = {
        "encoder": f"pretrained from {enc.source}" if enc else random,
        "projector": random,
        "decoder": f"pretrained from {dec.source}" if dec else random,
    }
    return ": " + ", ".join(f"{name} {markup_text(how)}" for name, how in origin.items())


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
