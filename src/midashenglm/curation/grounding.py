"""The grounding check: a caption may name only sounds, instruments, languages and counts the
experts reported.

Small LLMs invent details ("a solo guitar plays in a cathedral while three people speak
French"); :func:`check` finds every term of a controlled vocabulary in the text and reports
those the clip's :class:`~midashenglm.curation.facts.ClipFacts` do not support.

Vocabulary (built once, :func:`vocabulary`):

* **sounds**: every name of every AudioSet class (display names split at ``", "``, the
  parenthesis dropped: ``"Walk, footsteps"`` gives ``walk`` and ``footsteps``) supports its
  class; a multi-word name also supports its last word when that word is itself a class name
  (``acoustic guitar`` -> ``guitar``, ``snare drum`` -> ``drum``, ``pop music`` -> ``music``);
  plus a hand-made table of synonyms and hypernyms (``_groups``: ``dog`` <- Dog, Bark,
  Howl...; ``bark`` <- Bark or Dog; ``talking``/``voice`` <- speech; ``animal`` <- every
  animal class; ``rock`` <- the rock genres...). The scene classes ("Inside, small
  room"...) are not checked, and names that are everyday words or neutral descriptions
  (:data:`UNCHECKED`: run, hands, roll, pulse, writing, sound effect, sine wave...) are
  matched but never flagged.
* **acoustics**: noise/noisy/static, reverb/echo, clipping/distortion, telephone quality,
  silence: supported by the acoustics words of the facts or by the matching classes.
* **languages**: the names of Whisper's languages (``German`` <- language ``de``); ``Latin``
  is left out (Latin music), ``French horn`` / ``Spanish guitar`` are instruments.
* **gender**: man/woman/male/female/he/she... <- the gender expert (or a male/female speech
  or singing class); **children** <- child classes or an age group naming a child.
* **counts**: a number word or digit before a person noun within three words (``two
  speakers``, ``three young people``, ``a couple of voices``), ``several/many/multiple
  people``, and ``a man and a woman``: an exact count needs ``num_speakers`` equal to it,
  "several" needs two or more speakers or a crowd/chatter/conversation class.

Matching is case-insensitive on word boundaries, longest term first, plural-aware
(``bells`` = ``bell``) and ``-ing``-aware (``barking`` -> ``bark``; inflections are looked
up on the last word of a multi-word name only). A term right after a
negation in the same clause (``no music``, ``without speech``) is not a claim. Words of the
transcript (speech content), the emotion and the age group are always allowed: a caption
may report what is said. Generic words (sound, audio, background, recording, tone...) are
never flagged; ``noise`` is flagged only when neither the acoustics nor the tags report noise.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from midashenglm.curation.facts import LANGUAGES, ClipFacts

# --------------------------------------------------------------------------- text handling
_TOKEN = re.compile(r"[a-z0-9]+(?:['\u2019\-][a-z0-9]+)*"
                    r"|[.,;:!?()\[\]{}\"\u201c\u201d\u2014\u2013/]")
_PUNCT = set(".,;:!?()[]{}\"\u201c\u201d\u2014\u2013/")
_IRREGULAR = {"mice": "mouse", "geese": "goose", "women": "woman", "men": "man",
              "children": "child", "wolves": "wolf", "leaves": "leaf", "knives": "knife",
              "people": "people", "teeth": "tooth", "feet": "foot", "buses": "bus",
              "glasses": "glass", "dishes": "dish", "bass": "bass", "series": "series",
              "species": "species", "news": "news", "lens": "lens", "chorus": "chorus",
              "gas": "gas", "ukuleles": "ukulele", "whistles": "whistle", "clothes": "clothes",
              "pants": "pants", "bagpipes": "bagpipe", "cymbals": "cymbal", "blues": "blues",
              "echoes": "echo"}


def singular(word: str) -> str:
    """A crude English singular (``bells`` -> ``bell``, ``flies`` -> ``fly``); used on both the
    vocabulary and the text, so only consistency matters."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is", "'s")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalize(word: str) -> str:
    """Lower-case, possessive dropped, singular."""
    word = word.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    return singular(word)


