"""Client side of the knowledge service for tools, tests and benchmarks: stream documents in."""

from __future__ import annotations

from collections.abc import Iterable

from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.channels import open_channel


async def ingest_documents(target: str, documents: Iterable[knowledge_pb2.Document],
                           deadline_s: float = 1800.0) -> knowledge_pb2.IngestResponse:
    """Stream `documents` to the Ingest RPC of the knowledge service at `target`; returns its counts."""
    requests = (knowledge_pb2.IngestRequest(document=document) for document in documents)
    async with open_channel(target, deadline_s) as channel:
        return await knowledge_pb2_grpc.KnowledgeStub(channel).Ingest(requests)
