"""The metrics one by one: normalisation chains, matching rules, registry, dataset table."""

from __future__ import annotations

import pytest

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics import METRICS, get_metric
from midashenglm.evaluation.metrics.captioning import java_available
from midashenglm.evaluation.metrics.chinese_tn import ChineseTextNormalizer, number_to_chinese
from midashenglm.evaluation.metrics.classification import gender_of, split_labels
from midashenglm.evaluation.metrics.qa import letter_of, strict_match, string_match
from midashenglm.evaluation.metrics.wer import row_language, tokenize
from midashenglm.evaluation.scoring import language_for_dataset, metric_for_dataset, score_rows
from tests.conftest import need

# ------------------------------------------------------------ Chinese normalisation
tn = ChineseTextNormalizer()


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("0", "零"),
        ("7", "七"),
        ("10", "十"),  # 10-19 drop the leading 一
        ("12", "十二"),
        ("20", "二十"),  # 二 before 十
        ("22", "二十二"),
        ("105", "一百零五"),  # an inner zero is read once
        ("110", "一百一十"),
        ("200", "两百"),  # 两 before 百/千/万/亿
        ("2000", "两千"),
        ("1005", "一千零五"),
        ("10050", "一万零五十"),
        ("100000", "十万"),
        ("100500", "十万零五百"),
        ("220000", "二十二万"),
        ("123456789", "一亿两千三百四十五万六千七百八十九"),
        ("0.5", "零点五"),  # decimals digit by digit
        ("3.14", "三点一四"),
        ("10.25", "十点二五"),
        ("2.5", "二点五"),
    ],
)
def test_cardinal_numbers(number, expected):
    assert number_to_chinese(number) == expected


def test_digit_by_digit_reading():
    assert number_to_chinese("2019", use_units=False, use_liang=False) == "二零一九"
    assert number_to_chinese("007", use_units=False) == "零零七"


NORMALIZER_CASES = [
        # integers and measure words
        ("我有3个苹果", "我有三个苹果"),
        ("他2岁了", "他二岁了"),
        ("2000个人", "两千个人"),
        ("第1名", "第一名"),
        ("共12", "共十二"),
        # decimals
        ("长3.5米", "长三点五米"),
        ("圆周率3.14", "圆周率三点一四"),
        # percentages (ASCII and full-width sign)
        ("增长了12.5%", "增长了百分之十二点五"),
        ("50％的人", "百分之五十的人"),
        ("200%", "百分之两百"),
        # dates: years digit by digit, months and days as numbers
        ("2019年3月15日", "二零一九年三月十五日"),
        ("1998年", "一九九八年"),
        ("98年", "九八年"),
        ("05年", "零五年"),
        ("7月1号", "七月一号"),
        # bare runs of 4+ digits are codes: digit by digit
        ("编号1234", "编号一二三四"),
        ("共100000人", "共一零零零零零人"),
        # money
        ("10元", "十元"),
        ("3.5亿元", "三点五亿元"),
        ("5块5", "五块五"),
        # phone numbers
        ("电话13812345678", "电话一三八一二三四五六七八"),
        ("+86 13812345678", "八六一三八一二三四五六七八"),
        ("打010-62345678", "打零一零六二三四五六七八"),
        # fractions: denominator 分之 numerator
        ("3/4", "四分之三"),
        ("占1/2", "占二分之一"),
        # mixed English: letters kept, numbers read, P2P-style words restored
        ("我用iPhone 12", "我用iPhone 十二"),
        ("P2P平台", "P2P平台"),
        ("B2B业务", "B2B业务"),
        # punctuation (Chinese and ASCII) becomes spaces
        ("你好，世界！", "你好 世界 "),
        ("“引号”《书名》", " 引号  书名 "),
        ("a,b.c", "a b c"),
        # full-width digits and letters are read as their ASCII forms
        ("３个", "三个"),
        ("ＡＢＣ", "ABC"),
        ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZER_CASES)
def test_chinese_normalizer(text, expected):
    assert tn(text) == expected


