"""The Tts gRPC servicer: validates a request, synthesises sentence by sentence, streams audio chunks.

Synthesis runs in a worker thread one sentence at a time, so the first sentence's audio leaves while
the next is still being synthesised, and a cancelled call (barge-in) starts no further synthesis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import NoReturn, TypeVar
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import numpy as np
from prometheus_client import Counter

from quietline.v1 import common_pb2, tts_pb2, tts_pb2_grpc
from services.kit.audio import PCM16, AudioError, check_format, encode, resample
from services.kit.config import TtsSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY
from services.tts.prompt_cache import PromptCache
from services.tts.sentence_stream import SentenceStream, speech_units
from services.tts.speech_text import SpeechTextError, is_ssml, normalise_for_speech, ssml_to_speech_text
from services.tts.synthesizer import (
    MAX_SPEAKING_RATE,
    MIN_SPEAKING_RATE,
    Synthesizer,
    Voice,
    VoiceNotFound,
    speakable_sentences,
)

SERVICE = "tts"

PROMPT_CACHE_HITS = Counter(
    "quietline_tts_prompt_cache_hits_total",
    "Synthesize requests served from the prompt cache.",
    ["voice"],
)
CANCELLED = Counter(
    "quietline_tts_cancelled_total",
    "Synthesize streams ended early by the caller (barge-in) before their last chunk.",
)

log = logging.getLogger("quietline.tts")
T = TypeVar("T")


@dataclass(frozen=True)
class SpeechUnit:
    """One sentence or clause to send: its text as written (sent as sentence_text), the text the voice
    reads, the audio when it is already known (a cached prompt), and a pause to follow it (SSML)."""

    text: str
    spoken: str
    audio: np.ndarray | None = None
    pause_ms: int = 0


def output_format(requested: common_pb2.AudioFormat, voice: Voice) -> common_pb2.AudioFormat:
    """The format to send: unspecified encoding means PCM16, an unset rate the voice's native rate.

    Raises AudioError (with the accepted values) when the result cannot be carried.
    """
    fmt = common_pb2.AudioFormat(
        encoding=requested.encoding or PCM16,
        sample_rate_hz=requested.sample_rate_hz or voice.sample_rate_hz,
    )
    check_format(fmt)
    return fmt


def to_wire(samples: np.ndarray, from_hz: int, fmt: common_pb2.AudioFormat) -> bytes:
    """Native-rate float samples to the requested rate and encoding."""
    return encode(resample(samples, from_hz, fmt.sample_rate_hz), fmt.encoding)


def split_chunks(audio: bytes, fmt: common_pb2.AudioFormat, chunk_ms: int) -> Iterator[bytes]:
    """Frames of chunk_ms each (the last may be shorter); chunk_ms 0 gives the whole sentence at once."""
    if chunk_ms == 0:
        yield audio
        return
    bytes_per_sample = 2 if fmt.encoding == PCM16 else 1
    samples_per_chunk = max(1, round(fmt.sample_rate_hz * chunk_ms / 1000))
    step = samples_per_chunk * bytes_per_sample
    for start in range(0, len(audio), step):
        yield audio[start : start + step]


class TtsServicer(tts_pb2_grpc.TtsServicer):
    """Streams Piper speech per sentence in telephone-ready encodings, with a stock-prompt cache."""

    def __init__(self, synthesizer: Synthesizer, prompt_cache: PromptCache, settings: TtsSettings) -> None:
        self.synthesizer = synthesizer
        self.prompt_cache = prompt_cache
        self.settings = settings

    async def _reject(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: str, message: str
    ) -> NoReturn:
        """Count the rejection and end the call with `code` and a message naming the fix."""
        ERRORS.labels(SERVICE, kind).inc()
        await context.abort(code, message)

    async def _voice_and_format(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> tuple[Voice, common_pb2.AudioFormat]:
        """The request's voice and output format, or the call ended with the status that names the fix."""
        try:
            voice = self.synthesizer.voice(request.voice, request.language)
        except VoiceNotFound as err:
            await self._reject(context, grpc.StatusCode.NOT_FOUND, "unknown_voice", str(err))
        rate = request.speaking_rate
        if rate != 0 and not MIN_SPEAKING_RATE <= rate <= MAX_SPEAKING_RATE:
            await self._reject(
                context, grpc.StatusCode.INVALID_ARGUMENT, "bad_speaking_rate",
                f"speaking_rate {rate:g} is out of range: use {MIN_SPEAKING_RATE:g}..{MAX_SPEAKING_RATE:g} "
                "(1 is the voice's normal pace), or 0 for the default",
            )
        try:
            fmt = output_format(request.format, voice)
        except AudioError as err:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_format", str(err))
        return voice, fmt

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """Text in, audio chunks out as soon as each sentence is synthesised."""
        received = time.perf_counter()
        text = request.text
        if not text.strip():
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_text",
                               "text is empty: send the words to speak")
        limit = self.settings.max_text_chars
        if len(text) > limit:
            await self._reject(
                context, grpc.StatusCode.INVALID_ARGUMENT, "text_too_long",
                f"text is {len(text)} characters, over the limit of {limit} (tts.max_text_chars): "
                "send it in several requests, one or a few sentences each",
            )
        voice, fmt = await self._voice_and_format(request, context)

        cached = self.prompt_cache.get(voice.name, text) if request.speaking_rate in (0, 1) else None
        if cached is not None:
            PROMPT_CACHE_HITS.labels(voice.name).inc()
            units = [SpeechUnit(sentence, sentence, audio) for sentence, audio in cached.sentences]
        else:
            try:
                units = self._units_of(text, voice)
            except SpeechTextError as err:
                await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_text", str(err))
        sentences = [unit.text for unit in units]
        if not sentences:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_text",
                               "text has nothing to pronounce (only punctuation or symbols): send words")

        stream = self._stream(request, context, voice, fmt, _listed(units), received, len(units))
        async for response in self._reported(stream, context, request.call, "synthesize", received, lambda: {
            "sentences": len(sentences), "cached": cached is not None,
        }):
            yield response

    async def _reported(
        self,
        stream: AsyncIterator[tts_pb2.SynthesizeResponse],
        context: grpc.aio.ServicerContext,
        call: common_pb2.CallRef,
        event: str,
        received: float,
        fields: Callable[[], dict],
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """Pass `stream` on; a synthesis failure becomes INTERNAL, a barge-in is counted, and the
        outcome is logged with `fields()` (read at the end)."""
        # Stays "cancelled" when the caller hangs up or barges in (CancelledError / GeneratorExit here).
        outcome = "cancelled"
        try:
            async with contextlib.aclosing(stream):
                async for response in stream:
                    yield response
            outcome = "completed"
        except grpc.aio.AbortError:
            outcome = "refused"
            raise
        except Exception as err:  # noqa: BLE001 - any synthesis failure becomes a clear status, not a crash
            outcome = "failed"
            ERRORS.labels(SERVICE, "synthesis").inc()
            # The exception type only: its message could quote the caller's text.
            log.error("synthesis failed", extra={"call_id": call.call_id, "error": type(err).__name__})
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"synthesis failed ({type(err).__name__}): retry; if it persists, check the tts log")
        finally:
            if outcome == "cancelled":
                CANCELLED.inc()
            log.info(event, extra={"call_id": call.call_id, "turn": call.turn, "outcome": outcome, **fields(),
                                   "duration_ms": round((time.perf_counter() - received) * 1000, 1)})

    async def _stream(
        self,
        request: tts_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext,
        voice: Voice,
        fmt: common_pb2.AudioFormat,
        units: AsyncIterator[SpeechUnit],
        received: float,
        count: int | None,
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """The response chunks, unit by unit (synthesised here unless the unit brings its audio); stops
        at once when the call is cancelled. With `count` unknown (text still arriving), the stream
        ends with an empty chunk that has `last` set."""
        sent_any = False
        sent_last = False
        index = -1
        async for index, unit in _enumerate(units):
            if context.cancelled():
                raise asyncio.CancelledError
            sentence = unit.text
            audio = await asyncio.to_thread(self._unit_to_wire, voice, unit, request.speaking_rate, fmt)
            is_last_sentence = count is not None and index == count - 1
            chunks = list(split_chunks(audio, fmt, request.chunk_ms)) if audio else []
            for position, chunk in enumerate(chunks):
                if context.cancelled():
                    raise asyncio.CancelledError
                response = tts_pb2.SynthesizeResponse(
                    audio=chunk,
                    sentence_index=index,
                    sentence_text=sentence if position == 0 else "",
                    last=is_last_sentence and position == len(chunks) - 1,
                )
                if not sent_any:
                    # The stream's format is stated once, on its first chunk.
                    response.format.CopyFrom(fmt)
                    STAGE_LATENCY.labels(SERVICE, "first_audio").observe(time.perf_counter() - received)
                    sent_any = True
                sent_last = response.last
                yield response
        if not sent_last:
            # The final unit produced no audio, or the text's end was only known now: close the stream.
            closing = tts_pb2.SynthesizeResponse(last=True, sentence_index=max(index, 0))
            if not sent_any:
                closing.format.CopyFrom(fmt)
            yield closing

    async def SynthesizeStream(
        self, request_iterator: AsyncIterator[tts_pb2.SynthesizeStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """Text arriving in pieces in, audio out as soon as each sentence or clause is complete."""
        received = time.perf_counter()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_text",
                               "the stream carried no request: send the settings and the text")
        settings = first.settings
        voice, fmt = await self._voice_and_format(settings, context)
        limit = self.settings.max_text_chars
        pieces = SentenceStream()
        received_chars = 0
        units_sent = 0

        async def units() -> AsyncIterator[SpeechUnit]:
            nonlocal received_chars, units_sent
            # One text to begin with: the first request's settings.text and its text field.
            texts = [settings.text + first.text]
            iterator = aiter(request_iterator)
            while True:
                for text in texts:
                    received_chars += len(text)
                    if received_chars > limit:
                        await self._reject(
                            context, grpc.StatusCode.INVALID_ARGUMENT, "text_too_long",
                            f"the streamed text passed {limit} characters (tts.max_text_chars): "
                            "end this stream and start another for the rest",
                        )
                    for unit in pieces.feed(text):
                        units_sent += 1
                        yield self._unit(unit, voice)
                request = await anext(iterator, None)
                if request is None:
                    break
                texts = [request.text]
            for unit in pieces.finish():
                units_sent += 1
                yield self._unit(unit, voice)
            if units_sent == 0:
                await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_text",
                                   "the streamed text has nothing to pronounce: send words")

        stream = self._stream(settings, context, voice, fmt, units(), received, None)
        async for response in self._reported(stream, context, settings.call, "synthesize stream", received,
                                             lambda: {"units": units_sent}):
            yield response

    @staticmethod
    def _unit(text: str, voice: Voice) -> SpeechUnit:
        """A unit of plain text: the voice reads its normalised form (numbers, dates, ids spelled out)."""
        return SpeechUnit(text, normalise_for_speech(text, voice.language))

    def _units_of(self, text: str, voice: Voice) -> list[SpeechUnit]:
        """The units of a whole request's text: SSML pieces with their pauses, or plain sentences."""
        if not is_ssml(text):
            # A long sentence is spoken clause by clause, so its first words wait for less synthesis.
            return [self._unit(unit, voice) for sentence in speakable_sentences(text) for unit in speech_units(sentence)]
        units: list[SpeechUnit] = []
        for piece in ssml_to_speech_text(text, voice.language):
            sentences = speakable_sentences(piece.text)
            for position, sentence in enumerate(sentences):
                pause = piece.pause_ms if position == len(sentences) - 1 else 0
                # SSML text comes out normalised already (say-as decided how it is read).
                units.append(SpeechUnit(sentence, sentence, pause_ms=pause))
            if not sentences and piece.pause_ms and units:
                last = units[-1]
                units[-1] = SpeechUnit(last.text, last.spoken, last.audio, last.pause_ms + piece.pause_ms)
        return units

    def _unit_to_wire(self, voice: Voice, unit: SpeechUnit, rate: float, fmt: common_pb2.AudioFormat) -> bytes:
        """Worker-thread step: synthesise one unit (unless its audio is known), add its pause, and
        convert it to the wire format."""
        samples = unit.audio if unit.audio is not None else self.synthesizer.synthesize_sentence(voice, unit.spoken, rate)
        if unit.pause_ms:
            pause = np.zeros(voice.sample_rate_hz * unit.pause_ms // 1000, dtype=np.float32)
            samples = np.concatenate([samples, pause])
        return to_wire(samples, voice.sample_rate_hz, fmt)


async def _listed(units: list[SpeechUnit]) -> AsyncIterator[SpeechUnit]:
    for unit in units:
        yield unit


async def _enumerate(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    index = 0
    async for item in items:
        yield index, item
        index += 1
