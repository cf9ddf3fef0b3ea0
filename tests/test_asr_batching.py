"""Decoding windows of several streams as one batch (services.asr.batch_decoding), and the scheduler
that forms the batches (services.asr.servicer.DecodeSlots).

The decoder tests run the real tiny.en model on shared recordings: a batch of one must give exactly
what faster-whisper's own transcribe() gives, and a batch of many the same words as one at a time.
The scheduler tests drive DecodeSlots with a plain function standing in for the model, since what
is tested is which decodes run together and in what order.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from services.asr.recognizer import WindowJob
from services.asr.servicer import DecodeSlots
from services.kit.audio import read_recording

CLIPS = 6


@pytest.fixture(scope="module")
def recognizer(state_dir):
    from services.asr.recognizer import Recognizer
    from services.kit.config import AsrSettings

    return Recognizer.load(AsrSettings(multilingual_model=""), state_dir)


@pytest.fixture(scope="module")
def windows(shared_data) -> list[np.ndarray]:
    """The first CLIPS English recordings, cut to a stream window's length (15 s)."""
    paths = sorted((shared_data / "speech" / "wav").glob("*.wav"))[:CLIPS]
    return [read_recording(path, 16000)[:15 * 16000] for path in paths]


def word_tuples(transcript):
    return [(w.text, w.start_s, w.end_s, round(w.probability, 4)) for w in transcript.words]


def test_a_batch_of_one_decodes_exactly_as_transcribe_does(recognizer, windows):
    from services.asr.recognizer import _transcript_of

    options = recognizer.decode_options("en", "general", [])
    for samples in windows:
        segments, info = recognizer._transcribe(samples, options, beam_size=recognizer.beam_size,
                                                word_timestamps=True, vad_filter=True)
        expected = _transcript_of(segments, info.language)
        (batched,) = recognizer.transcribe_windows([WindowJob(samples, options)])
        assert expected.text, "the recording should have words"
        assert batched.text == expected.text
        assert word_tuples(batched) == word_tuples(expected)


def test_a_batch_of_many_windows_gives_each_the_words_it_gets_alone(recognizer, windows):
    options = recognizer.decode_options("en", "general", [])
    alone = [recognizer.transcribe_window(samples, options) for samples in windows]
    # Windows of different lengths, one of them with a committed prompt and one of silence, in one call.
    silence = np.zeros(3 * 16000, dtype=np.float32)
    jobs = [WindowJob(samples, options) for samples in windows] + [WindowJob(silence, options)]
    together = recognizer.transcribe_windows(jobs)
    assert [t.text for t in together[:-1]] == [t.text for t in alone]
    for batched, single in zip(together, alone):
        # Word times may move by a frame's rounding at most: the heuristics are the same.
        assert [w.text for w in batched.words] == [w.text for w in single.words]
        assert max(abs(a.start_s - b.start_s) for a, b in zip(batched.words, single.words)) < 0.05
    assert together[-1].text == "" and together[-1].words == ()


def test_narrowband_windows_and_a_capture_mode_window_share_a_call_with_general_ones(recognizer, windows,
                                                                                   shared_data):
    from services.kit.audio import resample

    general = recognizer.decode_options("en", "general", [])
    digits_mode = recognizer.decode_options("en", "digits", [])
    gap = np.zeros(int(0.25 * 8000), dtype=np.float32)
    number = np.concatenate([part for digit in "3859"
                             for part in (read_recording(shared_data / "digits8k" / f"{digit}_lucas_1.wav", 8000), gap)])
    narrowband = resample(windows[0], 16000, 8000)
    results = recognizer.transcribe_windows([
        WindowJob(narrowband, general, rate_hz=8000), WindowJob(number, digits_mode, final=True, rate_hz=8000),
        WindowJob(windows[1], general),
    ])
    assert results[0].text == recognizer.transcribe_window(resample(narrowband, 8000, 16000), general).text
    assert results[1].text.replace(" ", "") == "3859"
    assert results[2].text == recognizer.transcribe_window(windows[1], general).text


# -- the scheduler --------------------------------------------------------------------------------


class RecordingRunner:
    """Stands in for a recogniser's transcribe_windows: records each batch, answers item * 10."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.hold = hold

    def __call__(self, items: list[int]) -> list[int]:
        if self.hold is not None:
            self.hold.wait(5)
        self.batches.append(list(items))
        return [item * 10 for item in items]


async def test_decodes_waiting_together_run_as_one_batch_best_priority_first():
    hold = threading.Event()
    runner = RecordingRunner(hold)
    slots = DecodeSlots(1, max_batch=3)
    first = asyncio.create_task(slots.decode(runner, 1))
    await asyncio.sleep(0.05)  # the first decode holds the only slot
    waiting = []
    for item, priority in [(2, DecodeSlots.INTERIM), (3, DecodeSlots.PAUSE), (4, DecodeSlots.FINAL),
                           (5, DecodeSlots.PAUSE), (6, DecodeSlots.INTERIM)]:
        # Interims do not wait for a slot, but ride along in the next batch while it has room.
        waiting.append(asyncio.create_task(
            slots.decode(runner, item, priority=priority, wait=priority != DecodeSlots.INTERIM)))
        await asyncio.sleep(0.01)
    assert slots.busy  # four wait: the next batch (three) is full
    hold.set()
    results = await asyncio.gather(first, *waiting)
    assert results == [10, 20, 30, 40, 50, None]  # the last interim found no room and was skipped
    # The final, then the older pause decode, then the younger; the interim runs in the batch after.
    assert runner.batches == [[1], [4, 3, 5], [2]]


async def test_decodes_for_different_models_are_never_batched_together():
    hold = threading.Event()
    english, multilingual = RecordingRunner(hold), RecordingRunner()
    slots = DecodeSlots(1, max_batch=4)
    first = asyncio.create_task(slots.decode(english, 1))
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(slots.decode(runner, item))
              for runner, item in [(english, 2), (multilingual, 3), (english, 4)]]
    await asyncio.sleep(0.05)
    hold.set()
    assert await asyncio.gather(first, *others) == [10, 20, 30, 40]
    assert english.batches == [[1], [2, 4]] and multilingual.batches == [[3]]


async def test_without_batching_an_interim_is_skipped_while_the_slot_is_busy():
    hold = threading.Event()
    runner = RecordingRunner(hold)
    slots = DecodeSlots(1, max_batch=1)
    first = asyncio.create_task(slots.decode(runner, 1))
    await asyncio.sleep(0.05)
    assert slots.busy
    assert await slots.decode(runner, 2, priority=DecodeSlots.INTERIM, wait=False) is None
    hold.set()
    assert await first == 10 and runner.batches == [[1]]


async def test_a_cancelled_waiter_leaves_the_queue_and_a_failed_batch_fails_each_of_its_decodes():
    hold = threading.Event()

    seen: list[list[int]] = []

    def failing(items: list[int]) -> list[int]:
        hold.wait(5)
        seen.append(list(items))
        raise RuntimeError("decoder broke")

    slots = DecodeSlots(1, max_batch=4)
    first = asyncio.create_task(slots.decode(failing, 1))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(slots.decode(failing, 2))
    kept = asyncio.create_task(slots.decode(failing, 3))
    await asyncio.sleep(0.05)
    gone.cancel()
    await asyncio.sleep(0.01)
    hold.set()
    for task in (first, kept):
        with pytest.raises(RuntimeError, match="decoder broke"):
            await task
    assert gone.cancelled()
    assert seen == [[1], [3]]  # the cancelled decode was not run
    assert not slots.busy
