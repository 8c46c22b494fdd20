#!/usr/bin/env bash
# Full-size speed comparison on one GPU: MiDashengLM-7B (Dasheng-0.6B + Qwen2.5-Omni-7B
# text decoder) against the Qwen2.5-Omni-style baseline (Whisper-large-v3 encoder, same
# decoder), bf16, random weights; our engine against plain transformers; achieved FLOP/s
# against the GPU's measured matmul peak. Target: under 8 minutes on one H100 (80 GB).
#
# Two steps:
#   1. Here, with network (PyPI):   scripts/bench_gpu.sh --prepare
#      downloads the transformers wheel this project is developed against into .whl/
#      (the GPU image has an older transformers and no way to fetch packages).
#   2. On the GPU machine, from the repository root (with the session's device tool:
#      run(command="bash scripts/bench_gpu.sh", carry=[".whl"], timeout_s=600)):
#                                   bash scripts/bench_gpu.sh [OUT_DIR]
#      writes report.md, report.json, the plots and log.txt to OUT_DIR (default: $OUT when
#      the device tool sets it, else docs/bench-gpu). Extra arguments after OUT_DIR go to
#      `midashenglm bench all`.
#
# The audio-decoding libraries (PyAV, soundfile, soxr) are not needed: the benchmark feeds
# 16 kHz arrays. Where they are missing the script puts stand-ins on the path that fail
# loudly if anything tries to decode a file.
set -euo pipefail
cd "$(dirname "$0")/.."

TRANSFORMERS_VERSION=5.24.0

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform any \
        -d .whl "transformers==${TRANSFORMERS_VERSION}"
    ls -la .whl
    exit 0
fi

OUT_DIR="${OUT:-docs/bench-gpu}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    OUT_DIR="$1"
    shift
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/midashenglm-site
mkdir -p "$SITE"

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
fi
for module in av soundfile soxr; do
    if ! PYTHONPATH="$SITE" python3 -c "import $module" 2>/dev/null; then
        cat > "$SITE/$module.py" <<EOF
"""Stand-in written by scripts/bench_gpu.sh: the benchmark never decodes audio files."""
def __getattr__(name):
    raise ImportError("$module is not installed on this machine (bench_gpu.sh stand-in)")
EOF
    fi
done
export PYTHONPATH="$SITE:$PWD/src"

{
    echo "== $(date -u) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT_DIR/log.txt"

# Settings sized for < 8 minutes on an H100 (model build ~0.5 min, the rest ~6 min); the
# time budget skips, and reports as skipped, whatever has not started after 390 s.
start=$(date +%s)
set +e
timeout 470 python3 -m midashenglm.bench all \
    --scale full --device cuda --dtype bfloat16 \
    --repeats 2 --warmup 1 \
    --batch-sizes 1,2,4,8,16,32,64,128,256,512 \
    --mixed-requests 128 --mixed-batch 32 \
    --time-budget-s 390 \
    --out "$OUT_DIR" "$@" 2>&1 | tee -a "$OUT_DIR/log.txt"
status=${PIPESTATUS[0]}
set -e
echo "== exit status $status, wall time $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/log.txt"
exit "$status"
