"""Speech recognition without gRPC: the faster-whisper model, decode options, and a streaming VAD.

`Recognizer` wraps one `faster_whisper.WhisperModel` shared by every stream of the process; its
`transcribe_*` methods block and are meant to run in a worker thread. `SpeechDetector` turns a
stream of 16 kHz samples into speech started/stopped events with faster-whisper's own Silero model,
carrying the model's recurrent state across chunks so that streaming gives the same probabilities
as one pass over the whole signal.

faster-whisper is imported lazily: importing it pulls in huggingface_hub, which reads the offline
switches at import time, and `run_service` sets them only after the service module is imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.asr import digits
from services.kit import audio
from services.kit.config import AsrSettings

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    from services.asr.languages import StreamLanguage

SAMPLE_RATE_HZ = 16000

# Whisper reads a prompt as text that came before the audio, so an example in the expected shape
# biases the decoder towards it (spelled-out digits, ids).
MODE_PROMPTS = {
    "digits": "Account number: 4 7 1 1 0 9 2.",
    "alphanumeric": "Order ID: W 4 7 1 1 B 9.",
}
# Constrained answers are capped at this many tokens per second of audio (a digit is one token, and
# callers read at most about three a second).
MAX_SPOKEN_DIGITS_PER_S = 4
# A digits utterance whose speech (Silero VAD) spans at most this long is one spoken digit, and is scored.
SINGLE_DIGIT_S = 0.8
# Constrained decodes get this much audio either side of the detected speech.
CAPTURE_MARGIN_S = 0.15
# Whisper's prompt is limited to 224 tokens; keep hotwords well inside it.
MAX_HOTWORDS = 50
MAX_HOTWORDS_CHARS = 400


class RecognitionError(ValueError):
    """A request the recogniser cannot serve; the message names the problem and the fix."""


@dataclass(frozen=True)
class DecodeOptions:
    """How one stream is decoded: a Whisper language code (None: detect), prompt and hotwords."""

    language: str | None
    initial_prompt: str | None = None
    hotwords: str | None = None
    # The RecognitionMode name, lower case without its prefix ("general", "digits", ...).
    mode: str = "general"
    # Constrained modes (digits, alphanumeric): every token outside the mode's vocabulary
    # (services.asr.digits.suppressed_tokens), so the decoder can only answer in it.
    suppressed_tokens: tuple[int, ...] | None = field(default=None, repr=False)
    # With language None: the stream's own detection (services.asr.languages), run once and then fixed.
    # Without one, faster-whisper detects again on every decode.
    detection: StreamLanguage | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WindowJob:
    """One stream window to decode: float32 samples, the stream's options and committed text."""

    samples: np.ndarray
    options: DecodeOptions
    previous_text: str = ""
    # The decode ends an utterance (a stream detecting its language then fixes it).
    final: bool = False
    # The samples' rate: resampled to 16 kHz in the decoding thread, not on the service's event loop.
    rate_hz: int = SAMPLE_RATE_HZ


@dataclass(frozen=True)
class RecognizedWord:
    """One word of a final transcript; times are seconds from the start of the decoded audio."""

    text: str
    start_s: float
    end_s: float
    probability: float
    # Whether the text has a space before this word ("ill-disposed" is decoded as "ill" and "-disposed").
    spaced: bool = True


@dataclass(frozen=True)
class Transcript:
    """A decoded utterance: text, word timings, language and mean word probability."""

    text: str
    words: tuple[RecognizedWord, ...]
    language: str
    confidence: float


