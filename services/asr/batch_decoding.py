"""Decoding the windows of several streams in one pass of the model: batched Whisper decoding.

Streams that are decoded at the same moment (services.asr.servicer.DecodeSlots gathers them) share
one encoder call over their stacked 30 s frames, one decoder call with a prompt per window and one
alignment call for word timings. On a GPU that is what makes many streams per card possible: a batch
of eight costs little more than one. On the cpu profile the batch is usually one window, through the
same code.

Each window is decoded as `WhisperModel.transcribe` decodes it, with faster-whisper's own pieces
and defaults (Silero filtering, prompt layout, temperature fallback with its compression-ratio,
log-probability and no-speech thresholds, timestamp splitting and seeking past an unfinished segment,
word alignment, mapping times back through the filtered-out silence), so a batch of one gives the
same words as `transcribe(..., vad_filter=True, word_timestamps=True, condition_on_previous_text=False)`
(tests/test_asr_batching.py). The windows of one call share the decode settings (`BatchSettings`) and
the language; the recogniser groups them so. Two of the pieces are faster-whisper methods outside its
documented API (`_split_segments_by_timestamps`, `add_word_timestamps`), which is one reason the
package is pinned; the equality test catches an upgrade that changes them.

Where batching differs from one window at a time: a fallback decode at a higher temperature, or a
window that needs a second 30 s frame, re-encodes only those windows (both are rare: windows are
bounded to 15 s and Silero has removed silence); and faster-whisper's heuristic that shortens an
overlong first word after a pause sees the batch's windows one after another.
"""

from __future__ import annotations

import functools
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import Segment


# Threads that prepare a batch's windows (Silero, spectrogram) at most, shared by the process's batches.
PREPARATION_THREADS = 8


@dataclass(frozen=True)
class BatchItem:
    """One window to decode: 16 kHz float32 samples and the text the decoder reads before them."""

    samples: np.ndarray
    # Text before the audio (mode prompt, deployment prompt, the stream's committed words); None: none.
    prompt: str | None = None
    hotwords: str | None = None


@dataclass(frozen=True)
class BatchSettings:
    """Decode settings shared by every window of one batch (faster-whisper's defaults unless given)."""

    beam_size: int = 1
    # Token ids the decoder may not produce (None: faster-whisper's default, its non-speech symbols).
    suppressed_tokens: tuple[int, ...] | None = None
    without_timestamps: bool = False
    # Overrides of faster-whisper's transcribe() defaults, (name, value) pairs: temperature, ...
    overrides: tuple[tuple[str, Any], ...] = ()
    # Answers are capped at this many tokens (None: the model's maximum).
    max_new_tokens: int | None = None

    @classmethod
    def of_transcribe(cls, beam_size: int, kwargs: dict[str, Any]) -> BatchSettings:
        """The settings that `WhisperModel.transcribe(**kwargs)` would decode with."""
        rest = dict(kwargs)
        suppressed = rest.pop("suppress_tokens", None)
        return cls(beam_size=beam_size, suppressed_tokens=tuple(suppressed) if suppressed is not None else None,
                   without_timestamps=rest.pop("without_timestamps", False),
                   max_new_tokens=rest.pop("max_new_tokens", None), overrides=tuple(sorted(rest.items())))


@dataclass
class _Window:
    """A window's decoding state across the frames of its (Silero-filtered) audio."""

    index: int
    item: BatchItem
    features: np.ndarray
    content_frames: int
    speech_chunks: list[dict]
    seek: int = 0
    # Whether a frame of it was decoded (its prompt is then spent).
    prompted: bool = False
    segments: list[dict] = field(default_factory=list)
    # Per decoded segment: (temperature, avg_logprob, compression_ratio, no_speech_prob).
    scores: list[tuple[float, float, float, float]] = field(default_factory=list)


@functools.cache
def _preparation_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(PREPARATION_THREADS, os.cpu_count() or 1),
                              thread_name_prefix="asr-batch-prepare")


