"""The service kit: configuration, audio conversion, channels with deadlines, and the server's
health, reflection, metrics, busy-port and shutdown behaviour on a real service process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import REPO_ROOT, make_test_config, start_service, write_config
from quietline.v1 import common_pb2, tts_pb2, tts_pb2_grpc
from services.kit import audio
from services.kit.channels import open_channel
from services.kit.config import ConfigError, load_settings


# -- configuration -------------------------------------------------------------------------------

def test_profiles_differ_only_in_configuration():
    cpu, gpu = load_settings(profile="cpu"), load_settings(profile="gpu")
    assert (cpu.asr.model, cpu.llm.server) == ("whisper-tiny-en", "llama_cpp")
    assert (gpu.asr.model, gpu.asr.device, gpu.llm.server) == ("whisper-large-v3-turbo", "cuda", "vllm")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", {"asr": {"beam_size": 2}})
    assert load_settings(config).asr.beam_size == 2
    monkeypatch.setenv("QUIETLINE_ASR__BEAM_SIZE", "4")
    assert load_settings(config).asr.beam_size == 4


@pytest.mark.parametrize("content, expected", [
    ("asr:\n  beem_size: 3\n", "unknown key 'asr.beem_size'"),
    ("asr:\n  beam_size: lots\n", "'asr.beam_size'"),
    ("asr: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("profile: tpu\n", "unknown profile 'tpu'"),
])
def test_bad_configuration_names_the_problem(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_settings(path)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


# -- audio ---------------------------------------------------------------------------------------

def test_g711_round_trip_keeps_the_signal():
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    for encoding in (audio.MULAW, audio.ALAW):
        wire = audio.encode(tone, encoding)
        assert len(wire) == 8000
        back = audio.decode(wire, encoding)
        assert np.max(np.abs(back - tone)) < 0.02


def test_resampling_keeps_a_tone_and_removes_aliases():
    rate_in, rate_out = 16000, 8000
    t = np.arange(rate_in) / rate_in
    signal_in = (0.5 * np.sin(2 * np.pi * 1000 * t) + 0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    out = audio.resample(signal_in, rate_in, rate_out)
    assert abs(len(out) - rate_out) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / rate_out)
    # 1 kHz survives; 6 kHz (above the 4 kHz Nyquist) must not fold back to 2 kHz.
    assert spectrum[np.argmin(np.abs(freqs - 1000))] > 50 * spectrum[np.argmin(np.abs(freqs - 2000))]


def test_bad_audio_is_named(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all")
    with pytest.raises(audio.AudioError, match="not readable audio"):
        audio.read_recording(junk, 16000)
    silent = tmp_path / "silent.wav"
    audio.write_wav(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(audio.AudioError, match="silent"):
        audio.read_recording(silent, 16000)
    with pytest.raises(audio.AudioError, match="does not exist"):
        audio.read_recording(tmp_path / "missing.wav", 16000)
    with pytest.raises(audio.AudioError, match="G.711 is defined at 8000 Hz"):
        audio.check_format(common_pb2.AudioFormat(encoding=audio.MULAW, sample_rate_hz=16000))


# -- the server, on a real service (tts starts fastest) --------------------------------------------

@pytest.fixture(scope="module")
def tts_service(service_config):
    service = start_service("tts", service_config)
    yield service
    service.stop()


def test_health_reflection_and_metrics(tts_service):
    with grpc.insecure_channel(tts_service.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        reply = health.Check(health_pb2.HealthCheckRequest(service="quietline.v1.Tts"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"quietline.v1.Tts", "grpc.health.v1.Health"} <= names
    metrics = httpx.get(f"http://127.0.0.1:{tts_service.entry.metrics_port}/metrics", timeout=5).text
    assert 'quietline_rpc_duration_seconds_count{code="OK",method="Check",service="tts"}' in metrics


async def test_every_outgoing_call_gets_a_deadline(tts_service):
    # A long synthesis with a tiny default deadline must fail with DEADLINE_EXCEEDED, not hang.
    async with open_channel(tts_service.target, default_deadline_s=0.001) as channel:
        request = tts_pb2.SynthesizeRequest(text="A sentence that takes a while to say. " * 20)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in tts_pb2_grpc.TtsStub(channel).Synthesize(request):
                pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _run_service_briefly(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.tts", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def test_bad_config_key_stops_the_service_with_a_clear_message(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"tts": {"voise": "x"}})
    result = _run_service_briefly(["--config", str(bad)])
    assert result.returncode == 2
    assert "unknown key 'tts.voise'" in result.stderr


def test_busy_port_is_reported(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = make_test_config(tmp_path, 54460)
        config["tts"]["endpoint"]["port"] = port
        result = _run_service_briefly(["--config", str(write_config(tmp_path / "busy.yaml", config))])
    assert result.returncode == 2
    assert f"port 127.0.0.1:{port} is already in use" in result.stderr


def test_sigterm_shuts_down_gracefully(tmp_path):
    config = write_config(tmp_path / "c.yaml", make_test_config(tmp_path, 54560))
    service = start_service("tts", config)
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=30) == 0
    assert '"msg": "stopped"' in service.log()
