"""Dataset loaders on tiny copies of each published layout, and the task registry."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from midashenglm.errors import UserError
from midashenglm.evaluation import paper
from midashenglm.evaluation import tasks as T
from midashenglm.evaluation.loaders import LOADERS, get_loader, load_manifest


def wav(path: Path, seconds: float = 0.1, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000,
             format=fmt)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def items(task: str, root: Path, **options) -> list[dict]:
    return list(T.iter_items(T.get_task(task), root, **options))


# ------------------------------------------------------------------------------ speech
def test_librispeech(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    for i in range(2):
        wav(chapter / f"1089-134686-000{i}.flac")
    write(chapter / "1089-134686.trans.txt",
          "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n")
    got = items("librispeech-test-clean", tmp_path)
    assert [i["id"] for i in got] == ["1089-134686-0000", "1089-134686-0001"]
    assert got[0]["audio"] == "1089-134686-0000.flac"  # as the official result rows name it
    assert got[1]["text"] == "STUFF IT INTO YOU" and got[1]["lang"] == "en"
    assert all(Path(i["source"]).is_file() for i in got)
    with pytest.raises(UserError, match="test-other"):
        items("librispeech-test-other", tmp_path)


def test_aishell2_kaldi_tables_pick_channel_and_test_split(tmp_path):
    base = tmp_path / "AISHELL-DEV-TEST-SET"
    for channel in ("iOS", "Android"):
        for split in ("dev", "test"):
            folder = base / channel / split
            wav(folder / "wav" / "T0055" / f"T0055G{split}.wav")
            write(folder / "wav.scp", f"T0055G{split}\twav/T0055/T0055G{split}.wav\n")
            write(folder / "trans.txt", f"T0055G{split}\t{channel}{split}今天天气很好\n")
    got = items("aishell2-ios", tmp_path)
    assert [(i["id"], i["text"], i["lang"]) for i in got] == [
        ("T0055Gtest", "iOStest今天天气很好", "zh")]
    assert Path(got[0]["source"]).is_file()


def test_gigaspeech2_tsv(tmp_path):
    root = tmp_path / "data" / "th"
    write(root / "test.tsv", "seg-0001\tสวัสดีครับ\nseg-0002\tขอบคุณ\n")
    wav(root / "test" / "seg-0001.wav")
    got = items("gigaspeech2-th", root)
    assert [(i["id"], i["text"], i["lang"]) for i in got] == [
        ("seg-0001", "สวัสดีครับ", "th"), ("seg-0002", "ขอบคุณ", "th")]
    assert Path(got[0]["source"]).is_file()
    # A row whose audio is absent stays an item: the runner records it as an error.
    assert not Path(got[1]["source"]).exists()


# ---------------------------------------------------------------------------- captions
def test_audiocaps_groups_references_and_finds_youtube_clips(tmp_path):
    write(tmp_path / "dataset" / "test.csv",
          "audiocap_id,youtube_id,start_time,caption\n"
          "103549,--0w1YA1Hm4,30,A vehicle idles\n"
          "103548,--0w1YA1Hm4,30,An engine runs\n"
          "5,-AheI8Epim4,10,A woman speaks\n"
          "6,abcdefghijk,0,Nothing downloaded\n")
    wav(tmp_path / "clips" / "Y--0w1YA1Hm4.wav")
    wav(tmp_path / "clips" / "-AheI8Epim4_10.flac")
    got = {i["id"]: i for i in items("audiocaps", tmp_path)}
    assert got["--0w1YA1Hm4_30"]["text"] == ["A vehicle idles", "An engine runs"]
    assert Path(got["--0w1YA1Hm4_30"]["source"]).name == "Y--0w1YA1Hm4.wav"
    assert Path(got["-AheI8Epim4_10"]["source"]).name == "-AheI8Epim4_10.flac"
    assert got["-AheI8Epim4_10"]["text"] == "A woman speaks"
    assert not Path(got["abcdefghijk_0"]["source"]).exists()


def test_clotho(tmp_path):
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    write(tmp_path / "clotho_captions_evaluation.csv",
          f'{header}\nrain.wav,{",".join(f"rain falls {i}" for i in range(5))}\n')
    wav(tmp_path / "evaluation" / "rain.wav")
    (got,) = items("clotho", tmp_path)
    assert got["id"] == "rain.wav" and got["text"] == [f"rain falls {i}" for i in range(5)]
    assert Path(got["source"]) == tmp_path / "evaluation" / "rain.wav"


def test_musiccaps_eval_subset(tmp_path):
    write(tmp_path / "musiccaps-public.csv",
          "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
          "is_balanced_subset,is_audioset_eval\n"
          '-0Gj8-vB1q4,30,40,"/m/0140xf","[\'low quality\']","A low quality recording",4,'
          "False,True\n"
          "-0SdAVK79lg,30,40,/m/0155w,[],Training clip,0,False,False\n")
    wav(tmp_path / "audio" / "[-0Gj8-vB1q4]-[30-40].wav")
    (got,) = items("musiccaps", tmp_path)
    assert got["id"] == "-0Gj8-vB1q4" and got["text"] == "A low quality recording"
    assert Path(got["source"]).is_file()
    assert len(items("musiccaps", tmp_path, subset="all")) == 2


def test_songdescriber_valid_subset_and_2min_files(tmp_path):
    write(tmp_path / "song_describer.csv",
          "caption_id,track_id,caption,is_valid_subset,familiarity,artist_id,album_id,path,"
          "duration\n"
          "1,1051200,An upbeat pop song,True,0,1,1,00/1051200.mp3,200\n"
          "2,1051200,Happy pop with drums,True,0,1,1,00/1051200.mp3,200\n"
          "3,999,Not valid,False,0,2,2,99/999.mp3,100\n")
    wav(tmp_path / "audio" / "00" / "1051200.2min.mp3", fmt="MP3")
    (got,) = items("songdescriber", tmp_path)
    assert got["id"] == "1051200"
    assert got["text"] == ["An upbeat pop song", "Happy pop with drums"]
    assert Path(got["source"]).name == "1051200.2min.mp3"


def test_autoacd_caption_table(tmp_path):
    write(tmp_path / "test.csv", "youtube_id,caption\nE5eXRcrX5ME_294,A person strums a guitar.\n")
    wav(tmp_path / "audio" / "E5eXRcrX5ME_294.wav")
    (got,) = items("autoacd", tmp_path)
    assert got["audio"] == "E5eXRcrX5ME_294.wav" and got["text"] == "A person strums a guitar."


def _shard(path: Path, samples: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for key, meta in samples.items():
            buf = io.BytesIO()
            sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="FLAC")
            for name, data in ((f"{key}.flac", buf.getvalue()),
                               (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_mecat_caption_webdataset_shards(tmp_path):
    refs = {sub: [f"{sub} ref {i}" for i in range(3)] for sub in T.MECAT_SUBTASKS}
    _shard(tmp_path / "S00" / "test_0000-0000000.tar.gz", {"spk_1_0_11_0": refs})
    _shard(tmp_path / "S00" / "train_0000-0000000.tar.gz", {"train_clip": refs})
    _shard(tmp_path / "0M0" / "test_0000-0000000.tar.gz", {"mus_2_0_12_0": refs})
    got = items("mecat-caption", tmp_path)
    assert len(got) == 2 * 6  # each test clip asked all six prompts; train shards ignored
    first = got[0]
    assert first["id"] == "mus_2_0_12_0:short" and first["domain"] == "0M0"
    assert first["text"] == refs["short"] and first["audio"] == "mus_2_0_12_0.flac"
    assert isinstance(first["source"], bytes)
    task = T.get_task("mecat-caption")
    assert task.prompt(first).text == ("What is happening in this audio? Provide a brief "
                                       "caption within 15 words.")
    only_long = items("mecat-caption-long", tmp_path)
    assert [i["subtask"] for i in only_long] == ["long", "long"]


def test_mecat_references_from_reference_files(tmp_path):
    import gzip

    refs = {sub: [f"{sub} ref"] * 3 for sub in T.MECAT_SUBTASKS}
    _shard(tmp_path / "data" / "S0A" / "test_0000-0000000.tar.gz", {"k_1": {"domain": "S0A"}})
    with gzip.open(tmp_path / "S0A.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"k_1": {**refs, "domain": "S0A"}}) + "\n")
    got = items("mecat-caption-sound", tmp_path / "data", references=str(tmp_path))
    assert [(i["id"], i["text"], i["domain"]) for i in got] == [("k_1:sound", ["sound ref"] * 3,
                                                                "S0A")]


def test_mecat_qa(tmp_path):
    _shard(tmp_path / "SMA" / "test_0000-0000000.tar.gz", {"clip_b4dfbcf5": {
        "category": "direct_perception", "difficulty": "basic",
        "question": "Is speech present in the audio?", "answer": "Yes, a male voice.",
        "domain": "SMA"}})
    (got,) = items("mecat-qa", tmp_path)
    assert got["category"] == "direct_perception" and got["domain"] == "SMA"
    assert T.get_task("mecat-qa").prompt(got).text == "Is speech present in the audio?"


# ---------------------------------------------------------------------- classification
def _voxceleb(tmp_path: Path) -> None:
    write(tmp_path / "vox1_meta.csv",
          "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
          "id10270\tA_B\tm\tUSA\ttest\nid10271\tC_D\tf\tUK\ttest\nid10001\tE_F\tm\tUSA\tdev\n")
    for spk in ("id10270", "id10271", "id10001"):
        wav(tmp_path / "wav" / spk / "x6uYqmx31kE" / "00001.wav")


def test_voxceleb_gender_test_speakers(tmp_path):
    _voxceleb(tmp_path)
    got = items("voxceleb-gender", tmp_path)
    assert [(i["id"], i["label"]) for i in got] == [
        ("id10270/x6uYqmx31kE/00001.wav", ["male"]), ("id10271/x6uYqmx31kE/00001.wav", ["female"])]


def test_voxceleb1_verification_pairs(tmp_path):
    _voxceleb(tmp_path)
    write(tmp_path / "veri_test2.txt",
          "1 id10270/x6uYqmx31kE/00001.wav id10270/x6uYqmx31kE/00001.wav\n"
          "0 id10270/x6uYqmx31kE/00001.wav id10271/x6uYqmx31kE/00001.wav\n")
    got = items("voxceleb1", tmp_path)
    assert [i["label"] for i in got] == [["Same"], ["Different"]]
    assert all(isinstance(i["source"], list) and len(i["source"]) == 2 for i in got)
    assert all(Path(p).is_file() for i in got for p in i["source"])


def test_voxlingua107_language_names(tmp_path):
    wav(tmp_path / "dev" / "en" / "a.wav")
    wav(tmp_path / "dev" / "zh" / "b.wav")
    got = items("voxlingua107", tmp_path)
    assert [(i["id"], i["label"]) for i in got] == [("en/a.wav", ["English"]),
                                                    ("zh/b.wav", ["Chinese"])]


def test_vggsound_test_split(tmp_path):
    write(tmp_path / "vggsound.csv",
          "---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n")
    wav(tmp_path / "video" / "---g-f_I2yQ_000001.flac")
    (got,) = items("vggsound", tmp_path)
    assert got["label"] == ["people marching"] and Path(got["source"]).is_file()


def test_cochlscene_class_folders(tmp_path):
    wav(tmp_path / "CochlScene" / "Test" / "Bus" / "Bus_1.wav")
    wav(tmp_path / "CochlScene" / "Test" / "ResidentialArea" / "R_1.wav")
    wav(tmp_path / "CochlScene" / "Train" / "Bus" / "Bus_9.wav")
    got = items("cochlscene", tmp_path)
    assert [(i["id"], i["label"]) for i in got] == [
        ("Bus/Bus_1.wav", ["Bus"]), ("ResidentialArea/R_1.wav", ["Residential area"])]


def test_nsynth(tmp_path):
    notes = {"bass_synthetic_068-049-025": {"instrument_family_str": "bass"},
             "keyboard_electronic_001-021-127": {"instrument_family_str": "keyboard"}}
    write(tmp_path / "nsynth-test" / "examples.json", json.dumps(notes))
    for note in notes:
        wav(tmp_path / "nsynth-test" / "audio" / f"{note}.wav")
    got = items("nsynth", tmp_path)
    assert [(i["audio"], i["label"]) for i in got] == [
        ("bass_synthetic_068-049-025.wav", ["bass"]),
        ("keyboard_electronic_001-021-127.wav", ["keyboard"])]
    assert all(Path(i["source"]).is_file() for i in got)


def test_fma_tracks_csv_three_header_rows(tmp_path):
    rows = [
        ["", "set", "set", "track"],
        ["", "split", "subset", "genre_top"],
        ["track_id", "", "", ""],
        ["2", "test", "small", "Hip-Hop"],
        ["3", "training", "small", "Pop"],
        ["5", "test", "large", ""],  # no top genre: not scored
    ]
    (tmp_path / "fma_metadata").mkdir()
    with (tmp_path / "fma_metadata" / "tracks.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    wav(tmp_path / "fma_large" / "000" / "000002.mp3", fmt="MP3")
    (got,) = items("fma", tmp_path)
    assert got["id"] == "000002.mp3" and got["label"] == ["Hip-Hop"]
    assert Path(got["source"]).is_file()


def test_fsdkaggle2018(tmp_path):
    write(tmp_path / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv",
          "fname,label,usage,freesound_id,license\n"
          "00326aa9.wav,Acoustic_guitar,Private,1,CC0\n")
    wav(tmp_path / "FSDKaggle2018.audio_test" / "00326aa9.wav")
    (got,) = items("fsdkaggle2018", tmp_path)
    assert got["label"] == ["Acoustic guitar"] and Path(got["source"]).is_file()


def test_audioset_eval_segments(tmp_path):
    write(tmp_path / "eval_segments.csv",
          "# Segments csv created Sun Mar  5 10:54:25 2017\n"
          "# num_ytids=20371, num_segs=20371, num_unique_labels=527\n"
          "# YTID, start_seconds, end_seconds, positive_labels\n"
          '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_"\n')
    write(tmp_path / "class_labels_indices.csv",
          'index,mid,display_name\n0,/m/068hy,"Domestic animals, pets"\n1,/m/07q6cd_,Squeak\n')
    wav(tmp_path / "eval" / "Y--4gqARaEJE_0.000_10.000.wav")
    (got,) = items("audioset", tmp_path)
    assert got["label"] == ["Domestic animals, pets", "Squeak"]
    assert Path(got["source"]).is_file()


def test_fsd50k(tmp_path):
    write(tmp_path / "FSD50K.ground_truth" / "eval.csv",
          'fname,labels,mids\n37199,"Electric_guitar,Guitar,Music","/m/02sgy,/m/0342h,/m/04rlf"\n')
    wav(tmp_path / "FSD50K.eval_audio" / "37199.wav")
    (got,) = items("fsd50k", tmp_path)
    assert got["audio"] == "37199.wav"  # as the official result file names it
    assert got["label"] == ["Electric guitar", "Guitar", "Music"]
    assert Path(got["source"]).is_file()


def test_esc50(tmp_path):
    write(tmp_path / "meta" / "esc50.csv",
          "filename,fold,target,category,esc10,src_file,take\n"
          "1-100032-A-0.wav,1,0,dog,True,100032,A\n2-1-A-20.wav,2,20,crying_baby,True,1,A\n")
    wav(tmp_path / "audio" / "1-100032-A-0.wav")
    wav(tmp_path / "audio" / "2-1-A-20.wav")
    assert [i["label"] for i in items("esc50", tmp_path)] == [["dog"], ["crying baby"]]
    assert len(items("esc50", tmp_path, fold="2")) == 1


# ----------------------------------------------------------------------------------- QA
def test_mmau_answers_known_as_text_and_letter(tmp_path):
    questions = [{"id": "q1", "audio_id": "./test-mini-audios/abc.wav",
                  "question": "What animal is heard?", "choices": ["Cat", "Dog", "Cow"],
                  "answer": "Dog", "task": "sound", "difficulty": "easy"}]
    write(tmp_path / "mmau-test-mini.json", json.dumps(questions))
    wav(tmp_path / "test-mini-audios" / "abc.wav")
    (got,) = items("mmau", tmp_path)
    assert got["answer"] == "Dog" and got["answer_letter"] == "B" and got["task"] == "sound"
    assert Path(got["source"]).is_file()
    assert T.get_task("mmau").prompt(got).text == (
        "What animal is heard?\n(A) Cat\n(B) Dog\n(C) Cow\nAnswer with a single Letter: ")


def test_muchomusic_csv_shuffles_reproducibly_and_stores_letters(tmp_path):
    write(tmp_path / "muchomusic.csv",
          "question,dataset,dataset_identifier,correct_answer,distractor_1_answer,"
          "distractor_2_answer,distractor_3_answer,genre,music_reasoning,music_knowledge\n"
          "Which genre?,sdd,415600.json,Reggae,Ska,Pop music,Latin rock,Reggae,[],[]\n"
          "What tempo?,musiccaps,-0Gj8-vB1q4_1.json,Fast,Slow,Medium,None,,[],[]\n")
    wav(tmp_path / "sdd" / "audio" / "00" / "415600.2min.mp3", fmt="MP3")
    wav(tmp_path / "musiccaps" / "audio" / "[-0Gj8-vB1q4]-[30-40].wav")
    first = items("muchomusic", tmp_path)
    assert first == items("muchomusic", tmp_path)  # same order every run
    assert [i["answer_text"] for i in first] == ["Reggae", "Fast"]
    for it in first:
        assert it["choices"]["ABCD".index(it["answer"])] == it["answer_text"]
        assert sorted(it["choices"]) == sorted(set(it["choices"]))
    assert all(Path(i["source"]).is_file() for i in first)


def test_musicqa_table_numbers_repeated_audio(tmp_path):
    write(tmp_path / "test.jsonl", "\n".join(json.dumps(r) for r in [
        {"audio": "a.flac", "question": "Describe the audio", "answer": "Calm piano."},
        {"audio": "a.flac", "question": "What instrument?", "answer": "Piano."},
        {"audio": "b.flac", "question": "Tempo?", "answer": "Slow."}]))
    wav(tmp_path / "audios" / "a.flac")
    got = items("musicqa", tmp_path)
    assert [i["id"] for i in got] == ["a.flac#1", "a.flac#2", "b.flac"]
    prompt = T.get_task("musicqa").prompt(got[0]).text
    assert prompt == "Describe the audio Answer with 1-2 sentences"
    assert Path(got[0]["source"]).is_file() and not Path(got[2]["source"]).exists()


# ----------------------------------------------------------------------------- manifest
def test_manifest_jsonl_and_csv(tmp_path):
    wav(tmp_path / "clips" / "x.wav")
    write(tmp_path / "m.jsonl", json.dumps({"audio": "clips/x.wav", "label": "bass"}) + "\n")
    (got,) = items("nsynth", tmp_path / "m.jsonl")
    assert got["label"] == ["bass"] and Path(got["source"]) == tmp_path / "clips" / "x.wav"
    write(tmp_path / "m.csv", 'audio,label\nclips/x.wav,"[""Music"", ""Guitar""]"\n')
    (got,) = items("fsd50k", tmp_path / "m.csv")
    assert got["label"] == ["Music", "Guitar"] and got["id"] == "clips/x.wav"
    write(tmp_path / "qa.jsonl", json.dumps({"audio": "clips/x.wav", "question": "Q?",
                                             "choices": ["a", "b"], "answer": "(B)"}) + "\n")
    (got,) = items("muchomusic", tmp_path / "qa.jsonl")
    assert (got["answer_letter"], got["answer_text"]) == ("B", "b")
    write(tmp_path / "bad.jsonl", json.dumps({"text": "no audio"}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl, row 1: no audio file column"):
        list(load_manifest(tmp_path / "bad.jsonl"))


def test_missing_metadata_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="examples.json"):
        items("nsynth", tmp_path)
    with pytest.raises(UserError, match="no such file or folder"):
        items("nsynth", tmp_path / "absent")
    with pytest.raises(UserError, match="no dataset loader"):
        get_loader("nope")


# ------------------------------------------------------------------------------ tasks
def test_every_task_has_a_loader_a_known_metric_and_its_paper_rows():
    from midashenglm.evaluation.metrics import get_metric
    from midashenglm.evaluation.scoring import metric_for_dataset

    for task in T.TASKS.values():
        assert task.loader in LOADERS, task.name
        get_metric(task.metric)
        # The scorer picks the same metric from the rows' dataset_name.
        assert metric_for_dataset(task.dataset_name) == task.metric, task.name
        assert set(task.prompts) == set(T.PROMPT_STYLES), task.name
        if task.paper_table is not None:
            assert paper.paper_rows(task.dataset_name), task.name
            assert all(r.table == task.paper_table for r in paper.paper_rows(task.dataset_name))


def test_get_task_by_name_or_dataset_name():
    assert T.get_task("LibriSpeech_test-clean").name == "librispeech-test-clean"
    assert T.get_task("Voxceleb Gender").name == "voxceleb-gender"
    with pytest.raises(UserError, match="unknown task"):
        T.get_task("librispeech")


def _prompt_table(shared_dir: Path) -> list[dict[str, str]]:
    path = shared_dir / "fixtures" / "official-outputs" / "prompts.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# prompts.csv "Dataset" -> our task (a row may stand for several tasks)
_PROMPT_ROWS = {
    "LibriSpeech (test-clean / test-other)": ["librispeech-test-clean", "librispeech-test-other"],
    "AISHELL2 (Test-Mic / Test-iOS / Test-Android)": ["aishell2-mic", "aishell2-ios",
                                                      "aishell2-android"],
    "Gigaspeech2-Indo": ["gigaspeech2-id"], "GigaSpeech2-Thai": ["gigaspeech2-th"],
    "GigaSpeech2-Viet": ["gigaspeech2-vi"], "VoxCeleb-Gender": ["voxceleb-gender"],
    "VoxCeleb1": ["voxceleb1"], "VoxLingua107": ["voxlingua107"], "VGGSound": ["vggsound"],
    "Cochlsence": ["cochlscene"], "FSDKaggle2018": ["fsdkaggle2018"], "Nsynth": ["nsynth"],
    "Free Music Archive (Large)": ["fma"], "AudioSet": ["audioset"], "FSD50K": ["fsd50k"],
    "Songdescriber": ["songdescriber"], "MusicCaps": ["musiccaps"], "AudioCaps": ["audiocaps"],
    "Clotho": ["clotho"], "AutoACD": ["autoacd"], "AudioCaps-QA": ["audiocaps-qa"],
    "MusicQA": ["musicqa"], "MMAU": ["mmau"], "MuChoMusic": ["muchomusic"],
    **{f"MECAT ({s.title()})": [f"mecat-caption-{s}"] for s in T.MECAT_SUBTASKS},
}


def _as_published(task: T.Task, style: str) -> str:
    """Our prompt written the way the published table writes templates."""
    prompt = task.prompts[style]
    text = prompt.text
    if task.category == T.CLOSED_QA and style != T.QWEN:
        text = text.replace("{question}\n{options}\n", "(Question in the data)\\n (Options in "
                            "the data)\\n ").rstrip()
    text = text.replace("{inline_options}", "(Options in the data)")
    text = text.replace("{question}", "(Question in the data)")
    if style == T.QWEN:
        return f"prompt: {text} / sys_prompt: {prompt.system}"
    return text


def test_prompts_are_the_published_ones(shared_dir):
    rows = _prompt_table(shared_dir)
    assert {r["Dataset"] for r in rows} == set(_PROMPT_ROWS)
    for row in rows:
        for name in _PROMPT_ROWS[row["Dataset"]]:
            task = T.get_task(name)
            assert _as_published(task, T.MIDASHENGLM) == row["MiDashengLM"], name
            assert _as_published(task, T.KIMI) == row["Kimi-Audio-Instruct"], name
            # FMA's Qwen cell lacks the "prompt: " prefix in the published table.
            assert _as_published(task, T.QWEN).removeprefix("prompt: ") == \
                row["Qwen2.5-Omni"].removeprefix("prompt: "), name


def test_closed_qa_prompt_matches_the_official_result_file(shared_dir):
    path = shared_dir / "fixtures" / "official-outputs" / "MiDashengLM_MuChoMusic.jsonl"
    task = T.get_task("muchomusic")
    with path.open(encoding="utf-8") as fh:
        for line in list(fh)[:50]:
            row = json.loads(line)
            item = T.finalize_item(task, {"id": row["audio"], "question": row["question"],
                                          "choices": row["choices"], "answer": row["answer"]})
            assert task.prompt(item).text == row["prompt"]
            assert item["answer_text"] == row["choices"]["ABCD".index(row["answer"])]


def test_paper_rows():
    assert paper.paper_row("LibriSpeech_test-clean").values[paper.QWEN] == 1.7
    assert paper.paper_row("MMAU", "sound").values[paper.KIMI] == 74.17
    assert paper.paper_row("MMAU").ours == 66.30
    assert paper.paper_row("MECAT-Caption", "score_caption").ours == 57.53
    assert paper.paper_row("Clotho").ours == 49.20
    assert paper.paper_row("GigaSpeech2_Thai").values[paper.KIMI] == ">100"
    assert paper.paper_row("MECAT-QA", "inference_judgement").ours == 59.57
    assert not paper.paper_row("LibriSpeech_test-clean").higher_is_better
    assert paper.paper_row("unknown") is None