def _ing_stems(word: str) -> list[str]:
    """``barking`` -> ``bark``; ``drumming`` -> ``drum``; ``crackling`` -> ``crackle``."""
    if not word.endswith("ing") or len(word) < 6:
        return []
    base = word[:-3]
    stems = [base, base + "e"]
    if len(base) > 2 and base[-1] == base[-2]:
        stems.append(base[:-1])
    return stems


def tokens(text: str) -> list[str]:
    """Lower-case word and punctuation tokens; a hyphenated word that is not a vocabulary term
    is split into its parts (``guitar-driven`` -> ``guitar``, ``driven``), except ``-free`` and
    ``-less`` words (``noise-free`` claims no noise)."""
    words = _vocabulary_words()
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        if "-" in tok and normalize(tok) not in words:
            if tok.endswith(("-free", "-less")):
                continue
            out.extend(p for p in tok.split("-") if p)
        else:
            out.append(tok)
    return out


def phrase_key(phrase: str) -> tuple[str, ...]:
    return tuple(normalize(t) for t in _TOKEN.findall(phrase.lower()) if t not in _PUNCT)


# --------------------------------------------------------------------------- vocabulary
# Support keys: "L:<AudioSet label>", "G:speech|music|singing", "A:noise|reverb|clipping|
# narrowband|silence", "LANG:<code>", "GENDER:male|female", "AGE:child".

# Names that are everyday words or neutral descriptions: matched (so that their words are
# not checked one by one: "sine wave" is no ocean wave) but never flagged ("the recording
# runs", "on the other hand", "harmonic richness", "a useful tool", "a sound effect").
UNCHECKED = frozenset({
    "run", "hand", "roll", "pulse", "harmonic", "writing", "arrow", "tool", "mechanism",
    "sound effect", "field recording", "fill", "effects unit", "chorus effect", "bass",
    "inside", "outside", "wood", "glass", "liquid", "patter", "shuffle", "biting",
    "crack", "chop", "splinter", "squish", "stir", "sampler", "sidetone", "sine wave",
    "train", "tone", "dial", "pure tone", "roar", "tap", "squeak",
})
# AudioSet's onomatopoeia and generic impact classes (Whoosh ... Thunk, Bang ... Crunch):
# words for how something sounds ("dishes clatter", "a door creaks", "a low hum"), not for
# what sounds; matched but never flagged, like UNCHECKED. The source is what is checked.
_NEUTRAL_SPANS = (("Whoosh, swoosh, swish", "Thunk"), ("Bang", "Crunch"))
_ANY = "*"  # the support key of UNCHECKED terms: always supported
# Classes that describe where or how a clip was recorded; room words are too common in
# environment reasoning ("likely recorded indoors") to demand a tag.
_SCENES = ("Inside, small room", "Inside, large room or hall", "Inside, public space",
           "Outside, urban or manmade", "Outside, rural or natural", "Field recording")
# Heads that must not be derived ("bird song" is not a song, "speech synthesizer" no synth).
_NO_HEAD = {("bird", "song"), ("speech", "synthesizer"), ("sine", "wave")}
_NEGATORS = {"no", "not", "without", "nor", "never", "none", "absent", "absence", "lack",
             "lacking", "lacks", "neither", "free"}
_CLAUSE_BREAKS = _PUNCT | {"but", "while", "whereas", "although", "though", "yet"}


def _labels_between(first: str, last: str) -> list[str]:
    from midashenglm.curation.ontology import audioset_labels

    labels = audioset_labels()
    return list(labels[labels.index(first):labels.index(last) + 1])


