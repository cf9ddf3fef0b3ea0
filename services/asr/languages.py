"""Which model and language decode a stream: the caller's hint, or detection once per stream.

The asr service loads the English model (`asr.model`, tiny.en on CPU: on the shared English clips
8.2% WER against whisper-base's 7.8%, at about a third of the CPU) and, when `asr.multilingual_model`
names one, a multilingual model for everything else. `RecognizerSet.decode_options` picks per stream:

- hint "en" / "en-XX" -> the English model, language "en";
- any other hint the multilingual model supports -> the multilingual model with that language;
- no hint (and `asr.language` empty) -> the multilingual model with a `StreamLanguage`, which detects
  the language from the stream's own speech once and then keeps it for the whole stream.

Detection is restricted to `asr.expected_languages`: Whisper's raw top language is often an
unexpected one on short or accented speech (a shared Spanish clip comes out as Arabic or Greek), so
the choice is the most probable expected language, and its share of the probability the expected
languages get together must reach `asr.detection_threshold`; otherwise the stream is decoded in
`asr.fallback_language`. Before the utterance ends, a detection is kept only when Whisper's own top
language agrees (in a live stream the Spanish clip's first 2 s gave English at a 0.58 share, with
Hindi on top); the final decides on all the speech it has. benchmarks/asr/languages_eval.py measures
it per language.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.asr import digits
from services.asr.recognizer import SAMPLE_RATE_HZ, DecodeOptions, RecognitionError, Recognizer
from services.kit.config import AsrSettings, ConfigError
from services.kit.metrics import STAGE_LATENCY

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger("quietline.asr")

# Detection on less speech than this is only provisional (for that decode). Whisper's top language on
# the first second of audio was wrong for 6 of the 56 shared clips; among the expected languages, the
# first 2 s of speech gave the right one for 55, and the 56th was below the threshold, so it waited for
# more speech (benchmarks/results/asr_languages.json).
DETECTION_SPEECH_S = 2.0
# Provisional detections (for interims) per stream, bounding the extra encoder passes; after them,
# interims keep the latest provisional language and the final detects once more, on all its speech.
MAX_PROVISIONAL_DETECTIONS = 3


def language_code(hint: str) -> str:
    """The Whisper language code of a BCP-47 hint: "en-GB" -> "en", "pt_BR" -> "pt", "" -> ""."""
    return hint.strip().replace("_", "-").split("-", 1)[0].lower()


@dataclass(frozen=True)
class LanguagePolicy:
    """How detection decides: the languages expected on this line, a threshold and the fallback."""

    expected: tuple[str, ...]
    fallback: str
    threshold: float

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> LanguagePolicy:
        return cls(
            expected=tuple(language_code(code) for code in settings.expected_languages),
            fallback=language_code(settings.fallback_language),
            threshold=settings.detection_threshold,
        )


@dataclass(frozen=True)
class LanguageDecision:
    """The outcome of one detection: the language to decode with and why."""

    language: str
    # The chosen expected language's share of the probability all expected languages get together.
    share: float
    # Whisper's own most probable language and its probability (may be outside the expected set).
    top_language: str
    top_probability: float
    # False: the share was below the threshold, so `language` is the fallback.
    confident: bool

    @property
    def settled(self) -> bool:
        """Confident, and Whisper's own top language agrees: safe to fix before the utterance ends."""
        return self.confident and self.language == self.top_language


def choose_language(probabilities: list[tuple[str, float]], policy: LanguagePolicy) -> LanguageDecision:
    """Pick the language for Whisper's detection `probabilities` ([(code, p)], any order) under `policy`."""
    ranked = sorted(probabilities, key=lambda item: item[1], reverse=True)
    top_language, top_probability = ranked[0]
    candidates = [(code, p) for code, p in ranked if not policy.expected or code in policy.expected]
    total = sum(p for _, p in candidates)
    if not candidates or total <= 0:
        return LanguageDecision(policy.fallback, 0.0, top_language, top_probability, confident=False)
    best, best_probability = candidates[0]
    share = best_probability / total
    confident = share >= policy.threshold
    return LanguageDecision(best if confident else policy.fallback, share, top_language, top_probability, confident)


