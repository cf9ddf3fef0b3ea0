"""TTS benchmark: time to first audio, real-time factor, concurrent real-time streams, intelligibility.

Runs the real tts and asr services (gRPC) on this machine and measures:
- time to first audio chunk (8 kHz mu-law, 20 ms frames) for a first clause of typical length
  (the first sentences of the bank KB's customer-facing answers), uncached and from the prompt cache;
- real-time factor (synthesis time / audio time) per sentence;
- concurrent streams: N callers each receive a long answer at once; a stream is real time when no
  chunk arrives later than its playback time (after the first chunk's arrival, plus 100 ms of jitter
  buffer) and its first chunk comes within 1 s; the largest N where every stream is real time;
- intelligibility: customer-facing sentences of ../shared/data/retail/policy.md and of bank KB
  answers are synthesised (16 kHz PCM), transcribed by the project's asr service, and scored by word
  error rate against the written text (Whisper's normaliser on both, so "5 to 7" and "five to seven"
  agree): a regression check for the text normalisation, numbers and ids included.

Prints a JSON summary and writes the full report (per sentence rows included) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
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
POLICY = SHARED_DATA / "retail" / "policy.md"
BANK_DOCUMENTS = SHARED_DATA / "kb" / "banking" / "documents"
BENCH_PORT_BASE = 56760
FRAME_MS = 20
JITTER_BUFFER_S = 0.1
# A caller left waiting longer than this for the first word is not served in real time either.
FIRST_AUDIO_BUDGET_MS = 1000.0
STREAM_STEPS = (1, 2, 3, 4, 6, 8)
# Policy sentences about the agent's own tools and conduct are not said to a customer.
AGENT_ONLY = re.compile(
    r"\b(tool|agent|database|you should|you have to|you can|you must|make up|conversation|authenticate|"
    r"confirmation|user id|the user)\b",
    re.IGNORECASE,
)


def policy_sentences() -> list[str]:
    """Customer-facing sentences of the retail policy: what an agent would tell a caller."""
    from services.kit.text import split_sentences

    text = re.sub(r"^#+ .*$|^- ", "", POLICY.read_text(), flags=re.MULTILINE)
    sentences = [s.strip() for s in split_sentences(text)]
    return [s for s in sentences if 6 <= len(s.split()) <= 40 and not AGENT_ONLY.search(s) and "'" not in s[:1]]


def bank_answer_sentences(limit: int = 40) -> list[str]:
    """The first two sentences of customer-facing (not "Internal") bank KB documents' bodies."""
    from services.kit.text import split_sentences

    sentences = []
    for path in sorted(BANK_DOCUMENTS.glob("*.json")):
        record = json.loads(path.read_text())
        if "internal" in record["title"].lower():
            continue
        body = re.sub(r"^#+ .*$|^\s*[-*\d.]+\s+", "", record["content"], flags=re.MULTILINE)
        # Instructions to the agent (tool names, "give them the ... tool") are not said to a caller.
        picked = [s for s in split_sentences(body)
                  if 5 <= len(s.split()) <= 35 and "_" not in s and not AGENT_ONLY.search(s)][:2]
        sentences.extend(picked)
        if len(sentences) >= limit:
            break
    return sentences[:limit]


class TtsClient:
    def __init__(self, target: str) -> None:
        from quietline.v1 import common_pb2, tts_pb2, tts_pb2_grpc
        from services.kit.channels import open_channel

        self.pb = tts_pb2
        self.common = common_pb2
        self.channel = open_channel(target, 600.0)
        self.stub = tts_pb2_grpc.TtsStub(self.channel)

    async def timed(self, text: str, encoding: int, rate: int, chunk_ms: int = FRAME_MS) -> tuple[list, list[float]]:
        """The responses and each one's arrival (seconds after the request)."""
        request = self.pb.SynthesizeRequest(text=text, chunk_ms=chunk_ms, format=self.common.AudioFormat(
            encoding=encoding, sample_rate_hz=rate))
        started = time.perf_counter()
        responses, arrivals = [], []
        async for response in self.stub.Synthesize(request):
            responses.append(response)
            arrivals.append(time.perf_counter() - started)
        return responses, arrivals


def audio_seconds(responses, bytes_per_second: int) -> float:
    return sum(len(r.audio) for r in responses) / bytes_per_second


async def first_audio_section(client: TtsClient, clauses: list[str], prompts: list[str]) -> dict:
    mulaw = client.common.AUDIO_ENCODING_MULAW
    uncached, cached, rtf = [], [], []
    for clause in clauses:
        responses, arrivals = await client.timed(clause, mulaw, 8000)
        uncached.append(arrivals[0] * 1000)
        # One chunk per sentence at the native rate: the synthesis time of the sentence alone.
        whole, whole_arrivals = await client.timed(clause, client.common.AUDIO_ENCODING_PCM16, 22050, chunk_ms=0)
        rtf.append(whole_arrivals[0] / max(audio_seconds(whole[:1], 2 * 22050), 1e-6))
    for prompt in prompts:
        _, arrivals = await client.timed(prompt, mulaw, 8000)
        cached.append(arrivals[0] * 1000)
    words = [len(c.split()) for c in clauses]
    return {"first_clause_words_p50": float(np.median(words)),
            "uncached_first_audio_ms": percentiles(uncached), "cached_first_audio_ms": percentiles(cached),
            "real_time_factor": {"p50": round(float(np.median(rtf)), 3), "max": round(float(max(rtf)), 3)}}