def _fullwidth(text: str) -> str:
    """Every printable ASCII character as its full-width form, the space as U+3000."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c
                   for c in text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [case for case in NORMALIZER_CASES if _fullwidth(case[0]) != case[0]],
)
def test_chinese_normalizer_reads_fullwidth_like_ascii(text, expected):
    # Issue 10: "１０元" read "十零元" and "２０００个" "两千零百零十零个".
    wide = _fullwidth(text)
    assert wide != text and not any("!" <= c <= "~" for c in wide)
    assert tn(wide) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("１０元", "十元"), ("２０００个", "两千个"), ("２０１９年３月１５日", "二零一九年三月十五日"),
     ("１２．５％", "百分之十二点五"), ("３／４", "四分之三"), ("１２：３０", "十二 三十"),
     ("０１０－６２３４５６７８", "零一零六二三四五六七八"), ("ｉＰｈｏｎｅ　１２", "iPhone 十二")],
)
def test_fullwidth_examples_of_the_report(text, expected):
    assert tn(text) == expected


def test_chinese_halfwidth_option():
    assert ChineseTextNormalizer()("ＡＢＣ　１２３个") == "ABC 一百二十三个"


def test_first_occurrence_quirk_is_kept():
    # Like SpeechIO: the measure-word stage matched "12" (in 12个) but rewrites the first "12".
    # Then the plain-number stage reads the "3" left over and the "12" of 12个.
    assert tn("123 12个") == "十二三 十二个"


# ---------------------------------------------------------------------- WER chain
def test_english_chain_runs_both_normalisers():
    # English normaliser keeps "$10.50"; the basic normaliser then splits it: "10 50".
    assert tokenize("It costs $10.50 , okay ?<|en|>", "en") == ["it", "costs", "10", "50",
                                                                 "okay"]
    # transformers' normaliser + spelling map: colour -> color, Mr -> mister, won't -> will not,
    # and "dunno" stays (the whisper-normalizer package would expand it).
    assert tokenize("I dunno, colour me impressed, Mr. Smith won't go.", "en") == [
        "i", "dunno", "color", "me", "impressed", "mister", "smith", "will", "not", "go"]
    assert tokenize("<|en|> (laughs) [noise] hello   world .", "en") == ["hello", "world"]


def test_other_languages():
    assert tokenize("你好，世界！今天是3月15日", "zh") == list("你好世界今天是三月十五日")
    assert tokenize("佢哋喺度講嘢", "yue") == list("佢哋喺度讲嘢")  # traditional -> simplified
    assert tokenize("Xin chào các bạn.", "vi") == ["xin", "chào", "các", "bạn"]
    # Thai: the basic normaliser turns vowel marks into spaces (an official quirk).
    assert tokenize("สวัสดีครับ", "th") == ["สว", "สด", "คร", "บ"]


def test_language_sources():
    assert row_language({"lang": "ZH", "prompt": "<|en|>"}) == "zh"
    assert row_language({"prompt": "Transcribe the speech into text <|th|>"}) == "th"
    assert row_language({"prompt": "no tag"}, default="id") == "id"
    assert row_language({}) is None


def test_corpus_wer_and_skipped_pairs():
    rows = [
        {"text": "the cat sat", "model_output": "the cat sat down", "lang": "en"},  # 1 ins
        {"text": "hello world", "model_output": "hello word", "lang": "en"},  # 1 sub
        {"text": "a b c d e", "model_output": "a b c", "lang": "en"},  # 2 del
        {"text": "...", "model_output": "something", "lang": "en"},  # empty reference
        {"text": "words", "model_output": "<|en|>", "lang": "en"},  # empty hypothesis
        {"text": "no language", "model_output": "no language"},
    ]
    out = get_metric("wer")(rows)
    assert out.value == pytest.approx(4 / 10)  # corpus: 4 edits / 10 reference words
    assert out.count == 3
    assert (out.details["insertions"], out.details["substitutions"],
            out.details["deletions"]) == (1, 1, 2)
    assert [i for i, _ in out.skipped] == [3, 4, 5]
    assert "empty reference" in out.skipped[0][1]
    assert "empty model output" in out.skipped[1][1]
    assert "no language" in out.skipped[2][1]
    # with a default language the last row counts
    assert get_metric("wer")(rows, lang="en").count == 4


def test_cer():
    rows = [{"text": "今天天气很好", "model_output": "今天天气真好", "lang": "zh"}]
    out = get_metric("wer")(rows)
    assert out.value == pytest.approx(1 / 6) and out.details["unit"] == "character"
    assert get_metric("cer")([{"text": "abc", "model_output": "abd", "lang": "en"}]).value == (
        pytest.approx(1 / 3))


# ------------------------------------------------------------------ classification
def test_accuracy_is_label_containment():
    rows = [
        {"label": ["Bass"], "model_output": "It is a bass."},
        {"label": ["guitar"], "model_output": "electric_guitar"},
        {"label": "organ", "model_output": "keyboard"},
    ]
    out = get_metric("accuracy")(rows)
    assert out.value == pytest.approx(2 / 3) and out.details["correct"] == 2


@pytest.mark.parametrize(
    ("output", "gender"),
    [("Male", "male"), ("The speaker is male.", "male"), ("female", "female"),
     ("A female voice", "female"), ("male or female", "male or female"), ("unknown", "unknown")],
)
def test_gender_mapping(output, gender):
    assert gender_of(output) == gender


def test_gender_accuracy():
    rows = [{"label": ["male"], "model_output": "Male"},
            {"label": ["female"], "model_output": "The speaker is female."},
            {"label": ["female"], "model_output": "male and female"}]
    out = get_metric("gender")(rows)
    assert out.value == pytest.approx(2 / 3)


def test_label_splitting_rules():
    assert split_labels("Dog;Bark; Animal", "MiDashengLM") == ["dog", "bark", "animal"]
    assert split_labels("Chewing, mastication;Speech", "MiDashengLM", "FSD50K") == [
        "chewing and mastication", "speech"]
    assert split_labels("Dog, Bark", "Qwen2.5-Omni") == ["dog", "bark"]
    assert split_labels("Dog;Bark, Growl", "Qwen2.5-Omni") == ["dog", "bark, growl"]
    assert split_labels("chewing - mastication", "qwen", "FSD50K") == ["chewing and mastication"]
    assert split_labels("Male_speech, Music", "Kimi-Audio-Instruct") == ["male speech", "music"]


def test_map_matches_scikit_learn_by_hand():
    from sklearn.metrics import average_precision_score

    rows = [
        {"label": ["Dog", "Bark"], "model_output": "Dog;Bark", "model_name": "MiDashengLM"},
        {"label": ["Music"], "model_output": "Music;Guitar", "model_name": "MiDashengLM"},
        {"label": ["Dog"], "model_output": "Cat", "model_name": "MiDashengLM"},
    ]
    out = get_metric("map")(rows)
    # classes bark, dog, music; "guitar" and "cat" are not reference labels and are dropped
    target = [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    predicted = [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert out.value == pytest.approx(average_precision_score(target, predicted,
                                                              average="macro"))
    assert out.details["labels_not_in_references"] == 2
    # the splitting rule follows --model-name when given
    kimi = get_metric("map")(rows, model_name="Kimi-Audio")
    assert kimi.value < out.value


# ------------------------------------------------------------------------ closed QA
def test_string_match_rule():
    choices = ["Rock music", "Jazz music", "Pop"]
    assert string_match("Rock music", "It is rock music.", choices)
    assert not string_match("Rock music", "rock or jazz music", choices)  # a wrong-only word
    assert not string_match("Rock music", "music", choices)  # not every answer word
    assert not string_match("Pop", "", choices)


@pytest.mark.parametrize(
    ("text", "letter"),
    [("A", "A"), ("(C)", "C"), ("b.", "B"), ("D)", "D"), ("(B) Jazz", "B"),
     ("Answer: D", "D"), ("A dog barks", None), ("E", None)],
)
def test_letter_answers(text, letter):
    assert letter_of(text, 4) == letter


def test_strict_reading_maps_letters_and_option_text_both_ways():
    choices = ["Reggae", "Pop music", "Latin rock", "Ska"]
    # MuChoMusic: answer letter; output letter or option text
    assert strict_match("A", "A", choices) and strict_match("A", "(A)", choices)
    assert strict_match("A", "Reggae", choices)
    assert not strict_match("A", "B", choices) and not strict_match("A", "Ska", choices)
    # MMAU: answer option text; output letter or text
    assert strict_match("Latin rock", "C", choices)
    assert strict_match("Latin rock", "(C) Latin rock", choices)
    assert strict_match("Latin rock", "The answer is latin rock", choices)
    assert not strict_match("Latin rock", "D", choices)


def test_qa_accuracy_per_task():
    choices = ["yes", "no"]
    rows = [
        {"answer": "yes", "choices": choices, "model_output": "yes", "task": "sound"},
        {"answer": "no", "choices": choices, "model_output": "yes", "task": "sound"},
        {"answer": "no", "choices": choices, "model_output": "no", "task": "music"},
    ]
    out = get_metric("closed_qa")(rows)
    assert out.details["per_task"] == {"music": 1.0, "sound": 0.5}
    assert out.value == pytest.approx(2 / 3)  # correct / all, as MMAU's evaluation.py
    assert out.details["task_mean"] == pytest.approx(0.75)


# ---------------------------------------------------------------- captioning (COCO)
CAPTION_ROWS = [
    {"text": ["a dog barks loudly", "a dog is barking"], "model_output": "a dog barks loudly"},
    {"text": ["rain falls on a roof", "heavy rain on a roof"], "model_output": "rain on a roof"},
    {"text": ["a man speaks", "a man is talking"], "model_output": "music plays"},
]


def test_bleu_rouge_cider():
    bleu = get_metric("bleu")(CAPTION_ROWS)
    assert all(0 < bleu.details[f"bleu_{n}"] < 1 for n in range(1, 5))
    assert bleu.value == bleu.details["bleu_4"]
    rouge = get_metric("rouge_l")(CAPTION_ROWS)
    cider = get_metric("cider_d")(CAPTION_ROWS)
    assert 0 < rouge.value < 1 and cider.value > 0
    perfect = [dict(r, model_output=r["text"][0]) for r in CAPTION_ROWS]
    assert get_metric("cider_d")(perfect).value > cider.value
    assert get_metric("rouge_l")(perfect).value > rouge.value
    assert get_metric("bleu")(perfect).value > bleu.value


def test_meteor_with_java():
    need(java_available(), "METEOR needs a Java runtime")
    out = get_metric("meteor")(CAPTION_ROWS)
    assert 0 < out.value < 1 and out.details["tokenizer"] == "ptb"


# ------------------------------------------------------------- registry and table
def test_registry():
    assert get_metric("CIDEr").name == "cider_d"
    assert get_metric("closed_qa").name == "qa_accuracy"
    with pytest.raises(UserError, match="unknown metric"):
        get_metric("perplexity")
    assert {"wer", "accuracy", "gender_accuracy", "map", "qa_accuracy", "fense", "date",
            "mecat"} <= set(METRICS)


@pytest.mark.parametrize(
    ("dataset", "metric"),
    [
        ("LibriSpeech_test-clean", "wer"), ("LibriSpeech_test-other", "wer"),
        ("AISHELL2_iOS", "cer"), ("GigaSpeech2_Thai", "wer"), ("Gigaspeech2-Indo", "wer"),
        ("AudioCaps", "fense"), ("ClothoV2", "fense"), ("MusicCaps", "fense"),
        ("Songdescriber", "fense"), ("AutoACD", "fense"),
        ("MECAT-Caption", "mecat"), ("MECAT-QA", "mecat"),
        ("VoxCeleb-Gender", "gender_accuracy"), ("VoxCeleb1", "accuracy"),
        ("VoxLingua107", "accuracy"), ("VGGSound", "accuracy"), ("CochlScene", "accuracy"),
        ("NSynth", "accuracy"), ("FMA", "accuracy"), ("FSDKaggle2018", "accuracy"),
        ("AudioSet", "map"), ("FSD50K", "map"),
        ("MMAU", "qa_accuracy"), ("MuChoMusic", "qa_accuracy"),
        ("MusicQA", "fense"), ("AudioCaps-QA", "fense"),
    ],
)
def test_metric_for_dataset(dataset, metric):
    assert metric_for_dataset(dataset) == metric


def test_dataset_default_language(tmp_path):
    from midashenglm.evaluation.results import write_results
    from midashenglm.evaluation.scoring import score_file

    assert language_for_dataset("AISHELL2_iOS") == "zh"
    assert language_for_dataset("GigaSpeech2_Thai") == "th"
    assert language_for_dataset("NSynth") is None
    rows = [{"dataset_name": "AISHELL2_iOS", "text": "今天天气很好", "model_output": "今天天气真好"}]
    assert score_file(write_results(tmp_path / "a.jsonl", rows)).value == pytest.approx(1 / 6)
    assert score_rows(rows, "wer").skipped == 1  # no language known without the dataset


def test_unknown_dataset_asks_for_metric():
    with pytest.raises(UserError, match="--metric"):
        metric_for_dataset("MyPrivateBenchmark")
