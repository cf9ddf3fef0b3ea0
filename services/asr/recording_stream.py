"""Stream a recording to the asr service as a caller's line would, and time what comes back.

Used by `quietline asr` and `make bench-asr`, so the CLI and the benchmark measure the same thing.
Audio goes out in 20 ms frames on a real-time schedule (or as fast as possible with `realtime=False`);
when the service reports that speech stopped, the client asks for the final at once (as the
gateway's turn model does), and it half-closes when the recording ends. In a capture mode (digits,
ids, yes/no) it first waits `CAPTURE_PAUSE_S` of the recording for more speech, because callers
pause between the groups of a number they read out (and, sent faster than real time, leaves the final
to the half-close).

Timings, on one monotonic clock:
- `end_of_speech_to_final_ms`: for each final, from the moment the last voiced audio was sent (the
  SPEECH_STOPPED offset mapped onto the send schedule) to the final's arrival. In `realtime=False`
  mode the schedule does not exist, so it is measured from the half-close instead.
  In a capture mode it includes the CAPTURE_PAUSE_S the client waits before asking.
- `request_to_final_ms`: for each final, from the flush (or half-close) that asked for it to its
  arrival: the service's own share.
- `speech_start_to_first_interim_ms`: from when the first voiced audio was sent to the first interim.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from quietline.v1 import asr_pb2, asr_pb2_grpc, common_pb2
from services.asr.client import FLUSH
from services.kit import audio
from services.kit.channels import open_channel

FRAME_MS = 20
# In a capture mode the client asks for the final only after this much of the recording without speech.
CAPTURE_PAUSE_S = 0.7
# The caller stays on the line this long after the recording ends (digital silence), so the service's
# VAD can see the stop.
TRAILING_SILENCE_S = 0.6


@dataclass
class StreamedRecognition:
    """What one streamed recording produced."""

    text: str = ""
    language: str = ""
    finals: list[dict] = field(default_factory=list)
    interims: list[dict] = field(default_factory=list)
    end_of_speech_to_final_ms: list[float] = field(default_factory=list)
    request_to_final_ms: list[float] = field(default_factory=list)
    speech_start_to_first_interim_ms: float | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "interims": self.interims,
            "finals": self.finals,
            "end_of_speech_to_final_ms": self.end_of_speech_to_final_ms[-1] if self.end_of_speech_to_final_ms else None,
            "all_end_of_speech_to_final_ms": self.end_of_speech_to_final_ms,
            "request_to_final_ms": self.request_to_final_ms[-1] if self.request_to_final_ms else None,
            "speech_start_to_first_interim_ms": self.speech_start_to_first_interim_ms,
            "real_time_factor": round(self.wall_s / self.audio_s, 3) if self.audio_s else None,
        }


def encode_for_line(samples_16k: np.ndarray, fmt: common_pb2.AudioFormat) -> bytes:
    """16 kHz float32 samples as the wire bytes of `fmt` (resampled with soxr)."""
    return audio.encode(audio.resample(samples_16k, 16000, fmt.sample_rate_hz), fmt.encoding)


async def stream_recording(
    target: str,
    wire_audio: bytes,
    fmt: common_pb2.AudioFormat,
    *,
    mode: int = asr_pb2.RECOGNITION_MODE_GENERAL,
    language: str = "",
    hotwords: list[str] | None = None,
    realtime: bool = True,
    trailing_silence_s: float = TRAILING_SILENCE_S,
    deadline_s: float = 600.0,
) -> StreamedRecognition:
    """Stream `wire_audio` (already in `fmt`) to the asr service at `target`; collect and time the results."""
    bytes_per_sample = 2 if fmt.encoding == common_pb2.AUDIO_ENCODING_PCM16 else 1
    frame_bytes = fmt.sample_rate_hz * FRAME_MS // 1000 * bytes_per_sample
    silence_sample = audio.encode(np.zeros(1, dtype=np.float32), fmt.encoding)
    wire_audio = wire_audio + silence_sample * int(fmt.sample_rate_hz * trailing_silence_s)
    result = StreamedRecognition(audio_s=len(wire_audio) / bytes_per_sample / fmt.sample_rate_hz)
    started = time.perf_counter()
    half_closed_at: list[float] = []
    # When each flush was sent, in order (the service answers every flush with one final).
    flushed_at: list[float] = []
    # Stream offset (ms) of the last SPEECH_STOPPED not yet answered by a flush.
    pending_stop_ms: list[int] = []
    capture = mode != asr_pb2.RECOGNITION_MODE_GENERAL
    pause_ms = int(CAPTURE_PAUSE_S * 1000) if capture else 0
    # Sent faster than real time, the audio is far ahead of the service's speech events, so a pause
    # cannot be judged: a capture answer is then finalised by the half-close alone.
    flush_on_pause = realtime or not capture

    def wall_time_of(offset_ms: int) -> float:
        return started + offset_ms / 1000

    async def requests():
        yield asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(
            call=common_pb2.CallRef(call_id="asr-cli"), format=fmt, language=language, mode=mode,
            hotwords=hotwords or [], interim_results=True,
        ))
        sent = 0
        for offset in range(0, len(wire_audio), frame_bytes):
            if flush_on_pause and pending_stop_ms and sent * FRAME_MS >= pending_stop_ms[0] + pause_ms:
                pending_stop_ms.clear()
                flushed_at.append(time.perf_counter())
                yield asr_pb2.RecognizeRequest(control=FLUSH)
            yield asr_pb2.RecognizeRequest(audio=wire_audio[offset:offset + frame_bytes])
            sent += 1
            if realtime:
                await asyncio.sleep(max(0.0, started + sent * FRAME_MS / 1000 - time.perf_counter()))
            else:
                await asyncio.sleep(0)
        half_closed_at.append(time.perf_counter())

    speech_started_at: float | None = None
    speech_stopped_at: float | None = None
    texts = []
    async with open_channel(target, deadline_s) as channel:
        async for response in asr_pb2_grpc.AsrStub(channel).Recognize(requests()):
            now = time.perf_counter()
            if response.HasField("speech_event"):
                event = response.speech_event
                if event.kind == asr_pb2.SpeechEvent.KIND_SPEECH_STARTED:
                    speech_started_at = wall_time_of(event.offset_ms) if realtime else now
                    pending_stop_ms.clear()  # the caller went on: no flush for the earlier stop
                elif event.kind == asr_pb2.SpeechEvent.KIND_SPEECH_STOPPED:
                    speech_stopped_at = wall_time_of(event.offset_ms) if realtime else None
                    pending_stop_ms[:] = [event.offset_ms]
                continue
            hypothesis = response.hypothesis
            if hypothesis.is_final:
                requested_at = flushed_at.pop(0) if flushed_at else (half_closed_at or [now])[0]
                if not hypothesis.stable_text.strip():
                    continue  # a flush over silence or noise: nothing was said
                texts.append(hypothesis.stable_text.strip())
                result.language = hypothesis.language
                reference = speech_stopped_at if speech_stopped_at is not None else (half_closed_at or [now])[0]
                result.end_of_speech_to_final_ms.append(round((now - reference) * 1000, 1))
                result.request_to_final_ms.append(round((now - requested_at) * 1000, 1))
                result.finals.append({"text": hypothesis.stable_text, "at_ms": round((now - started) * 1000, 1),
                                      "confidence": round(hypothesis.confidence, 3),
                                      "audio_ms": [hypothesis.audio_start_ms, hypothesis.audio_end_ms]})
                speech_stopped_at = None
            else:
                if result.speech_start_to_first_interim_ms is None and speech_started_at is not None:
                    result.speech_start_to_first_interim_ms = round((now - speech_started_at) * 1000, 1)
                result.interims.append({"at_ms": round((now - started) * 1000, 1),
                                        "stable": hypothesis.stable_text, "unstable": hypothesis.unstable_text})
    result.wall_s = time.perf_counter() - started
    result.text = " ".join(texts)
    return result