async def concurrency_section(client: TtsClient, answer: str) -> dict:
    mulaw = client.common.AUDIO_ENCODING_MULAW
    runs = []
    sustained = playback = 0
    for streams in STREAM_STEPS:
        results = await asyncio.gather(*(client.timed(answer, mulaw, 8000) for _ in range(streams)))
        worst_late = 0.0
        first = []
        for responses, arrivals in results:
            first.append(arrivals[0] * 1000)
            played = 0.0
            for response, arrival in zip(responses, arrivals):
                # The chunk is due when playback (from the first chunk, after the jitter buffer) reaches it.
                due = arrivals[0] + JITTER_BUFFER_S + played
                worst_late = max(worst_late, arrival - due)
                played += len(response.audio) / 8000
        keeps_up = worst_late <= 0
        first_ms = percentiles(first)
        runs.append({"streams": streams, "playback_keeps_up": keeps_up, "worst_late_ms": round(worst_late * 1000, 1),
                     "first_audio_ms": first_ms})
        if keeps_up:
            playback = streams
        if keeps_up and first_ms["max"] <= FIRST_AUDIO_BUDGET_MS:
            sustained = streams
        if not keeps_up:
            break
    return {"answer_words": len(answer.split()), "jitter_buffer_ms": JITTER_BUFFER_S * 1000,
            "first_audio_budget_ms": FIRST_AUDIO_BUDGET_MS,
            # Every stream's playback kept up and every first chunk came within the budget.
            "sustained_streams": sustained,
            # Playback kept up, whatever the wait for the first chunk.
            "playback_streams": playback, "runs": runs}


async def intelligibility_section(client: TtsClient, asr_target: str, sets: dict[str, list[str]]) -> dict:
    from quietline.v1 import common_pb2
    from services.asr.recording_stream import stream_recording
    from services.asr.scoring import normalise_text, word_error_rate

    import jiwer

    report: dict = {}
    for name, sentences in sets.items():
        rows = []
        references, hypotheses = [], []
        for sentence in sentences:
            responses, _ = await client.timed(sentence, common_pb2.AUDIO_ENCODING_PCM16, 16000, chunk_ms=0)
            pcm = b"".join(r.audio for r in responses)
            fmt = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)
            heard = await stream_recording(asr_target, pcm, fmt, realtime=False)
            references.append(normalise_text(sentence))
            hypotheses.append(normalise_text(heard.text))
            rows.append({"text": sentence, "heard": heard.text,
                         "wer": round(word_error_rate(sentence, heard.text), 3)})
        pairs = [(r, h) for r, h in zip(references, hypotheses) if r]
        report[name] = {"sentences": len(rows),
                        "wer": round(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]), 4),
                        "with_digits": sum(bool(re.search(r"\d", row["text"])) for row in rows),
                        "rows": rows}
    return report


async def run_benchmark(sections: set[str]) -> dict:
    from services.appliance.port_plan import config_with_ports, write_config
    from services.appliance.supervisor import Supervisor
    from services.kit.config import load_settings

    state = Path(tempfile.mkdtemp(prefix="quietline-bench-tts-"))
    config = write_config(state / "quietline.yaml", config_with_ports(state, BENCH_PORT_BASE))
    settings = load_settings(config)
    services = ("tts", "asr") if "intelligibility" in sections else ("tts",)
    supervisor = Supervisor(settings, config, only=services)
    await asyncio.to_thread(supervisor.up)
    client = TtsClient(settings.tts.endpoint.target)
    bank = bank_answer_sentences()
    report: dict = {
        "benchmark": "tts", "voice": settings.tts.voice, "cpu_threads_per_synthesis": settings.tts.cpu_threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    }
    try:
        # One warm-up request: onnxruntime's first run allocates.
        await client.timed("Hello.", client.common.AUDIO_ENCODING_MULAW, 8000)
        if "first_audio" in sections:
            clauses = [s.split(",")[0] if len(s.split(",")[0].split()) >= 6 else s for s in bank[:20]]
            report["first_audio"] = await first_audio_section(client, clauses, settings.tts.cached_prompts)
        if "concurrency" in sections:
            report["concurrency"] = await concurrency_section(client, " ".join(bank[:6]))
        if "intelligibility" in sections:
            report["intelligibility"] = await intelligibility_section(
                client, settings.asr.endpoint.target, {"retail_policy": policy_sentences(), "bank_answers": bank})
    finally:
        await client.channel.close()
        await asyncio.to_thread(supervisor.down)
        shutil.rmtree(state, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "tts.json"))
    parser.add_argument("--sections", default="first_audio,concurrency,intelligibility")
    args = parser.parse_args()
    if not POLICY.is_file():
        print(f"bench-tts: shared data not found at {SHARED_DATA}: clone the repo beside ../shared", file=sys.stderr)
        return 2
    from services.kit.offline import enforce_offline

    enforce_offline()
    report = asyncio.run(run_benchmark(set(args.sections.split(","))))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = json.loads(json.dumps(report))
    for part in summary.get("intelligibility", {}).values():
        part.pop("rows", None)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
