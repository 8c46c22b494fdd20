#!/usr/bin/env bash
# Regenerate the default model's corpus and retrain it, end to end (docs/default-model.md):
#   corpus (data synth) -> labels (curate) -> task samples (data tasks) -> init -> MAE encoder
#   pretraining -> probe against the random start -> align -> sft -> pack -> held-out scores.
# Run from the repository root after `make install system-deps`: bash scripts/train_default_model.sh
# About 3 h on a 2-core CPU (the corpus ~45 min, curation ~30 min, training ~1.5 h); each step is
# resumable or skipped when its output exists, so a rerun continues where it stopped.
# Settings: HOURS (corpus hours per half, two halves made in parallel), CURATE (clips curated),
# STEPS_MAE/STEPS_ALIGN/STEPS_SFT, PACK_OUT (default: the package folder, what a wheel ships).
set -euo pipefail
export HF_HUB_OFFLINE=1
BIN=${BIN:-.venv/bin}
HOURS=${HOURS:-10.5}
CURATE=${CURATE:-500}
HELDOUT_CLIPS=${HELDOUT_CLIPS:-300}
STEPS_MAE=${STEPS_MAE:-120}
STEPS_ALIGN=${STEPS_ALIGN:-120}
STEPS_SFT=${STEPS_SFT:-450}
CORPUS=out/corpus
DATA=out/default/data
mkdir -p "$DATA"
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "corpus: 2 x $HOURS h of training clips, $HELDOUT_CLIPS held-out clips"
"$BIN/midashenglm" data synth --out "$CORPUS/train" --split train --hours "$HOURS" --seed 0 & first=$!
"$BIN/midashenglm" data synth --out "$CORPUS/train-b" --split train --hours "$HOURS" --seed 2 & second=$!
wait "$first"; wait "$second"  # each status: a failed half stops the script (set -e)
"$BIN/midashenglm" data synth --out "$CORPUS/heldout" --split heldout --clips "$HELDOUT_CLIPS" --seed 1

step "labels: general captions and QA by the curation pipeline ($CURATE training clips, 100 held-out)"
head -n "$CURATE" "$CORPUS/train/manifest.jsonl" > "$CORPUS/train/curate-input.jsonl"
OMP_NUM_THREADS=1 "$BIN/midashenglm" curate "$CORPUS/train/curate-input.jsonl" --out "$CORPUS/train-cur" --writer template
head -n 100 "$CORPUS/heldout/manifest.jsonl" > "$CORPUS/heldout/curate-input.jsonl"
OMP_NUM_THREADS=1 "$BIN/midashenglm" curate "$CORPUS/heldout/curate-input.jsonl" --out "$CORPUS/heldout-cur" --writer template

step "task samples from the corpus truth"
TRAIN=("$CORPUS/train" "$CORPUS/train-b")
# align: what the clip holds (speech content, the sound, the instrument, who speaks, in what language)
"$BIN/midashenglm" data tasks "${TRAIN[@]}" --out "$DATA/align-tasks.jsonl" --per-clip 2 \
    --tasks transcription,sound,instrument,language,gender
# sft: every task, in three manifests that configs/default/sft.yaml weighs (short answers most)
"$BIN/midashenglm" data tasks "${TRAIN[@]}" --out "$DATA/sft-short.jsonl" \
    --tasks gender,language,sound,instrument,instrument-family,category
"$BIN/midashenglm" data tasks "${TRAIN[@]}" --out "$DATA/sft-transcription.jsonl" --tasks transcription
"$BIN/midashenglm" data tasks "${TRAIN[@]}" --out "$DATA/sft-other.jsonl" --per-clip 1 --seed 1 \
    --tasks tempo,key,reverberant,band-limited,clipped,noisy
# the encoder probe: the six categories of the held-out clips
"$BIN/python" - "$CORPUS/heldout/manifest.jsonl" "$DATA/probe-category.jsonl" <<'PY'
import json, pathlib, sys
src, out = map(pathlib.Path, sys.argv[1:])
rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
out.write_text("".join(json.dumps({"audio": str((src.parent / r["audio"]).resolve()), "label": r["category"]}) + "\n"
                       for r in rows))
PY

step "the starting model: small Dasheng encoder + SmolLM2-135M-Instruct"
if [ ! -f out/default/init/config.json ]; then
    GGUF_DIR=$("$BIN/python" -c "from midashenglm.curation.writers.local import resolve_model; print(resolve_model('smollm2')[0])")
    "$BIN/midashenglm" init --encoder small --decoder-weights "$GGUF_DIR" \
        --decoder-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out out/default/init
fi

train() {  # CONFIG STEPS: a stage, continued with --resume when its run exists
    local run
    run=runs/default/$(basename "$1" .yaml)
    if [ -f "$run/model/config.json" ]; then echo "$run/model exists: skipped"; return; fi
    if [ -d "$run/checkpoints" ]; then
        "$BIN/midashenglm" train "$1" "training.max_steps=$2" --resume
    else
        "$BIN/midashenglm" train "$1" "training.max_steps=$2"
    fi
}
step "MAE encoder pretraining"
train configs/default/mae.yaml "$STEPS_MAE"
step "probe: MAE encoder against the random start (sound category of held-out clips)"
"$BIN/midashenglm" probe --encoder out/default/init --data "$DATA/probe-category.jsonl" --task random-start
"$BIN/midashenglm" probe --encoder runs/default/mae/model --data "$DATA/probe-category.jsonl" --task mae
step "align"
train configs/default/align.yaml "$STEPS_ALIGN"
step "sft"
train configs/default/sft.yaml "$STEPS_SFT"   # the shipped model: step 350 of this schedule (docs/default-model.md)
step "pack"
"$BIN/midashenglm" default-model pack runs/default/sft ${PACK_OUT:+--out "$PACK_OUT"}
step "held-out scores"
MIDASHENGLM_DEFAULT_MODEL_DIR=${PACK_OUT:-} "$BIN/python" scripts/eval_default_model.py \
    --corpus "$CORPUS/heldout" --captions "$CORPUS/heldout-cur" --out docs/default-model
