"""Digit capture: which decoding makes a lone spoken digit reliable, measured on real 8 kHz recordings.

Decodes clips of ../shared/data/digits8k (every `--step`-th, so each speaker is covered) with the asr
service's own Recognizer (tiny.en, cpu profile), in this process, five ways, and scores the answer as
the string of its digits (services.asr.digits.digits_text):

- free: a plain English decode, as RECOGNITION_MODE_GENERAL does;
- prompt: the digits prompt only (what digits mode did before constrained decoding);
- constrained: the prompt, and every token that is not a digit or number word suppressed;
- constrained_padded: the same on the clip centred in 1.5 s of silence;
- service: what digits mode does now (constrained, then a short answer re-chosen by scoring each digit).

Prints JSON and writes it. The streaming service's figure on every clip is in bench-asr's digits section.

    python benchmarks/asr/digits_eval.py --out benchmarks/results/asr_digits.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_RATE_HZ = 16000
PADDED_S = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "asr_digits.json"))
    parser.add_argument("--step", type=int, default=4, help="decode every N-th clip of the manifest")
    args = parser.parse_args()
    folder = SHARED_DATA / "digits8k"
    if not folder.is_dir():
        print(f"digits_eval: {folder} not found: clone the repo beside ../shared", file=sys.stderr)
        return 2

    from services.asr import digits
    from services.asr.recognizer import Recognizer, _transcript_of
    from services.kit.audio import read_recording
    from services.kit.config import load_settings
    from services.kit.offline import enforce_offline

    enforce_offline()
    settings = load_settings()
    state = Path(tempfile.mkdtemp(prefix="quietline-digits-eval-"))
    recognizer = Recognizer.load(settings.asr, state)
    general = recognizer.decode_options("en", "general", [])
    constrained = recognizer.decode_options("en", "digits", [])
    prompt_only = replace(constrained, suppressed_tokens=None)

    def decode(options):
        def run(samples: np.ndarray) -> str:
            segments, info = recognizer._transcribe(samples, options, final=True, beam_size=recognizer.beam_size,
                                                    word_timestamps=True, vad_filter=True)
            return _transcript_of(segments, info.language).text
        return run

    def padded(run):
        def run_padded(samples: np.ndarray) -> str:
            missing = max(0, round(PADDED_S * SAMPLE_RATE_HZ) - samples.shape[0])
            return run(np.pad(samples, (missing // 2, missing - missing // 2)))
        return run_padded

    approaches = {
        "free": decode(general),
        "prompt": decode(prompt_only),
        "constrained": decode(constrained),
        "constrained_padded": padded(decode(constrained)),
        "service": lambda samples: recognizer.transcribe_window(samples, constrained, final=True).text,
    }
    entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    entries = entries[::args.step]
    clips = [(e, read_recording(folder / Path(e["audio"]).name, SAMPLE_RATE_HZ)) for e in entries]
    report: dict = {
        "benchmark": "asr_digits", "model": settings.asr.model, "compute_type": settings.asr.compute_type,
        "clips": len(clips), "step": args.step,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]}, "approaches": {},
    }
    try:
        for name, run in approaches.items():
            per_speaker: dict[str, list[bool]] = {}
            decode_ms, wrong = [], []
            for entry, samples in clips:
                started = time.perf_counter()
                heard = digits.digits_text(run(samples))
                decode_ms.append((time.perf_counter() - started) * 1000)
                ok = heard == str(entry["digit"])
                per_speaker.setdefault(entry["speaker"], []).append(ok)
                if not ok and len(wrong) < 10:
                    wrong.append({"audio": entry["audio"], "expected": str(entry["digit"]), "heard": heard})
            every = [ok for oks in per_speaker.values() for ok in oks]
            report["approaches"][name] = {
                "accuracy": round(float(np.mean(every)), 4),
                "per_speaker": {s: round(float(np.mean(v)), 4) for s, v in sorted(per_speaker.items())},
                "decode_ms_p50": round(float(np.percentile(decode_ms, 50)), 1),
                "decode_ms_p95": round(float(np.percentile(decode_ms, 95)), 1),
                "examples_wrong": wrong,
            }
            print(name, report["approaches"][name]["accuracy"], flush=True, file=sys.stderr)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "examples_wrong"} for k, v in
                      report["approaches"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
