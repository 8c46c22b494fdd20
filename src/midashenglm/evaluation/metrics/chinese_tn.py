"""Chinese text normalisation for CER, following the SpeechIO ``cn_tn`` conventions.

The official MiDashengLM WER script normalises Chinese references and hypotheses with
SpeechIO's text normaliser (options all off): non-standard words are read out in
Chinese characters, then every punctuation mark becomes a space. No package on PyPI
provides it, so this is our implementation of the same conventions, stage by stage and
in the same order (an earlier stage wins):

1. dates ``2019年3月15日`` -> 二零一九年三月十五日 (years digit by digit, month/day as numbers);
2. money ``10元``, ``3.5亿``, ``5块5`` -> 十元, 三点五亿, 五块五;
3. mobile numbers ``13812345678`` (optionally ``+86``) -> digit by digit;
4. landline numbers ``010-62345678`` -> digit by digit;
5. fractions ``3/4`` -> 四分之三;
6. percentages ``12.5%`` / ``12.5％`` -> 百分之十二点五;
7. a number before a measure word ``3个``, ``2000年`` -> 三个, 两千年;
8. runs of 4 or more digits ``1234`` -> 一二三四 (ids, codes, bare years);
9. every other number ``12``, ``3.14`` -> 十二, 三点一四;
10. ``P2P``, ``B2B``... keep their ``2``;
11. punctuation (Chinese and ASCII) -> spaces.

Number reading: 10-19 drop the leading 一 (十二), inner zeros read once (一百零五,
一万零五十), 2 reads 两 before 百/千/万/亿 (两百, 两千, 一亿两千万) but 二 before 十 and
alone (二十, 二), decimals digit by digit after 点. Like SpeechIO, each stage finds its
matches first and then replaces the *first occurrence* of each matched string, which
is where the reference tool can rewrite a different place than it matched; we keep
that behaviour so that CER values match the official script.

Full-width ASCII forms (digits ０-９, letters, punctuation such as ％ ． ： ／ －, and the
ideographic space U+3000) are first mapped to their ASCII forms, so that "１０元" reads
exactly like "10元" (十元) and "２０１９年３月１５日" like the ASCII date. (SpeechIO's ``\\d``
matches full-width digits but its number reader does not read them: "１０元" became
"十零元"; we read them as the ASCII digits they stand for.)
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

DIGITS = "零一二三四五六七八九"
POINT = "点"
LIANG = "两"
# (power of ten, character): 十 百 千 万, then the "mid" system above 万 (亿 = 10^8, 兆 = 10^12...).
UNITS = (
    (1, "十"), (2, "百"), (3, "千"), (4, "万"), (8, "亿"), (12, "兆"), (16, "京"), (20, "垓"),
    (24, "秭"), (28, "穰"), (32, "沟"), (36, "涧"), (40, "正"), (44, "载"),
)
_UNIT_CHAR = dict(UNITS)
_UNIT_POWERS = tuple(power for power, _ in UNITS)

CURRENCY_UNITS = (
    r"((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
MEASURE_WORDS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|"
    "砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|"
    "针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
    "毫|厘|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|"
    "盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块)"
)

# Punctuation that becomes a space (the Zhon project's lists, as SpeechIO uses them).
CHINESE_PUNCTUATION = (
    "！？｡。"
    "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜"
    "〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
)
PUNCTUATION = CHINESE_PUNCTUATION + string.punctuation
_TO_SPACE = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
# U+FF01..U+FF5E are the full-width forms of ASCII 0x21..0x7E; U+3000 is the ideographic space.
_TO_HALFWIDTH = {0x3000: 0x20, **{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}}


# ---------------------------------------------------------------------- numbers
def _integer_symbols(digits: str) -> list[tuple[str, int]]:
    """("d", digit) and ("u", power) symbols that read the integer ``digits`` aloud."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        zero = [("d", 0)] if len(significant) != len(digits) else []
        return [*zero, ("d", int(significant))]
    power = max(p for p in _UNIT_POWERS if p < len(significant))
    return [
        *_integer_symbols(digits[:-power]),
        ("u", power),
        *_integer_symbols(significant[-power:]),
    ]


