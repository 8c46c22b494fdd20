"""Classification test sets: VoxCeleb1 (gender, verification pairs), VoxLingua107, VGGSound,
CochlScene, NSynth, FMA, FSDKaggle2018, AudioSet, FSD50K, ESC-50."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import (
    AUDIO_EXTENSIONS,
    AudioIndex,
    filter_split,
    find_file,
    humanize,
    item,
    missing,
    read_csv,
    read_json,
)

_SPEAKER = re.compile(r"^id\d{5}$")


# ---------------------------------------------------------------------------- VoxCeleb1
def _voxceleb_wavs(root: Path) -> dict[str, Path]:
    """``SPEAKER/VIDEO/UTT.wav`` relative path -> file, for every utterance below ``root``."""
    found: dict[str, Path] = {}
    for path in root.rglob("*.wav"):
        parts = path.parts
        for i in range(len(parts) - 3, -1, -1):
            if _SPEAKER.match(parts[i]):
                found["/".join(parts[i:])] = path
                break
    return found


def load_voxceleb_gender(root: Path, split: str = "test", **_: Any) -> Iterator[dict]:
    """``vox1_meta.csv`` (tab separated: ``VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality,
    Set``) and ``wav/SPEAKER/VIDEO/UTT.wav``: every utterance of the speakers in ``split``
    (``test``: 40 speakers, 4874 utterances), labelled with the speaker's gender."""
    meta = find_file(root, "vox1_meta.csv", required="vox1_meta.csv")
    assert meta is not None
    genders = {}
    for row in read_csv(meta, delimiter="\t"):
        assert isinstance(row, dict)
        speaker = row.get("VoxCeleb1 ID", "")
        if split in (None, "", "all") or row.get("Set", "").lower() == split:
            genders[speaker] = {"m": "male", "f": "female"}.get(row.get("Gender", "").lower())
    wavs = _voxceleb_wavs(root)
    if not wavs:
        raise UserError(f"{root}: no wav/SPEAKER/VIDEO/UTT.wav files below it")
    for rel in sorted(wavs):
        gender = genders.get(rel.split("/", 1)[0])
        if gender:
            yield item(rel, wavs[rel], audio=rel, label=[gender])


def load_voxceleb_pairs(root: Path, trials: str | None = None, **_: Any) -> Iterator[dict]:
    """Speaker verification trials (``veri_test2.txt``, else ``veri_test.txt``: lines
    ``1|0 SPEAKER/VIDEO/UTT.wav SPEAKER/VIDEO/UTT.wav``). The two clips of a trial are
    joined into one input; the label is ``Same`` or ``Different``."""
    table = Path(trials) if trials else find_file(
        root, "veri_test2.txt", "veri_test.txt", "*veri*.txt", required="veri_test2.txt"
    )
    assert table is not None
    wavs = _voxceleb_wavs(root)
    for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise UserError(f"{table}, line {number}: expected '1|0 PATH PATH', got {line!r}")
        first, second = (wavs.get(p) or missing(root / "wav", p) for p in parts[1:])
        yield item(f"{parts[1]}|{parts[2]}", [first, second], audio=f"{parts[1]}|{parts[2]}",
                   label=["Same" if parts[0] == "1" else "Different"])


# --------------------------------------------------------------------------- VoxLingua107
VOXLINGUA107_LANGUAGES = {
    "ab": "Abkhazian", "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese",
    "az": "Azerbaijani", "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian",
    "bn": "Bengali", "bo": "Tibetan", "br": "Breton", "bs": "Bosnian", "ca": "Catalan",
    "ceb": "Cebuano", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fo": "Faroese", "fr": "French",
    "gl": "Galician", "gn": "Guarani", "gu": "Gujarati", "gv": "Manx", "ha": "Hausa",
    "haw": "Hawaiian", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian", "hu": "Hungarian",
    "hy": "Armenian", "ia": "Interlingua", "id": "Indonesian", "is": "Icelandic",
    "it": "Italian", "iw": "Hebrew", "ja": "Japanese", "jw": "Javanese", "ka": "Georgian",
    "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean", "la": "Latin",
    "lb": "Luxembourgish", "ln": "Lingala", "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian",
    "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian",
    "mr": "Marathi", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali",
    "nl": "Dutch", "nn": "Norwegian Nynorsk", "no": "Norwegian", "oc": "Occitan",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sa": "Sanskrit", "sco": "Scots", "sd": "Sindhi", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovenian", "sn": "Shona", "so": "Somali", "sq": "Albanian",
    "sr": "Serbian", "su": "Sundanese", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "tg": "Tajik", "th": "Thai", "tk": "Turkmen", "tl": "Tagalog",
    "tr": "Turkish", "tt": "Tatar", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "vi": "Vietnamese", "war": "Waray", "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese",
}


