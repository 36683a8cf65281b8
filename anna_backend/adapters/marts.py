"""The marts catalog over ``anna_models.marts``: manifests, and the client ids each mart knows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from anna_backend.service_layer.ports import MartCatalog


class LocalMartCatalog(MartCatalog):
    """Marts as folders under ``marts_root``; client ids are read once per mart version and kept."""

    def __init__(self, marts_root: Path) -> None:
        self.marts_root = Path(marts_root)
        self._clients: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def manifests(self) -> list[dict[str, Any]]:
        from anna_models.marts import MANIFEST, read_manifest

        if not self.marts_root.is_dir():
            return []
        found = []
        for folder in sorted(self.marts_root.iterdir()):
            if (folder / MANIFEST).is_file():
                manifest = read_manifest(folder)
                manifest.setdefault("name", folder.name)
                found.append(manifest)
        return found

    def client_ids(self, name: str) -> np.ndarray:
        from anna_models.marts import PART_GLOB, read_manifest

        folder = self.marts_root / name
        version = str(read_manifest(folder).get("version"))
        with self._lock:
            cached = self._clients.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        # Only the client_id column: the API process must not load whole marts into memory.
        import pyarrow.parquet as pq

        parts = sorted(folder.glob(PART_GLOB))
        ids = (np.unique(pq.read_table(parts, columns=["client_id"]).column("client_id").to_numpy())
               if parts else np.zeros(0, np.int64)).astype(np.int64)
        with self._lock:
            self._clients[name] = (version, ids)
        return ids
