"""`quietline asr`: a recording streamed to the real asr service as a caller's line would carry it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, SERVICE_PORT_BASE, make_test_config, start_service, write_config
from services.asr.scoring import word_error_rate

CLIP = "LJ001-0009"


@pytest.fixture(scope="module")
def asr_service(service_config):
    service = start_service("asr", service_config)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def clip(shared_data) -> dict:
    entries = [json.loads(line) for line in (shared_data / "speech" / "manifest.jsonl").read_text().splitlines()]
    entry = next(e for e in entries if CLIP in e["audio"])
    return {**entry, "path": shared_data / entry["audio"]}


def quietline_asr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.appliance.cli", "asr", *args],
                          capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)


@pytest.mark.parametrize("line", ["pcm16", "mulaw"])
def test_streams_a_recording_in_real_time_and_reports_latency(asr_service, service_config, clip, line):
    result = quietline_asr(str(clip["path"]), "--json", "--line", line, "--config", str(service_config))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert word_error_rate(clip["reference"], report["text"]) < 0.35, report["text"]
    assert report["interims"], "a clip of several seconds must give interim hypotheses"
    assert all(i["at_ms"] >= 0 for i in report["interims"])
    assert report["end_of_speech_to_final_ms"] is not None and report["end_of_speech_to_final_ms"] > 0
    # Real time: streaming the clip cannot take less wall time than the audio lasts.
    assert report["real_time_factor"] >= 0.95


def test_fast_mode_is_faster_than_real_time(asr_service, service_config, clip):
    result = quietline_asr(str(clip["path"]), "--json", "--fast", "--config", str(service_config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["real_time_factor"] < 0.9


def test_bad_input_and_a_stopped_service_are_named(asr_service, service_config, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEjunk" * 10)
    result = quietline_asr(str(junk), "--config", str(service_config))
    assert result.returncode == 2 and "not readable audio" in result.stderr
    idle = write_config(tmp_path / "idle.yaml", make_test_config(tmp_path, SERVICE_PORT_BASE + 800))
    result = quietline_asr(str(junk.with_name("x.wav")), "--config", str(idle))
    assert result.returncode == 2 and "does not exist" in result.stderr
    wav = tmp_path / "ok.wav"
    wav.write_bytes((REPO_ROOT.parent / "shared" / "data" / "digits8k" / "1_george_0.wav").read_bytes())
    result = quietline_asr(str(wav), "--config", str(idle))
    assert result.returncode == 3 and "quietline up" in result.stderr