def speech_of(samples: np.ndarray) -> np.ndarray:
    """The speech in 16 kHz `samples` (Silero VAD, faster-whisper's defaults), silence cut out."""
    from faster_whisper.vad import collect_chunks, get_speech_timestamps

    chunks, _ = collect_chunks(samples, get_speech_timestamps(samples))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def detect_language(model: WhisperModel, samples: np.ndarray, policy: LanguagePolicy) -> tuple[LanguageDecision, float]:
    """Detect the language of 16 kHz `samples` (speech only is used); returns the decision and seconds of speech.

    No speech gives an unconfident decision for the fallback language. Blocking (one encoder pass).
    """
    speech = speech_of(samples)
    speech_s = speech.shape[0] / SAMPLE_RATE_HZ
    if speech_s == 0:
        return LanguageDecision(policy.fallback, 0.0, "", 0.0, confident=False), 0.0
    _, _, probabilities = model.detect_language(speech)
    return choose_language(probabilities, policy), speech_s


class StreamLanguage:
    """The language of one stream without a hint: detected from its speech once, then fixed.

    Every decode of the stream asks `language_for`. A decode with at least `DETECTION_SPEECH_S` of
    speech whose detection is settled (confident, and Whisper's unrestricted top language agrees)
    fixes the language; so does the first final, whatever its detection says (the fallback when it
    is not confident), since it has heard the most speech. Until then each interim decode gets a
    provisional language detected from its own audio (at most `MAX_PROVISIONAL_DETECTIONS` times;
    later interims reuse the last one). Thread-safe.
    """

    def __init__(self, policy: LanguagePolicy, call_id: str = "") -> None:
        self.policy = policy
        self.call_id = call_id
        self.language: str | None = None
        self.decision: LanguageDecision | None = None
        self.detections = 0
        self._provisional = policy.fallback
        self._lock = threading.Lock()

    def language_for(self, model: WhisperModel, samples: np.ndarray, final: bool) -> str:
        """The language to decode these 16 kHz `samples` with; `final`: this decode ends an utterance."""
        with self._lock:
            if self.language is not None:
                return self.language
            if not final and self.detections >= MAX_PROVISIONAL_DETECTIONS:
                return self._provisional
            started = time.perf_counter()
            decision, speech_s = detect_language(model, samples, self.policy)
            if speech_s == 0:
                # Nothing to detect from: the VAD-filtered decode will find no words either.
                return decision.language
            self.detections += 1
            elapsed_s = time.perf_counter() - started
            STAGE_LATENCY.labels("asr", "language_detection").observe(elapsed_s)
            fixed = final or (decision.settled and speech_s >= DETECTION_SPEECH_S)
            if fixed:
                self.language, self.decision = decision.language, decision
            else:
                self._provisional = decision.language
            log.info("language detected", extra={
                "call_id": self.call_id, "language": decision.language, "share": round(decision.share, 3),
                "top_language": decision.top_language, "top_probability": round(decision.top_probability, 3),
                "confident": decision.confident, "settled": decision.settled, "speech_s": round(speech_s, 2),
                "fixed": fixed,
                "detection": self.detections, "detect_ms": round(elapsed_s * 1000, 1),
            })
            return decision.language


@dataclass(frozen=True)
class ModelChoice:
    """The recogniser for a stream and how its language is set."""

    recognizer: Recognizer
    # A Whisper language code, or None when `detection` decides it.
    language: str | None
    detection: StreamLanguage | None = None


