"""Audio on the wire: decoding and encoding PCM16 / G.711, resampling, reading caller recordings.

Resampling uses soxr (a real band-limited resampler); G.711 uses the standard library's codec.
Every service converts audio through these functions so there is one way to do it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile
import soxr

from quietline.v1 import common_pb2

with warnings.catch_warnings():
    # audioop is deprecated for 3.13; this project pins Python 3.11, where it is the stdlib G.711 codec.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PCM16 = common_pb2.AUDIO_ENCODING_PCM16
MULAW = common_pb2.AUDIO_ENCODING_MULAW
ALAW = common_pb2.AUDIO_ENCODING_ALAW


class AudioError(ValueError):
    """Audio that cannot be used; the message names the problem and the fix."""


def check_format(fmt: common_pb2.AudioFormat) -> None:
    """Reject formats we cannot carry, with a message that says what is accepted."""
    if fmt.encoding not in (PCM16, MULAW, ALAW):
        raise AudioError("audio encoding is unspecified or unknown: use PCM16, MULAW or ALAW")
    if not 4000 <= fmt.sample_rate_hz <= 48000:
        raise AudioError(f"sample rate {fmt.sample_rate_hz} Hz is out of range: use 4000..48000 Hz (8000 for G.711)")
    if fmt.encoding in (MULAW, ALAW) and fmt.sample_rate_hz != 8000:
        raise AudioError(f"G.711 is defined at 8000 Hz, not {fmt.sample_rate_hz} Hz: send 8000 Hz or use PCM16")


def decode(payload: bytes, encoding: int) -> np.ndarray:
    """Wire bytes to float32 samples in [-1, 1]."""
    if encoding == MULAW:
        payload = audioop.ulaw2lin(payload, 2)
    elif encoding == ALAW:
        payload = audioop.alaw2lin(payload, 2)
    elif len(payload) % 2:
        raise AudioError("PCM16 audio must have an even number of bytes: send whole 16-bit samples")
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0


def encode(samples: np.ndarray, encoding: int) -> bytes:
    """float32 samples in [-1, 1] to wire bytes."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    if encoding == MULAW:
        return audioop.lin2ulaw(pcm, 2)
    if encoding == ALAW:
        return audioop.lin2alaw(pcm, 2)
    return pcm


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of a mono float32 signal."""
    if from_hz == to_hz or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


def read_recording(path: Path | str, target_hz: int) -> np.ndarray:
    """Read a caller recording (WAV/FLAC/OGG, any rate, mono or stereo) as mono float32 at target_hz."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"recording {path} does not exist: give the path of a WAV file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"recording {path} is not readable audio ({err}): give a WAV, FLAC or OGG file") from None
    if samples.shape[0] == 0:
        raise AudioError(f"recording {path} is empty: record the caller's question and try again")
    mono = samples.mean(axis=1)
    if float(np.max(np.abs(mono))) < 1e-4:
        raise AudioError(f"recording {path} is silent: record the caller's question and try again")
    return resample(mono, int(rate), target_hz)


def write_wav(path: Path | str, samples: np.ndarray, sample_rate_hz: int) -> None:
    """Write mono float32 samples as a 16-bit PCM WAV file."""
    soundfile.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate_hz, subtype="PCM_16")