@functools.cache
def _groups() -> dict[str, frozenset[str]]:
    """Support-key sets of the hand-made terms (built lazily: reads the ontology)."""
    from midashenglm.curation import ontology as o

    def L(*names: str) -> set[str]:  # noqa: N802 - a short constructor for the table
        return {f"L:{n}" for n in names}

    def span(first: str, last: str) -> set[str]:
        return L(*_labels_between(first, last))

    speech = L(*o.SPEECH) | {"G:speech"}
    singing = L(*o.SINGING) | L("Vocal music", "A capella") | {"G:singing"}
    music = L(*o.MUSIC) | {"G:music"}
    crowd = L("Crowd", "Chatter", "Hubbub, speech noise, speech babble", "Conversation",
              "Children playing", "Cheering", "Applause", "Children shouting")
    animals = span("Animal", "Whale vocalization") - L("Cowbell")
    birds = span("Fowl", "Honk") | span("Bird", "Bird flight, flapping wings")
    vehicles = span("Vehicle", "Skateboard")
    engines = span("Engine", "Accelerating, revving, vroom") | span(
        "Motorboat, speedboat", "Motorboat, speedboat") | span("Motor vehicle (road)", "Bus") \
        | span("Motorcycle", "Motorcycle") | span("Aircraft", "Helicopter")
    water = span("Water", "Gurgling") | span("Liquid", "Boiling") | L(
        "Water tap, faucet", "Sink (filling or washing)", "Bathtub (filling or washing)",
        "Toilet flush", "Thunderstorm") | span("Boat, Water vehicle", "Ship")
    noise = (L(*o.NOISE) | L("Hubbub, speech noise, speech babble", "Wind noise (microphone)",
                             "Traffic noise, roadway noise", "Hum") | {"A:noise"})
    male = L("Male speech, man speaking", "Male singing") | {"GENDER:male"}
    female = L("Female speech, woman speaking", "Female singing") | {"GENDER:female"}
    child = L("Child speech, kid speaking", "Children shouting", "Children playing",
              "Child singing", "Baby laughter", "Baby cry, infant cry",
              "Music for children") | {"AGE:child"}
    drums = span("Percussion", "Tabla") - L("Percussion")
    guitars = span("Guitar", "Tapping (guitar technique)")
    strings = span("Plucked string instrument", "Ukulele") | span(
        "Bowed string instrument", "Double bass") | L("Harp")
    table: dict[str, set[str]] = {
        # speech, singing, people
        "speech": speech, "speak": speech, "speaking": speech, "spoke": speech,
        "spoken": speech, "speaker": speech, "talk": speech, "talking": speech,
        "talked": speech, "narration": speech, "narrator": speech, "narrate": speech,
        "narrating": speech, "monologue": speech, "utterance": speech, "announcer": speech,
        # "a man speaking": the gender is the claim to check (speech is checked elsewhere)
        "man speaking": male, "male speech": male, "woman speaking": female,
        "female speech": female, "kid speaking": child, "child speech": child,
        "voice": speech | singing, "vocalist": singing, "singer": singing,
        "sing": singing | birds, "sang": singing | birds, "sung": singing,
        "singing": singing | birds, "rap": singing,
        "rapper": singing, "chorus": singing | L("Chorus effect"),
        "conversation": L("Conversation", "Chatter") | {"NUM:2+"},
        "dialogue": L("Conversation", "Chatter") | {"NUM:2+"},
        "discussion": L("Conversation", "Chatter") | {"NUM:2+"},
        "chat": crowd | {"NUM:2+"}, "chatting": crowd | {"NUM:2+"},
        "crowd": crowd, "audience": crowd, "chatter": crowd | birds,
        "man": male, "male": male, "gentleman": male, "guy": male, "boy": male | child,
        "he": male, "him": male, "his": male,
        "woman": female, "female": female, "lady": female, "girl": female | child,
        "she": female, "her": female, "hers": female,
        "child": child, "kid": child, "baby": child, "infant": child, "toddler": child,
        "laugh": span("Laughter", "Chuckle, chortle"),
        "laughter": span("Laughter", "Chuckle, chortle"),
        "cry": span("Crying, sobbing", "Wail, moan"), "sob": span("Crying, sobbing", "Wail, moan"),
        "crying": span("Crying, sobbing", "Wail, moan"),
        "clap": L("Clapping", "Applause"), "applause": L("Clapping", "Applause"),
        "breath": L("Breathing", "Gasp", "Pant", "Wheeze", "Sigh"),
        "footstep": L("Walk, footsteps", "Run", "Shuffle"),
        # verbs of sound classes named by their -ing form
        "scream": L("Screaming", "Shout", "Yell"), "whisper": L("Whispering"),
        "snore": L("Snoring"), "cheer": L("Cheering"), "click": L("Clicking", "Tick"),
        "chew": L("Chewing, mastication"), "gargle": L("Gargling"),
        "burp": L("Burping, eructation"), "yodel": L("Yodeling"), "babble": L(
            "Babbling", "Hubbub, speech noise, speech babble"),
        "boil": L("Boiling"), "fry": L("Frying (food)", "Sizzle"),
        "crumple": L("Crumpling, crinkling"), "crinkle": L("Crumpling, crinkling"),
        "rev": L("Accelerating, revving, vroom"),
        # music
        "music": music, "musical": music, "song": music, "melody": music, "melodic": music,
        "tune": music, "instrumental": music, "musician": music,
        "instrument": L(*o.INSTRUMENTS), "musical instrument": L(*o.INSTRUMENTS),
        "guitar": guitars, "strum": strings | L("Strum"),
        "spanish guitar": guitars | L("Flamenco"), "drum": drums,
        "percussion": drums | span("Percussion", "Steelpan"), "string": strings,
        "brass": span("Brass instrument", "Trombone"),
        "woodwind": span("Wind instrument, woodwind instrument", "Clarinet"),
        "english horn": span("Wind instrument, woodwind instrument", "Clarinet"),
        "horn": L("French horn", "Vehicle horn, car horn, honking", "Air horn, truck horn",
                  "Train horn", "Foghorn", "Toot", "Honk"),
        "background music": music, "electronic music": music | L("Electronica"),
        "vocal music": music, "independent music": music, "traditional music": music,
        "theme music": music, "dance music": music, "pop": L("Pop music", "Burst, pop"),
        "static": noise,
        "synth": L("Synthesizer"), "sax": L("Saxophone"), "keyboard": L(
            "Keyboard (musical)", "Computer keyboard", "Typing", "Piano", "Electric piano",
            "Organ", "Electronic organ", "Hammond organ", "Synthesizer", "Harpsichord"),
        "rock": span("Rock music", "Psychedelic rock"),
        "rock music": span("Rock music", "Psychedelic rock"), "pop music": L("Pop music"),
        "pop song": L("Pop music"), "hip hop": L("Hip hop music"), "jazz": L("Jazz"),
        "soul": L("Soul music"), "classical": L("Classical music", "Opera", "Orchestra"),
        "orchestral": L("Orchestra", "Classical music", "String section"),
        "folk": L("Folk music", "Traditional music"), "trance": L("Trance music"),
        "electronic dance": L("Electronic dance music", "House music", "Techno", "Trance music",
                              "Dubstep", "Drum and bass", "Electronica"),
        "latin": L("Music of Latin America", "Salsa music", "Flamenco"),
        "african": L("Music of Africa", "Afrobeat"), "asian": L(
            "Music of Asia", "Carnatic music", "Music of Bollywood"),
        "bollywood": L("Music of Bollywood"), "indian": L(
            "Music of Bollywood", "Carnatic music", "Sitar", "Tabla"),
        # animals
        "animal": animals, "pet": span("Domestic animals, pets", "Caterwaul"),
        "dog": span("Dog", "Whimper (dog)") | L("Canidae, dogs, wolves"),
        "puppy": span("Dog", "Whimper (dog)"),
        "wolf": L("Canidae, dogs, wolves", "Howl"),
        "cat": span("Cat", "Caterwaul") | L("Roaring cats (lions, tigers)"),
        "kitten": span("Cat", "Caterwaul"),
        "horse": span("Horse", "Neigh, whinny"), "cow": span("Cattle, bovinae", "Moo"),
        "pig": span("Pig", "Oink"), "goat": span("Goat", "Bleat"),
        "sheep": span("Bleat", "Sheep"), "lamb": span("Bleat", "Sheep"),
        "chicken": span("Fowl", "Crowing, cock-a-doodle-doo"),
        "hen": span("Fowl", "Crowing, cock-a-doodle-doo"),
        "rooster": span("Fowl", "Crowing, cock-a-doodle-doo"),
        "duck": span("Duck", "Quack"), "goose": span("Goose", "Honk"),
        "lion": span("Roaring cats (lions, tigers)", "Roar"),
        "tiger": span("Roaring cats (lions, tigers)", "Roar"),
        "bird": birds, "birdsong": birds, "songbird": birds, "birdcall": birds,
        "pigeon": span("Pigeon, dove", "Coo"), "owl": span("Owl", "Hoot"),
        "insect": span("Insect", "Bee, wasp, etc."), "bee": L("Bee, wasp, etc.", "Buzz"),
        "frog": span("Frog", "Croak"), "rat": span("Rodents, rats, mice", "Patter"),
        "whale": L("Whale vocalization"),
        # an animal's typical call is supported by the animal's class
        "bark": span("Dog", "Whimper (dog)") | L("Canidae, dogs, wolves"),
        "howl": L("Dog", "Howl", "Canidae, dogs, wolves", "Wind"),
        "growl": L("Dog", "Growling") | engines, "meow": span("Cat", "Caterwaul"),
        "purr": span("Cat", "Caterwaul") | engines,
        "moo": span("Cattle, bovinae", "Moo"), "oink": span("Pig", "Oink"),
        "bleat": span("Goat", "Sheep"), "cluck": span("Fowl", "Crowing, cock-a-doodle-doo"),
        "crowing": span("Fowl", "Crowing, cock-a-doodle-doo"),
        "quack": span("Duck", "Quack"), "honk": span("Goose", "Honk") | L(
            "Vehicle horn, car horn, honking", "Air horn, truck horn"),
        "neigh": span("Horse", "Neigh, whinny"),
        "chirp": birds | L("Cricket", "Chirp tone"), "tweet": birds, "squawk": birds,
        "coo": span("Pigeon, dove", "Coo"), "caw": span("Crow", "Caw"), "hoot": span("Owl", "Hoot"),
        "croak": span("Frog", "Croak"), "buzz": span("Insect", "Buzz") | L("Buzzer", "Hum"),
        # nature, vehicles, things
        "water": water, "rain": span("Thunderstorm", "Rain on surface") - L("Thunder"),
        "rainfall": span("Rain", "Rain on surface"), "thunder": L("Thunderstorm", "Thunder"),
        "storm": L("Thunderstorm", "Thunder", "Wind"),
        "wind": L("Wind", "Rustling leaves", "Wind noise (microphone)"),
        "sea": L("Ocean", "Waves, surf"), "wave": L("Ocean", "Waves, surf"),
        "river": L("Stream", "Waterfall"), "fire": L("Fire", "Crackle"),
        # sounds of a source, supported by the source
        **dict.fromkeys(("splash", "splatter", "drip", "pour", "trickle", "dribble", "gush",
                         "slosh", "spray", "gurgle", "gurgling", "bubble", "bubbling"),
                        water),
        "crackle": L("Crackle", "Fire", "Sizzle", "Frying (food)") | noise,
        "clink": L("Chink, clink", "Glass", "Cutlery, silverware", "Dishes, pots, and pans"),
        "chink": L("Chink, clink", "Glass", "Cutlery, silverware", "Dishes, pots, and pans"),
        "shatter": L("Shatter", "Glass", "Breaking", "Smash, crash"),
        "boom": span("Explosion", "Boom") | L("Thunder", "Thunderstorm"),
        "knock": L("Knock") | span("Door", "Slam"), "slam": span("Door", "Slam"),
        "whistle": L("Whistle", "Steam whistle", "Train whistle", "Whistling", "Wind"),
        "vehicle": vehicles,
        "traffic": span("Motor vehicle (road)", "Traffic noise, roadway noise"),
        "car": span("Car", "Race car, auto racing") | L("Police car (siren)",
                                                        "Motor vehicle (road)"),
        "engine": engines, "motor": engines,
        "plane": span("Aircraft", "Fixed-wing aircraft, airplane"),
        "airplane": span("Aircraft", "Fixed-wing aircraft, airplane"),
        "aeroplane": span("Aircraft", "Fixed-wing aircraft, airplane"),
        "jet": L("Jet engine", "Aircraft", "Fixed-wing aircraft, airplane"),
        "boat": span("Boat, Water vehicle", "Ship"),
        "railway": span("Rail transport", "Subway, metro, underground"),
        "siren": L("Siren", "Civil defense siren", "Police car (siren)", "Ambulance (siren)",
                   "Fire engine, fire truck (siren)", "Emergency vehicle"),
        "police": L("Police car (siren)", "Emergency vehicle"),
        "alarm": L("Alarm", "Car alarm", "Alarm clock", "Smoke detector, smoke alarm",
                   "Fire alarm", "Siren", "Civil defense siren", "Buzzer"),
        "bell": span("Bell", "Change ringing (campanology)") | L(
            "Doorbell", "Telephone bell ringing", "Cowbell", "Tubular bells", "Ding-dong"),
        "phone": span("Telephone", "Busy signal") | {"A:narrowband"},
        "telephone": span("Telephone", "Busy signal") | {"A:narrowband"},
        "ring": span("Telephone", "Busy signal") | L("Doorbell", "Ding-dong", "Bell"),
        "gun": span("Gunshot, gunfire", "Cap gun"), "gunshot": span("Gunshot, gunfire", "Cap gun"),
        "firework": L("Fireworks", "Firecracker"), "door": span("Door", "Slam") | L(
            "Cupboard open or close", "Drawer open or close", "Knock"),
        "clock": span("Clock", "Tick-tock") | L("Alarm clock"),
        "typing": L("Typing", "Typewriter", "Computer keyboard"),
        "kitchen": span("Dishes, pots, and pans", "Blender"),
        # acoustics
        "noise": noise, "noisy": noise, "hiss": noise | L("Hiss", "Steam", "Snake"),
        "reverb": L("Reverberation", "Echo", "Inside, large room or hall") | {"A:reverb"},
        "reverberation": L("Reverberation", "Echo") | {"A:reverb"},
        "reverberant": L("Reverberation", "Echo") | {"A:reverb"},
        "echo": L("Reverberation", "Echo") | {"A:reverb"},
        "echoing": L("Reverberation", "Echo") | {"A:reverb"},
        "echoey": L("Reverberation", "Echo") | {"A:reverb"},
        "clipping": L("Distortion") | {"A:clipping"}, "clipped": L("Distortion") | {"A:clipping"},
        "distortion": L("Distortion") | {"A:clipping"},
        "distorted": L("Distortion") | {"A:clipping"},
        "silence": L("Silence") | {"A:silence"}, "silent": L("Silence") | {"A:silence"},
    }
    return {k: frozenset(v) for k, v in table.items()}


