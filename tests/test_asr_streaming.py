"""Incremental streaming recognition in the real asr process: LocalAgreement interims, finals as
accurate as one offline decode, capacity, and clients that send faster than real time.

Real recordings from ../shared/data/speech go over real gRPC in 20 ms chunks; the offline reference
decodes each whole clip once in this process with the same model files and beam
(services.asr.recognizer.Recognizer.transcribe_final). The service gets its own ports and a small
stream limit, so the capacity refusal is cheap to reach.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import SERVICE_PORT_BASE, make_test_config, start_service, write_config
from prometheus_client.parser import text_string_to_metric_families

from quietline.v1 import asr_pb2, asr_pb2_grpc, common_pb2
from services.asr.client import FLUSH, transcribe_stream
from services.asr.scoring import normalise_text, word_error_rate
from services.kit.audio import PCM16, encode, read_recording
from services.kit.channels import open_channel

MAX_STREAMS = 3
MAX_STREAM_S = 90
CHUNK_MS = 20
# The client's turn model asks for the final this long after the caller stopped.
FLUSH_AFTER_S = 0.3
# 9.2 s of continuous read speech: several decodes, enough for words to be committed.
INTERIM_CLIP = "coqui-tts-ljspeech__tests__data__ljspeech__wavs__LJ001-0015.wav"
WER_CLIPS = (
    "pocketsphinx__test__data__librivox__sense_and_sensibility_01_austen_64kb-0920.wav",
    "coqui-tts-ljspeech__tests__data__ljspeech__wavs__LJ001-0016.wav",
    "coqui-tts-ljspeech__tests__data__ljspeech__wavs__LJ001-0019.wav",
)
# Streaming may differ from one offline decode by this much WER over the three clips together (about
# two words of their 49); the benchmark measures the ratio on all English clips.
WER_TOLERANCE = 0.05
# Concatenated for the faster-than-real-time stream (a little over 60 s of speech).
FAST_CLIPS = tuple(f"coqui-tts-ljspeech__tests__data__ljspeech__wavs__LJ001-{n:04d}.wav" for n in range(1, 11))


@pytest.fixture(scope="module")
def asr_service(state_dir):
    # Own ports, so this module never collides with tests/test_asr.py's service.
    config = write_config(state_dir / "asr-streaming.yaml", make_test_config(state_dir, SERVICE_PORT_BASE + 600))
    service = start_service("asr", config, extra_env={
        "QUIETLINE_ASR__MAX_STREAMS": str(MAX_STREAMS),
        "QUIETLINE_ASR__MAX_STREAM_S": str(MAX_STREAM_S),
        "QUIETLINE_ASR__MULTILINGUAL_MODEL": "",  # English only: the clips are English
    })
    yield service
    assert service.stop() == 0, service.log()


@pytest.fixture(scope="module")
async def asr(asr_service):
    channel = open_channel(asr_service.target, default_deadline_s=120.0)
    yield asr_pb2_grpc.AsrStub(channel)
    await channel.close()


@pytest.fixture(scope="module")
def offline(state_dir):
    """One decode of a whole clip, with the service's model files and beam."""
    from services.asr.recognizer import DecodeOptions, Recognizer
    from services.kit.config import AsrSettings

    recognizer = Recognizer.load(AsrSettings(), state_dir)
    return lambda samples: recognizer.transcribe_final(samples, DecodeOptions(language="en")).text


def recording(shared_data: Path, name: str) -> np.ndarray:
    return read_recording(shared_data / "speech" / "wav" / name, 16000)


def config_for(call_id: str, interim_results: bool = True) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(
        call=common_pb2.CallRef(call_id=call_id, turn=1), language="en", interim_results=interim_results,
        format=common_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000),
    )


