"""The asr service as `quietline up` runs it: a real process, faster-whisper tiny.en, real gRPC.

Real human recordings from ../shared/data/speech are streamed in 20 ms chunks; finals are scored
with the project's Whisper-normalised WER. The 8 kHz G.711 copy is derived here, in the test, with
the kit's codec (the shared data holds no telephone copies).
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import numpy as np
import pytest
from conftest import start_service
from prometheus_client.parser import text_string_to_metric_families

from quietline.v1 import asr_pb2, asr_pb2_grpc, common_pb2
from services.asr.client import FLUSH, transcribe_stream
from services.asr.scoring import word_error_rate
from services.kit.audio import MULAW, PCM16, encode, read_recording
from services.kit.channels import open_channel

# Three English speakers/sources from the manifest: LibriVox (two lengths) and LJSpeech (22 kHz).
CLIPS = (
    "pocketsphinx__test__data__librivox__sense_and_sensibility_01_austen_64kb-0890.wav",
    "pocketsphinx__test__data__librivox__sense_and_sensibility_01_austen_64kb-0920.wav",
    "coqui-tts-ljspeech__tests__data__ljspeech__wavs__LJ001-0006.wav",
)
LONG_CLIP = CLIPS[0]  # 5.3 s: long enough for several interims
SHORT_CLIP = "pocketsphinx__test__data__librivox__sense_and_sensibility_01_austen_64kb-0880.wav"
# A small limit so the guard rail is cheap to reach; every clip here is shorter.
MAX_STREAM_S = 20
CHUNK_MS = 20


@pytest.fixture(scope="module")
def asr_service(service_config):
    # English only (no multilingual model), as before languages: tests/test_asr_languages.py covers the rest.
    service = start_service("asr", service_config, extra_env={"QUIETLINE_ASR__MAX_STREAM_S": str(MAX_STREAM_S),
                                                            "QUIETLINE_ASR__MULTILINGUAL_MODEL": ""})
    yield service
    assert service.stop() == 0, service.log()


@pytest.fixture(scope="module")
async def asr(asr_service):
    channel = open_channel(asr_service.target, default_deadline_s=60.0)
    yield asr_pb2_grpc.AsrStub(channel)
    await channel.close()


def recording(shared_data, name: str, rate_hz: int) -> np.ndarray:
    return read_recording(shared_data / "speech" / "wav" / name, rate_hz)


def config_for(encoding: int = PCM16, rate_hz: int = 16000, call_id: str = "test-call", **fields):
    return asr_pb2.RecognitionConfig(
        call=common_pb2.CallRef(call_id=call_id, turn=1),
        format=common_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate_hz), **fields,
    )


async def chunks_of(samples: np.ndarray, rate_hz: int, encoding: int = PCM16, pace: float = 0.0):
    """Wire audio in 20 ms chunks; pace > 0 sends them at `pace` times real time."""
    wire = encode(samples, encoding)
    step = rate_hz * CHUNK_MS // 1000 * (1 if encoding != PCM16 else 2)
    for start in range(0, len(wire), step):
        yield wire[start:start + step]
        if pace:
            await asyncio.sleep(CHUNK_MS / 1000 / pace)


async def collect(stub, audio, config) -> list[asr_pb2.RecognizeResponse]:
    return [response async for response in transcribe_stream(stub, audio, config)]


def finals_of(responses) -> list[asr_pb2.Hypothesis]:
    return [r.hypothesis for r in responses if r.HasField("hypothesis") and r.hypothesis.is_final]


def scrape(service, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{service.entry.metrics_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.parametrize("clip", CLIPS)
async def test_english_recording_streamed_as_16k_pcm_is_transcribed(asr, shared_data, references, clip):
    samples = recording(shared_data, clip, 16000)
    responses = await collect(asr, chunks_of(samples, 16000), config_for(language="en"))

    [final] = finals_of(responses)
    assert responses[-1].hypothesis == final, "the final must be the stream's last response"
    wer = word_error_rate(references[clip], final.stable_text)
    assert wer < 0.35, (wer, final.stable_text)
    assert final.unstable_text == "" and final.language == "en"
    assert final.audio_start_ms == 0
    assert abs(final.audio_end_ms - len(samples) * 1000 / 16000) <= CHUNK_MS
    assert 0.5 < final.confidence <= 1.0
    assert len(final.words) >= len(references[clip].split()) - 3
    assert final.confidence == pytest.approx(np.mean([w.probability for w in final.words]), abs=1e-4)
    starts = [w.start_ms for w in final.words]
    assert starts == sorted(starts)
    assert all(w.start_ms <= w.end_ms <= final.audio_end_ms for w in final.words)


async def test_telephone_mulaw_8k_copy_is_transcribed(asr, shared_data, references):
    # Derived here: resampled to 8 kHz and G.711 mu-law encoded with the kit, as a PBX would send it.
    samples = recording(shared_data, LONG_CLIP, 8000)
    responses = await collect(asr, chunks_of(samples, 8000, MULAW), config_for(MULAW, 8000))

    [final] = finals_of(responses)
    wer = word_error_rate(references[LONG_CLIP], final.stable_text)
    assert wer < 0.5, (wer, final.stable_text)
    assert abs(final.audio_end_ms - len(samples) * 1000 / 8000) <= CHUNK_MS


async def test_interim_hypotheses_and_speech_events_precede_the_final(asr, asr_service, shared_data, references):
    finals_before = scrape(asr_service, "quietline_stage_duration_seconds_count", {"service": "asr", "stage": "final"})
    samples = recording(shared_data, LONG_CLIP, 16000)
    # Real time: the service sees the audio arrive as it would from a call.
    responses = await collect(asr, chunks_of(samples, 16000, pace=1.0), config_for(interim_results=True))

    hypotheses = [r.hypothesis for r in responses if r.HasField("hypothesis")]
    interims = [h for h in hypotheses if not h.is_final]
    assert len(interims) >= 2, [(h.stable_text, h.unstable_text) for h in hypotheses]
    assert hypotheses[-1].is_final and not any(h.is_final for h in hypotheses[:-1])
    assert all((h.stable_text + h.unstable_text).strip() for h in interims)
    ends = [h.audio_end_ms for h in interims]
    assert ends == sorted(ends) and ends[-1] <= hypotheses[-1].audio_end_ms
    # A later interim agrees with an earlier one on its opening words.
    assert any(h.stable_text for h in interims[1:]), [(h.stable_text, h.unstable_text) for h in interims]
    assert word_error_rate(references[LONG_CLIP], hypotheses[-1].stable_text) < 0.35

    events = [(i, r.speech_event) for i, r in enumerate(responses) if r.HasField("speech_event")]
    kinds = [event.kind for _, event in events]
    assert kinds[:1] == [asr_pb2.SpeechEvent.KIND_SPEECH_STARTED] and kinds[-1] == asr_pb2.SpeechEvent.KIND_SPEECH_STOPPED
    first_interim = next(i for i, r in enumerate(responses) if r.HasField("hypothesis"))
    assert events[0][0] < first_interim
    # Speech in this recording starts about 0.3 s in and ends at about 5.2 s.
    assert 100 <= events[0][1].offset_ms <= 800
    assert 4000 <= events[-1][1].offset_ms <= hypotheses[-1].audio_end_ms

    finals_after = scrape(asr_service, "quietline_stage_duration_seconds_count", {"service": "asr", "stage": "final"})
    assert finals_after == finals_before + 1


async def test_flush_finalises_and_keeps_the_stream_open_and_garbage_gives_an_empty_final(
    asr, shared_data, references
):
    # 1.5 s of full-scale random bytes: not speech, must not crash nor hallucinate.
    garbage = np.random.default_rng(7).integers(0, 256, 48000, dtype=np.uint8).tobytes()
    speech = recording(shared_data, SHORT_CLIP, 16000)

    async def audio():
        for start in range(0, len(garbage), 640):
            yield garbage[start:start + 640]
        yield FLUSH
        async for chunk in chunks_of(speech, 16000):
            yield chunk

    responses = await collect(asr, audio(), config_for(interim_results=True))
    first, second = finals_of(responses)
    assert first.stable_text == "" and not first.words
    assert (first.audio_start_ms, first.audio_end_ms) == (0, 1500)
    assert second.audio_start_ms == 1500
    assert word_error_rate(references[SHORT_CLIP], second.stable_text) < 0.35, second.stable_text
    assert all(w.start_ms >= 1500 for w in second.words)


@pytest.mark.parametrize(
    ("requests", "code", "says"),
    [
        ([asr_pb2.RecognizeRequest(audio=b"\0\0" * 160)], grpc.StatusCode.INVALID_ARGUMENT, "first RecognizeRequest"),
        ([asr_pb2.RecognizeRequest(config=config_for(MULAW, 16000))], grpc.StatusCode.INVALID_ARGUMENT, "8000 Hz"),
        ([asr_pb2.RecognizeRequest(config=config_for()), asr_pb2.RecognizeRequest(audio=b"\0" * 321)],
         grpc.StatusCode.INVALID_ARGUMENT, "even number of bytes"),
        ([asr_pb2.RecognizeRequest(config=config_for(language="de"))], grpc.StatusCode.INVALID_ARGUMENT,
         "whisper-tiny-en"),
        ([asr_pb2.RecognizeRequest(config=config_for()), asr_pb2.RecognizeRequest(config=config_for())],
         grpc.StatusCode.INVALID_ARGUMENT, "already sent"),
        ([asr_pb2.RecognizeRequest(config=config_for()), asr_pb2.RecognizeRequest(control=asr_pb2.RecognitionControl())],
         grpc.StatusCode.INVALID_ARGUMENT, "send ACTION_FLUSH"),
        ([asr_pb2.RecognizeRequest(config=config_for(hotwords=[f"Product{i}" for i in range(80)]))],
         grpc.StatusCode.INVALID_ARGUMENT, "too many hotwords"),
        ([asr_pb2.RecognizeRequest(config=config_for(MULAW, 8000))]
         + [asr_pb2.RecognizeRequest(audio=b"\xff" * 8000)] * (MAX_STREAM_S + 1),
         grpc.StatusCode.RESOURCE_EXHAUSTED, f"maximum of {MAX_STREAM_S} s"),
    ],
    ids=["audio-before-config", "g711-at-16k", "odd-pcm-chunk", "german-on-english-model", "second-config",
         "unknown-control", "too-many-hotwords", "stream-too-long"],
)
async def test_bad_streams_get_a_clear_status(asr, requests, code, says):
    async def send():
        for request in requests:
            yield request

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [_ async for _ in asr.Recognize(send())]
    assert caught.value.code() == code
    assert says in caught.value.details()


async def test_cancelled_stream_is_released_and_the_service_carries_on(asr, asr_service, shared_data, references):
    samples = recording(shared_data, LONG_CLIP, 16000)
    call_id = "cancelled-call"

    async def endless():
        yield asr_pb2.RecognizeRequest(config=config_for(call_id=call_id, interim_results=True))
        async for chunk in chunks_of(samples, 16000, pace=4.0):
            yield asr_pb2.RecognizeRequest(audio=chunk)
        await asyncio.sleep(60)

    call = asr.Recognize(endless())
    await call.read()  # the stream is live (speech started)
    call.cancel()

    deadline = time.monotonic() + 5
    closed = []
    while not closed and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        closed = [entry for line in asr_service.log().splitlines() if line.startswith("{")
                  for entry in [json.loads(line)] if entry.get("call_id") == call_id and entry["msg"] == "stream closed"]
    assert closed and closed[0]["outcome"] == "cancelled", asr_service.log()[-2000:]

    short = recording(shared_data, SHORT_CLIP, 16000)
    [final] = finals_of(await collect(asr, chunks_of(short, 16000), config_for()))
    assert word_error_rate(references[SHORT_CLIP], final.stable_text) < 0.35


def test_logs_carry_no_transcripts(asr_service, references):
    # Runs last in this module: by now every clip above has been recognised by this process.
    log = asr_service.log().lower()
    assert '"msg": "final"' in log
    words = {w.strip(".,;\"") for clip in (*CLIPS, SHORT_CLIP) for w in references[clip].lower().split()}
    leaked = sorted(w for w in words if len(w) >= 7 and w in log)
    assert not leaked, leaked


def test_deployment_vocabulary_biases_general_streams_but_not_capture_modes(state_dir):
    from services.asr.languages import RecognizerSet
    from services.kit.config import AsrSettings

    settings = AsrSettings(multilingual_model="", hotwords=["Harbor Trust", "QuietLine"],
                           initial_prompt="Harbor Trust Bank, customer support.")
    recognizers = RecognizerSet.load(settings, state_dir)
    _, general = recognizers.decode_options("en", "general", ["Visa Platinum", "QuietLine"])
    assert general.hotwords == "Harbor Trust QuietLine Visa Platinum"
    assert general.initial_prompt == "Harbor Trust Bank, customer support."
    _, captured = recognizers.decode_options("en", "digits", [])
    assert captured.hotwords is None and captured.initial_prompt != settings.initial_prompt


def test_too_large_a_deployment_vocabulary_is_refused_at_start(state_dir):
    from services.asr.languages import RecognizerSet
    from services.kit.config import AsrSettings, ConfigError

    with pytest.raises(ConfigError, match="asr.hotwords: too many hotwords"):
        RecognizerSet.load(AsrSettings(multilingual_model="", hotwords=[f"Product{i}" for i in range(80)]), state_dir)