def _aliases(label: str) -> list[str]:
    """``"Chuckle, chortle"`` -> ``["chuckle", "chortle"]``; ``"Whimper (dog)"`` ->
    ``["whimper"]``; the full name too when it has commas (``"dishes, pots, and pans"``)."""
    base = re.sub(r"\s*\([^)]*\)", "", label).strip()
    names = [n.strip() for n in base.split(",") if n.strip()]
    names = [n[4:] if n.startswith("and ") else n for n in names if n != "etc."]
    return names + ([base] if len(names) > 1 else [])


@functools.cache
def vocabulary() -> dict[tuple[str, ...], frozenset[str]]:
    """Checked term (normalized word tuple) -> the support keys any one of which allows it."""
    from midashenglm.curation.ontology import audioset_labels

    terms: dict[tuple[str, ...], set[str]] = defaultdict(set)
    unchecked = {phrase_key(p) for p in UNCHECKED}
    for label in audioset_labels():
        if label in _SCENES:
            continue
        for alias in _aliases(label):
            key = phrase_key(alias)
            if key and key not in unchecked:
                terms[key].add(f"L:{label}")
    # a multi-word name supports its head when the head is itself a class name
    for key, keys in list(terms.items()):
        head = key[-1:]
        if len(key) > 1 and head in terms and key not in _NO_HEAD:
            terms[head] |= keys
    for phrase, keys in _groups().items():
        terms[phrase_key(phrase)] |= keys
    # "whistling" and "whistle", "clapping" and "clap": one term, whichever the text uses
    for key in list(terms):
        if len(key) == 1:
            for stem in _ing_stems(key[0]):
                if (stem,) in terms:
                    merged = terms[key] | terms[(stem,)]
                    terms[key] = terms[(stem,)] = merged
    for code, names in LANGUAGES.items():
        for name in names:
            key = phrase_key(name)
            if key != ("latin",):
                terms[key].add(f"LANG:{code}")
    neutral = set(unchecked)
    for first, last in _NEUTRAL_SPANS:
        for label in _labels_between(first, last):
            neutral |= {phrase_key(alias) for alias in _aliases(label)}
    for key in list(terms):  # "clattering", "banging", "tapping" with their stems
        if len(key) == 1 and any((stem,) in neutral for stem in _ing_stems(key[0])):
            neutral.add(key)
    for key in neutral:
        terms[key] = {_ANY}
    return {k: frozenset(v) for k, v in terms.items()}


