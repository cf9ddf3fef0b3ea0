"""The dialog service: `python -m services.dialog [--profile P] [--config FILE]`.

It needs no model of its own. It reaches the knowledge service over gRPC and the LLM server over
HTTP, and does not wait for either at start: a turn that cannot reach them still ends with an answer
or a handover to a colleague.
"""

from __future__ import annotations

import sys

import grpc

from quietline.v1 import dialog_pb2, dialog_pb2_grpc, knowledge_pb2_grpc
from services.dialog.answering import TurnAnswerer
from services.dialog.servicer import DialogServicer
from services.kit.channels import open_channel
from services.kit.config import QuietLineSettings
from services.kit.server import ServiceSpec, run_service
from services.llm.client import LlmClient

# What setup opened and teardown closes.
_resources: dict = {}


async def setup(server: grpc.aio.Server, settings: QuietLineSettings) -> list[str]:
    """Dialog: the per-turn router (knowledge search, grounded LLM answer, extractive fallback, handover)."""
    channel = open_channel(settings.knowledge.endpoint.target, settings.default_rpc_deadline_s)
    llm = LlmClient.from_settings(settings.llm)
    _resources.update(channel=channel, llm=llm)
    answerer = TurnAnswerer(settings, knowledge_pb2_grpc.KnowledgeStub(channel), llm)
    dialog_pb2_grpc.add_DialogServicer_to_server(DialogServicer(answerer), server)
    return [dialog_pb2.DESCRIPTOR.services_by_name["Dialog"].full_name]


async def teardown() -> None:
    """Close the LLM client and the knowledge channel."""
    if llm := _resources.pop("llm", None):
        await llm.aclose()
    if channel := _resources.pop("channel", None):
        await channel.close()


SPEC = ServiceSpec(name="dialog", endpoint=lambda settings: settings.dialog.endpoint, setup=setup, teardown=teardown)

if __name__ == "__main__":
    sys.exit(run_service(SPEC))