@functools.cache
def _transcribe_defaults() -> dict[str, Any]:
    """WhisperModel.transcribe()'s keyword defaults, read once (callers copy before changing them)."""
    from faster_whisper import WhisperModel

    return {name: parameter.default for name, parameter in inspect.signature(WhisperModel.transcribe).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def decode_batch(model: WhisperModel, tokenizer: Tokenizer, items: list[BatchItem],
                 settings: BatchSettings) -> list[list[Segment]]:
    """Decode `items` together in `tokenizer`'s language; per item, its segments with word timings.

    Times are seconds from each item's first sample. Blocking: run it in a worker thread.
    """
    from faster_whisper.transcribe import get_suppressed_tokens
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    options = {**_transcribe_defaults(), **dict(settings.overrides)}
    temperature = options["temperature"]
    options["temperatures"] = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature]
    suppress = list(settings.suppressed_tokens) if settings.suppressed_tokens is not None else list(options["suppress_tokens"])
    options["suppress_tokens"] = list(get_suppressed_tokens(tokenizer, suppress))

    def prepare(index: int) -> _Window | None:
        item = items[index]
        speech_chunks = get_speech_timestamps(item.samples, VadOptions())
        if not speech_chunks:
            return None  # Silero found no speech: no words, as transcribe() gives
        audio = np.concatenate(collect_chunks(item.samples, speech_chunks)[0], axis=0)
        features = model.feature_extractor(audio)
        return _Window(index, item, features, features.shape[-1] - 1, speech_chunks)

    # Silero and the spectrogram run on the CPU and release the GIL: a batch's windows are prepared in
    # parallel, or they would take longer than the batch's pass on the GPU.
    prepared = map(prepare, range(len(items))) if len(items) == 1 else _preparation_pool().map(prepare, range(len(items)))
    windows = [window for window in prepared if window is not None]
    results: list[list[Segment]] = [[] for _ in items]

    active = [w for w in windows if w.seek < w.content_frames]
    while active:
        _decode_frames(model, tokenizer, active, settings, options)
        active = [w for w in active if w.seek < w.content_frames]
    for window in windows:
        results[window.index] = _segments_of(tokenizer, window)
    return results


