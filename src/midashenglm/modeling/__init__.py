"""Model code, the bottom layer of the package: it imports nothing from outside ``modeling/``.

``geometry`` (audio-token count), ``config``, ``weights`` (checkpoint files: shards,
key variants, checks), ``frontend``, ``encoder``, ``projector``, and ``model``
(``MiDashengLM``, which loads and saves itself through ``weights``).
"""
