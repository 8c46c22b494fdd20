"""The evaluation suite: the paper's benchmarks, metrics and result files.

- :mod:`midashenglm.evaluation.results`: the official JSONL result format
  (``read_results``, ``write_row``);
- :mod:`midashenglm.evaluation.metrics`: WER/CER, accuracy, gender accuracy, mAP, closed-QA
  accuracy, FENSE, DATE/MECAT and the COCO captioning metrics;
- :mod:`midashenglm.evaluation.scoring`: ``score_file``, ``score_rows``,
  ``metric_for_dataset``.

Kept free of imports so that ``midashenglm --help`` stays fast.
"""
