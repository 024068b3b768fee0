"""Deferred imports: a stand-in until first use, then the real module, executed once.

Each check runs in a fresh interpreter: the test session has long imported GX and its modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str, path: Path) -> dict:
    env = {"PYTHONPATH": f"{path}:{Path(__file__).parents[1]}", "GX_ANALYTICS_ENABLED": "false", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def heavy(tmp_path: Path) -> Path:
    """A package whose import leaves a mark (one line per execution), with a submodule."""
    pkg = tmp_path / "heavy_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import pathlib\n"
                                     "with open(pathlib.Path(__file__).parent.parent / 'marks', 'a') as f:\n"
                                     "    f.write('imported\\n')\n"
                                     "value = 42\n")
    (pkg / "sub.py").write_text("answer = 'sub'\n")
    return tmp_path


def test_a_deferred_module_is_imported_on_first_use_and_only_once(heavy):
    out = _run("""
        import json, pathlib, sys, threading
        from cutover import deferred_import
        marks = lambda: (pathlib.Path('marks').read_text().count('imported') if pathlib.Path('marks').exists() else 0)
        deferred = deferred_import.defer('heavy_pkg')
        import heavy_pkg
        before = (marks(), deferred_import.is_deferred('heavy_pkg'))
        seen = []
        readers = [threading.Thread(target=lambda: seen.append(heavy_pkg.value)) for _ in range(8)]
        for t in readers: t.start()
        for t in readers: t.join()
        from heavy_pkg import value
        import heavy_pkg.sub
        print(json.dumps({"deferred": deferred, "before": before, "seen": seen, "value": value, "marks": marks(),
                          "real": sys.modules['heavy_pkg'].__class__.__name__, "sub": heavy_pkg.sub.answer,
                          "still": deferred_import.is_deferred('heavy_pkg')}))
        """, heavy)
    assert out["deferred"] == ["heavy_pkg"]
    assert out["before"] == [0, True]  # importing the name did not run the module
    assert out["seen"] == [42] * 8 and out["value"] == 42
    assert out["marks"] == 1  # eight threads at once, a from-import and a submodule: executed once
    assert out["real"] == "module" and out["sub"] == "sub" and out["still"] is False


def test_names_already_imported_or_not_installed_are_left_alone(heavy):
    out = _run("""
        import json, heavy_pkg
        from cutover import deferred_import
        print(json.dumps({"deferred": deferred_import.defer('heavy_pkg', 'no_such_module_here', 'json')}))
        """, heavy)
    assert out["deferred"] == []


def test_gx_validates_without_importing_what_its_unused_expectations_need(tmp_path):
    out = _run("""
        import json
        from cutover import deferred_import, gx_runner
        gx_runner._gx_context()
        after_import = {m: deferred_import.is_deferred(m) for m in gx_runner.UNUSED_ON_IMPORT}
        # an expectation that does use scipy.stats still works: it is imported then
        from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
        entropy = kl.stats.entropy([0.5, 0.5], [0.9, 0.1])
        print(json.dumps({"after_import": after_import, "entropy": entropy,
                          "scipy_stats_now": deferred_import.is_deferred("scipy.stats")}))
        """, tmp_path)
    assert out["after_import"] == {"scipy.stats": True, "altair": True}
    assert out["entropy"] == pytest.approx(0.5108, abs=1e-4)
    assert out["scipy_stats_now"] is False