class Recognizer:
    """One faster-whisper model shared by every stream of the process."""

    def __init__(self, model: WhisperModel, model_name: str, beam_size: int) -> None:
        self.model = model
        self.model_name = model_name
        self.beam_size = beam_size
        self._suppressed_by_mode: dict[str, tuple[int, ...]] = {}

    @classmethod
    def load(cls, settings: AsrSettings, state_dir: Path | str | None) -> Recognizer:
        """Resolve and verify `settings.model` in the registry and load it (raises models.ModelError)."""
        from faster_whisper import WhisperModel

        from models import resolve_model

        # faster-whisper logs every decode at INFO; timings are ours to log, per call.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        resolved = resolve_model(settings.model, state_dir)
        model = WhisperModel(
            str(resolved.path),
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            # One ctranslate2 worker per decode slot, so concurrent decodes really run in parallel.
            num_workers=settings.max_concurrent_decodes,
            local_files_only=True,
        )
        return cls(model, settings.model, settings.beam_size)

    @property
    def english_only(self) -> bool:
        return not self.model.model.is_multilingual

    def resolve_language(self, hint: str) -> str | None:
        """Map a BCP-47 hint ("en-GB", "de", "") to a Whisper language code; None means detect."""
        code = hint.strip().replace("_", "-").split("-", 1)[0].lower()
        if self.english_only:
            if code in ("", "en"):
                return "en"
            raise RecognitionError(
                f"language '{hint}' cannot be recognised by model {self.model_name}, which is English-only: "
                "send language 'en' (or none), or configure a multilingual model in asr.model "
                "(e.g. whisper-large-v3-turbo)"
            )
        if not code:
            return None
        if code not in self.model.supported_languages:
            raise RecognitionError(
                f"language '{hint}' is not supported by model {self.model_name}: send a Whisper language code "
                "such as en, de, fr, es, it or pt, or none to detect it"
            )
        return code

    def decode_options(self, language_hint: str, mode: str, hotwords: list[str],
                       initial_prompt: str = "") -> DecodeOptions:
        """Options for one stream; `mode` is the lower-case RecognitionMode name without its prefix.

        `hotwords` are the deployment's and the request's together; `initial_prompt` (the deployment's)
        is used unless the mode has its own.
        """
        words = list(dict.fromkeys(w.strip() for w in hotwords if w.strip()))
        if len(words) > MAX_HOTWORDS or sum(len(w) + 1 for w in words) > MAX_HOTWORDS_CHARS:
            raise RecognitionError(
                f"too many hotwords ({len(words)} words, {sum(len(w) + 1 for w in words)} characters, asr.hotwords "
                f"included): send at most {MAX_HOTWORDS} words and {MAX_HOTWORDS_CHARS} characters in all, the ones "
                "this turn needs"
            )
        return DecodeOptions(
            language=self.resolve_language(language_hint),
            initial_prompt=MODE_PROMPTS.get(mode, initial_prompt.strip() or None),
            hotwords=" ".join(words) or None,
            mode=mode,
            suppressed_tokens=self._suppressed_tokens(mode) if mode in digits.CONSTRAINED_MODES else None,
        )

    def _tokenizer(self, language: str | None) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                         language=language or "en")

    def _suppressed_tokens(self, mode: str) -> tuple[int, ...]:
        if mode not in self._suppressed_by_mode:  # a dict write is atomic: two threads at worst both compute
            self._suppressed_by_mode[mode] = digits.suppressed_tokens(self._tokenizer("en"), mode)
        return self._suppressed_by_mode[mode]

    def _transcribe(self, samples: np.ndarray, options: DecodeOptions, final: bool = False, **kwargs: Any):
        """Decode with faster-whisper; `final`: this decode ends an utterance (fixes a detected language)."""
        language = options.language
        if language is None and options.detection is not None:
            language = options.detection.language_for(self.model, samples, final)
        if options.suppressed_tokens is not None:
            kwargs.update(_constrained_decoding(options, samples))
        segments, info = self.model.transcribe(
            samples,
            language=language,
            initial_prompt=options.initial_prompt,
            hotwords=options.hotwords,
            # Each utterance stands alone; conditioning on earlier text invites repetition loops.
            condition_on_previous_text=False,
            **kwargs,
        )
        # transcribe() is lazy: the decoding happens while the generator is consumed.
        return list(segments), info

    def transcribe_final(self, samples: np.ndarray, options: DecodeOptions) -> Transcript:
        """Decode a whole utterance (16 kHz float32) with word timings; silence gives an empty text.

        Blocking: run it in a worker thread.
        """
        segments, info = self._transcribe(
            samples, options, final=True, beam_size=self.beam_size, word_timestamps=True,
            # Silero VAD drops non-speech first, so silence and noise give no text rather than hallucinations.
            vad_filter=True,
        )
        return _transcript_of(segments, info.language)

    def transcribe_window(self, samples: np.ndarray, options: DecodeOptions, previous_text: str = "",
                          final: bool = False) -> Transcript:
        """One window of a stream alone: `transcribe_windows` with a batch of one."""
        return self.transcribe_windows([WindowJob(samples, options, previous_text, final)])[0]

    def transcribe_windows(self, jobs: list[WindowJob]) -> list[Transcript]:
        """Decode windows of one or more streams (16 kHz float32) together, with word timings.

        A window's `previous_text` is what its stream already committed before that audio: it follows
        the mode prompt as the decoder's prompt, so the window continues that text. Windows are decoded
        as one utterance's final is (same beam, Silero filtering), in batches of the same language and
        settings (services.asr.batch_decoding). `final`: the decode ends an utterance (a stream
        detecting its language then fixes it). In digits mode, an utterance whose speech is short enough
        for one digit is scored instead (`_best_single_digit`). Blocking: run it in a worker thread.
        """
        from services.asr.batch_decoding import BatchItem, BatchSettings, decode_batch

        results: list[Transcript | None] = [None] * len(jobs)
        batches: dict[tuple[str, BatchSettings], list[tuple[int, BatchItem, float]]] = {}
        for index, job in enumerate(jobs):
            samples, options, offset_s = audio.resample(job.samples, job.rate_hz, SAMPLE_RATE_HZ), job.options, 0.0
            settings = BatchSettings(beam_size=self.beam_size)
            if options.suppressed_tokens is not None:
                speech = _speech_span_s(samples)
                if options.mode == digits.DIGITS and not job.previous_text and (
                        speech is None or speech[1] - speech[0] <= SINGLE_DIGIT_S):
                    results[index] = self._best_single_digit(samples, options, speech)
                    continue
                if speech is not None:
                    # A decoder forced to answer in digits keeps adding them over silence: decode the speech only.
                    first = max(0, int((speech[0] - CAPTURE_MARGIN_S) * SAMPLE_RATE_HZ))
                    samples = samples[first:int((speech[1] + CAPTURE_MARGIN_S) * SAMPLE_RATE_HZ)]
                    offset_s = first / SAMPLE_RATE_HZ
                settings = BatchSettings.of_transcribe(self.beam_size, _constrained_decoding(options, samples))
            language = self._language_of(samples, options, job.final)
            prompt = " ".join(part for part in (options.initial_prompt, job.previous_text) if part) or None
            batches.setdefault((language, settings), []).append(
                (index, BatchItem(samples, prompt, options.hotwords), offset_s))
        for (language, settings), members in batches.items():
            decoded = decode_batch(self.model, self._tokenizer(language), [item for _, item, _ in members], settings)
            for (index, _, offset_s), segments in zip(members, decoded):
                results[index] = _transcript_of(segments, language, offset_s)
        return results  # type: ignore[return-value]

    def _language_of(self, samples: np.ndarray, options: DecodeOptions, final: bool) -> str:
        """The Whisper language code to decode these samples in: the stream's, detected, or English."""
        if self.english_only:
            return "en"
        if options.language is not None:
            return options.language
        if options.detection is not None:
            return options.detection.language_for(self.model, samples, final)
        return self.model.detect_language(samples)[0]

    def _best_single_digit(self, samples: np.ndarray, options: DecodeOptions,
                           speech: tuple[float, float] | None) -> Transcript:
        """The digit most probable for a short answer: each one scored by the decoder against the audio.

        Decoding commits to its first token, and Silero drops some short narrowband words as non-speech;
        scoring every digit (as word and numeral, after the digits prompt) on one encoder pass picks the
        best of the ten instead (benchmarks/asr/digits_eval.py, results/asr_digits.json).
        """
        from faster_whisper.audio import pad_or_trim

        tokenizer = self._tokenizer(options.language)
        features = self.model.feature_extractor(samples)
        frames = min(features.shape[-1], 3000)
        encoded = self.model.encode(pad_or_trim(features))
        start = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
        if options.initial_prompt:
            start = [tokenizer.sot_prev, *tokenizer.encode(" " + options.initial_prompt.strip())] + start
        best_digit, best_log_probability = "", -np.inf
        for digit, spellings in digits.SPOKEN_DIGITS.items():
            for spelling in spellings:
                result = self.model.model.align(encoded, start, [tokenizer.encode(spelling)], frames)[0]
                log_probability = float(np.sum(np.log(np.maximum(result.text_token_probs, 1e-12))))
                if log_probability > best_log_probability:
                    best_digit, best_log_probability = digit, log_probability
        start_s, end_s = speech or (0.0, samples.shape[0] / SAMPLE_RATE_HZ)
        probability = float(np.exp(best_log_probability))
        word = RecognizedWord(best_digit, start_s, end_s, probability)
        return Transcript(text=best_digit, words=(word,), language=options.language or "en", confidence=probability)

    def warm_up(self) -> None:
        """Run one decode and one VAD pass on generated audio so the first caller does not pay for it."""
        time_s = np.arange(SAMPLE_RATE_HZ, dtype=np.float32) / SAMPLE_RATE_HZ
        tone = 0.1 * np.sin(2 * np.pi * 220.0 * time_s) * np.sin(np.pi * time_s)
        # The constrained vocabularies too (a pass over the whole tokenizer), not by the first capture stream.
        for mode in digits.CONSTRAINED_MODES:
            self._suppressed_tokens(mode)
        options = DecodeOptions(language="en" if self.english_only else None)
        # Without VAD, which would skip the tone and leave the decoder cold.
        self._transcribe(tone.astype(np.float32), options, beam_size=self.beam_size, word_timestamps=True,
                         vad_filter=False)
        SpeechDetector().feed(tone.astype(np.float32))