def number_to_chinese(number: str, *, use_units: bool = True, use_liang: bool = True) -> str:
    """Read a decimal number string in Chinese characters.

    ``use_units=False`` reads the integer part digit by digit (codes, years, phone
    numbers); ``use_liang`` reads 2 as 两 before 百/千/万/亿. Full-width digits and
    point (１２．５) read like ASCII ones.
    """
    integer, _, decimals = to_ascii(number).partition(".")
    if "." in decimals:
        raise ValueError(f"{number!r} has more than one decimal point")
    if use_units and len(integer) > 1:
        symbols = _integer_symbols(integer)
    else:
        symbols = [("d", int(c)) for c in integer]
    if decimals:
        symbols += [("p", 0)] + [("d", int(c)) for c in decimals]

    out = []
    for i, (kind, value) in enumerate(symbols):
        if kind == "d":
            char = DIGITS[value]
            if value == 2 and use_liang and _reads_liang(symbols, i):
                char = LIANG
            out.append(char)
        elif kind == "u":
            out.append(_UNIT_CHAR[value])
        else:
            out.append(POINT)
    text = "".join(out)
    if text.startswith(POINT):
        text = DIGITS[0] + text
    if len(text) >= 2 and text[0] == "一" and text[1] == "十":
        text = text[1:]  # 10-19 (and 十万, 十亿...) are read without the leading 一
    return text


def _reads_liang(symbols: list[tuple[str, int]], i: int) -> bool:
    after = symbols[i + 1] if i + 1 < len(symbols) else None
    before = symbols[i - 1] if i > 0 else None
    if after is None or after[0] != "u" or after[1] == 1:
        return False
    return before is None or (before[0] == "u" and before[1] != 1)


def _digits(text: str) -> str:
    return number_to_chinese(text, use_units=False, use_liang=False)


def _date(text: str) -> str:
    year, sep, rest = text.partition("年")
    if not sep:
        year, rest = "", text
    out = _digits(year) + "年" if sep else ""
    if rest:
        month, _, day = rest.partition("月")
        out += number_to_chinese(month) + "月"
        if day:
            out += number_to_chinese(day[:-1]) + day[-1]
    return out


def _money(text: str) -> str:
    for number in re.findall(r"(\d+(?:\.\d+)?)", text):
        text = text.replace(number, number_to_chinese(number), 1)
    return text


def _mobile(text: str) -> str:
    return "".join(_digits(part) for part in text.strip("+").split())


def _landline(text: str) -> str:
    return "".join(_digits(part) for part in text.split("-"))


def _fraction(text: str) -> str:
    numerator, denominator = text.split("/")
    return number_to_chinese(denominator) + "分之" + number_to_chinese(numerator)


def _percentage(text: str) -> str:
    return "百分之" + number_to_chinese(text.strip().strip("%"))


_STAGES: tuple[tuple[re.Pattern[str], int, Callable[[str], str]], ...] = (
    # (pattern, group holding the text to rewrite, rewrite)
    (re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)"), 1, _date),
    (re.compile(r"\D+((\d+(\.\d+)?)[多余几]?" + CURRENCY_UNITS + r"(\d" + CURRENCY_UNITS + r"?)?)"),
     1, _money),
    (re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D"), 1, _mobile),
    (re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D"), 1, _landline),
    (re.compile(r"(\d+/\d+)"), 1, _fraction),
    (re.compile(r"(\d+(\.\d+)?%)"), 1, _percentage),
    (re.compile(r"(\d+(\.\d+)?)[多余几]?" + MEASURE_WORDS), 1, number_to_chinese),
    (re.compile(r"(\d{4,32})"), 1, _digits),
    (re.compile(r"(\d+(\.\d+)?)"), 1, number_to_chinese),
)
_LETTER_TWO_LETTER = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")


def to_ascii(text: str) -> str:
    """Full-width ASCII forms (U+FF01-U+FF5E) and the ideographic space to ASCII."""
    return text.translate(_TO_HALFWIDTH)


def normalize_numbers(text: str) -> str:
    """Stages 1-10: every number, date, phone number, fraction and percentage in characters.

    Full-width digits, letters and punctuation are read as their ASCII forms.
    """
    text = to_ascii(text)
    # Sentinels so that patterns needing a non-digit on each side also match at the ends.
    text = "^" + text + "$"
    for pattern, group, rewrite in _STAGES:
        if rewrite is _percentage:
            text = text.replace("％", "%")
        for match in [m.group(group) for m in pattern.finditer(text)]:
            if match:
                text = text.replace(match, rewrite(match), 1)
    for whole, left, right in _LETTER_TWO_LETTER.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    return text[1:-1]


class ChineseTextNormalizer:
    """SpeechIO-style normaliser with the options the official WER script uses (all off).

    Full-width ASCII forms (１, Ａ, ％, the ideographic space) are always mapped to their
    ASCII forms before numbers are read (:func:`normalize_numbers`).
    """

    def __call__(self, text: str) -> str:
        text = normalize_numbers(text)
        return text.translate(_TO_SPACE)
