"""The gRPC contracts: checked-in stubs match the .proto files, and the messages carry what later
issues rely on (call ids, formats, streaming shapes)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from quietline.v1 import asr_pb2, dialog_pb2, knowledge_pb2, tts_pb2

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
PROTO_FILES = sorted((PROTO_ROOT / "quietline" / "v1").glob("*.proto"))


def test_generated_stubs_are_up_to_date(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *map(str, PROTO_FILES)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(rel) for rel in generated if not (PROTO_ROOT / rel).exists()
             or not filecmp.cmp(tmp_path / rel, PROTO_ROOT / rel, shallow=False)]
    assert not stale, f"stubs are stale, run `make proto` and commit: {stale}"


def _method(service, name):
    return service.methods_by_name[name]


def test_streaming_shapes_match_the_architecture():
    asr = asr_pb2.DESCRIPTOR.services_by_name["Asr"]
    assert _method(asr, "Recognize").client_streaming and _method(asr, "Recognize").server_streaming
    tts = tts_pb2.DESCRIPTOR.services_by_name["Tts"]
    assert not _method(tts, "Synthesize").client_streaming and _method(tts, "Synthesize").server_streaming
    dialog = dialog_pb2.DESCRIPTOR.services_by_name["Dialog"]
    assert _method(dialog, "Turn").server_streaming
    knowledge = knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"]
    assert _method(knowledge, "Ingest").client_streaming and not _method(knowledge, "Search").server_streaming


def test_every_per_call_request_carries_a_call_ref():
    for message in (asr_pb2.RecognitionConfig, tts_pb2.SynthesizeRequest, dialog_pb2.TurnRequest,
                    knowledge_pb2.SearchRequest):
        field = message.DESCRIPTOR.fields_by_name["call"]
        assert field.message_type.full_name == "quietline.v1.CallRef", message.DESCRIPTOR.name


def test_messages_round_trip():
    event = dialog_pb2.TurnEvent(say=dialog_pb2.Say(text="Hello.", citations=[]), end_of_turn=True)
    again = dialog_pb2.TurnEvent.FromString(event.SerializeToString())
    assert again.WhichOneof("event") == "say" and again.say.text == "Hello." and again.end_of_turn