def load_voxlingua107(root: Path, **_: Any) -> Iterator[dict]:
    """One folder per language code (``dev/en/*.wav``, ``dev/zh/*.wav``, ...); the label is the
    language's English name (the model is asked which language is spoken)."""
    found = False
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        name = VOXLINGUA107_LANGUAGES.get(folder.name)
        if name is None:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                found = True
                rel = f"{folder.name}/{path.name}"
                yield item(rel, path, audio=rel, label=[name])
    if not found:
        raise UserError(f"{root}: no language-code folders (en/, de/, ...) with audio below it")


# ------------------------------------------------------------------------ sound classes
def load_vggsound(root: Path, split: str = "test", **_: Any) -> Iterator[dict]:
    """``vggsound.csv`` (no header: ``youtube_id,start_seconds,label,train|test``) and the
    downloaded 10 s clips (any common YouTube clip naming)."""
    table = find_file(root, "vggsound.csv", required="vggsound.csv")
    assert table is not None
    index = AudioIndex(root)
    for number, row in enumerate(read_csv(table, header=False), 1):
        assert isinstance(row, list)
        if len(row) < 4:
            raise UserError(f"{table}, line {number}: expected youtube_id,start,label,split")
        ytid, start, label, row_split = row[:4]
        if split not in (None, "", "all") and row_split != split:
            continue
        key = f"{ytid}_{int(float(start)):06d}"
        audio = index.find_youtube(ytid, float(start)) or missing(root, f"{key}.wav")
        yield item(key, audio, audio=audio.name, label=[label])


def load_cochlscene(root: Path, split: str = "Test", **_: Any) -> Iterator[dict]:
    """``Test/CLASS/*.wav`` (13 classes such as ``Bus``, ``ResidentialArea``); the label is
    the class name in words (``Residential area``)."""
    base = next((p for p in sorted(root.rglob("*")) if p.is_dir() and p.name.lower() ==
                 split.lower()), root) if root.name.lower() != split.lower() else root
    found = False
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                found = True
                rel = f"{folder.name}/{path.name}"
                yield item(rel, path, audio=path.name, label=[humanize(folder.name)])
    if not found:
        raise UserError(f"{base}: no CLASS/*.wav folders (CochlScene {split})")


def load_nsynth(root: Path, **_: Any) -> Iterator[dict]:
    """``examples.json`` (note name -> attributes, ``instrument_family_str``) and
    ``audio/NOTE.wav``; the label is the instrument family."""
    table = find_file(root, "examples.json", required="NSynth examples.json")
    assert table is not None
    notes = read_json(table)
    if not isinstance(notes, dict):
        raise UserError(f"{table}: expected an object of note name -> attributes")
    for note in sorted(notes):
        family = notes[note].get("instrument_family_str")
        if family is None:
            raise UserError(f"{table}: note {note} has no instrument_family_str")
        audio = table.parent / "audio" / f"{note}.wav"
        yield item(note, audio, audio=audio.name, label=[family])


