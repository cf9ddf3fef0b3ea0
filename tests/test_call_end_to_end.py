"""The whole appliance, end to end: `quietline up`, a real recorded caller through
VAD -> asr -> dialog (knowledge + llm) -> tts, and the CLI's errors. Marked `stack` (slow)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import STACK_PORT_BASE, appliance_state_dir, make_test_config, write_config
from services.appliance.supervisor import Supervisor
from services.asr.scoring import word_error_rate
from services.kit.config import load_settings
from services.knowledge.client import ingest_documents
from services.knowledge.documents import read_document_folder

pytestmark = pytest.mark.stack

# A real recording of a person (CMU AN4/LibriVox/LJSpeech), as a caller's turn.
CALLER_CLIP_MAX_S = 8.0


def quietline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.appliance.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(shared_data):
    state = appliance_state_dir("stack")
    config = write_config(state / "quietline.yaml", make_test_config(state, STACK_PORT_BASE))
    settings = load_settings(config)
    supervisor = Supervisor(settings, config)
    try:
        supervisor.up()
        documents = list(read_document_folder(shared_data / "kb" / "banking" / "documents"))
        report = asyncio.run(ingest_documents(settings.knowledge.endpoint.target, documents))
        assert report.documents_added + report.documents_updated + report.documents_unchanged == len(documents)
        yield config, settings
    finally:
        supervisor.down()
        shutil.rmtree(state, ignore_errors=True)


def english_clip(shared_data: Path) -> dict:
    entries = [json.loads(line) for line in (shared_data / "speech" / "manifest.jsonl").read_text().splitlines()]
    for entry in entries:
        info = soundfile.info(shared_data / entry["audio"])
        if entry["lang"] == "en" and 3.0 < info.duration < CALLER_CLIP_MAX_S and "ljspeech" in entry["audio"].lower():
            return entry
    raise AssertionError("no English clip of a usable length in the shared speech manifest")


def test_status_reports_every_service_healthy(stack):
    config, _ = stack
    result = quietline("status", "--json", "--config", str(config))
    rows = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["name"] for r in rows} == {"postgres", "llm", "asr", "tts", "knowledge", "dialog"}
    assert all(r["healthy"] for r in rows)


def test_up_again_is_idempotent(stack):
    config, _ = stack
    result = quietline("up", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "dialog" in result.stdout


def test_a_recorded_caller_gets_a_cited_spoken_answer(stack, shared_data, tmp_path):
    config, _ = stack
    clip = english_clip(shared_data)
    reply = tmp_path / "reply.wav"
    result = quietline("call", str(shared_data / clip["audio"]), "--json", "--out", str(reply), "--config", str(config))
    assert result.returncode == 0, result.stderr
    call = json.loads(result.stdout)
    assert len(call["turns"]) >= 1, call
    heard = " ".join(turn["caller_text"] for turn in call["turns"])
    assert word_error_rate(clip["reference"], heard) < 0.35, (clip["reference"], heard)
    first = call["turns"][0]
    assert first["bot_text"].strip()
    assert first["citations"] and all(c["document_id"] and c["title"] for c in first["citations"])
    assert first["route"] in {"llm", "faq", "fallback"}
    latency = first["latency_ms"]
    assert all(latency[k] is not None and latency[k] > 0 for k in ("asr_final", "dialog_first_say", "tts_first_audio"))
    assert latency["asr_final"] <= latency["dialog_first_say"] <= latency["tts_first_audio"] <= latency["turn_total"]
    audio, rate = soundfile.read(reply)
    assert rate == 16000 and len(audio) > rate // 2 and np.abs(audio).max() > 0.05


def test_the_demo_call_works_without_shared_data(stack):
    config, _ = stack
    result = quietline("call", "--demo", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    turn = json.loads(result.stdout)["turns"][0]
    assert "card" in turn["caller_text"].lower()
    assert turn["citations"] and turn["bot_text"]


def test_bad_recordings_are_refused_with_a_clear_message(stack, tmp_path):
    config, _ = stack
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    for path, message in ((junk, "not readable audio"), (empty, "is empty"), (tmp_path / "nope.wav", "does not exist")):
        result = quietline("call", str(path), "--config", str(config))
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_call_without_a_running_appliance_says_how_to_start_it(tmp_path, shared_data):
    config = write_config(tmp_path / "idle.yaml", make_test_config(tmp_path, STACK_PORT_BASE + 500))
    result = quietline("call", "--demo", "--config", str(config))
    assert result.returncode == 3
    assert "quietline up" in result.stderr


def test_failed_start_leaves_nothing_running():
    state = appliance_state_dir("broken")
    try:
        config = make_test_config(state, STACK_PORT_BASE + 700, extra={"asr": {"model": "no-such-model"}})
        config_file = write_config(state / "broken.yaml", config)
        result = quietline("up", "--config", str(config_file))
        assert result.returncode == 3
        assert "asr" in result.stderr and "no-such-model" in result.stderr
        supervisor = Supervisor(load_settings(config_file), config_file)
        assert not any(row["pid"] or row["healthy"] for row in supervisor.status())
        assert not list((state / "run").glob("*.pid"))
    finally:
        shutil.rmtree(state, ignore_errors=True)
