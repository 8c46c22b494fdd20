"""Speed benchmarks: MiDashengLM against a Qwen2.5-Omni-style baseline, our inference
engine against plain ``transformers`` generation, and achieved against peak FLOP/s.

``midashenglm bench ttft|throughput|encoder|memory|all`` (see ``commands.py``) measures
them side by side in one run and writes ``report.md``, ``report.json`` and plots.
Submodules import torch; this package file stays light so the CLI starts fast.
"""
