"""Speech recognition test sets: LibriSpeech, AISHELL-2, GigaSpeech 2, People's Speech."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import AudioIndex, item, missing


def load_librispeech(root: Path, split: str = "test-clean", **_: Any) -> Iterator[dict]:
    """``SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` + ``SPEAKER-CHAPTER.trans.txt``.

    ``root`` is the split folder itself, ``LibriSpeech/`` or a folder above it.
    """
    base = _split_folder(root, split)
    transcripts = sorted(base.rglob("*.trans.txt"))
    if not transcripts:
        raise UserError(f"{base}: no SPEAKER-CHAPTER.trans.txt files (LibriSpeech {split})")
    for trans in transcripts:
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{utt}.flac"
            yield item(utt, audio, audio=audio.name, text=text.strip(), lang="en")


def _split_folder(root: Path, split: str) -> Path:
    if root.name == split or not split:
        return root
    hits = sorted((p for p in root.rglob(split) if p.is_dir()), key=lambda p: len(p.parts))
    if hits:
        return hits[0]
    if any(root.glob("*/*/*.trans.txt")):
        return root  # already a split folder under another name
    raise UserError(f"{root}: no {split}/ folder below it")


def load_transcripts(
    root: Path, subset: str | None = None, split: str = "test", lang: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    """A transcript table plus audio: Kaldi style or a two-column TSV.

    * Kaldi (AISHELL-2's test set): ``wav.scp`` (``ID PATH``, relative to its folder) and
      ``trans.txt`` or ``text`` (``ID TRANSCRIPT``). ``subset`` picks the channel folder
      (``Mic``, ``iOS``, ``Android``) and folders named ``split`` win over ``dev``.
    * TSV (GigaSpeech 2's ``test.tsv``, People's Speech exports): ``ID<TAB>TRANSCRIPT``
      per line; the audio is the file whose stem is ``ID`` anywhere below ``root``.
    """
    base = _subset_folder(root, subset)
    scp = _prefer_split(base, ["wav.scp"], split)
    trans = _prefer_split(base, ["trans.txt", "text"], split)
    extra = {"lang": lang} if lang else {}
    if scp is not None and trans is not None:
        paths = dict(_two_columns(scp))
        index = AudioIndex(scp.parent)
        for utt, text in _two_columns(trans):
            rel = paths.get(utt)
            audio = (scp.parent / rel) if rel and not Path(rel).is_absolute() else Path(rel or "")
            if not rel or not audio.is_file():
                audio = index.find(utt) or missing(scp.parent, rel or f"{utt}.wav")
            yield item(utt, audio, audio=audio.name, text=text, **extra)
        return
    table = _prefer_split(base, [f"{split}.tsv", "*.tsv", f"{split}.txt"], split)
    if table is None:
        raise UserError(
            f"{base}: no transcript table (wav.scp + trans.txt, or {split}.tsv with "
            "ID<TAB>TRANSCRIPT lines)"
        )
    index = AudioIndex(table.parent)
    for utt, text in _two_columns(table):
        audio = index.find(utt) or missing(table.parent, f"{utt}.wav")
        yield item(utt, audio, audio=audio.name, text=text, **extra)


def _subset_folder(root: Path, subset: str | None) -> Path:
    if not subset or root.name.lower() == subset.lower():
        return root
    hits = sorted(
        (p for p in root.rglob("*") if p.is_dir() and p.name.lower() == subset.lower()),
        key=lambda p: len(p.parts),
    )
    if hits:
        return hits[0]
    raise UserError(f"{root}: no {subset}/ folder below it")


def _prefer_split(base: Path, names: list[str], split: str) -> Path | None:
    for name in names:
        hits = [p for p in base.rglob(name) if p.is_file()]
        if not hits:
            continue
        wanted = [p for p in hits if split in p.relative_to(base).parts[:-1] or p.stem == split]
        return sorted(wanted or hits, key=lambda p: (len(p.parts), str(p)))[0]
    return None


def _two_columns(path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t", 1) if "\t" in line else line.strip().split(None, 1)
        if len(parts) == 1:
            parts.append("")
        if not parts[0]:
            raise UserError(f"{path}, line {number}: no utterance id")
        yield parts[0].strip(), parts[1].strip()