@functools.cache
def _vocabulary_words() -> frozenset[str]:
    return frozenset(w for key in vocabulary() for w in key)


@functools.cache
def _max_len() -> int:
    return max(len(k) for k in vocabulary())


# --------------------------------------------------------------------------- counts
_NUMBERS = {"one": 1, "single": 1, "lone": 1, "two": 2, "pair": 2, "couple": 2, "both": 2,
            "duo": 2, "three": 3, "trio": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12}
_SEVERAL = {"several", "multiple", "many", "numerous", "various", "few", "group", "number",
            "lot", "plenty", "dozens", "handful", "some"}
_PEOPLE = {"person", "people", "speaker", "voice", "man", "woman", "individual", "talker",
           "child", "kid", "boy", "girl", "adult", "narrator", "guy", "lady", "gentleman",
           "participant", "host", "presenter", "caller"}
# Nouns for one person, as in "a man and a woman" (not "voice": "a voice and music").
_PERSONS = {"person", "man", "woman", "boy", "girl", "child", "kid", "guy", "lady",
            "gentleman", "speaker", "adult"}
# "some" only counts with a plural noun ("some people"); "a few" likewise.
_PLURAL_ONLY = {"some", "few", "number"}


def _count_claims(toks: list[str]) -> list[tuple[str, str]]:
    """``(surface text, claim)`` for each count in the text; claim is ``"n"`` or ``"2+"``."""
    claims: list[tuple[str, str]] = []
    n = len(toks)
    for i, tok in enumerate(toks):
        word = tok.lower()
        value: str | None = None
        if word in _NUMBERS:
            value = str(_NUMBERS[word])
        elif word.isdigit() and 0 < int(word) < 100:
            value = word
        elif word in _SEVERAL:
            value = "2+"
        if value is None:
            continue
        # "one of the speakers" is no count; "a couple of people" and "a group of voices" are
        nxt = toks[i + 1] if i + 1 < n else ""
        if nxt == "of" and word not in ("couple", "pair", "group", "number", "lot", "plenty",
                                        "dozens", "handful", "dozen"):
            continue
        for j in range(i + 1, min(i + 4, n)):
            t = toks[j]
            if t in _PUNCT or t in ("and", "or", "but", "with", "while"):
                break
            noun = normalize(t)
            if noun in _PEOPLE or (noun == "man" and t in ("men",)):
                if word in _PLURAL_ONLY and t == noun and t not in ("people",):
                    break  # "some person" is no count
                claims.append((" ".join(toks[i:j + 1]), value))
                break
    # "a man and a woman", "a boy and a girl": two people
    for i, tok in enumerate(toks):
        if normalize(tok) not in _PERSONS or i + 2 >= n or toks[i + 1] != "and":
            continue
        j = i + 2
        if toks[j] in ("a", "an", "one", "another", "the"):
            j += 1
        for k in (j, j + 1):  # the noun, or one adjective then the noun
            if k >= n or toks[k] in _PUNCT:
                break
            second = toks[k]
            if normalize(second) in _PERSONS:
                plural = tok != normalize(tok) or second != normalize(second)
                start = i - 1 if i > 0 and toks[i - 1] in ("a", "an", "one") else i
                claims.append((" ".join(toks[start:k + 1]), "2+" if plural else "2"))
                break
    return claims


