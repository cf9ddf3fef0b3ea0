"""What happened in one call, turn by turn, with the moments each stage finished.

Every latency is measured from the end of the caller's speech (the VAD's stop decision minus its
stop window, i.e. the last voiced audio), on one monotonic clock, in the process that runs the
call's pipeline. The processors stamp events here as they see them; nothing is estimated.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class TurnRecord:
    """One caller turn and the bot's answer."""

    speech_end: float
    caller_text: str = ""
    asr_final: float | None = None
    route: str = ""
    route_reason: str = ""
    bot_sentences: list[str] = field(default_factory=list)
    citations: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    dialog_first_say: float | None = None
    dialog_done: float | None = None
    first_audio: float | None = None
    last_audio: float | None = None
    error: str = ""

    def latency_ms(self) -> dict[str, float | None]:
        def since_speech_end(moment: float | None) -> float | None:
            return None if moment is None else round((moment - self.speech_end) * 1000, 1)

        return {
            "asr_final": since_speech_end(self.asr_final),
            "dialog_first_say": since_speech_end(self.dialog_first_say),
            "tts_first_audio": since_speech_end(self.first_audio),
            "turn_total": since_speech_end(self.last_audio or self.dialog_done),
        }

    def as_dict(self) -> dict:
        return {
            "caller_text": self.caller_text,
            "bot_text": " ".join(self.bot_sentences),
            "citations": self.citations,
            "route": self.route,
            "route_reason": self.route_reason,
            "actions": self.actions,
            "latency_ms": self.latency_ms(),
            **({"error": self.error} if self.error else {}),
        }


class CallTimeline:
    """The shared record of a call that the pipeline's processors write to."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.turns: list[TurnRecord] = []
        # The turn whose answer is being produced (speech ended, reply not finished yet).
        self.open_turn: TurnRecord | None = None
        self.recording_played = asyncio.Event()
        self.call_over = asyncio.Event()
        self.awaiting_transcript = False
        self.caller_speaking = False
        self.last_activity = time.perf_counter()

    def touch(self) -> None:
        self.last_activity = time.perf_counter()

    def caller_started(self) -> None:
        self.caller_speaking = True
        self.touch()

    def caller_stopped(self, stop_window_s: float) -> None:
        """The VAD decided the caller stopped; the speech itself ended a stop window earlier."""
        self.caller_speaking = False
        self.awaiting_transcript = True
        self.open_turn = TurnRecord(speech_end=time.perf_counter() - stop_window_s)
        self.touch()

    def transcript_final(self, text: str) -> TurnRecord | None:
        """Stamp the final transcript; returns the turn to answer, or None when nothing was said."""
        self.awaiting_transcript = False
        self.touch()
        turn = self.open_turn
        if turn is None or not text.strip():
            self.open_turn = None
            return None
        turn.caller_text = text.strip()
        turn.asr_final = time.perf_counter()
        self.turns.append(turn)
        return turn

    def bot_audio_written(self) -> None:
        turn = self.turns[-1] if self.turns else None
        now = time.perf_counter()
        if turn is not None and turn.dialog_first_say is not None:
            if turn.first_audio is None:
                turn.first_audio = now
            turn.last_audio = now
        self.touch()

    def busy(self) -> bool:
        """True while the caller speaks or a turn is being recognised, answered or not yet heard."""
        last = self.turns[-1] if self.turns else None
        answering = last is not None and (last.dialog_done is None or (last.bot_sentences and last.first_audio is None))
        return self.caller_speaking or self.awaiting_transcript or bool(answering)

    def idle_for(self) -> float:
        return time.perf_counter() - self.last_activity

    def summary(self) -> list[dict]:
        return [turn.as_dict() for turn in self.turns]
