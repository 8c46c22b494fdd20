"""Speech with known truth: text, language, voice and the voice's gender, from offline sources.

Sources (all free, all installable from Debian):

- ``"espeak-ng"``: formant synthesis (`espeak-ng <https://github.com/espeak-ng/espeak-ng>`_)
  for en (``en-us``), de, fr (``fr-fr``), es and it. A voice is a language voice plus a
  variant. The gender of each variant is the one declared in espeak-ng's own variant files
  (``espeak-ng --voices=variant``): the plain language voices and ``+m1`` ... ``+m7`` are male,
  ``+f1`` ... ``+f5`` are female. See :data:`ESPEAK_VARIANTS`.
- ``"flite"``: CMU Flite's built-in English voices (``flite -lv``): ``slt`` (CMU ARCTIC speaker
  SLT, female), ``rms``, ``awb`` and ``kal16`` (male). See :data:`FLITE_VOICES`.
- ``"asterisk"``: real recordings of English telephone prompts by Allison Smith (female; named
  in ``/usr/share/doc/asterisk-core-sounds-en/copyright``), Debian packages
  ``asterisk-core-sounds-en`` (transcripts, ``core-sounds-en.txt.gz``, one ``name: text`` a
  line) and ``asterisk-core-sounds-en-g722`` (16 kHz G.722 audio, decoded with PyAV).

Splits: a built-in sentence belongs to the split :func:`~.base.split_of` gives its English
original (a translation stays with the sentence it translates, so no meaning crosses splits);
an Asterisk prompt to the split of its transcript; voices are split by hand in
:data:`ESPEAK_VARIANTS` and :data:`FLITE_VOICES`, each split keeping both genders where the
source has them, so held-out speech also has voices that training never heard. The single
Asterisk voice is in both splits.

Every sample lasts :data:`MIN_SECONDS` to :data:`MAX_SECONDS` (short audio is padded with
silence at the end) and is 16 kHz mono float32 peak-normalised to 0.5.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from midashenglm.data.synth.base import RATE, Speech, Split, normalise, split_of
from midashenglm.errors import UserError

MIN_SECONDS = 1.0
MAX_SECONDS = 12.0
LANGUAGES = ("en", "de", "fr", "es", "it")
SOURCES = ("espeak-ng", "flite", "asterisk")
# Relative odds of each source for English (other languages are espeak-ng only).
SOURCE_WEIGHTS = {"espeak-ng": 0.4, "flite": 0.3, "asterisk": 0.3}

# ISO 639-1 -> espeak-ng language voice.
ESPEAK_LANGUAGES = {"en": "en-us", "de": "de", "fr": "fr-fr", "es": "es", "it": "it"}
# Variant ("" = the language voice itself) -> (gender, split); genders as espeak-ng declares.
ESPEAK_VARIANTS: dict[str, tuple[str, Split]] = {
    "": ("male", "train"),
    "m1": ("male", "train"),
    "m2": ("male", "train"),
    "m3": ("male", "train"),
    "m7": ("male", "train"),
    "m4": ("male", "heldout"),
    "f1": ("female", "train"),
    "f2": ("female", "train"),
    "f3": ("female", "train"),
    "f4": ("female", "train"),
    "f5": ("female", "heldout"),
}
# espeak-ng speaking rate, words per minute, drawn uniformly in [low, high).
ESPEAK_WPM = (140, 190)
# Flite voice -> (gender, split). Flite has one female voice, so it stays in training.
FLITE_VOICES: dict[str, tuple[str, Split]] = {
    "slt": ("female", "train"),
    "rms": ("male", "train"),
    "kal16": ("male", "train"),
    "awb": ("male", "heldout"),
}
# Flite duration_stretch (1 = the voice's own rate), drawn uniformly in [low, high).
FLITE_STRETCH = (0.9, 1.15)

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_VOICE = "allison-smith"
ASTERISK_GENDER = "female"
G722_BYTES_PER_SECOND = 8000  # G.722 codes 16 kHz audio at 64 kbit/s

# Everyday English sentences, written for this corpus.
SENTENCES_EN: tuple[str, ...] = (
    "The kettle is boiling in the kitchen.",
    "Please close the window before you leave.",
    "I left my keys on the table by the door.",
    "The bus was ten minutes late this morning.",
    "Could you pass me the salt, please?",
    "We are going to the beach on Saturday.",
    "My sister works at the hospital downtown.",
    "The dog is sleeping under the stairs.",
    "It looks like it is going to rain today.",
    "Turn left at the next traffic light.",
    "I forgot to buy milk at the shop.",
    "The meeting starts at half past nine.",
    "Do you know where the train station is?",
    "She reads a book every night before bed.",
    "The children are playing in the garden.",
    "Let us have dinner together on Friday.",
    "This coffee is much too hot to drink.",
    "He plays the guitar in a small band.",
    "The library closes early on Sundays.",
    "I need a new pair of running shoes.",
    "Can you help me carry these boxes upstairs?",
    "The flowers in the park are blooming.",
    "We watched a funny film last night.",
    "The printer on the second floor is broken.",
    "Remember to water the plants tomorrow.",
    "My phone battery is almost empty.",
    "There is a cat sitting on the roof.",
    "The soup needs a little more pepper.",
    "Our neighbours are painting their fence.",
    "I usually walk to work when it is sunny.",
    "The shop on the corner sells fresh bread.",
    "Please speak a little more slowly.",
    "We missed the last train and took a taxi.",
    "The baby finally fell asleep.",
    "How much does this jacket cost?",
    "The river is very high after the storm.",
    "I have an appointment with the dentist.",
    "They moved to a bigger flat last year.",
    "The lights went out during the concert.",
    "Wash your hands before you eat.",
    "The weather will be cold and windy tomorrow.",
    "My grandfather grows tomatoes in his garden.",
    "I would like a glass of water, please.",
    "The museum is open until six o'clock.",
    "She sent me a letter from Italy.",
    "Our flight was delayed by two hours.",
    "The students are waiting outside the classroom.",
    "Put the milk back in the fridge.",
    "The road is closed because of the snow.",
    "I think I left the oven on.",
    "He runs five kilometres every morning.",
    "Let me know when you get home.",
    "The apples on this tree are still green.",
    "We need more chairs for the guests.",
    "The clock in the hall is five minutes fast.",
    "I cannot find my glasses anywhere.",
    "The market is busy on Saturday mornings.",
    "She is learning to speak Japanese.",
    "The elevator is out of order again.",
    "Could you turn the music down a little?",
    "The mountains are covered in snow.",
    "I will call you back in ten minutes.",
    "The car needs new tyres before winter.",
    "My brother is a teacher in a small village.",
    "There are too many people on this bus.",
    "The cake will be ready in twenty minutes.",
    "Please sign your name at the bottom.",
    "The birds are singing outside my window.",
    "I bought a map of the old town.",
    "The hotel room has a view of the sea.",
    "We should leave early to avoid the traffic.",
    "The kids built a snowman in the yard.",
    "His office is on the third floor.",
    "I prefer tea to coffee in the evening.",
    "The concert tickets sold out in an hour.",
    "Someone is knocking at the front door.",
    "The pasta is cooked, so drain the water.",
    "She painted the kitchen bright yellow.",
    "The waiter brought us the wrong order.",
    "I am looking for a quiet place to study.",
    "The bridge was built more than a century ago.",
    "Do not forget your umbrella.",
    "My laptop is making a strange noise.",
    "They are building a new school near here.",
    "The tea is getting cold on the table.",
    "We had a picnic by the lake.",
    "The post office is next to the bank.",
    "I have lost my ticket somewhere.",
    "The wind blew the leaves across the street.",
    "The doctor told me to rest for a week.",
    "He always sings in the shower.",
    "The pharmacy opens at eight in the morning.",
    "I can hear the neighbours talking.",
    "The film starts at a quarter to eight.",
    "Please remember to lock the back door.",
    "Our team won the match on Sunday.",
    "She keeps her bicycle in the garage.",
    "The bread is still warm from the oven.",
    "I want to learn how to swim this summer.",
    "The town hall clock struck twelve.",
    "The fridge is almost empty again.",
    "There is a long queue at the bakery.",
    "My cousin is getting married in June.",
    "The train to the airport leaves every hour.",
    "We planted three trees behind the house.",
    "He forgot his wallet at the restaurant.",
    "The sky is very clear tonight.",
    "Could you repeat the question, please?",
    "The shoes are too small for me.",
    "The garden gate is open again.",
    "I will meet you in front of the cinema.",
    "She drinks a cup of green tea every afternoon.",
    "The boat sails at dawn tomorrow.",
    "The phone rang twice and then stopped.",
    "We are out of sugar and flour.",
    "The football pitch is wet and muddy.",
    "I like to read the newspaper on the train.",
    "The heating does not work in the bedroom.",
    "They are having a party next weekend.",
    "The path through the forest is very narrow.",
    "Please write down your phone number.",
    "My cat likes to sleep in the sun.",
    "The soup smells delicious.",
    "I am going to the gym after work.",
    "The old man fed the pigeons in the square.",
    "The floor is slippery, so be careful.",
    "She is wearing a red coat and a blue scarf.",
    "I need to charge my phone before we go.",
    "We stayed at a small hotel near the station.",
    "The baker starts work at four in the morning.",
    "The window in the bathroom will not open.",
    "The nurse called my name twice.",
    "He fixed the bicycle in less than an hour.",
    "I usually go shopping on Thursday evenings.",
    "The lake freezes over in January.",
    "Please keep the noise down after ten.",
    "The sandwiches are in the blue bag.",
    "I am sorry, I did not hear you.",
    "The teacher wrote the answer on the board.",
    "There is a spider in the bathtub.",
    "The street lamps come on at dusk.",
    "My uncle drives a big green truck.",
    "The cinema is showing an old western tonight.",
    "I made a cake for your birthday.",
    "The tap in the kitchen is dripping.",
    "The farmer is feeding the chickens.",
    "We sat on the balcony and watched the sunset.",
    "Please wait here until your name is called.",
    "The printer has run out of paper.",
    "The orange juice is on the top shelf.",
    "She plays the piano beautifully.",
    "We are going camping in the mountains.",
    "I think the shop is closed today.",
    "The children laughed at the clown.",
    "My watch stopped in the middle of the night.",
    "The neighbours' dog barks at the postman.",
    "The soup is too salty for my taste.",
    "I left the umbrella on the train.",
    "The restaurant was full, so we went home.",
    "This is the best pizza in town.",
    "He speaks three languages fluently.",
    "The ice cream melted in the sun.",
    "Please put your bags under the seat.",
    "The library has thousands of old books.",
    "The rain stopped just before noon.",
    "My friend lives on the other side of the river.",
    "Your coffee is ready on the counter.",
    "The shop assistant was very helpful.",
    "I would like to book a table for two.",
    "The ferry crosses the bay every morning.",
    "The kitten is playing with a ball of wool.",
    "We need to buy a present for grandma.",
    "The roof is leaking in the attic.",
    "The museum has a new dinosaur exhibit.",
    "I am going to bed early tonight.",
    "The bank is closed on public holidays.",
    "The vegetables are fresh from the farm.",
    "Can I borrow your pen for a moment?",
    "The bus stop is just around the corner.",
    "He fell asleep in front of the television.",
    "The music at the wedding was wonderful.",
    "It is too dark to read in here.",
    "The mail arrives around eleven every day.",
    "She washed the dishes and dried them.",
    "The park is full of people on sunny days.",
    "I have two brothers and one sister.",
    "The candles on the table are burning low.",
    "We walked along the beach at sunrise.",
    "The keys are hanging by the front door.",
    "My neighbour is moving away next month.",
    "The supermarket is open twenty four hours.",
    "Please check the tyres before the long drive.",
    "The stars are shining brightly tonight.",
    "I am sure we have met before.",
    "The plane landed safely in the fog.",
    "Our garden is full of butterflies in summer.",
)
# (de, fr, es, it) translations of the first len(TRANSLATIONS) English sentences.
TRANSLATIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "Der Wasserkocher kocht in der Küche.",
        "La bouilloire chauffe dans la cuisine.",
        "El hervidor está hirviendo en la cocina.",
        "Il bollitore sta bollendo in cucina.",
    ),
    (
        "Bitte schließ das Fenster, bevor du gehst.",
        "Ferme la fenêtre avant de partir, s'il te plaît.",
        "Por favor, cierra la ventana antes de salir.",
        "Per favore, chiudi la finestra prima di uscire.",
    ),
    (
        "Ich habe meine Schlüssel auf dem Tisch an der Tür gelassen.",
        "J'ai laissé mes clés sur la table près de la porte.",
        "Dejé mis llaves en la mesa junto a la puerta.",
        "Ho lasciato le chiavi sul tavolo vicino alla porta.",
    ),
    (
        "Der Bus war heute Morgen zehn Minuten zu spät.",
        "Le bus avait dix minutes de retard ce matin.",
        "El autobús llegó diez minutos tarde esta mañana.",
        "L'autobus era in ritardo di dieci minuti stamattina.",
    ),
    (
        "Könntest du mir bitte das Salz geben?",
        "Tu peux me passer le sel, s'il te plaît?",
        "¿Me pasas la sal, por favor?",
        "Mi passi il sale, per favore?",
    ),
    (
        "Wir fahren am Samstag an den Strand.",
        "Nous allons à la plage samedi.",
        "Vamos a la playa el sábado.",
        "Sabato andiamo al mare.",
    ),
    (
        "Meine Schwester arbeitet im Krankenhaus in der Stadt.",
        "Ma sœur travaille à l'hôpital du centre-ville.",
        "Mi hermana trabaja en el hospital del centro.",
        "Mia sorella lavora all'ospedale in centro.",
    ),
    (
        "Der Hund schläft unter der Treppe.",
        "Le chien dort sous l'escalier.",
        "El perro duerme debajo de la escalera.",
        "Il cane dorme sotto le scale.",
    ),
    (
        "Es sieht so aus, als würde es heute regnen.",
        "On dirait qu'il va pleuvoir aujourd'hui.",
        "Parece que hoy va a llover.",
        "Sembra che oggi pioverà.",
    ),
    (
        "Biegen Sie an der nächsten Ampel links ab.",
        "Tournez à gauche au prochain feu.",
        "Gire a la izquierda en el próximo semáforo.",
        "Giri a sinistra al prossimo semaforo.",
    ),
    (
        "Ich habe vergessen, im Laden Milch zu kaufen.",
        "J'ai oublié d'acheter du lait au magasin.",
        "Olvidé comprar leche en la tienda.",
        "Ho dimenticato di comprare il latte al negozio.",
    ),
    (
        "Die Besprechung beginnt um halb zehn.",
        "La réunion commence à neuf heures et demie.",
        "La reunión empieza a las nueve y media.",
        "La riunione inizia alle nove e mezza.",
    ),
    (
        "Weißt du, wo der Bahnhof ist?",
        "Sais-tu où se trouve la gare?",
        "¿Sabes dónde está la estación de tren?",
        "Sai dov'è la stazione dei treni?",
    ),
    (
        "Sie liest jeden Abend vor dem Schlafen ein Buch.",
        "Elle lit un livre chaque soir avant de dormir.",
        "Ella lee un libro cada noche antes de dormir.",
        "Lei legge un libro ogni sera prima di dormire.",
    ),
    (
        "Die Kinder spielen im Garten.",
        "Les enfants jouent dans le jardin.",
        "Los niños están jugando en el jardín.",
        "I bambini giocano in giardino.",
    ),
    (
        "Lass uns am Freitag zusammen zu Abend essen.",
        "Dînons ensemble vendredi.",
        "Cenemos juntos el viernes.",
        "Ceniamo insieme venerdì.",
    ),
    (
        "Dieser Kaffee ist viel zu heiß zum Trinken.",
        "Ce café est beaucoup trop chaud pour être bu.",
        "Este café está demasiado caliente para beberlo.",
        "Questo caffè è troppo caldo da bere.",
    ),
    (
        "Er spielt Gitarre in einer kleinen Band.",
        "Il joue de la guitare dans un petit groupe.",
        "Él toca la guitarra en una pequeña banda.",
        "Lui suona la chitarra in una piccola band.",
    ),
    (
        "Die Bibliothek schließt sonntags früh.",
        "La bibliothèque ferme tôt le dimanche.",
        "La biblioteca cierra temprano los domingos.",
        "La biblioteca chiude presto la domenica.",
    ),
    (
        "Ich brauche ein neues Paar Laufschuhe.",
        "J'ai besoin d'une nouvelle paire de chaussures de course.",
        "Necesito un par nuevo de zapatillas para correr.",
        "Ho bisogno di un nuovo paio di scarpe da corsa.",
    ),
    (
        "Kannst du mir helfen, diese Kisten nach oben zu tragen?",
        "Peux-tu m'aider à monter ces cartons?",
        "¿Puedes ayudarme a subir estas cajas?",
        "Puoi aiutarmi a portare di sopra queste scatole?",
    ),
    (
        "Die Blumen im Park blühen.",
        "Les fleurs du parc sont en train de fleurir.",
        "Las flores del parque están floreciendo.",
        "I fiori nel parco stanno sbocciando.",
    ),
    (
        "Wir haben gestern Abend einen lustigen Film gesehen.",
        "Nous avons regardé un film drôle hier soir.",
        "Anoche vimos una película divertida.",
        "Ieri sera abbiamo visto un film divertente.",
    ),
    (
        "Der Drucker im zweiten Stock ist kaputt.",
        "L'imprimante du deuxième étage est en panne.",
        "La impresora del segundo piso está rota.",
        "La stampante al secondo piano è rotta.",
    ),
    (
        "Denk daran, morgen die Pflanzen zu gießen.",
        "N'oublie pas d'arroser les plantes demain.",
        "Acuérdate de regar las plantas mañana.",
        "Ricordati di innaffiare le piante domani.",
    ),
    (
        "Der Akku meines Handys ist fast leer.",
        "La batterie de mon téléphone est presque vide.",
        "La batería de mi teléfono está casi vacía.",
        "La batteria del mio telefono è quasi scarica.",
    ),
    (
        "Auf dem Dach sitzt eine Katze.",
        "Il y a un chat assis sur le toit.",
        "Hay un gato sentado en el tejado.",
        "C'è un gatto seduto sul tetto.",
    ),
    (
        "Die Suppe braucht etwas mehr Pfeffer.",
        "La soupe a besoin d'un peu plus de poivre.",
        "A la sopa le falta un poco más de pimienta.",
        "La zuppa ha bisogno di un po' più di pepe.",
    ),
    (
        "Unsere Nachbarn streichen ihren Zaun.",
        "Nos voisins peignent leur clôture.",
        "Nuestros vecinos están pintando su valla.",
        "I nostri vicini stanno dipingendo la loro recinzione.",
    ),
    (
        "Wenn es sonnig ist, gehe ich meistens zu Fuß zur Arbeit.",
        "Quand il fait beau, je vais souvent au travail à pied.",
        "Cuando hace sol, suelo ir andando al trabajo.",
        "Quando c'è il sole, di solito vado al lavoro a piedi.",
    ),
    (
        "Der Laden an der Ecke verkauft frisches Brot.",
        "Le magasin du coin vend du pain frais.",
        "La tienda de la esquina vende pan fresco.",
        "Il negozio all'angolo vende pane fresco.",
    ),
    (
        "Bitte sprich etwas langsamer.",
        "Parle un peu plus lentement, s'il te plaît.",
        "Por favor, habla un poco más despacio.",
        "Per favore, parla un po' più lentamente.",
    ),
    (
        "Wir haben den letzten Zug verpasst und ein Taxi genommen.",
        "Nous avons raté le dernier train et pris un taxi.",
        "Perdimos el último tren y tomamos un taxi.",
        "Abbiamo perso l'ultimo treno e preso un taxi.",
    ),
    (
        "Das Baby ist endlich eingeschlafen.",
        "Le bébé s'est enfin endormi.",
        "El bebé por fin se ha dormido.",
        "Il bambino si è finalmente addormentato.",
    ),
    (
        "Wie viel kostet diese Jacke?",
        "Combien coûte cette veste?",
        "¿Cuánto cuesta esta chaqueta?",
        "Quanto costa questa giacca?",
    ),
    (
        "Der Fluss ist nach dem Sturm sehr hoch.",
        "La rivière est très haute après la tempête.",
        "El río está muy alto después de la tormenta.",
        "Il fiume è molto alto dopo la tempesta.",
    ),
    (
        "Ich habe einen Termin beim Zahnarzt.",
        "J'ai rendez-vous chez le dentiste.",
        "Tengo cita con el dentista.",
        "Ho un appuntamento dal dentista.",
    ),
    (
        "Sie sind letztes Jahr in eine größere Wohnung gezogen.",
        "Ils ont emménagé dans un plus grand appartement l'année dernière.",
        "El año pasado se mudaron a un piso más grande.",
        "L'anno scorso si sono trasferiti in un appartamento più grande.",
    ),
    (
        "Während des Konzerts ging das Licht aus.",
        "Les lumières se sont éteintes pendant le concert.",
        "Las luces se apagaron durante el concierto.",
        "Le luci si sono spente durante il concerto.",
    ),
    (
        "Wasch dir vor dem Essen die Hände.",
        "Lave-toi les mains avant de manger.",
        "Lávate las manos antes de comer.",
        "Lavati le mani prima di mangiare.",
    ),
)


def sentences(language: str, split: Split) -> list[str]:
    """The built-in sentences in ``language`` that belong to ``split`` (keyed by the English
    original, see the module docstring)."""
    if language == "en":
        return [s for s in SENTENCES_EN if split_of(s) == split]
    if language not in LANGUAGES:
        raise UserError(f"no built-in sentences in {language!r}; choose from {LANGUAGES}")
    column = LANGUAGES.index(language) - 1
    pairs = zip(SENTENCES_EN[: len(TRANSLATIONS)], TRANSLATIONS, strict=True)
    return [row[column] for en, row in pairs if split_of(en) == split]


def espeak_voices(split: Split) -> dict[str, str]:
    """espeak-ng variants of ``split`` -> gender ("" is the plain language voice)."""
    return {v: g for v, (g, s) in ESPEAK_VARIANTS.items() if s == split}


def flite_voices(split: Split) -> dict[str, str]:
    """Flite voices of ``split`` -> gender."""
    return {v: g for v, (g, s) in FLITE_VOICES.items() if s == split}


@functools.lru_cache(maxsize=1)
def _asterisk_index() -> tuple[tuple[str, str], ...]:
    """(G.722 path, transcript) of every spoken prompt that lasts MIN..MAX seconds (judged
    from the file size: G.722 is 8000 bytes a second)."""
    out = []
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            text = " ".join(text.split())
            # Skip comments, and "[beep tone]"-style descriptions of non-speech.
            if not sep or line.startswith(";") or not text or "[" in text:
                continue
            path = ASTERISK_DIR / f"{name.strip()}.g722"
            if not path.is_file():
                continue
            seconds = path.stat().st_size / G722_BYTES_PER_SECOND
            if MIN_SECONDS <= seconds <= MAX_SECONDS:
                out.append((str(path), text))
    return tuple(out)


def asterisk_prompts(split: Split) -> list[tuple[str, str]]:
    """(G.722 path, transcript) of the Asterisk prompts in ``split`` (by transcript)."""
    return [(p, t) for p, t in _asterisk_index() if split_of(t) == split]


def available_sources() -> dict[str, str | None]:
    """Each source in :data:`SOURCES` -> None when it works here, else why not."""
    out: dict[str, str | None] = {
        "espeak-ng": None
        if shutil.which("espeak-ng")
        else "espeak-ng is not installed (apt install espeak-ng)",
        "flite": None if shutil.which("flite") else "flite is not installed (apt install flite)",
    }
    reason = None
    try:
        import av  # noqa: F401
    except ImportError:
        reason = "PyAV (av) is not importable, so G.722 cannot be decoded"
    if not ASTERISK_TRANSCRIPTS.is_file():
        reason = f"{ASTERISK_TRANSCRIPTS} is absent (apt install asterisk-core-sounds-en)"
    elif not ASTERISK_DIR.is_dir() or not any(ASTERISK_DIR.glob("*.g722")):
        reason = f"no G.722 prompts in {ASTERISK_DIR} (apt install asterisk-core-sounds-en-g722)"
    elif reason is None and not _asterisk_index():
        reason = "no Asterisk prompt has both a transcript and G.722 audio"
    out["asterisk"] = reason
    return out


def _fit(audio: np.ndarray) -> np.ndarray:
    """Pad ``audio`` (16 kHz) with trailing silence to MIN_SECONDS; peak 0.5."""
    short = int(MIN_SECONDS * RATE) - audio.size
    if short > 0:
        audio = np.concatenate([audio, np.zeros(short, np.float32)])
    return normalise(audio)


def speak_espeak(text: str, language: str, variant: str = "", wpm: int = 175) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``language`` voice (ISO 639-1) with ``variant`` at
    ``wpm`` words per minute, 16 kHz float32."""
    from midashenglm.audio import load_audio

    voice = ESPEAK_LANGUAGES[language] + (f"+{variant}" if variant else "")
    # A file, not --stdout: streamed WAV headers declare a bogus length.
    with tempfile.TemporaryDirectory(prefix="synth-espeak-") as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(int(wpm)), "-w", str(wav)],
            input=text.encode("utf-8"),
            capture_output=True,
            check=True,
            timeout=60,
        )
        return load_audio(wav)