def _count_supported(claim: str, facts: ClipFacts, keys: frozenset[str]) -> bool:
    if claim == "2+":
        return (facts.num_speakers or 0) >= 2 or "NUM:2+" in keys or any(
            k in keys for k in _groups()["crowd"])
    return facts.num_speakers is not None and facts.num_speakers == int(claim)


# --------------------------------------------------------------------------- the check
@dataclass(frozen=True)
class GroundingReport:
    """``ok``: nothing unsupported. ``unsupported``: the terms (as they appear in the text,
    lower-case, first occurrence order) no fact supports. ``checked``: every vocabulary term
    and count found (supported or not)."""

    ok: bool
    unsupported: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "unsupported": list(self.unsupported),
                "checked": list(self.checked)}


def support_keys(facts: ClipFacts) -> frozenset[str]:
    """The support keys the facts grant (see :func:`vocabulary`)."""
    keys = {f"L:{label}" for label in facts.sound_labels}
    keys |= {f"L:{label}" for label in (*facts.genres, *facts.instruments)}
    if facts.speech:
        keys.add("G:speech")
    if facts.music:
        keys.add("G:music")
    if facts.singing:
        keys.add("G:singing")
    words = dict(facts.acoustics)
    if words.get("noise") in ("some background noise", "noisy"):
        keys.add("A:noise")
    if words.get("reverb") in ("reverberant", "very reverberant"):
        keys.add("A:reverb")
    if words.get("clipping"):
        keys.add("A:clipping")
    if words.get("bandwidth", "").startswith("narrow-band"):
        keys.add("A:narrowband")
    if words.get("silence"):
        keys.add("A:silence")
    if facts.language:
        keys.add(f"LANG:{facts.language}")
        if facts.language in ("jw", "jv"):
            keys |= {"LANG:jw", "LANG:jv"}
    if facts.gender:
        keys.add(f"GENDER:{facts.gender}")
    if facts.age and any(w in facts.age for w in ("child", "kid", "baby", "infant", "toddler")):
        keys.add("AGE:child")
    if (facts.num_speakers or 0) >= 2:
        keys.add("NUM:2+")
    return frozenset(keys)


