"""Incremental decoding of one utterance: LocalAgreement-2 over a bounded window that is re-decoded.

The policy of whisper_streaming (Macháček, Dabre and Bojar, "Turning Whisper into Real-Time
Transcription System", 2023), without gRPC or threads so that the servicer, tests and benchmarks
drive the same code:

- Audio arrives into a window (kept at the wire's rate). Each decode covers the whole window, with the
  text committed before the window as the prompt.
- The words two consecutive decodes agree on (compared without case and punctuation) are committed:
  they never change again and become the interim's `stable_text`; the rest of the latest decode is
  the unstable tail. A word is committed only when both decodes heard at least `COMMIT_GUARD_S` of
  audio after it: Whisper revises a word on the context that follows it.
- The window never exceeds `max_window_s`: past it, the audio up to the last committed word is dropped;
  if that is not enough (the decodes did not agree for a whole window), the latest decode's words
  are committed without agreement (all but its last `FORCED_TAIL_S`) and their audio dropped.
- The final comes from the latest decode, when that decode already heard all the speech, or else
  from one more decode of the window. While the window still holds the whole utterance (up to
  `max_window_s`), that decode's words are the final as they are: with all the context they may
  correct a word the interims committed early, so a final need not start with the last interim's
  stable text (stable text never changes from one interim to the next). Past that, the final is the
  committed words plus the decode's words after them.

Measured with `make bench-asr` on the 46 shared English clips (tiny.en, beam 1): WER 9.27% for the
streamed finals against 8.97% for one offline decode of the same audio (ratio 1.03); finals made of
committed words plus the tail gave 9.57%. Cutting the decoded audio to the uncommitted tail (eagerly,
or at the final) cost 2 to 3 points of WER, so the window keeps committed audio until it must be
bounded; decoding it costs little more, since Whisper's encoder always runs on a 30 s frame.

Word times are seconds from the start of the stream; sample positions count wire-rate samples from
the start of the stream.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from services.asr.recognizer import RecognizedWord

# Committed text given to the decoder as the prompt: Whisper reads at most 223 prompt tokens, and the
# mode prompt and hotwords share them.
PROMPT_CHARS = 200
# The longest run of committed words looked for at the start of a new decode (to skip re-decoded words).
ANCHOR_WORDS = 5
# A re-decoded committed word is looked for this close (seconds) to where it was committed.
ANCHOR_SLACK_S = 1.0
# A word is committed only when it ended this long before the end of the audio the previous decode heard.
COMMIT_GUARD_S = 1.5
# When the window overflows, the latest decode's words are committed except those ending in this tail.
FORCED_TAIL_S = 1.0


def word_key(text: str) -> str:
    """A word as agreement compares it: lower case, without punctuation."""
    return re.sub(r"[^\w']", "", text.lower())


def join_words(words: list[RecognizedWord] | tuple[RecognizedWord, ...]) -> str:
    """The text of consecutive words, spaced as the decoder spaced them."""
    text = ""
    for word in words:
        piece = word.text
        if not word.spaced and text and piece[:1] == text[-1:] and not piece[:1].isalnum():
            # Two decodes both punctuated the seam ("1," + ",0001"): keep one mark.
            piece = piece[1:]
        text += (" " if word.spaced else "") + piece
    return text.strip()


@dataclass(frozen=True)
class WindowRequest:
    """A snapshot of the window to decode: wire-rate samples and where they sit in the stream."""

    samples: np.ndarray
    start_sample: int
    end_sample: int
    # Committed text that precedes the window (the decoder's prompt).
    previous_text: str


class IncrementalTranscript:
    """One utterance decoded incrementally; see the module docstring for the policy."""

    def __init__(self, rate_hz: int, start_sample: int, max_window_s: float,
                 commit_guard_s: float = COMMIT_GUARD_S) -> None:
        self.rate_hz = rate_hz
        self.start_sample = start_sample
        self.window_start = start_sample
        self._chunks: deque[np.ndarray] = deque()
        self._window_samples = 0
        self.max_window_samples = max(1, int(max_window_s * rate_hz))
        self.commit_guard_s = commit_guard_s
        self.committed: list[RecognizedWord] = []
        # The uncommitted words of the latest decode.
        self.hypothesis: list[RecognizedWord] = []
        # End of the audio the latest applied decode heard (stream sample).
        self.decoded_until = start_sample
        self.decodes = 0
        self.language = ""
        # The latest decode's words when it covered the whole utterance (None once the window was bounded).
        self.whole_decode: list[RecognizedWord] | None = None

    # -- audio ---------------------------------------------------------------------------------------
    @property
    def end_sample(self) -> int:
        return self.window_start + self._window_samples

    @property
    def window_samples(self) -> int:
        return self._window_samples

    def append(self, samples: np.ndarray) -> None:
        """Add wire-rate float32 samples at the end of the window."""
        if samples.size:
            self._chunks.append(samples)
            self._window_samples += samples.shape[0]

    def _drop_before(self, sample: int) -> None:
        """Drop the window's audio before stream sample `sample`."""
        drop = min(max(0, sample - self.window_start), self._window_samples)
        self.window_start += drop
        self._window_samples -= drop
        while drop and self._chunks:
            head = self._chunks[0]
            if head.shape[0] <= drop:
                self._chunks.popleft()
                drop -= head.shape[0]
            else:
                self._chunks[0] = head[drop:]
                drop = 0

    def request(self) -> WindowRequest:
        """The window to decode now (a copy: audio may keep arriving while it is decoded)."""
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        return WindowRequest(samples, self.window_start, self.end_sample, self._previous_text())

    def _sample_of(self, time_s: float) -> int:
        return round(time_s * self.rate_hz)

    def _previous_text(self) -> str:
        window_start_s = self.window_start / self.rate_hz
        text = join_words([w for w in self.committed if w.end_s <= window_start_s + 1e-3])
        if len(text) <= PROMPT_CHARS:
            return text
        # Cut at a word boundary.
        tail = text[-PROMPT_CHARS:]
        return tail.split(" ", 1)[1] if " " in tail else tail

    # -- decodes -------------------------------------------------------------------------------------
    def _absolute(self, request: WindowRequest, words: tuple[RecognizedWord, ...]) -> list[RecognizedWord]:
        offset_s = request.start_sample / self.rate_hz
        end_s = request.end_sample / self.rate_hz
        return [replace(w, start_s=min(end_s, w.start_s + offset_s), end_s=min(end_s, w.end_s + offset_s))
                for w in words]

    def _new_part(self, words: list[RecognizedWord]) -> list[RecognizedWord]:
        """The words of a decode that come after the committed ones.

        A decode of a window that still holds committed audio repeats those words: find the last
        committed words (the longest run, up to ANCHOR_WORDS) near where they were committed and keep
        what follows; failing that, keep the words whose middle lies after the last committed word.
        """
        if not self.committed:
            return words
        last = self.committed[-1]
        committed_keys = [word_key(w.text) for w in self.committed[-ANCHOR_WORDS:]]
        keys = [word_key(w.text) for w in words]
        for run in range(len(committed_keys), 0, -1):
            tail = committed_keys[-run:]
            best: int | None = None
            for end in range(run, len(words) + 1):
                if keys[end - run:end] != tail:
                    continue
                distance = abs(words[end - 1].end_s - last.end_s)
                if distance <= ANCHOR_SLACK_S and (best is None or distance < abs(words[best - 1].end_s - last.end_s)):
                    best = end
            if best is not None:
                return words[best:]
        return [w for w in words if (w.start_s + w.end_s) / 2 > last.end_s]

    def apply(self, request: WindowRequest, words: tuple[RecognizedWord, ...], language: str = "") -> list[RecognizedWord]:
        """Take in a decode of `request` (word times relative to its first sample); returns the newly committed words."""
        decoded = self._absolute(request, words)
        # A decode of the whole utterance so far (nothing dropped from the window yet): the final may use it whole.
        self.whole_decode = decoded if request.start_sample == self.start_sample else None
        fresh = self._new_part(decoded)
        # Only words both decodes heard whole: the previous decode's last words may be cut off mid-word.
        heard_until_s = self.decoded_until / self.rate_hz - self.commit_guard_s
        agreed = 0
        for before, now in zip(self.hypothesis, fresh):
            if word_key(before.text) != word_key(now.text) or max(before.end_s, now.end_s) > heard_until_s:
                break
            agreed += 1
        newly = fresh[:agreed]
        self.committed.extend(newly)
        self.hypothesis = fresh[agreed:]
        self.decoded_until = max(self.decoded_until, request.end_sample)
        self.decodes += 1
        if language:
            self.language = language
        self.bound(self.decoded_until)
        return newly

    def bound(self, heard_until: int) -> None:
        """Keep the window within `max_window_s`, dropping only audio before `heard_until`.

        `heard_until`: the stream sample up to which the audio was decoded or is known to hold no speech.
        Committed audio goes first; if the window is still too long (the decodes did not agree for a
        whole window), the latest decode's words are committed without agreement, all but those in its
        last FORCED_TAIL_S; words are never dropped uncommitted.
        """
        if self._window_samples <= self.max_window_samples:
            return
        if self.committed:
            self._drop_before(self._sample_of(self.committed[-1].end_s))
        if self._window_samples <= self.max_window_samples:
            return
        forced_until_s = heard_until / self.rate_hz - FORCED_TAIL_S
        forced = [w for w in self.hypothesis if w.end_s <= forced_until_s]
        if forced:
            self.committed.extend(forced)
            self.hypothesis = self.hypothesis[len(forced):]
            self._drop_before(self._sample_of(forced[-1].end_s))
        if self._window_samples > self.max_window_samples:
            # The decoder made no words of it (noise, silence): keep the recent half.
            self._drop_before(min(heard_until, self.end_sample - self.max_window_samples // 2))
            window_start_s = self.window_start / self.rate_hz
            early = [w for w in self.hypothesis if w.start_s < window_start_s]
            self.committed.extend(early)
            self.hypothesis = self.hypothesis[len(early):]

    def has_heard(self, sample: int) -> bool:
        """Whether the latest decode heard the audio up to stream sample `sample`."""
        return self.decodes > 0 and self.decoded_until >= sample

    def final_words(self, request: WindowRequest | None = None,
                    words: tuple[RecognizedWord, ...] = ()) -> list[RecognizedWord]:
        """The utterance's words, from a decode of `request` if given, otherwise from the latest decode.

        When that decode heard the whole utterance (its window still starts where the utterance does),
        its words are the final, as one offline decode of the utterance would be: with all the context,
        it may correct words that interims committed early (measured in the module docstring). Otherwise
        the final is the committed words plus the decode's words after them.
        """
        if request is not None:
            decoded = self._absolute(request, words)
            if request.start_sample == self.start_sample:
                return decoded
            return [*self.committed, *self._new_part(decoded)]
        if self.whole_decode is not None:
            return list(self.whole_decode)
        return [*self.committed, *self.hypothesis]
