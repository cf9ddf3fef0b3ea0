"""Languages in the real asr service: a per-call hint picks the model, no hint detects once per stream.

One asr process (cpu profile: tiny.en plus the multilingual whisper-base assembled from its two PyPI
packages) started with `asr.language` empty, so a stream without a hint is detected. Real recordings
from ../shared/data/speech (Picovoice test clips, one speaker per language) are streamed over gRPC.
WER is Whisper-normalised for the clip's language (services.asr.scoring).

Thresholds come from benchmarks/asr/languages_eval.py (benchmarks/results/asr_languages.json): with
the hint, whisper-base int8 gets the German clip with one error in six words (0.17) and the French
one with one in eleven (0.09), and tiny.en the English one with none; 0.35 allows about one more
error, and fails a wrong model, a wrong language or a broken decode (the Spanish clip decoded as
English gave a whole different sentence, WER above 1).
"""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from conftest import start_service

from quietline.v1 import asr_pb2, asr_pb2_grpc, common_pb2
from services.asr.client import transcribe_stream
from services.asr.languages import LanguagePolicy, choose_language, language_code
from services.asr.scoring import word_error_rate
from services.kit.audio import PCM16, encode, read_recording
from services.kit.channels import open_channel

EXPECTED_LANGUAGES = {"en", "de", "es", "fr", "it", "pt"}
MAX_WER = 0.35
CHUNK_MS = 20


def clip_name(language: str) -> str:
    return f"picovoice-cheetah__resources__audio_samples__test_{language}.wav"


def config_for(call_id: str, **fields) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(
        call=common_pb2.CallRef(call_id=call_id, turn=1),
        format=common_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000), **fields,
    )


async def chunks_of(samples: np.ndarray, pace: float = 0.0):
    """16 kHz PCM16 in 20 ms chunks; pace > 0 sends them at `pace` times real time."""
    wire = encode(samples, PCM16)
    step = 16000 * CHUNK_MS // 1000 * 2
    for start in range(0, len(wire), step):
        yield wire[start:start + step]
        if pace:
            await asyncio.sleep(CHUNK_MS / 1000 / pace)


async def collect(stub, audio, config) -> list[asr_pb2.RecognizeResponse]:
    return [response async for response in transcribe_stream(stub, audio, config)]


def finals_of(responses) -> list[asr_pb2.Hypothesis]:
    return [r.hypothesis for r in responses if r.HasField("hypothesis") and r.hypothesis.is_final]


@pytest.fixture(scope="module")
def languages_service(service_config):
    # No default language: a stream without a hint is detected (the cpu profile's default is "en").
    service = start_service("asr", service_config, extra_env={"QUIETLINE_ASR__LANGUAGE": ""})
    yield service
    assert service.stop() == 0, service.log()


@pytest.fixture(scope="module")
async def asr(languages_service):
    channel = open_channel(languages_service.target, default_deadline_s=60.0)
    yield asr_pb2_grpc.AsrStub(channel)
    await channel.close()


def stream_log(service, call_id: str, message: str) -> list[dict]:
    """The service's JSON log records `message` for `call_id`."""
    records = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("call_id") == call_id and r.get("msg") == message]


async def test_german_with_a_hint_is_decoded_in_german_by_the_multilingual_model(
        asr, languages_service, shared_data, references):
    clip = clip_name("de")
    samples = read_recording(shared_data / "speech" / "wav" / clip, 16000)
    responses = await collect(asr, chunks_of(samples), config_for("lang-de", language="de-DE"))

    [final] = finals_of(responses)
    assert final.language == "de"
    wer = word_error_rate(references[clip], final.stable_text, "de")
    assert wer < MAX_WER, (wer, final.stable_text)
    assert 0.3 < final.confidence <= 1.0 and final.words
    [opened] = stream_log(languages_service, "lang-de", "stream opened")
    assert (opened["model"], opened["language"]) == ("whisper-base", "de")