def _free_words(facts: ClipFacts) -> frozenset[str]:
    """Words a caption may use whatever the vocabulary says: what is said, emotion, age."""
    text = " ".join(x for x in (facts.transcript, facts.emotion, facts.age) if x)
    return frozenset(normalize(t) for t in tokens(text) if t not in _PUNCT) if text else frozenset()


def _negated(toks: list[str], i: int) -> bool:
    for j in range(i - 1, max(i - 4, -1), -1):
        t = toks[j]
        if t in _CLAUSE_BREAKS:
            return False
        if t in _NEGATORS or t.endswith("n't"):
            return True
    return False


def _forms(tok: str) -> list[str]:
    """The word and its ``-ing`` stems (``barking`` -> ``bark``)."""
    norm = normalize(tok)
    return [norm, *_ing_stems(norm)]


def find_terms(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(start token, end token, term)`` of each vocabulary term, longest match first."""
    vocab, toks = vocabulary(), tokens(text)
    found, i, n = [], 0, len(toks)
    while i < n:
        if toks[i] in _PUNCT:
            i += 1
            continue
        match = None
        for length in range(min(_max_len(), n - i), 0, -1):
            window = toks[i:i + length]
            if any(t in _PUNCT for t in window):
                continue
            # inflections only on the last word: multi-word names vary at their end
            head = tuple(normalize(t) for t in window[:-1])
            for last in _forms(window[-1]):
                if head + (last,) in vocab:
                    match = (i, i + length, head + (last,))
                    break
            if match:
                break
        if match:
            found.append(match)
            i = match[1]
        else:
            i += 1
    return found


def check(text: str, facts: ClipFacts) -> GroundingReport:
    """Which sounds, instruments, languages, genders and counts ``text`` names that ``facts``
    do not support. Never raises; an empty text is trivially grounded."""
    vocab, toks = vocabulary(), tokens(text)
    keys, free = support_keys(facts), _free_words(facts)
    checked: list[str] = []
    unsupported: list[str] = []
    for start, end, term in find_terms(text):
        if _ANY in vocab[term]:
            continue
        surface = " ".join(toks[start:end])
        checked.append(surface)
        if _negated(toks, start):
            continue
        if vocab[term] & keys or all(w in free for w in term):
            continue
        unsupported.append(surface)
    for surface, claim in _count_claims(toks):
        checked.append(surface)
        if _count_supported(claim, facts, keys) or all(
                normalize(w) in free for w in surface.split()):
            continue
        unsupported.append(surface)
    return GroundingReport(ok=not unsupported, unsupported=_unique(unsupported),
                           checked=_unique(checked))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
