"""Piper voices and sentence synthesis for the tts service (no gRPC here).

piper-tts is GPL-3.0-or-later: this module is the only place in QuietLine that imports it, and it runs only
inside the tts service's process. Everything else reaches synthesis over the Tts gRPC contract
(see services/tts/README.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from models import ModelError, resolve_model
from services.kit.text import split_sentences

# Speaking-rate multipliers a request may ask for; beyond these Piper's audio degrades badly.
MIN_SPEAKING_RATE = 0.5
MAX_SPEAKING_RATE = 2.0


class VoiceNotFound(LookupError):
    """A request named a voice this process has not loaded; the message lists the loaded ones."""


@dataclass(frozen=True)
class Voice:
    """One loaded Piper voice, named as in the model registry."""

    name: str
    piper: PiperVoice
    sample_rate_hz: int
    # The manifest's checksums of the voice's files: cached audio of another build of the voice is stale.
    model_digest: str = ""

    @property
    def language(self) -> str:
        """The voice's language for text normalisation ("en" for espeak's "en-us")."""
        return self.piper.config.espeak_voice.split("-")[0] or "en"


def load_voice(name: str, state_dir: Path | None, cpu_threads: int) -> Voice:
    """Resolve a voice through the model registry (checksums verified) and load its ONNX model.

    Raises ModelError when the voice is not installed or its folder holds no single .onnx model.
    """
    resolved = resolve_model(name, state_dir)
    folder = resolved.path
    models = sorted(folder.glob("*.onnx"))
    if len(models) != 1:
        raise ModelError(
            f"voice '{name}': expected one .onnx model in {folder}, found {len(models)}: reinstall the voice package"
        )
    model_path = models[0]
    config_path = model_path.with_name(model_path.name + ".json")
    options = onnxruntime.SessionOptions()
    # Bounded threads: the tts shares the node with asr and the LLM (PiperVoice.load would use all cores).
    options.intra_op_num_threads = cpu_threads
    options.inter_op_num_threads = 1
    piper = PiperVoice(
        config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
        session=onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"]),
    )
    digest = hashlib.sha256(json.dumps(resolved.manifest.files, sort_keys=True).encode()).hexdigest()
    return Voice(name=name, piper=piper, sample_rate_hz=piper.config.sample_rate, model_digest=digest)


def speakable_sentences(text: str) -> list[str]:
    """Split text into sentences, dropping pieces with nothing to pronounce (lone punctuation)."""
    return [s for s in split_sentences(text) if any(ch.isalnum() for ch in s)]


class Synthesizer:
    """The loaded voices and the per-sentence synthesis they run (blocking; call from a worker thread)."""

    def __init__(self, voices: Iterable[Voice], default_voice: str,
                 language_voices: dict[str, str] | None = None) -> None:
        self.voices = {voice.name: voice for voice in voices}
        if default_voice not in self.voices:
            raise ValueError(f"default voice '{default_voice}' is not among the loaded voices")
        self.default_voice = default_voice
        self.language_voices = {language.lower(): name for language, name in (language_voices or {}).items()}
        missing = sorted(set(self.language_voices.values()) - set(self.voices))
        if missing:
            raise ValueError(f"language voices {missing} are not among the loaded voices")

    @classmethod
    def load(cls, default_voice: str, state_dir: Path | None, cpu_threads: int,
             language_voices: dict[str, str] | None = None) -> Synthesizer:
        """Load the default voice and every language's voice once, at service start."""
        names = dict.fromkeys([default_voice, *(language_voices or {}).values()])
        return cls([load_voice(name, state_dir, cpu_threads) for name in names], default_voice, language_voices)

    def voice(self, name: str, language: str = "") -> Voice:
        """The loaded voice called `name`; with no name, the voice of `language` (BCP-47; "en-GB"
        falls back to "en"), and with neither the default. VoiceNotFound otherwise."""
        if not name and language:
            tag = language.lower()
            name = self.language_voices.get(tag) or self.language_voices.get(tag.split("-")[0], "")
            if not name:
                languages = ", ".join(sorted(self.language_voices)) or "none"
                raise VoiceNotFound(
                    f"no voice speaks language '{language}' in this tts service (voices are configured for: "
                    f"{languages}): install a Piper voice for it in models/ and map it in tts.language_voices, "
                    "or hand the caller to an agent who speaks the language"
                )
        chosen = name or self.default_voice
        try:
            return self.voices[chosen]
        except KeyError:
            installed = ", ".join(sorted(self.voices))
            raise VoiceNotFound(
                f"voice '{chosen}' is not installed in this tts service: use one of {installed}, "
                "or leave voice empty for the default"
            ) from None

    @staticmethod
    def length_scale(voice: Voice, speaking_rate: float) -> float | None:
        """Piper's length_scale for a speaking-rate multiplier (0 keeps the voice's own default)."""
        if speaking_rate == 0:
            return None
        return voice.piper.config.length_scale / speaking_rate

    def synthesize_sentence(self, voice: Voice, sentence: str, speaking_rate: float = 0.0) -> np.ndarray:
        """One sentence to mono float32 samples in [-1, 1] at the voice's native rate."""
        config = SynthesisConfig(length_scale=self.length_scale(voice, speaking_rate))
        # espeak may still cut a sentence at its own boundaries: join the pieces back together.
        pieces = [chunk.audio_float_array for chunk in voice.piper.synthesize(sentence, syn_config=config)]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces).astype(np.float32, copy=False)