def _constrained_decoding(options: DecodeOptions, samples: np.ndarray) -> dict[str, Any]:
    """transcribe() settings of a constrained mode (digits, ids) for these 16 kHz samples.

    Measured on digits8k (services.asr.digits): no timestamp tokens, one greedy pass without the
    fallback and no-speech thresholds, which were tuned for free text and reject short answers (streams
    decode only audio the VAD found speech in). The prompt invites a continuing sequence, so the answer
    is also capped at what a caller can say in the audio's time.
    """
    return dict(suppress_tokens=list(options.suppressed_tokens or ()), without_timestamps=True, temperature=0.0,
                no_speech_threshold=None, log_prob_threshold=None,
                max_new_tokens=int(np.ceil(samples.shape[0] / SAMPLE_RATE_HZ * MAX_SPOKEN_DIGITS_PER_S)) + 1)


def _speech_span_s(samples: np.ndarray) -> tuple[float, float] | None:
    """(start, end) in seconds of the speech the streaming detector finds in 16 kHz audio; None: none found.

    The same detector as the stream's speech events; faster-whisper's VAD helper pads and merges
    regions by seconds, too coarse to tell one digit from two.
    """
    detector = SpeechDetector()
    events = detector.feed(samples) + detector.finish()
    starts = [offset_ms for kind, offset_ms in events if kind == SPEECH_STARTED]
    stops = [offset_ms for kind, offset_ms in events if kind != SPEECH_STARTED]
    if not starts:
        return None
    return starts[0] / 1000, (stops[-1] if stops else detector.evaluated_ms) / 1000


