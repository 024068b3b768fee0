"""A real Prefect stack in subprocesses, as an operator runs it: ``prefect server start`` on a free
port, the work pool, ``prefect --no-prompt deploy --all`` from the project, and a process worker.
Used by the end-to-end test and by the browser check (``make ui-check``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server at {url} not healthy after {timeout}s")


@contextmanager
def prefect_stack(cutover_env: dict[str, str], *, log_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (api_url, env) with a server, the deployments and one worker running."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tempfile.mkdtemp(prefix="cutover-e2e-prefect-")
    env = {**os.environ, **cutover_env, "PREFECT_HOME": home, "PREFECT_API_URL": api, "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env.pop("PREFECT_API_KEY", None)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, cwd=ROOT, stdout=open(log_dir / "server.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(server)
        _wait_healthy(api, server, 120)
        for args in (["work-pool", "create", "cutover-process", "--type", "process", "--overwrite"],
                     ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cutover-process"],
                                  env=env, cwd=ROOT, stdout=open(log_dir / "worker.log", "wb"),
                                  stderr=subprocess.STDOUT)
        procs.append(worker)
        yield api, env
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_state(flow_run_id, names: set[str], timeout: float = 240):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
        if run.state and run.state.name in names:
            return run
        if run.state and run.state.is_final():
            raise AssertionError(f"flow run ended {run.state.name}: {run.state.message}")
        time.sleep(1)
    raise AssertionError(f"flow run never reached {names} (last: {run and run.state and run.state.name})")
