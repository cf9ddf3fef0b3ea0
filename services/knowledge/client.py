"""Client side of the knowledge service for the CLI, tools, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.channels import open_channel


def ingest_requests(
    documents: Iterable[knowledge_pb2.Document], prune_source_prefix: str = ""
) -> Iterator[knowledge_pb2.IngestRequest]:
    """The Ingest RPC's request stream: the options ride on the first request."""
    options = knowledge_pb2.IngestOptions(prune_source_prefix=prune_source_prefix)
    first = True
    for document in documents:
        yield knowledge_pb2.IngestRequest(document=document, options=options if first else None)
        first = False
    if first:
        yield knowledge_pb2.IngestRequest(options=options)


async def ingest_documents(target: str, documents: Iterable[knowledge_pb2.Document], deadline_s: float = 1800.0,
                           prune_source_prefix: str = "") -> knowledge_pb2.IngestResponse:
    """Stream `documents` to the Ingest RPC of the knowledge service at `target`; returns its counts.

    With `prune_source_prefix` (a folder's file URI ending in "/"), documents of the streamed
    collections that came from under that folder and were not streamed are removed.
    """
    async with open_channel(target, deadline_s) as channel:
        return await knowledge_pb2_grpc.KnowledgeStub(channel).Ingest(ingest_requests(documents, prune_source_prefix))


async def search_passages(target: str, request: knowledge_pb2.SearchRequest,
                          deadline_s: float = 10.0) -> list[knowledge_pb2.Passage]:
    """The passages the knowledge service at `target` returns for `request`."""
    async with open_channel(target, deadline_s) as channel:
        return list((await knowledge_pb2_grpc.KnowledgeStub(channel).Search(request)).passages)


async def collection_stats(target: str, deadline_s: float = 10.0) -> knowledge_pb2.StatsResponse:
    """What each collection of the knowledge service at `target` holds."""
    async with open_channel(target, deadline_s) as channel:
        return await knowledge_pb2_grpc.KnowledgeStub(channel).Stats(knowledge_pb2.StatsRequest())
