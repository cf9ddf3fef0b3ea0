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

.PHONY: setup run test proto bench-call bench-asr bench-knowledge bench-tts down status

$(STAMP): pyproject.toml constraints.txt
	@command -v cmake >/dev/null && command -v g++ >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq cmake build-essential)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

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
