"""Model commands: ``info`` (inspect a checkpoint) and ``init`` (write a random or assembled one).

Registered by :mod:`midashenglm.cli` like every area's commands; heavy imports
(torch, transformers, the model) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from midashenglm.errors import UserError
from midashenglm.pretrained import (
    Pretrained,
    add_chat_tokens,
    assemble_model,
    check_agrees,
    is_file,
    pretrained_decoder,
    pretrained_encoder,
)
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
        typer.Option(help="Encoder size: tiny, small, base, 0.6B or 1.2B. Default: tiny, or the size of --encoder-weights."),
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
    enc = pretrained_encoder(encoder_weights) if encoder_weights is not None else None
    if enc is not None and encoder is not None:
        check_agrees(f"--encoder {encoder}", ENCODER_PRESETS[encoder], enc.config.to_dict(),
                     f"--encoder-weights {enc.source}")
    encoder_config = enc.config if enc is not None else DashengConfig.from_preset(encoder or "tiny")
    dec = None
    if decoder_weights is not None or decoder_gguf is not None:
        expect = (f"--decoder {decoder}", text_config) if text_config is not None else None
        with console.status(f"loading the decoder {markup_text(decoder_weights or decoder_gguf or '')}"):
            dec = pretrained_decoder(decoder_weights, decoder_gguf, torch_dtype,
                                     want_tokenizer=tokenizer is None, expect=expect)
        text_config = dec.text_config
    if text_config is None:
        text_config = dict(DECODER_PRESETS["tiny"])

    tok = dec.tokenizer if dec is not None and tokenizer is None else _load_tokenizer(tokenizer)
    added = add_chat_tokens(tok)  # ChatML and audio tokens the tokenizer lacks
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
        model = assemble_model(config, enc, dec, seed=seed, dtype=torch_dtype, vocab=len(processor.tokenizer))
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



def _decoder_config(name: str, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A preset, a JSON file, or inline JSON (text starting with ``{``): a transformers text config."""
    if name in presets:
        return dict(presets[name])
    path = Path(name)
    if name.lstrip().startswith(("{", "[")):  # before any file check: names have length limits
        source, text = "--decoder (inline JSON)", name
    elif is_file(path):
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


def _origins(enc: Pretrained | None, dec: Pretrained | None, seed: int) -> str:
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