def _transcript_of(segments: list, language: str, offset_s: float = 0.0) -> Transcript:
    """faster-whisper's segments (decoded with word timestamps) as a Transcript; `offset_s` is added to times."""
    words = tuple(
        RecognizedWord(w.word.strip(), max(0.0, float(w.start)) + offset_s, max(0.0, float(w.end)) + offset_s,
                       float(w.probability),
                       spaced=index == 0 or w.word[:1].isspace())
        for segment in segments for index, w in enumerate(segment.words or []) if w.word.strip()
    )
    text = " ".join(segment.text.strip() for segment in segments if segment.text.strip())
    confidence = float(np.mean([w.probability for w in words])) if words else 0.0
    return Transcript(text=text, words=words, language=language or "", confidence=confidence)


SPEECH_STARTED = 1
SPEECH_STOPPED = 2


class SpeechDetector:
    """Streaming speech start/stop detection on 16 kHz audio with faster-whisper's Silero VAD model.

    Speech starts after `START_WINDOWS` windows (32 ms each) at or above the threshold and stops after
    `STOP_SILENCE_MS` below faster-whisper's negative threshold. Offsets count from the first sample fed.
    """

    WINDOW = 512
    CONTEXT = 64
    THRESHOLD = 0.5
    # faster-whisper's own hysteresis: below this a window is silence.
    NEGATIVE_THRESHOLD = THRESHOLD - 0.15
    START_WINDOWS = 2
    STOP_SILENCE_MS = 500

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        # The model instance is cached by faster-whisper and shared; its ONNX session is thread-safe.
        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._remainder = np.zeros(0, dtype=np.float32)
        self._windows = 0
        self._speech_run = 0
        self._silence_run = 0
        self._stop_windows = max(1, round(self.STOP_SILENCE_MS * SAMPLE_RATE_HZ / 1000 / self.WINDOW))
        self.in_speech = False
        # Highest speech probability since the last reset_peak(): no window at the threshold means no speech.
        self.peak_probability = 0.0
        # End of the last window at or above the threshold (ms from the first sample fed; 0: none yet).
        self.voiced_until_ms = 0

    def reset_peak(self) -> None:
        self.peak_probability = 0.0

    @property
    def evaluated_ms(self) -> int:
        """End of the audio the detector has judged so far (ms from the first sample fed)."""
        return self._offset_ms(self._windows)

    def _offset_ms(self, window_index: int) -> int:
        return window_index * self.WINDOW * 1000 // SAMPLE_RATE_HZ

    def feed(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Add 16 kHz float32 samples; returns (SPEECH_STARTED | SPEECH_STOPPED, offset_ms) events."""
        audio = np.concatenate([self._remainder, samples.astype(np.float32, copy=False)])
        count = audio.shape[0] // self.WINDOW
        self._remainder = audio[count * self.WINDOW:]
        if count == 0:
            return []
        windows = audio[: count * self.WINDOW].reshape(count, self.WINDOW)
        # Each window sees the last CONTEXT samples of the one before it, as in faster-whisper's batch call.
        contexts = np.concatenate([self._context[None, :], windows[:-1, -self.CONTEXT:]], axis=0)
        batch = np.concatenate([contexts, windows], axis=1)
        probabilities, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -self.CONTEXT:].copy()
        events = []
        for probability in np.asarray(probabilities).reshape(-1):
            index = self._windows
            self._windows += 1
            self.peak_probability = max(self.peak_probability, float(probability))
            if probability >= self.THRESHOLD:
                self.voiced_until_ms = self._offset_ms(index + 1)
            if not self.in_speech:
                self._speech_run = self._speech_run + 1 if probability >= self.THRESHOLD else 0
                if self._speech_run >= self.START_WINDOWS:
                    self.in_speech, self._silence_run = True, 0
                    events.append((SPEECH_STARTED, self._offset_ms(index - self.START_WINDOWS + 1)))
            else:
                self._silence_run = self._silence_run + 1 if probability < self.NEGATIVE_THRESHOLD else 0
                if self._silence_run >= self._stop_windows:
                    self.in_speech, self._speech_run = False, 0
                    events.append((SPEECH_STOPPED, self._offset_ms(index - self._stop_windows + 1)))
        return events

    def finish(self) -> list[tuple[int, int]]:
        """The audio ended: close an open speech region at the end of what was fed."""
        if not self.in_speech:
            return []
        self.in_speech, self._speech_run = False, 0
        end_windows = self._windows - self._silence_run
        return [(SPEECH_STOPPED, self._offset_ms(end_windows))]
