"""The whole appliance, end to end: `quietline up`, a real recorded caller through
VAD -> asr -> dialog (knowledge + llm) -> tts, and the CLI's errors. Marked `stack` (slow)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
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
        museum = state / "museum"
        museum.mkdir()
        (museum / "printing-museum.md").write_text(MUSEUM_PAGE)
        documents = [*read_document_folder(shared_data / "kb" / "banking" / "documents"), *read_document_folder(museum)]
        report = asyncio.run(ingest_documents(settings.knowledge.endpoint.target, documents))
        assert report.documents_added + report.documents_updated + report.documents_unchanged == len(documents)
        yield config, settings
    finally:
        supervisor.down()
        shutil.rmtree(state, ignore_errors=True)


# The caller: a real person reading LJ001-0009 ("Printing, then, for our purpose, may be considered as
# the art of making books by means of movable types."), and a knowledge-base page, written for this
# test, that answers it. The page is ingested beside the shared bank documents.
CALLER_CLIP = "LJ001-0009"
MUSEUM_PAGE = """# Harbor Trust printing museum

The Harbor Trust printing museum in the old head office shows the art of making books by means of
movable types. Visitors see a working press with movable metal type like the one Gutenberg used for
his Bible around fourteen fifty-five. The museum is open on Saturdays from ten until four, and entry
is free for customers.
"""


def caller_clip(shared_data: Path) -> dict:
    entries = [json.loads(line) for line in (shared_data / "speech" / "manifest.jsonl").read_text().splitlines()]
    return next(entry for entry in entries if CALLER_CLIP in entry["audio"])


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
    clip = caller_clip(shared_data)
    reply = tmp_path / "reply.wav"
    result = quietline("call", str(shared_data / clip["audio"]), "--json", "--out", str(reply), "--config", str(config))
    assert result.returncode == 0, result.stderr
    call = json.loads(result.stdout)
    assert len(call["turns"]) >= 1, call
    heard = " ".join(turn["caller_text"] for turn in call["turns"])
    assert word_error_rate(clip["reference"], heard) < 0.35, (clip["reference"], heard)
    first = call["turns"][0]
    assert first["bot_text"].strip()
    assert first["route"] in {"llm", "faq"}, first
    assert [c["document_id"] for c in first["citations"]] == ["printing-museum"], first
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


def test_up_refuses_a_busy_port_before_starting_anything():
    state = appliance_state_dir("busy")
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", STACK_PORT_BASE + 902))  # the asr port of this config
            holder.listen()
            config_file = write_config(state / "busy.yaml", make_test_config(state, STACK_PORT_BASE + 901))
            result = quietline("up", "--config", str(config_file))
        assert result.returncode == 3
        assert f"asr needs 127.0.0.1:{STACK_PORT_BASE + 902}" in result.stderr and "in use" in result.stderr
        assert not (state / "postgres").exists() and not (state / "run").exists()
    finally:
        shutil.rmtree(state, ignore_errors=True)
