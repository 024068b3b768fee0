"""Where this install built its optional C kernels, and their functions loaded with ctypes.

Contract: ``built(name)`` is the library file of ``cutover.<name>`` (``pyproject.toml``'s ``ext-modules``:
plain C, no Python API, optional so that an install without a compiler still works), or None when it
was not built; each caller then keeps its numpy or polars way. ``function(name, symbol, restype,
argtypes)`` is that library's ``symbol``, typed, or None likewise; ctypes releases Python's lock around
each call. ``capsule_pointer`` and ``new_capsule`` are the C API's ``PyCapsule_GetPointer`` and
``PyCapsule_New``, typed, for the kernels that exchange Arrow C streams with polars.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from pathlib import Path


def built(name: str) -> Path | None:
    spec = importlib.util.find_spec(f"cutover.{name}")
    return None if spec is None or spec.origin is None else Path(spec.origin)


@cache
def function(name: str, symbol: str, restype: type, argtypes: tuple[type, ...]) -> ctypes._CFuncPtr | None:
    library = built(name)
    if library is None:
        return None
    fn = getattr(ctypes.CDLL(str(library)), symbol)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


@cache
def capsule_pointer() -> ctypes._CFuncPtr:
    fn = ctypes.pythonapi.PyCapsule_GetPointer
    fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return fn


@cache
def new_capsule() -> ctypes._CFuncPtr:
    fn = ctypes.pythonapi.PyCapsule_New
    fn.restype, fn.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return fn
