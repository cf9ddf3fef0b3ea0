"""The dialog service: `python -m services.dialog [--profile P] [--config FILE]`.

It loads the policy file and the intent classifier (MiniLM, offline), opens the call records and the
back office in PostgreSQL (loading the demo shop into an empty back office), and reaches the knowledge
service over gRPC and the LLM server over HTTP without waiting for either at start: a turn that
cannot reach them still ends with an answer or a handover to a colleague.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import grpc

from quietline.v1 import dialog_pb2, dialog_pb2_grpc, knowledge_pb2_grpc
from services.dialog.answering import TurnAnswerer
from services.dialog.intents import IntentClassifier
from services.dialog.policy import PolicyRules
from services.dialog.records import CallRecords
from services.dialog.router import ServiceLine, TurnRouter
from services.dialog.tool_route import LlmToolRoute
from services.dialog.servicer import DialogServicer
from services.dialog.tools import appointments
from services.dialog.tools.appointments import load_demo_calendar_if_empty
from services.dialog.tools.backoffice import BackofficeStore, load_demo_if_empty
from services.dialog.bank_flows import BANK_FLOWS
from services.dialog.retail_flows import RETAIL_FLOWS
from services.dialog.tools.bank import bank_registry
from services.dialog.tools.retail import retail_registry
from services.kit.channels import open_channel
from services.kit.config import QuietLineSettings
from services.kit.database import DatabaseError
from services.kit.server import ServiceSpec, run_service
from services.llm.client import LlmClient

# What setup opened and teardown closes.
_resources: dict = {}


async def setup(server: grpc.aio.Server, settings: QuietLineSettings) -> list[str]:
    """Dialog: the per-turn router (control, policy, flows with tools, knowledge and LLM, hand-over)."""
    dsn = settings.database.dsn
    if not dsn:
        raise DatabaseError("dialog: database.dsn is empty: the dialog keeps call records and reaches the back "
                            "office in PostgreSQL; set QUIETLINE_DATABASE__DSN (quietline up does) or database.dsn")
    policy = PolicyRules.load(settings.dialog.policy_file or None)
    classifier = await asyncio.to_thread(IntentClassifier.load, settings.state_dir)
    records = await CallRecords.open(dsn)
    _resources["records"] = records
    if await load_demo_if_empty(dsn):
        logging.getLogger("quietline.dialog").info("back office empty: loaded the demo shop")
    await load_demo_calendar_if_empty(dsn)  # the demo's adviser calendar, unless a site's calendar is there
    store = await BackofficeStore.open(dsn)
    _resources["store"] = store
    channel = open_channel(settings.knowledge.endpoint.target, settings.default_rpc_deadline_s)
    llm = LlmClient.from_settings(settings.llm)
    # One client per further tier (dialog.complex_tier answers complex turns with one of them).
    tiers = {name: LlmClient.from_settings(endpoint) for name, endpoint in settings.llm.tiers.items()}
    _resources.update(channel=channel, llm=llm, tiers=tiers)
    answerer = TurnAnswerer(settings, knowledge_pb2_grpc.KnowledgeStub(channel), llm, tiers)
    collections = settings.dialog.line_collections
    bank_tools = bank_registry(store)
    for name in appointments.KNOWN_TOOLS:  # the bank line books advisers too
        bank_tools.add(appointments.make_tool(name, store))
    lines = {"retail": ServiceLine(RETAIL_FLOWS, retail_registry(store), collections.get("retail")),
             "bank": ServiceLine(BANK_FLOWS, bank_tools, collections.get("bank"))}
    tool_route = LlmToolRoute(llm, settings.dialog.llm_deadline_s)
    router = TurnRouter(settings, answerer, policy, classifier, lines, records, tool_route)
    dialog_pb2_grpc.add_DialogServicer_to_server(DialogServicer(router), server)
    return [dialog_pb2.DESCRIPTOR.services_by_name["Dialog"].full_name]


async def teardown() -> None:
    """Close the LLM clients, the knowledge channel, the back office and the call records."""
    if llm := _resources.pop("llm", None):
        await llm.aclose()
    for tier_client in _resources.pop("tiers", {}).values():
        await tier_client.aclose()
    if channel := _resources.pop("channel", None):
        await channel.close()
    for name in ("store", "records"):
        if resource := _resources.pop(name, None):
            await resource.close()


SPEC = ServiceSpec(name="dialog", endpoint=lambda settings: settings.dialog.endpoint, setup=setup, teardown=teardown)

if __name__ == "__main__":
    sys.exit(run_service(SPEC))
