#!/usr/bin/env bash
# Serve a MiDashengLM checkpoint (the published layout, e.g. one saved by this project)
# with vLLM's OpenAI-compatible server, for `midashenglm run ... --endpoint`.
#
#   scripts/serve_vllm.sh CHECKPOINT_DIR_OR_HUB_ID [more vllm serve options...]
#
# Settings (environment): HOST (127.0.0.1: this machine only; 0.0.0.0 to listen on every
# interface), PORT (8000), NAME (midashenglm: the name clients use), DTYPE (bfloat16),
# MAX_MODEL_LEN (8192 tokens; 5 audio tokens per second), MAX_AUDIOS (1 clip per prompt),
# GPU_UTIL (0.90), VLLM_API_KEY or MIDASHENGLM_API_KEY (or API_KEY): passed as --api-key
# when set (unset: no key, anyone who reaches HOST:PORT may call).
#
# Needs vLLM in its own environment (it pins its own torch and transformers; never install it
# into this project's .venv): `pip install vllm` on a CUDA machine, or `make vllm-env` (vLLM's
# CPU build in .venv-vllm, what scripts/check_vllm.py runs; then DTYPE=float32 and
# VLLM_CPU_KVCACHE_SPACE=1). See docs/vllm.md.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CHECKPOINT=$1
shift
command -v vllm >/dev/null || { echo "error: vllm is not on PATH (pip install vllm, in its own venv)" >&2; exit 2; }

extra=()
if [[ -d $CHECKPOINT ]]; then
    [[ -f $CHECKPOINT/config.json ]] || { echo "error: $CHECKPOINT/config.json is missing" >&2; exit 2; }
    # vLLM picks its model class from `architectures`; its MiDashengLMModel builds the decoder
    # as a Qwen2 model, so other decoder families (qwen3, llama) do not load there.
    python3 - "$CHECKPOINT" <<'EOF'
import json, sys
folder = sys.argv[1]
config = json.load(open(f"{folder}/config.json"))
if "MiDashengLMModel" not in config.get("architectures", []):
    sys.exit(f"error: {folder}/config.json: architectures is {config.get('architectures')}, "
             "vLLM serves MiDashengLM as 'MiDashengLMModel'")
text = config.get("text_config", {})
decoder = text.get("model_type", "?")
if decoder not in ("qwen2", "qwen2_5_omni_text", "qwen2_5_omni_thinker"):
    print(f"warning: decoder model_type {decoder!r}: vLLM's MiDashengLMModel builds a Qwen2 "
          "decoder; this checkpoint may not load", file=sys.stderr)
# vLLM's MiDashengLMConfig drops the decoder's rope parameters and its Qwen2 model then uses
# rope_theta 1e6 (the published 7B's value), whatever the checkpoint says.
theta = (text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta"))
if theta is not None and float(theta) != 1e6:
    print(f"warning: the decoder's rope_theta is {theta:g}, but vLLM uses 1e6 for MiDashengLM: "
          "its answers will differ from this project's engine (serve it with `midashenglm serve`)",
          file=sys.stderr)
tok = json.load(open(f"{folder}/tokenizer_config.json")) if __import__("os").path.exists(
    f"{folder}/tokenizer_config.json") else {}
missing = [t for t in ("audio_token", "audio_bos_token", "audio_eos_token") if t not in tok]
if missing:
    print(f"warning: tokenizer_config.json lacks {missing}: vLLM's MiDashengLM processor reads "
          "them from the tokenizer", file=sys.stderr)
EOF
    # The project writes its ChatML template beside the tokenizer; pass it explicitly so that
    # vLLM uses it whatever its transformers version reads by default.
    [[ -f $CHECKPOINT/chat_template.jinja ]] && extra+=(--chat-template "$CHECKPOINT/chat_template.jinja")
fi
key=${VLLM_API_KEY:-${MIDASHENGLM_API_KEY:-${API_KEY:-}}}
[[ -n $key ]] && extra+=(--api-key "$key")
host=${HOST:-127.0.0.1}
if [[ -z $key && $host != 127.* && $host != localhost && $host != ::1 ]]; then
    echo "warning: listening on $host without an API key (set VLLM_API_KEY or MIDASHENGLM_API_KEY)" >&2
fi

# --trust-remote-code: vLLM loads the processor with AutoProcessor(trust_remote_code=True). The Hub
# repositories ship their processor code, and a folder saved by this project carries its own
# (processing_midashenglm.py, registered through auto_map): the flag is needed for both.
exec vllm serve "$CHECKPOINT" \
    --served-model-name "${NAME:-midashenglm}" \
    --host "$host" --port "${PORT:-8000}" \
    --dtype "${DTYPE:-bfloat16}" \
    --max-model-len "${MAX_MODEL_LEN:-8192}" \
    --limit-mm-per-prompt "{\"audio\": ${MAX_AUDIOS:-1}}" \
    --gpu-memory-utilization "${GPU_UTIL:-0.90}" \
    --trust-remote-code \
    ${extra[@]+"${extra[@]}"} "$@"