class RecognizerSet:
    """The models the asr service holds (English and, optionally, multilingual) and the choice per stream."""

    def __init__(self, english: Recognizer, multilingual: Recognizer | None, settings: AsrSettings) -> None:
        self.english = english
        # A multilingual main model (gpu profile: large-v3-turbo) serves every language on its own.
        self.multilingual = multilingual or (None if english.english_only else english)
        self.settings = settings
        self.policy = LanguagePolicy.from_settings(settings)
        try:
            english.decode_options("en", "general", settings.hotwords)
        except RecognitionError as err:
            raise ConfigError(f"asr.hotwords: {err}") from None
        if self.multilingual is not None:
            self._check_policy(self.multilingual)

    @classmethod
    def load(cls, settings: AsrSettings, state_dir: Path | str | None) -> RecognizerSet:
        """Load `asr.model` and, when set and different, `asr.multilingual_model` (raises models.ModelError)."""
        english = Recognizer.load(settings, state_dir)
        multilingual = None
        if settings.multilingual_model and settings.multilingual_model != settings.model:
            multilingual = Recognizer.load(settings.model_copy(update={"model": settings.multilingual_model}),
                                           state_dir)
            if multilingual.english_only:
                raise ConfigError(
                    f"asr.multilingual_model: {settings.multilingual_model} is English-only: name a multilingual "
                    "model (e.g. whisper-base), or set it to \"\" to serve English only"
                )
        return cls(english, multilingual, settings)

    def _check_policy(self, model: Recognizer) -> None:
        supported = set(model.model.supported_languages)
        unknown = [code for code in (*self.policy.expected, self.policy.fallback) if code not in supported]
        if unknown:
            raise ConfigError(
                f"asr.expected_languages / asr.fallback_language: {', '.join(unknown)} is not a language "
                f"{model.model_name} knows: use Whisper language codes such as en, de, es, fr, it, pt"
            )

    @property
    def recognizers(self) -> list[Recognizer]:
        """Each loaded model once."""
        return [self.english] + ([self.multilingual] if self.multilingual not in (None, self.english) else [])

    def choose(self, hint: str, call_id: str = "") -> ModelChoice:
        """The model and language for a stream whose hint is `hint` ("" falls back to asr.language)."""
        code = language_code(hint) or language_code(self.settings.language)
        if code == "en":
            return ModelChoice(self.english, "en")
        if self.multilingual is None:
            if not code:
                return ModelChoice(self.english, "en")
            raise RecognitionError(
                f"language '{hint}' cannot be recognised: model {self.english.model_name} is English-only and no "
                "multilingual model is configured: send language 'en' (or none), or set asr.multilingual_model "
                "(e.g. whisper-base)"
            )
        if not code:
            return ModelChoice(self.multilingual, None, StreamLanguage(self.policy, call_id))
        if code not in self.multilingual.model.supported_languages:
            raise RecognitionError(
                f"language '{hint}' is not supported by model {self.multilingual.model_name}: send a Whisper "
                "language code such as en, de, fr, es, it or pt, or none to detect it"
            )
        return ModelChoice(self.multilingual, code)

    def decode_options(self, hint: str, mode: str, hotwords: list[str],
                       call_id: str = "") -> tuple[Recognizer, DecodeOptions]:
        """The recogniser and decode options for one stream (raises RecognitionError for a bad request)."""
        choice = self.choose(hint, call_id)
        # The deployment's vocabulary would be suppressed in a constrained mode anyway.
        words = list(hotwords) if mode in digits.CONSTRAINED_MODES else [*self.settings.hotwords, *hotwords]
        options = choice.recognizer.decode_options(choice.language or "", mode, words, self.settings.initial_prompt)
        # The recogniser's options keep the last word on the language (a mode may fix it); detection
        # applies only where they leave it open.
        return choice.recognizer, replace(options, detection=choice.detection if options.language is None else None)

    def warm_up(self) -> None:
        """Warm every loaded model, so the first caller of each language does not pay for it."""
        for recognizer in self.recognizers:
            recognizer.warm_up()
