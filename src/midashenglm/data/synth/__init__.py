"""``midashenglm data synth``: a general-audio corpus with known truth (speech, sound, music and
their mixtures, with controlled acoustics), from sources that install offline.

``base.py`` holds the shared types and the split rule; ``speech.py``, ``music.py``,
``sounds.py`` are the sources; ``acoustics.py`` mixes, reverberates, band-limits and clips.
"""