# The Spanish clip is the hard one: Whisper's own top language for it is Greek (or Arabic, Hindi on
# parts of it); detection among the expected languages gets Spanish from the whole utterance. Its
# WER is not checked: even with the hint whisper-base mishears it ("Uno menachia" for "Un homenaje").
@pytest.mark.parametrize(("language", "max_wer"), [("fr", MAX_WER), ("es", None)])
async def test_without_a_hint_the_language_is_detected(asr, languages_service, shared_data, references,
                                                      language, max_wer):
    clip = clip_name(language)
    samples = read_recording(shared_data / "speech" / "wav" / clip, 16000)
    call_id = f"lang-detect-{language}"
    responses = await collect(asr, chunks_of(samples), config_for(call_id))

    [final] = finals_of(responses)
    assert final.stable_text.strip()
    assert final.language in EXPECTED_LANGUAGES
    assert final.language == language, final.language
    if max_wer is not None:
        wer = word_error_rate(references[clip], final.stable_text, language)
        assert wer < max_wer, (wer, final.stable_text)
    [opened] = stream_log(languages_service, call_id, "stream opened")
    assert (opened["model"], opened["language"]) == ("whisper-base", "detect")
    [detected] = [r for r in stream_log(languages_service, call_id, "language detected") if r["fixed"]]
    assert detected["language"] == language and detected["confident"]
    # Privacy: the log carries codes and timings, never the words.
    log = languages_service.log()
    assert not [w for w in final.stable_text.split() if len(w) >= 5 and w.isascii() and w in log]


async def test_detection_in_a_real_time_stream_with_interims_settles_once(asr, languages_service, shared_data):
    samples = read_recording(shared_data / "speech" / "wav" / clip_name("fr"), 16000)
    call_id = "lang-detect-live"
    responses = await collect(asr, chunks_of(samples, pace=1.0), config_for(call_id, interim_results=True))

    [final] = finals_of(responses)
    assert final.language == "fr" and final.stable_text.strip()
    detections = stream_log(languages_service, call_id, "language detected")
    assert [r["fixed"] for r in detections].count(True) == 1, detections
    assert detections[-1]["fixed"] and detections[-1]["language"] == "fr"


async def test_english_with_a_hint_still_uses_tiny_en(asr, languages_service, shared_data, references):
    clip = clip_name("en")
    samples = read_recording(shared_data / "speech" / "wav" / clip, 16000)
    responses = await collect(asr, chunks_of(samples), config_for("lang-en", language="en-GB"))

    [final] = finals_of(responses)
    assert final.language == "en"
    wer = word_error_rate(references[clip], final.stable_text)
    assert wer < MAX_WER, (wer, final.stable_text)
    [opened] = stream_log(languages_service, "lang-en", "stream opened")
    assert opened["model"] == "whisper-tiny-en"
    assert not stream_log(languages_service, "lang-en", "language detected")


async def test_a_language_whisper_does_not_know_is_refused_naming_the_fix(asr):
    async def send():
        yield asr_pb2.RecognizeRequest(config=config_for("lang-xx", language="xx"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [_ async for _ in asr.Recognize(send())]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not supported by model whisper-base" in caught.value.details()
    assert "Whisper language code" in caught.value.details()


# -- the detection policy on Whisper's own probabilities (no service needed) ------------------------

POLICY = LanguagePolicy(expected=("en", "de", "es", "fr", "it", "pt"), fallback="en", threshold=0.5)


def test_detection_picks_the_most_probable_expected_language():
    # The Spanish clip's whole-utterance probabilities from the eval: Greek on top, Spanish first of ours.
    probabilities = [("el", 0.221), ("es", 0.166), ("it", 0.022), ("en", 0.020), ("de", 0.008), ("fr", 0.004)]
    decision = choose_language(probabilities, POLICY)
    assert decision.language == "es" and decision.confident
    assert decision.share == pytest.approx(0.166 / 0.220)
    assert (decision.top_language, decision.settled) == ("el", False)  # decided only by a final


def test_an_ambiguous_detection_falls_back():
    # The same clip's first 2 s of speech: English and Spanish nearly tied, Hindi on top.
    probabilities = [("hi", 0.373), ("en", 0.0317), ("es", 0.0288), ("pt", 0.0053), ("it", 0.0041), ("de", 0.0041)]
    decision = choose_language(probabilities, POLICY)
    assert decision.language == "en" == POLICY.fallback
    assert not decision.confident and not decision.settled
    assert decision.share < POLICY.threshold


def test_hints_are_bcp47_or_whisper_codes():
    assert [language_code(h) for h in ("en-GB", "pt_BR", " DE ", "")] == ["en", "pt", "de", ""]