def _fma_tracks(path: Path) -> list[dict[str, str]]:
    """FMA's ``tracks.csv`` has two header rows (``set``/``split``) and an index row."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 3 or rows[2][:1] != ["track_id"]:
        raise UserError(f"{path}: not FMA's tracks.csv (three header rows, then track ids)")
    names = ["track_id", *(f"{a}.{b}" for a, b in zip(rows[0][1:], rows[1][1:], strict=False))]
    return [dict(zip(names, row, strict=False)) for row in rows[3:] if row]


_FMA_SUBSETS = {"small": {"small"}, "medium": {"small", "medium"},
                "large": {"small", "medium", "large"}}


def load_fma(root: Path, split: str = "test", subset: str = "large", **_: Any) -> Iterator[dict]:
    """``fma_metadata/tracks.csv`` and ``fma_large/NNN/NNNNNN.mp3``: the tracks of ``split``
    in ``subset`` (small < medium < large) that have a top-level genre."""
    table = find_file(root, "tracks.csv", required="fma_metadata/tracks.csv")
    assert table is not None
    wanted = _FMA_SUBSETS.get(subset)
    if wanted is None:
        raise UserError(f"FMA subset {subset!r}: choose small, medium or large")
    index = AudioIndex(root)
    for row in _fma_tracks(table):
        if split not in (None, "", "all") and row.get("set.split") != split:
            continue
        genre = row.get("track.genre_top", "")
        if row.get("set.subset") not in wanted or not genre:
            continue
        name = f"{int(row['track_id']):06d}.mp3"
        audio = index.find(f"{name[:3]}/{name}", name) or missing(root, f"{name[:3]}/{name}")
        yield item(name, audio, audio=name, label=[genre])


def load_fsdkaggle2018(root: Path, **_: Any) -> Iterator[dict]:
    """``FSDKaggle2018.meta/test_post_competition_scoring_clips.csv`` (``fname,label,usage,
    ...``) and ``FSDKaggle2018.audio_test/*.wav``; ``Acoustic_guitar`` -> ``Acoustic guitar``."""
    table = find_file(root, "test_post_competition_scoring_clips.csv",
                      required="test_post_competition_scoring_clips.csv")
    assert table is not None
    index = AudioIndex(root)
    for row in read_csv(table):
        assert isinstance(row, dict)
        name = row["fname"]
        audio = index.find(f"FSDKaggle2018.audio_test/{name}", name) or missing(root, name)
        yield item(name, audio, audio=name, label=[humanize(row["label"])])


def load_audioset(root: Path, segments: str = "eval_segments.csv", **_: Any) -> Iterator[dict]:
    """``eval_segments.csv`` (``# `` comments, then ``YTID, start, end, "mid,mid"``) with
    ``class_labels_indices.csv`` (``index,mid,display_name``) and the downloaded clips."""
    table = find_file(root, segments, required=segments)
    labels_csv = find_file(root, "class_labels_indices.csv", required="class_labels_indices.csv")
    assert table is not None and labels_csv is not None
    names = {r["mid"]: r["display_name"] for r in read_csv(labels_csv) if isinstance(r, dict)}
    index = AudioIndex(root)
    for number, row in enumerate(read_csv(table, header=False, comment="#"), 1):
        assert isinstance(row, list)
        if len(row) < 4:
            raise UserError(f"{table}, row {number}: expected YTID, start, end, labels")
        ytid, start = row[0], float(row[1])
        mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        unknown = [m for m in mids if m not in names]
        if unknown:
            raise UserError(f"{table}, row {number}: labels {unknown} not in {labels_csv.name}")
        key = f"{ytid}_{start:g}"
        audio = index.find_youtube(ytid, start) or missing(root, f"Y{ytid}.wav")
        yield item(key, audio, audio=audio.name, label=[names[m] for m in mids])


def load_fsd50k(root: Path, split: str = "eval", **_: Any) -> Iterator[dict]:
    """``FSD50K.ground_truth/eval.csv`` (``fname,labels,mids``, labels comma-separated) and
    ``FSD50K.eval_audio/FNAME.wav``; ``Electric_guitar`` -> ``Electric guitar``."""
    table = find_file(root, f"{split}.csv", required=f"FSD50K.ground_truth/{split}.csv")
    assert table is not None
    index = AudioIndex(root)
    for row in read_csv(table):
        assert isinstance(row, dict)
        name = f"{row['fname']}.wav"
        labels = [humanize(x) for x in row["labels"].split(",") if x]
        audio = index.find(f"FSD50K.{split}_audio/{name}", name) or missing(root, name)
        yield item(name, audio, audio=name, label=labels)


def load_esc50(root: Path, fold: str | None = None, **_: Any) -> Iterator[dict]:
    """``meta/esc50.csv`` (``filename,fold,target,category,...``) and ``audio/*.wav``."""
    table = find_file(root, "esc50.csv", required="meta/esc50.csv")
    assert table is not None
    index = AudioIndex(root)
    for row in filter_split(read_csv(table), "fold", fold):  # type: ignore[arg-type]
        name = row["filename"]
        audio = index.find(f"audio/{name}", name) or missing(root / "audio", name)
        yield item(name, audio, audio=name, label=[humanize(row["category"])])
