"""Stock prompts (greeting, automated-assistant disclosure, hold and acknowledgement phrases) kept as
audio, so they are spoken the instant they are asked for.

Each prompt is synthesised once per voice at the voice's native rate and stored under the state
directory, one file per prompt, so a restart loads it instead of synthesising it again. A request
in any telephone format is served by converting the stored audio (a resample and an encode, well
under a millisecond for a short prompt). The folder is bounded by `tts.prompt_cache_bytes`: the
least recently used files are evicted first.

No Piper here: synthesis goes through the Synthesizer (services/tts/synthesizer.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.tts.speech_text import normalise_for_speech
from services.tts.synthesizer import Synthesizer, Voice, speakable_sentences

log = logging.getLogger("quietline.tts.prompt_cache")

# Bumped when what is stored changes shape, so old files are ignored rather than misread.
FORMAT_VERSION = 2


def prompt_text_key(text: str) -> str:
    """A prompt's text with its whitespace collapsed: how requests are matched to cached prompts."""
    return " ".join(text.split())


def prompt_file_name(voice: Voice, text: str) -> str:
    """The cache file of a prompt: the voice, its build and the text as read (normalised) decide the audio."""
    spoken = [normalise_for_speech(sentence, voice.language) for sentence in speakable_sentences(text)]
    identity = json.dumps([FORMAT_VERSION, voice.name, voice.model_digest, prompt_text_key(text), spoken])
    return hashlib.sha256(identity.encode()).hexdigest() + ".npz"


@dataclass(frozen=True)
class CachedPrompt:
    """A prompt's sentences, each with its audio at the voice's native rate."""

    sentences: tuple[tuple[str, np.ndarray], ...]

    @property
    def nbytes(self) -> int:
        return sum(audio.nbytes for _, audio in self.sentences)


@dataclass
class CacheCounts:
    """How the cache was filled at start: read back from disk, or synthesised now."""

    loaded: int = 0
    synthesised: int = 0


class PromptCache:
    """The configured stock prompts of the default voice, in memory and on disk (bounded)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.entries: dict[tuple[str, str], CachedPrompt] = {}
        self.counts = CacheCounts()

    @classmethod
    def build(cls, synthesizer: Synthesizer, prompts: Iterable[str], folder: Path, max_bytes: int) -> PromptCache:
        """Load each prompt's audio from `folder`, synthesising (and storing) the missing ones.

        Blocking: call at setup, off the event loop.
        """
        cache = cls(folder, max_bytes)
        folder.mkdir(parents=True, exist_ok=True)
        voice = synthesizer.voice("")
        for prompt in prompts:
            if not speakable_sentences(prompt):
                continue
            path = folder / prompt_file_name(voice, prompt)
            entry = cache._read(path)
            if entry is None:
                entry = CachedPrompt(tuple(
                    (sentence, synthesizer.synthesize_sentence(voice, normalise_for_speech(sentence, voice.language)))
                    for sentence in speakable_sentences(prompt)
                ))
                cache._write(path, entry)
                cache.counts.synthesised += 1
            else:
                cache.counts.loaded += 1
            cache.entries[(voice.name, prompt_text_key(prompt))] = entry
        cache._evict()
        return cache

    def get(self, voice_name: str, text: str) -> CachedPrompt | None:
        """The cached prompt for this voice and whole text, or None."""
        return self.entries.get((voice_name, prompt_text_key(text)))

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, path: Path) -> CachedPrompt | None:
        """A stored prompt, or None when absent or unreadable (then it is synthesised again)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                texts = json.loads(str(stored["sentences"]))
                entry = CachedPrompt(tuple(
                    (text, stored[f"audio_{index}"].astype(np.float32, copy=False))
                    for index, text in enumerate(texts)
                ))
        except (OSError, ValueError, KeyError) as err:
            log.warning("unreadable cached prompt replaced", extra={"file": path.name, "error": type(err).__name__})
            return None
        os.utime(path)  # a read is a use: least recently used files go first
        return entry

    def _write(self, path: Path, entry: CachedPrompt) -> None:
        """Store atomically (write, then rename), so a crash never leaves half a file behind."""
        partial = path.with_suffix(".partial.npz")
        arrays = {f"audio_{index}": audio for index, (_, audio) in enumerate(entry.sentences)}
        try:
            np.savez(partial, sentences=np.array(json.dumps([text for text, _ in entry.sentences])), **arrays)
            partial.replace(path)
        except OSError as err:
            # A full or read-only disk costs a synthesis at the next start, not the service.
            log.warning("cached prompt not stored", extra={"file": path.name, "error": err.strerror})
            partial.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Delete the least recently used files until the folder fits max_bytes."""
        files = sorted(self.folder.glob("*.npz"), key=lambda path: path.stat().st_mtime)
        total = sum(path.stat().st_size for path in files)
        for path in files:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
