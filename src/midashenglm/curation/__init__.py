"""Curation: audio in, general captions and QA pairs out (the paper's ACAVCaps / MECAT pipeline).

``experts/`` analyse a clip (signal measures, VAD, ASR, tagging, speakers...), ``facts.py``
turns their outputs into what a writer may say, ``writers/`` write captions and QA pairs
(template rules, a local instruct model, or any OpenAI-compatible endpoint), ``grounding.py``
rejects what no expert reported, ``categories.py`` and ``consistency.py`` sort and filter,
``pipeline.py`` runs it all locally or on Ray, ``commands.py`` is ``midashenglm curate``.
Docs: docs/curation.md.
"""
