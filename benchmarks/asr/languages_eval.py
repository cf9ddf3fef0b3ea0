"""Languages: WER per language with a language hint vs detection, and detection accuracy.

Runs the asr service's own model choice (services.asr.languages.RecognizerSet, cpu profile: tiny.en
for English hints, whisper-base for the rest and for detection) in this process on every clip of
../shared/data/speech, each decoded whole as one final. Prints JSON and writes it.

    python benchmarks/asr/languages_eval.py --out benchmarks/results/asr_languages.json

Per clip:
- hint: the clip's language sent as the hint (what `quietline asr --language xx` does);
- detect: no hint, `asr.language` empty: the stream detects once on the final's speech, restricted to
  `asr.expected_languages`, with the configured threshold and fallback;
- detection accuracy three ways: on the first 2 s of speech only, on the whole clip's speech, and as
  a stream with interims would settle it (a provisional detection per 1 s of audio until one with
  2 s of speech is confident, else the final's); plus Whisper's own
  unrestricted top language, and a sweep of the threshold.
WER is Whisper-normalised (services.asr.scoring: English normaliser for en, the basic one otherwise),
corpus-level per language (edits / reference words). The non-English clips are 2 per language and
short (2-7 s): read the figures as a sanity check, not a benchmark of the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_RATE_HZ = 16000
INTERIM_STEP_S = 1.0
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def corpus_wer(references: list[str], hypotheses: list[str], language: str) -> float:
    """Edits over reference words for the whole list, Whisper-normalised for `language`."""
    import jiwer

    from services.asr.scoring import normalise_text

    return round(jiwer.wer([normalise_text(r, language) for r in references],
                           [normalise_text(h, language) or "<empty>" for h in hypotheses]), 4)


def _stored_probabilities(detection: dict) -> list[tuple[str, float]]:
    """The expected languages' probabilities kept for a clip, plus Whisper's own top language."""
    probabilities = dict(detection["expected"])
    probabilities.setdefault(detection["whisper_top"], detection["whisper_top_probability"])
    return list(probabilities.items())


def streamed_detection(model, samples, policy) -> tuple[str | None, int]:
    """The language a stream with interims settles on, and how many detections it took."""
    import numpy as np

    from services.asr.languages import StreamLanguage

    stream = StreamLanguage(policy, call_id="languages-eval")
    step = int(INTERIM_STEP_S * SAMPLE_RATE_HZ)
    for end in range(step, samples.shape[0], step):
        stream.language_for(model, np.ascontiguousarray(samples[:end]), final=False)
        if stream.language is not None:
            return stream.language, stream.detections
    return stream.language_for(model, samples, final=True), stream.detections


def evaluate(languages: set[str] | None, english_limit: int | None, state_dir: Path) -> dict:
    from services.asr.languages import (
        DETECTION_SPEECH_S,
        LanguagePolicy,
        RecognizerSet,
        choose_language,
        speech_of,
    )
    from services.kit.audio import read_recording
    from services.kit.config import load_settings

    # No hint means detection (the cpu profile's default, asr.language "en", would mean English).
    settings = load_settings(profile="cpu").asr.model_copy(update={"language": ""})
    started = time.perf_counter()
    models = RecognizerSet.load(settings, state_dir)
    models.warm_up()
    load_s = time.perf_counter() - started
    multilingual = models.multilingual.model
    policy = LanguagePolicy.from_settings(settings)

    items = [json.loads(line) for line in (SHARED_DATA / "speech" / "manifest.jsonl").read_text().splitlines()]
    items = [item for item in items if not languages or item["lang"] in languages]
    if english_limit is not None:
        english = [item for item in items if item["lang"] == "en"][:english_limit]
        items = [item for item in items if item["lang"] != "en"] + english

    clips = []
    for item in items:
        language = item["lang"]
        samples = read_recording(SHARED_DATA / item["audio"], SAMPLE_RATE_HZ)
        duration_s = samples.shape[0] / SAMPLE_RATE_HZ
        speech = speech_of(samples)
        first_speech = speech[: int(DETECTION_SPEECH_S * SAMPLE_RATE_HZ)]
        probabilities = {
            "first_2s": multilingual.detect_language(first_speech)[2] if first_speech.size else [("", 1.0)],
            "whole": multilingual.detect_language(speech)[2] if speech.size else [("", 1.0)],
        }
        clip = {"clip": item["audio"].rsplit("/", 1)[-1], "lang": language, "duration_s": round(duration_s, 2),
                "speech_s": round(speech.shape[0] / SAMPLE_RATE_HZ, 2), "reference": item["reference"]}
        for name, probs in probabilities.items():
            decision = choose_language(probs, policy)
            clip[f"detect_{name}"] = {
                "language": decision.language, "share": round(decision.share, 3), "confident": decision.confident,
                "whisper_top": decision.top_language, "whisper_top_probability": round(decision.top_probability, 3),
                "expected": {code: round(p, 6) for code, p in probs if code in policy.expected},
            }
        clip["detect_streamed"], clip["streamed_detections"] = streamed_detection(multilingual, samples, policy)

        for mode, hint in (("hint", language), ("detect", "")):
            recognizer, options = models.decode_options(hint, "general", [], call_id="languages-eval")
            decode_started = time.perf_counter()
            transcript = recognizer.transcribe_final(samples, options)
            elapsed_s = time.perf_counter() - decode_started
            clip[mode] = {"model": recognizer.model_name, "language": transcript.language, "text": transcript.text,
                          "rtf": round(elapsed_s / duration_s, 3)}
        clips.append(clip)
        print(json.dumps({k: clip[k] for k in ("clip", "lang")} | {
            "hint": clip["hint"]["language"], "detect": clip["detect"]["language"],
            "streamed": clip["detect_streamed"]}), file=sys.stderr, flush=True)

    per_language = {}
    for language in sorted({clip["lang"] for clip in clips}):
        group = [clip for clip in clips if clip["lang"] == language]
        refs = [clip["reference"] for clip in group]

        def accuracy(key: str, group=group, language=language) -> float:
            return round(sum(clip[key]["language"] == language for clip in group) / len(group), 3)

        per_language[language] = {
            "clips": len(group),
            "model_with_hint": group[0]["hint"]["model"],
            "wer_hint": corpus_wer(refs, [clip["hint"]["text"] for clip in group], language),
            "wer_detect": corpus_wer(refs, [clip["detect"]["text"] for clip in group], language),
            "detect_accuracy_first_2s": accuracy("detect_first_2s"),
            "detect_accuracy_whole": accuracy("detect_whole"),
            "detect_accuracy_streamed": round(sum(c["detect_streamed"] == language for c in group) / len(group), 3),
            "final_language_with_detection": round(sum(c["detect"]["language"] == language for c in group)
                                                   / len(group), 3),
            "whisper_top_accuracy_whole": round(sum(c["detect_whole"]["whisper_top"] == language for c in group)
                                                / len(group), 3),
            "rtf_hint_mean": round(sum(c["hint"]["rtf"] for c in group) / len(group), 3),
            "rtf_detect_mean": round(sum(c["detect"]["rtf"] for c in group) / len(group), 3),
        }

    sweep = []
    for threshold in THRESHOLDS:
        swept = LanguagePolicy(policy.expected, policy.fallback, threshold)
        row = {"threshold": threshold}
        for name in ("first_2s", "whole"):
            decisions = [(clip["lang"], choose_language(_stored_probabilities(clip[f"detect_{name}"]), swept))
                         for clip in clips]
            row[f"{name}_correct"] = sum(d.language == lang for lang, d in decisions)
            row[f"{name}_fallbacks"] = sum(not d.confident for _, d in decisions)
            row[f"{name}_non_english_correct"] = sum(d.language == lang for lang, d in decisions if lang != "en")
            # What a stream would fix before the utterance ends (settled), and how many of those are wrong.
            row[f"{name}_settled"] = sum(d.settled for _, d in decisions)
            row[f"{name}_settled_wrong"] = sum(d.settled and d.language != lang for lang, d in decisions)
        sweep.append(row)

    return {
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "models": {"english": models.english.model_name, "multilingual": models.multilingual.model_name,
                   "compute_type": settings.compute_type, "beam_size": settings.beam_size,
                   "load_and_warm_up_s": round(load_s, 1)},
        "policy": {"expected_languages": list(policy.expected), "fallback_language": policy.fallback,
                   "detection_threshold": policy.threshold, "detection_speech_s": DETECTION_SPEECH_S},
        "clips_total": len(clips),
        "per_language": per_language,
        "threshold_sweep": sweep,
        "share_of_correct_language": {
            name: sorted(round(c[f"detect_{name}"]["expected"].get(c["lang"], 0.0)
                               / max(sum(c[f"detect_{name}"]["expected"].values()), 1e-9), 3) for c in clips)[:8]
            for name in ("first_2s", "whole")
        },
        "per_clip": clips,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "asr_languages.json"))
    parser.add_argument("--languages", default="", help="comma-separated codes (default: every language)")
    parser.add_argument("--english-limit", type=int, default=None, help="only the first N English clips")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        print(f"languages_eval: shared data not found at {SHARED_DATA}: clone the repo beside ../shared",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from services.kit.offline import enforce_offline

    enforce_offline()
    state = Path(tempfile.mkdtemp(prefix="quietline-languages-eval-"))
    try:
        report = evaluate(set(filter(None, args.languages.split(","))) or None, args.english_limit, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_clip"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
