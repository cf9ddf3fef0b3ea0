"""ASR benchmark: streaming vs offline accuracy, latency, real-time factor, streams per core, digits.

Starts its own asr service (own state directory and port) and streams real recordings to it through
the same client `quietline asr` uses (services.asr.recording_stream). Offline figures decode each
whole clip once, in this process, with the same model files and beam size. Prints JSON and writes it.

    python benchmarks/asr/bench_asr.py --out benchmarks/results/asr.json

Sections (each can be skipped for a quicker run):
- english: every English clip in ../shared/data/speech, streamed in real time as 16 kHz PCM16 (WER,
  end-of-speech-to-final and speech-start-to-first-interim percentiles), and 8 kHz mu-law copies
  derived here, streamed as fast as possible (WER); offline WER of the same audio (the clip and the
  trailing silence the client sends after it), and of the clip alone; the ratios.
- concurrency: k identical real-time streams at once, for growing k; a k is sustained when every
  stream's final arrives within 2 s of its end of speech and wall time stays within 10 % of real time.
- digits: all of ../shared/data/digits8k as 8 kHz PCM16 in RECOGNITION_MODE_DIGITS (accuracy, per
  speaker); every tenth clip in real time for end-of-speech-to-final latency, the rest as fast as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from latency_stats import percentiles  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BENCH_PORT_BASE = 56460
SUSTAINED_FINAL_MS = 2000.0
DIGITS_REALTIME_EVERY = 10
STREAM_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over the whole set (edits / reference words), Whisper-normalised."""
    import jiwer

    from services.asr.scoring import normalise_text

    refs = [normalise_text(r) for r in references]
    hyps = [normalise_text(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    return round(float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep])), 4)


class OfflineDecoder:
    """The same model files and beam as the service, decoding each whole clip once."""

    def __init__(self, settings) -> None:
        from faster_whisper import WhisperModel

        from models import resolve_model

        path = resolve_model(settings.asr.model, settings.state_dir).path
        self.model = WhisperModel(str(path), device=settings.asr.device, compute_type=settings.asr.compute_type,
                                  cpu_threads=settings.asr.cpu_threads, local_files_only=True)
        self.beam_size = settings.asr.beam_size

    def transcribe(self, samples_16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(samples_16k, language="en", beam_size=self.beam_size,
                                            condition_on_previous_text=False, vad_filter=True)
        return " ".join(segment.text.strip() for segment in segments)


async def english_section(target: str, settings, limit: int | None = None) -> dict:
    from quietline.v1 import common_pb2
    from services.asr.recording_stream import TRAILING_SILENCE_S, encode_for_line, stream_recording
    from services.kit.audio import decode, read_recording, resample

    def as_streamed(samples_16k: np.ndarray) -> np.ndarray:
        """The audio the service hears: the clip and the client's trailing silence."""
        return np.concatenate([samples_16k, np.zeros(int(TRAILING_SILENCE_S * 16000), dtype=np.float32)])

    pcm16 = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)
    mulaw = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_MULAW, sample_rate_hz=8000)
    offline = OfflineDecoder(settings)
    entries = [e for e in manifest(SHARED_DATA / "speech" / "manifest.jsonl") if e["lang"] == "en"][:limit]
    rows = []
    for entry in entries:
        samples = read_recording(SHARED_DATA / entry["audio"], 16000)
        live = await stream_recording(target, encode_for_line(samples, pcm16), pcm16, language="en")
        line_bytes = encode_for_line(samples, mulaw)
        # What the service hears from a phone line, decoded the same way for the offline comparison.
        line_16k = resample(decode(line_bytes, mulaw.encoding), 8000, 16000)
        phone = await stream_recording(target, line_bytes, mulaw, language="en", realtime=False)
        rows.append({
            "audio": entry["audio"], "reference": entry["reference"], "duration_s": round(len(samples) / 16000, 2),
            "streaming": live.text, "offline": offline.transcribe(as_streamed(samples)),
            "streaming_mulaw": phone.text, "offline_mulaw": offline.transcribe(as_streamed(line_16k)),
            "offline_clip_only": offline.transcribe(samples),
            "end_of_speech_to_final_ms": live.as_dict()["end_of_speech_to_final_ms"],
            "flush_to_final_ms": live.as_dict()["request_to_final_ms"],
            "speech_start_to_first_interim_ms": live.speech_start_to_first_interim_ms,
            "fast_real_time_factor": phone.as_dict()["real_time_factor"],
        })
    references = [r["reference"] for r in rows]
    wer = {kind: corpus_wer(references, [r[kind] for r in rows])
           for kind in ("streaming", "offline", "streaming_mulaw", "offline_mulaw", "offline_clip_only")}
    return {
        "clips": len(rows),
        "audio_s": round(sum(r["duration_s"] for r in rows), 1),
        "wer": wer,
        # Offline decodes the audio the stream carried (the clip and the client's trailing silence);
        # offline_clip_only decodes the clip alone.
        "wer_ratio_streaming_to_offline": round(wer["streaming"] / wer["offline"], 3) if wer["offline"] else None,
        "wer_ratio_streaming_to_offline_clip_only": (round(wer["streaming"] / wer["offline_clip_only"], 3)
                                                    if wer["offline_clip_only"] else None),
        "wer_ratio_streaming_to_offline_mulaw": (round(wer["streaming_mulaw"] / wer["offline_mulaw"], 3)
                                                 if wer["offline_mulaw"] else None),
        "end_of_speech_to_final_ms": percentiles([r["end_of_speech_to_final_ms"] for r in rows]),
        "flush_to_final_ms": percentiles([r["flush_to_final_ms"] for r in rows]),
        "speech_start_to_first_interim_ms": percentiles([r["speech_start_to_first_interim_ms"] for r in rows]),
        "real_time_factor_fast_mode": percentiles([r["fast_real_time_factor"] for r in rows]),
        "per_clip": rows,
    }


