"""Sentence embeddings for chunks and queries (sentence-transformers MiniLM, 384 dimensions, CPU).

The model is loaded from the verified local copy the model registry resolves; nothing is
downloaded. Encoding runs in worker threads so the event loop keeps serving while a batch is
embedded: two workers, and ingestion may use only one of them at a time, so a search never queues
behind a long ingest.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from models import resolve_model

EMBEDDING_DIMENSIONS = 384
BATCH_SIZE = 32


class Embedder:
    """Turns texts into L2-normalised float32 vectors with a local sentence-transformers model."""

    def __init__(self, model_path: Path, device: str = "cpu", batch_size: int = BATCH_SIZE) -> None:
        # Imported here: sentence-transformers pulls in torch, which a config error need not wait for.
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # Progress bars are not JSON log lines; keep stderr parseable.
        transformers_logging.disable_progress_bar()
        self.model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        dimensions = self.model.get_embedding_dimension()
        if dimensions != EMBEDDING_DIMENSIONS:
            raise ValueError(
                f"embedding model {model_path} makes {dimensions}-dimensional vectors but the knowledge "
                f"schema stores {EMBEDDING_DIMENSIONS}: use a {EMBEDDING_DIMENSIONS}-dimensional model"
            )
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="embedder")
        self._bulk = asyncio.Semaphore(1)

    @classmethod
    async def load(cls, model_name: str, state_dir: Path) -> Embedder:
        """Resolve `model_name` through the model registry and load it off the event loop."""
        resolved = await asyncio.to_thread(resolve_model, model_name, state_dir)
        return await asyncio.to_thread(cls, resolved.path)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors of `texts`, computed in the calling thread (blocking callers)."""
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed_query(self, text: str) -> np.ndarray:
        """One query's vector."""
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.encode, [text])
        return vectors[0]

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Vectors for many texts (one row each), batched; one bulk job runs at a time."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIMENSIONS), dtype=np.float32)
        loop = asyncio.get_running_loop()
        async with self._bulk:
            return await loop.run_in_executor(self._executor, self.encode, texts)

    def close(self) -> None:
        """Stop the worker threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