def speak_flite(text: str, voice: str, stretch: float = 1.0) -> np.ndarray:
    """``text`` spoken by Flite's built-in ``voice``, slowed by ``stretch`` (1 = as built),
    16 kHz float32."""
    from midashenglm.audio import load_audio

    with tempfile.TemporaryDirectory(prefix="synth-flite-") as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(text, encoding="utf-8")
        subprocess.run(
            [
                "flite",
                "-voice",
                voice,
                "--setf",
                f"duration_stretch={stretch:.3f}",
                "-f",
                str(txt),
                "-o",
                str(wav),
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return load_audio(wav)


# Odds of each language in a corpus: half English, the rest shared.
LANGUAGE_WEIGHTS = {"en": 4.0, "de": 1.0, "fr": 1.0, "es": 1.0, "it": 1.0}


class SpeechSource:
    """Random spoken sentences of one ``split`` in ``languages``, drawn from the available
    ``sources`` (default: every one that works here, see :func:`available_sources`).

    English mixes espeak-ng, Flite and Asterisk recordings (odds :data:`SOURCE_WEIGHTS`
    among those present); the other languages use espeak-ng. Languages are drawn with the
    odds of :data:`LANGUAGE_WEIGHTS` (English first: its sentences, voices and real
    recordings are the richest, and transcription is scored on it). Raises
    :class:`UserError` when a language would have no source.
    """

    def __init__(
        self,
        split: Split,
        languages: Sequence[str] = LANGUAGES,
        sources: Sequence[str] | None = None,
    ) -> None:
        if split not in ("train", "heldout"):
            raise UserError(f"split must be 'train' or 'heldout', not {split!r}")
        unknown = [x for x in languages if x not in LANGUAGES]
        if unknown or not languages:
            raise UserError(
                f"unsupported languages {unknown or languages}; choose from {LANGUAGES}"
            )
        status = available_sources()
        wanted = list(SOURCES if sources is None else sources)
        bad = [s for s in wanted if s not in SOURCES]
        if bad:
            raise UserError(f"unknown speech sources {bad}; choose from {SOURCES}")
        self.split = split
        self.languages = tuple(languages)
        self.sources = tuple(s for s in wanted if status[s] is None)
        for lang in self.languages:
            if not self._sources_for(lang):
                reasons = "; ".join(f"{s}: {status[s]}" for s in wanted if status[s])
                raise UserError(f"no speech source for {lang!r} in {wanted} ({reasons})")

    def _sources_for(self, language: str) -> list[str]:
        return [s for s in self.sources if s == "espeak-ng" or language == "en"]

    def sample(self, rng: np.random.Generator) -> Speech:
        """One random utterance (language drawn with :data:`LANGUAGE_WEIGHTS`)."""
        weights = np.array([LANGUAGE_WEIGHTS.get(x, 1.0) for x in self.languages])
        language = str(rng.choice(self.languages, p=weights / weights.sum()))
        names = self._sources_for(language)
        odds = np.array([SOURCE_WEIGHTS[s] for s in names])
        return self.sample_from(str(rng.choice(names, p=odds / odds.sum())), rng, language)

    def sample_from(self, source: str, rng: np.random.Generator, language: str = "en") -> Speech:
        """One random utterance of ``source`` in ``language``."""
        if source not in self._sources_for(language):
            raise UserError(f"source {source!r} is unavailable or has no {language!r} speech")
        if source == "asterisk":
            from midashenglm.audio import load_audio

            prompts = asterisk_prompts(self.split)
            path, text = prompts[int(rng.integers(len(prompts)))]
            audio = load_audio(path)[: int(MAX_SECONDS * RATE)]
            return Speech(_fit(audio), text, "en", ASTERISK_VOICE, ASTERISK_GENDER, source)
        pool = sentences(language, self.split)
        text = pool[int(rng.integers(len(pool)))]
        if source == "flite":
            voices = sorted(flite_voices(self.split))
            voice = voices[int(rng.integers(len(voices)))]
            audio = speak_flite(text, voice, float(rng.uniform(*FLITE_STRETCH)))
            gender = FLITE_VOICES[voice][0]
            name = f"flite-{voice}"
        else:
            variants = sorted(espeak_voices(self.split))
            variant = variants[int(rng.integers(len(variants)))]
            audio = speak_espeak(text, language, variant, int(rng.integers(*ESPEAK_WPM)))
            gender = ESPEAK_VARIANTS[variant][0]
            name = ESPEAK_LANGUAGES[language] + (f"+{variant}" if variant else "")
        audio = audio[: int(MAX_SECONDS * RATE)]
        return Speech(_fit(audio), text, language, name, gender, source)