def decode_batches(settings) -> tuple[float, float]:
    """(batches, windows) the service has decoded so far, from its Prometheus endpoint."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    endpoint = settings.asr.endpoint
    text = httpx.get(f"http://{endpoint.host}:{endpoint.metrics_port}/metrics", timeout=10).text
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              if family.name == "quietline_asr_decode_batch_size" for sample in family.samples
              if sample.name.endswith(("_sum", "_count"))}
    return (values.get("quietline_asr_decode_batch_size_count", 0.0),
            values.get("quietline_asr_decode_batch_size_sum", 0.0))


async def concurrency_section(target: str, settings, max_streams: int, steps: tuple[int, ...] = STREAM_STEPS) -> dict:
    from quietline.v1 import common_pb2
    from services.asr.recording_stream import encode_for_line, stream_recording
    from services.kit.audio import read_recording

    pcm16 = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)
    clips = [e for e in manifest(SHARED_DATA / "speech" / "manifest.jsonl") if "ljspeech" in e["audio"]][:3]
    pause = np.zeros(8000, dtype=np.float32)
    # About 20 s: three sentences with pauses, as a caller's few turns.
    speech = np.concatenate([part for e in clips for part in (read_recording(SHARED_DATA / e["audio"], 16000), pause)])
    wire = encode_for_line(speech, pcm16)
    runs, sustained = [], 0
    for streams in [k for k in steps if k <= max_streams]:
        batches_before = decode_batches(settings)
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_recording(target, wire, pcm16, language="en") for _ in range(streams)),
                                       return_exceptions=True)
        wall_s = time.perf_counter() - started
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        latencies = [ms for r in results if not isinstance(r, BaseException) for ms in r.end_of_speech_to_final_ms]
        audio_s = len(speech) / 16000 + 0.6
        ok = not failures and latencies and max(latencies) <= SUSTAINED_FINAL_MS and wall_s <= audio_s * 1.1 + 1
        batches, windows = np.subtract(decode_batches(settings), batches_before)
        runs.append({"streams": streams, "ok": bool(ok), "failures": failures[:3], "wall_s": round(wall_s, 2),
                     "audio_s": round(audio_s, 2), "end_of_speech_to_final_ms": percentiles(latencies),
                     "decode_batches": int(batches), "mean_windows_per_batch": round(float(windows / batches), 2) if batches else None})
        if not ok:
            break
        sustained = streams
    cores = os.cpu_count() or 1
    return {"sustained_streams": sustained, "cores": cores, "device": settings.asr.device,
            "max_concurrent_decodes": settings.asr.max_concurrent_decodes,
            "max_decode_batch": settings.asr.max_decode_batch,
            "sustained_streams_per_core": round(sustained / cores, 2),
            "criterion": f"every final within {SUSTAINED_FINAL_MS:.0f} ms of end of speech, wall time within 10% of "
                         "real time", "runs": runs}


async def digits_section(target: str) -> dict:
    from quietline.v1 import asr_pb2, common_pb2
    from services.asr.recording_stream import encode_for_line, stream_recording
    from services.kit.audio import read_recording

    line = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=8000)
    per_speaker: dict[str, list[bool]] = {}
    wrong, latencies, request_latencies = [], [], []
    for index, entry in enumerate(manifest(SHARED_DATA / "digits8k" / "manifest.jsonl")):
        path = SHARED_DATA / "digits8k" / Path(entry["audio"]).name
        samples = read_recording(path, 16000)
        # Every tenth clip in real time, for the latency; the rest as fast as the service takes them.
        realtime = index % DIGITS_REALTIME_EVERY == 0
        result = await stream_recording(target, encode_for_line(samples, line), line,
                                        mode=asr_pb2.RECOGNITION_MODE_DIGITS, language="en", realtime=realtime)
        if realtime:
            latencies.append(result.as_dict()["end_of_speech_to_final_ms"])
            request_latencies.append(result.as_dict()["request_to_final_ms"])
        expected = str(entry.get("label", entry.get("digit", "")))
        heard = "".join(ch for ch in result.text if ch.isdigit())
        speaker = entry.get("speaker") or path.stem.split("_")[1]
        per_speaker.setdefault(speaker, []).append(heard == expected)
        if heard != expected and len(wrong) < 20:
            wrong.append({"audio": path.name, "expected": expected, "heard": result.text})
    every = [ok for oks in per_speaker.values() for ok in oks]
    return {"clips": len(every), "accuracy": round(float(np.mean(every)), 4),
            # Includes the client's CAPTURE_PAUSE_S wait for more digits before it asks for the final.
            "end_of_speech_to_final_ms_realtime": percentiles(latencies),
            "flush_to_final_ms_realtime": percentiles(request_latencies),
            "per_speaker": {s: round(float(np.mean(v)), 4) for s, v in sorted(per_speaker.items())},
            "examples_wrong": wrong}


async def run_benchmark(sections: set[str], max_streams: int, english_limit: int | None = None,
                        stream_steps: tuple[int, ...] = STREAM_STEPS) -> dict:
    from services.appliance.port_plan import config_with_ports, write_config
    from services.appliance.supervisor import Supervisor
    from services.kit.config import load_settings

    state = Path(tempfile.mkdtemp(prefix="quietline-bench-asr-"))
    config = write_config(state / "quietline.yaml", config_with_ports(state, BENCH_PORT_BASE))
    settings = load_settings(config)
    supervisor = Supervisor(settings, config, only=("asr",))
    await asyncio.to_thread(supervisor.up)
    target = settings.asr.endpoint.target
    report: dict = {
        "benchmark": "asr", "profile": settings.profile, "model": settings.asr.model,
        "compute_type": settings.asr.compute_type, "beam_size": settings.asr.beam_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    }
    try:
        if "english" in sections:
            report["english"] = await english_section(target, settings, english_limit)
        if "concurrency" in sections:
            report["concurrency"] = await concurrency_section(target, settings, max_streams, stream_steps)
        if "digits" in sections:
            report["digits"] = await digits_section(target)
    finally:
        await asyncio.to_thread(supervisor.down)
        shutil.rmtree(state, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "asr.json"))
    parser.add_argument("--sections", default="english,concurrency,digits")
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--english-limit", type=int, default=None, help="only the first N English clips")
    parser.add_argument("--stream-steps", default=",".join(map(str, STREAM_STEPS)),
                        help="stream counts the concurrency section tries, in order (comma-separated)")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        print(f"bench-asr: shared data not found at {SHARED_DATA}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    steps = tuple(int(k) for k in args.stream_steps.split(",") if k.strip())
    report = asyncio.run(run_benchmark(set(args.sections.split(",")), args.max_streams, args.english_limit, steps))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: ({kk: vv for kk, vv in v.items() if kk not in ("per_clip", "runs", "examples_wrong")}
                   if isinstance(v, dict) else v) for k, v in report.items()}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
