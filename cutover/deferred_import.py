"""Modules imported on their first use rather than when a library imports them.

GX (1.24) imports scipy.stats and altair as it is imported, for two expectations (KL divergence, a KS
test) and the KL one's charts. cutover's suites use neither, yet the two cost ~80 MB of resident memory
and ~2 s of one core holding Python's lock, in every process that validates. ``defer`` puts a stand-in
module in ``sys.modules``: importing the name gives the stand-in, and the first read of an attribute
it does not carry imports the real module, which from then on is in ``sys.modules`` and answers every
read through the stand-in too. A suite that does use those expectations still works: it pays for the
import when it first needs it.

Contract: a name already imported, or not installed, is left alone. Concurrency: no lock of its own;
the import system's per-module lock makes the real import happen once whichever threads ask for it.
(importlib's ``LazyLoader`` does not serve: the import statement itself reads ``__spec__``, which
makes it load at once.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """Stands in for a module not imported yet; carries only what the import system reads."""

    def __getattr__(self, attr: str):  # called only for what the stand-in does not carry
        return getattr(_real(self), attr)


def _real(stand_in: _Deferred) -> types.ModuleType:
    name = stand_in.__name__
    if sys.modules.get(name) is stand_in:
        sys.modules.pop(name, None)
    return importlib.import_module(name)


def defer(*names: str) -> list[str]:
    """Defer the import of each of ``names`` not imported yet; the names deferred."""
    deferred = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)  # imports a submodule's parent package (not deferred)
        if spec is None:
            continue
        stand_in = _Deferred(name)
        # what the import system and introspection read, so that they do not set off the import
        stand_in.__spec__, stand_in.__loader__, stand_in.__package__ = spec, spec.loader, spec.parent
        stand_in.__file__ = spec.origin
        sys.modules[name] = stand_in
        deferred.append(name)
    return deferred


def is_deferred(name: str) -> bool:
    """True while ``name`` is a stand-in whose module has not been imported."""
    return isinstance(sys.modules.get(name), _Deferred)
