"""Where this install built its optional C kernels, for the modules that load them with ctypes.

Contract: ``built(name)`` is the library file of ``cutover.<name>`` (``pyproject.toml``'s ``ext-modules``:
plain C, no Python API, optional so that an install without a compiler still works), or None when it
was not built; each caller then keeps its numpy or polars way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def built(name: str) -> Path | None:
    spec = importlib.util.find_spec(f"cutover.{name}")
    return None if spec is None or spec.origin is None else Path(spec.origin)
