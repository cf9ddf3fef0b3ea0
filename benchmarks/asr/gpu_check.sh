#!/usr/bin/env bash
# GPU check for the asr service: streams per GPU and end-of-speech-to-final latency, in a few minutes.
#
# Runs on one NVIDIA GPU machine with this repo and the tiny model (no network): the asr service on
# the gpu profile's code path and settings (device cuda, float16, decode batches across streams:
# config/gpu.yaml) with tiny.en in place of large-v3-turbo, since what is measured is the streaming
# machinery on a GPU (batching, latency, streams per card), not the large model's accuracy.
# Packages come from the machine's environment, or from .gpu-site/ where benchmarks/asr/device_stage.sh
# put them (a lent machine without a package index).
#
#   bash benchmarks/asr/gpu_check.sh [OUT_DIR]   # writes OUT_DIR/asr_gpu.json and gpu.txt (default: $OUT or .)
#
# Environment: STREAM_STEPS (default 1,8,16,32,48,64,96), MAX_STREAMS (96), ENGLISH_CLIPS (8).
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir="${1:-${OUT:-.}}"
mkdir -p "$out_dir"
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out_dir/gpu.txt" \
  || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed): run this on a GPU machine" >&2; exit 2; }

export PYTHONPATH="$PWD/.gpu-site:$PWD/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The benchmark reads ../shared/data; a carried copy stands in for it on a machine without ../shared.
if [ ! -d ../shared/data ] && [ -d .shared-data ]; then
  mkdir -p ../shared && ln -sfn "$PWD/.shared-data" ../shared/data
fi

# ctranslate2's PyPI wheels are built against CUDA 12 and open libcublas.so.12 at the first GPU matrix
# product. On an image that has only CUDA 13's cuBLAS, whose entry points ctranslate2 calls (GemmEx,
# SgemmStridedBatched, ...) are unchanged, a private libcublas.so.12 link to it stands in.
if ! ldconfig -p | grep -q 'libcublas\.so\.12 '; then
  cublas12=$(find /usr/local /usr/lib /opt -name 'libcublas.so.12' 2>/dev/null | head -1 || true)
  if [ -n "$cublas12" ]; then
    export LD_LIBRARY_PATH="$(dirname "$cublas12")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    cublas13=$(find /usr/local /usr/lib /opt -name 'libcublas.so.13' 2>/dev/null | head -1 || true)
    [ -n "$cublas13" ] || { echo "gpu_check: no cuBLAS (libcublas.so.12 or .13) found: install CUDA's cuBLAS" >&2; exit 2; }
    mkdir -p .gpu-site/cublas12
    ln -sfn "$cublas13" .gpu-site/cublas12/libcublas.so.12
    export LD_LIBRARY_PATH="$PWD/.gpu-site/cublas12:$(dirname "$cublas13")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu_check: libcublas.so.12 -> $cublas13" | tee -a "$out_dir/gpu.txt"
  fi
fi

export QUIETLINE_PROFILE=gpu QUIETLINE_ASR__MODEL=whisper-tiny-en QUIETLINE_ASR__MULTILINGUAL_MODEL=""
export QUIETLINE_ASR__MAX_STREAMS=${MAX_STREAMS:-96}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# One encode and decode on the GPU before the benchmark, so a CUDA or cuBLAS problem is named here.
"$python" - <<'PY' || { echo "gpu_check: the model does not run on this GPU (see the error above)" >&2; exit 2; }
import tempfile, time
import numpy as np
import ctranslate2
from services.asr.recognizer import Recognizer, WindowJob
from services.kit.config import load_settings
print(f"ctranslate2 {ctranslate2.__version__}: {ctranslate2.get_cuda_device_count()} CUDA device(s)")
settings = load_settings()
recognizer = Recognizer.load(settings.asr, tempfile.mkdtemp())
recognizer.warm_up()
from pathlib import Path
from services.kit.audio import read_recording
clip = read_recording(sorted(Path("../shared/data/speech/wav").glob("*.wav"))[0], 16000)
options = recognizer.decode_options("en", "general", [])
for size in (1, 16):
    started = time.perf_counter()
    texts = {t.text for t in recognizer.transcribe_windows([WindowJob(clip, options)] * size)}
    print(f"{settings.asr.device} {settings.asr.compute_type}: a batch of {size} windows in "
          f"{time.perf_counter() - started:.3f} s: {texts}")
PY

timeout 500 "$python" benchmarks/asr/bench_asr.py --sections english,concurrency --english-limit "${ENGLISH_CLIPS:-8}" \
  --max-streams "${MAX_STREAMS:-96}" --stream-steps "${STREAM_STEPS:-1,8,16,32,48,64,96}" --out "$out_dir/asr_gpu.json"