def _decode_frames(model: WhisperModel, tokenizer: Tokenizer, windows: list[_Window], settings: BatchSettings,
                   options: dict[str, Any]) -> None:
    """Decode the next 30 s frame of each window (from its seek), as generate_segments() does for one."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.utils import get_end

    time_per_frame = model.feature_extractor.time_per_frame
    frame_sizes = [min(model.feature_extractor.nb_max_frames, w.content_frames - w.seek) for w in windows]
    frames = np.stack([pad_or_trim(w.features[:, w.seek:w.seek + size]) for w, size in zip(windows, frame_sizes)])
    encoder_output = model.encode(frames)
    prompts = []
    for window in windows:
        # The prompt precedes the window's first decoded frame only (condition_on_previous_text=False).
        previous = tokenizer.encode(" " + window.item.prompt.strip()) if window.item.prompt and not window.prompted else []
        prompts.append(model.get_prompt(tokenizer, previous, without_timestamps=settings.without_timestamps,
                                        hotwords=window.item.hotwords))
    decoded = _generate_with_fallback(model, tokenizer, encoder_output, frames, prompts, settings, options)

    # (window, its frame's segments, frame size, time offset, single timestamp ending)
    aligned: list[tuple[_Window, list[dict], int, float, bool]] = []
    for window, size, (result, avg_logprob, temperature, compression_ratio) in zip(windows, frame_sizes, decoded):
        if options["no_speech_threshold"] is not None and result.no_speech_prob > options["no_speech_threshold"] and not (
                options["log_prob_threshold"] is not None and avg_logprob > options["log_prob_threshold"]):
            window.seek += size  # no speech in this frame
            continue
        time_offset = window.seek * time_per_frame
        segments, window.seek, single_timestamp_ending = model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=result.sequences_ids[0], time_offset=time_offset, segment_size=size,
            segment_duration=size * time_per_frame, seek=window.seek)
        for segment in segments:
            segment["scores"] = (temperature, avg_logprob, compression_ratio, result.no_speech_prob)
        window.prompted = True
        aligned.append((window, segments, size, time_offset, single_timestamp_ending))

    if aligned:
        # The alignment reads the encoder output of exactly the windows it aligns.
        if len(aligned) == len(windows):
            alignment_output = encoder_output
        else:
            alignment_output = model.encode(frames[[windows.index(entry[0]) for entry in aligned]])
        model.add_word_timestamps([entry[1] for entry in aligned], tokenizer, alignment_output,
                                  [entry[2] for entry in aligned], options["prepend_punctuations"],
                                  options["append_punctuations"], 0.0)
    for window, segments, _, time_offset, single_timestamp_ending in aligned:
        if not single_timestamp_ending:
            # An unfinished last segment: go on from its last word, as generate_segments() does.
            last_end = get_end(segments)
            if last_end is not None and last_end > time_offset:
                window.seek = round(last_end * model.frames_per_second)
        window.segments.extend(s for s in segments if s["start"] != s["end"] and tokenizer.decode(s["tokens"]).strip())


def _generate_with_fallback(model: WhisperModel, tokenizer: Tokenizer, encoder_output: Any, frames: np.ndarray,
                            prompts: list[list[int]], settings: BatchSettings,
                            options: dict[str, Any]) -> list[tuple[Any, float, float, float]]:
    """generate_with_fallback() for a batch: windows whose decode fails the thresholds are decoded
    again, together, at the next temperature; per window (result, avg_logprob, temperature, compression_ratio)."""
    from faster_whisper.transcribe import get_compression_ratio

    max_initial_timestamp_index = round(options["max_initial_timestamp"] / model.time_precision)
    longest_prompt = max(len(prompt) for prompt in prompts)
    max_length = (longest_prompt + settings.max_new_tokens) if settings.max_new_tokens is not None else model.max_length
    attempts: list[list[tuple[Any, float, float, float]]] = [[] for _ in prompts]
    chosen: list[tuple[Any, float, float, float] | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    encoded = encoder_output
    for temperature in options["temperatures"]:
        if not pending:
            break
        if temperature > 0:
            sampling = {"beam_size": 1, "num_hypotheses": options["best_of"], "sampling_topk": 0,
                        "sampling_temperature": temperature}
        else:
            sampling = {"beam_size": settings.beam_size, "patience": options["patience"]}
        if encoded is None:
            encoded = model.encode(frames[pending])
        results = model.model.generate(
            encoded, [prompts[i] for i in pending],
            length_penalty=options["length_penalty"], repetition_penalty=options["repetition_penalty"],
            no_repeat_ngram_size=options["no_repeat_ngram_size"], max_length=min(max_length, model.max_length),
            return_scores=True, return_no_speech_prob=True, suppress_blank=options["suppress_blank"],
            suppress_tokens=options["suppress_tokens"], max_initial_timestamp_index=max_initial_timestamp_index,
            **sampling,
        )
        retry = []
        for index, result in zip(pending, results):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * (len(tokens) ** options["length_penalty"]) / (len(tokens) + 1)
            compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
            attempt = (result, avg_logprob, temperature, compression_ratio)
            attempts[index].append(attempt)
            too_repetitive = (options["compression_ratio_threshold"] is not None
                              and compression_ratio > options["compression_ratio_threshold"])
            too_improbable = options["log_prob_threshold"] is not None and avg_logprob < options["log_prob_threshold"]
            silence = (options["no_speech_threshold"] is not None
                       and result.no_speech_prob > options["no_speech_threshold"] and too_improbable)
            if (too_repetitive or too_improbable) and not silence:
                retry.append(index)
            else:
                chosen[index] = attempt
        if retry != pending:
            encoded = None  # the next temperature decodes a subset: encode just those frames
        pending = retry
    for index in pending:
        # Every temperature failed: the most probable decode that was not too repetitive, as faster-whisper picks.
        threshold = options["compression_ratio_threshold"]
        candidates = [a for a in attempts[index] if threshold is None or a[3] <= threshold] or attempts[index]
        best = max(candidates, key=lambda attempt: attempt[1])
        chosen[index] = (best[0], best[1], options["temperatures"][-1], best[3])
    return chosen  # type: ignore[return-value]


def _segments_of(tokenizer: Tokenizer, window: _Window) -> list[Segment]:
    """A window's decoded segments as faster-whisper Segments, times mapped back through the removed silence."""
    from faster_whisper.transcribe import Segment, Word, restore_speech_timestamps

    segments = []
    for number, segment in enumerate(window.segments, start=1):
        temperature, avg_logprob, compression_ratio, no_speech_prob = segment["scores"]
        segments.append(Segment(
            id=number, seek=segment["seek"], start=segment["start"], end=segment["end"],
            text=tokenizer.decode(segment["tokens"]), tokens=segment["tokens"], avg_logprob=avg_logprob,
            compression_ratio=compression_ratio, no_speech_prob=no_speech_prob, temperature=temperature,
            words=[Word(**word) for word in segment["words"]],
        ))
    return list(restore_speech_timestamps(segments, window.speech_chunks, 16000))
