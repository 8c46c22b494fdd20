"""Speed benchmarks: MiDashengLM against a Qwen2.5-Omni-style baseline, our inference
engine against plain ``transformers`` generation, and achieved against peak FLOP/s.

``midashenglm bench ttft|throughput|encoder|memory|all`` (see ``commands.py``) measures
them side by side in one run and writes ``report.md``, ``report.json`` and plots;
``midashenglm bench vllm`` (``vllm.py``, with ``vllm_worker.py`` run in each engine's venv)
puts our engine against vLLM on the same model and requests.

Layout: one module per measurement (``ttft``, ``throughput``, ``memory``, ``encoder``,
``mixed``, ``realistic``) on a shared ``context.Bench``; the machine's limits (matmul
peak, memory bandwidth) in ``peak``; the analytic side in ``costs`` (MACs), ``traffic``
(bytes moved) and ``roofline`` (both, per phase, against the limits); the comparisons,
a pure function of the records, in ``compare``; ``suite`` runs a command's sections and
``report`` lays the result out. Submodules import torch; this package file stays light
so the CLI starts fast.
"""
