"""The user cache directory: ``$R2F_CACHE``, else the platform's user cache dir (honours XDG_CACHE_HOME)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir() -> Path:
    root = os.environ.get("R2F_CACHE") or platformdirs.user_cache_dir("r2f")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=str):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def hash_config(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