async def caller(samples: np.ndarray, pace: float = 1.0):
    """A caller's line: the recording in 20 ms chunks at `pace` x real time (0: as fast as possible),
    FLUSH_AFTER_S of silence, then FLUSH, as the gateway sends it when its turn model fires."""
    wire = encode(np.concatenate([samples, np.zeros(int(16000 * FLUSH_AFTER_S), dtype=np.float32)]), PCM16)
    step = 16000 * CHUNK_MS // 1000 * 2
    started = time.perf_counter()
    for index, start in enumerate(range(0, len(wire), step)):
        yield wire[start:start + step]
        if pace:
            await asyncio.sleep(max(0.0, started + (index + 1) * CHUNK_MS / 1000 / pace - time.perf_counter()))
        else:
            await asyncio.sleep(0)
    yield FLUSH


async def collect(stub, audio, config) -> list[asr_pb2.RecognizeResponse]:
    return [response async for response in transcribe_stream(stub, audio, config)]


def hypotheses(responses) -> list[asr_pb2.Hypothesis]:
    return [r.hypothesis for r in responses if r.HasField("hypothesis")]


def metric(service, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{service.entry.metrics_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def resident_mb(service) -> float:
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


async def test_stable_text_only_grows_and_the_final_agrees_with_it(asr, asr_service, shared_data, references):
    first_interims = metric(asr_service, "quietline_stage_duration_seconds_count",
                            {"service": "asr", "stage": "first_interim"})
    samples = recording(shared_data, INTERIM_CLIP)
    responses = await collect(asr, caller(samples), config_for("stable-prefix"))

    found = hypotheses(responses)
    interims, final = [h for h in found if not h.is_final], found[-1]
    assert final.is_final and sum(h.is_final for h in found) == 1, "one FLUSH gives exactly one final"
    stables = [h.stable_text for h in interims]
    assert len(interims) >= 4 and sum(1 for s in stables if s) >= 2, [(h.stable_text, h.unstable_text) for h in interims]
    for before, after in itertools.pairwise(stables):
        assert after.startswith(before), (before, after)
    # The final is a decode of the whole utterance, which may revise an early committed word, not rewrite it.
    last_stable = stables[-1].split()
    final_prefix = " ".join(final.stable_text.split()[:len(last_stable)])
    assert word_error_rate(" ".join(last_stable), final_prefix) <= 0.2, (stables[-1], final.stable_text)
    # Committed text lags the audio; the unstable tail is where the newest words are.
    assert any(h.unstable_text for h in interims)
    assert len(set(stables)) >= 3, stables
    assert word_error_rate(references[INTERIM_CLIP], final.stable_text) < 0.2, final.stable_text

    # Word timings are offsets in the stream, in order, within the audio; the confidence is their mean.
    assert final.words and "".join(w.word for w in final.words) == final.stable_text.replace(" ", "")
    starts = [w.start_ms for w in final.words]
    assert starts == sorted(starts) and starts[0] < 1000
    assert all(w.start_ms <= w.end_ms <= final.audio_end_ms for w in final.words)
    assert abs(final.words[-1].end_ms - len(samples) / 16) < 1000
    assert final.confidence == pytest.approx(np.mean([w.probability for w in final.words]), abs=1e-4)
    assert 0.5 < final.confidence <= 1.0

    after = metric(asr_service, "quietline_stage_duration_seconds_count", {"service": "asr", "stage": "first_interim"})
    assert after == first_interims + 1


async def test_streamed_finals_are_as_accurate_as_one_offline_decode(asr, shared_data, references, offline):
    clips = {name: recording(shared_data, name) for name in WER_CLIPS}
    # The three callers speak at once (the service's limit is three streams).
    results = await asyncio.gather(*(collect(asr, caller(samples), config_for(f"wer-{i}"))
                                     for i, samples in enumerate(clips.values())))
    streamed = {name: hypotheses(responses)[-1].stable_text for name, responses in zip(clips, results)}
    decoded = {name: offline(samples) for name, samples in clips.items()}

    def corpus_wer(texts: dict[str, str]) -> float:
        import jiwer

        return jiwer.wer([normalise_text(references[n]) for n in clips], [normalise_text(texts[n]) for n in clips])

    streaming_wer, offline_wer = corpus_wer(streamed), corpus_wer(decoded)
    assert streaming_wer <= offline_wer + WER_TOLERANCE, (streaming_wer, offline_wer, streamed, decoded)


async def test_streams_beyond_capacity_are_refused_at_once(asr, asr_service):
    release = asyncio.Event()

    async def holding(call_id: str):
        yield asr_pb2.RecognizeRequest(config=config_for(call_id, interim_results=False))
        yield asr_pb2.RecognizeRequest(audio=b"\0\0" * 1600)
        await release.wait()

    calls = [asr.Recognize(holding(f"hold-{i}")) for i in range(MAX_STREAMS)]
    try:
        for call in calls:
            await call.wait_for_connection()
        # Every held stream has been admitted once its first request was read: wait until the service says so.
        deadline = time.monotonic() + 10
        while len([line for line in asr_service.log().splitlines() if '"stream opened"' in line
                   and '"hold-' in line]) < MAX_STREAMS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

        async def late_audio():
            # The refusal answers the config. Audio written while it arrives can make grpc.aio report
            # INTERNAL instead of the server's status (grpc/grpc#36066), so this caller's audio starts later.
            await asyncio.sleep(0.5)
            async for chunk in caller(np.zeros(16000, dtype=np.float32)):
                yield chunk

        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(asr, late_audio(), config_for("one-too-many"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "asr.max_streams" in caught.value.details() and f"is {MAX_STREAMS}" in caught.value.details()
        assert time.perf_counter() - started < 2.0, "refused at once, not after queueing"
    finally:
        release.set()
        for call in calls:
            async for _ in call:
                pass
    closed = [line for line in asr_service.log().splitlines() if '"stream closed"' in line and '"hold-' in line]
    assert len(closed) == MAX_STREAMS

    # Capacity is free again.
    [final] = [h for h in hypotheses(await collect(asr, caller(np.zeros(1600, dtype=np.float32), pace=0),
                                                   config_for("after-capacity"))) if h.is_final]
    assert final.stable_text == ""


async def test_faster_than_real_time_client_gets_bounded_work_and_memory(asr, asr_service, shared_data, references):
    speech = np.concatenate([recording(shared_data, name) for name in FAST_CLIPS])
    reference = " ".join(references[name] for name in FAST_CLIPS)
    audio_s = len(speech) / 16000
    assert audio_s > 60
    memory_before = resident_mb(asr_service)

    started = time.perf_counter()
    responses = await collect(asr, caller(speech, pace=0), config_for("fast-client"))
    wall_s = time.perf_counter() - started

    found = hypotheses(responses)
    finals = [h for h in found if h.is_final]
    # asr.max_utterance_s (60 s) ends the first utterance on its own; FLUSH ends the second.
    assert len(finals) == 2 and finals[0].audio_end_ms == finals[1].audio_start_ms
    text = " ".join(h.stable_text for h in finals)
    assert word_error_rate(reference, text) < 0.3, text
    # The window is decoded as a whole as it fills, not once per second of audio.
    assert len(found) - len(finals) < audio_s / 3, len(found)
    assert wall_s < audio_s / 2, wall_s
    words = [w for h in finals for w in h.words]
    assert [w.start_ms for w in words] == sorted(w.start_ms for w in words)
    assert words[-1].end_ms > (audio_s - 3) * 1000
    assert resident_mb(asr_service) - memory_before < 100


async def test_a_two_hour_stream_is_refused_past_max_stream_s(asr):
    silence = encode(np.zeros(16000, dtype=np.float32), PCM16)

    async def two_hours():
        for _ in range(2 * 3600):
            yield silence

    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(asr, two_hours(), config_for("two-hours", interim_results=False))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"maximum of {MAX_STREAM_S} s" in caught.value.details() and "asr.max_stream_s" in caught.value.details()
    assert time.perf_counter() - started < 30
