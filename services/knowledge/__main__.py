"""The knowledge service process: `python -m services.knowledge [--profile P] [--config FILE]`.

Connects to PostgreSQL (database.dsn), applies pending migrations, loads the embedding model,
seeds an empty default collection from knowledge.seed_documents, then serves quietline.v1.Knowledge.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import grpc

from models import ModelError
from quietline.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import ConfigError, QuietLineSettings
from services.kit.server import ServiceSpec, run_service
from services.knowledge.documents import DocumentError, read_document_folder
from services.knowledge.embedder import Embedder
from services.knowledge.servicer import Indexer, InvalidDocument, KnowledgeServicer
from services.knowledge.store import KnowledgeStore

log = logging.getLogger("quietline.knowledge")

# What setup opened, for teardown to close.
_opened: dict[str, object] = {}


async def seed_default_collection(indexer: Indexer, store: KnowledgeStore, settings: QuietLineSettings) -> None:
    """Ingest knowledge.seed_documents' Markdown files when the default collection is empty."""
    folder = settings.knowledge.seed_documents
    collection = settings.knowledge.default_collection
    if not folder or not Path(folder).is_dir():
        return
    if await store.count_documents(collection):
        return
    started = time.perf_counter()
    try:
        documents = list(read_document_folder(folder, collection, suffixes=(".md",)))
        counts = await indexer.ingest(documents)
    except (DocumentError, InvalidDocument) as err:
        raise ConfigError(f"knowledge.seed_documents: {err}") from None
    log.info(
        "seeded default collection",
        extra={"collection": collection, "documents": counts.added + counts.updated + counts.unchanged,
               "chunks_written": counts.chunks_written, "seed_s": round(time.perf_counter() - started, 3)},
    )


async def setup(server: grpc.aio.Server, settings: QuietLineSettings) -> list[str]:
    """Knowledge base: migrate PostgreSQL, load the embedder, seed samples, serve quietline.v1.Knowledge."""
    started = time.perf_counter()
    # Opens the database first: an empty or wrong DSN fails fast, before the model loads.
    store = await KnowledgeStore.open(settings.database.dsn)
    _opened["store"] = store
    try:
        embedder = await Embedder.load(settings.knowledge.embedding_model, settings.state_dir)
    except ModelError as err:
        raise ConfigError(f"knowledge.embedding_model: {err}") from None
    _opened["embedder"] = embedder
    log.info("embedder loaded", extra={"model": settings.knowledge.embedding_model,
                                       "startup_s": round(time.perf_counter() - started, 3)})
    indexer = Indexer(store, embedder, settings.knowledge)
    await seed_default_collection(indexer, store, settings)
    knowledge_pb2_grpc.add_KnowledgeServicer_to_server(
        KnowledgeServicer(store, embedder, indexer, settings.knowledge), server
    )
    return [knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"].full_name]


async def teardown() -> None:
    """Close the database pool and the embedding threads."""
    embedder = _opened.pop("embedder", None)
    if isinstance(embedder, Embedder):
        embedder.close()
    store = _opened.pop("store", None)
    if isinstance(store, KnowledgeStore):
        await store.close()


SPEC = ServiceSpec(
    name="knowledge", endpoint=lambda settings: settings.knowledge.endpoint, setup=setup, teardown=teardown,
    # A document travels in one message: room for the largest allowed plus the message's other fields.
    max_request_bytes=lambda settings: settings.knowledge.max_document_bytes + 1024 * 1024,
)

if __name__ == "__main__":
    sys.exit(run_service(SPEC))
