"""Dataset loaders: one per published dataset layout, plus a generic manifest.

``LOADERS[name](root, **options)`` yields the items of a local copy of a dataset; see
:mod:`midashenglm.evaluation.loaders.base` for what an item holds and ``docs/benchmarks.md``
for every layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.captions import (
    load_audiocaps,
    load_caption_table,
    load_clotho,
    load_musiccaps,
    load_songdescriber,
)
from midashenglm.evaluation.loaders.classification import (
    load_audioset,
    load_cochlscene,
    load_esc50,
    load_fma,
    load_fsd50k,
    load_fsdkaggle2018,
    load_nsynth,
    load_vggsound,
    load_voxceleb_gender,
    load_voxceleb_pairs,
    load_voxlingua107,
)
from midashenglm.evaluation.loaders.manifest import load_manifest
from midashenglm.evaluation.loaders.mecat import load_mecat
from midashenglm.evaluation.loaders.qa import load_mmau, load_muchomusic, load_qa_table
from midashenglm.evaluation.loaders.speech import load_librispeech, load_transcripts

Loader = Callable[..., Iterator[dict[str, Any]]]

LOADERS: dict[str, Loader] = {
    "librispeech": load_librispeech,
    "transcripts": load_transcripts,
    "audiocaps": load_audiocaps,
    "clotho": load_clotho,
    "musiccaps": load_musiccaps,
    "songdescriber": load_songdescriber,
    "caption_table": load_caption_table,
    "mecat": load_mecat,
    "voxceleb_gender": load_voxceleb_gender,
    "voxceleb_pairs": load_voxceleb_pairs,
    "voxlingua107": load_voxlingua107,
    "vggsound": load_vggsound,
    "cochlscene": load_cochlscene,
    "nsynth": load_nsynth,
    "fma": load_fma,
    "fsdkaggle2018": load_fsdkaggle2018,
    "audioset": load_audioset,
    "fsd50k": load_fsd50k,
    "esc50": load_esc50,
    "mmau": load_mmau,
    "muchomusic": load_muchomusic,
    "qa_table": load_qa_table,
}


def get_loader(name: str) -> Loader:
    try:
        return LOADERS[name]
    except KeyError:
        raise UserError(f"no dataset loader {name!r} (have {', '.join(LOADERS)})") from None


__all__ = ["LOADERS", "Loader", "get_loader", "load_manifest"]
