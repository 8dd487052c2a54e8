"""``spine up``: the README's main command, run for real as a subprocess in a fresh data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from spine.platform.embedded.stack import stack_status
from support.fake_models import FakeModelServer, Rule
from support.ports import free_port
from support.servers import embedded_data_dir
from support.spine_up import up_env

pytestmark = pytest.mark.integration

KEY = re.compile(r"\bspn_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}")


def start_up(workdir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spine.platform.app.cli", "up"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 90) -> str:
    """Collect the output until a line contains ``needle``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(seen)}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def spawned_from(workdir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(workdir) in " ".join(proc.info["cmdline"] or []) or proc.info["cwd"] == str(
                workdir
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_spine_up_runs_the_platform_stops_cleanly_and_keeps_its_data(
    tmp_path: Path, fake_models: FakeModelServer
) -> None:
    fake_models.reset()
    fake_models.add(Rule(containing="hello from up", reply="hi, I am up"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env |= {
        "GENAI_API__PORT": str(port),
        "GENAI_OLLAMA_URL": fake_models.url,
        "COLUMNS": "200",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }

    first = start_up(tmp_path, env)
    try:
        shown = read_until(first, "API at")
        key = KEY.search(shown)
        assert key is not None, shown
        assert (tmp_path / "data" / "admin.key").read_text().strip() == key.group(0)
        assert oct((tmp_path / "data" / "admin.key").stat().st_mode & 0o777) == "0o600"
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key.group(0)}"}
        )
        task = client.post(
            "/v1/tasks", json={"agent": "chat", "input": {"prompt": "hello from up"}}
        ).json()
        for _ in range(200):
            body = client.get(f"/v1/tasks/{task['id']}").json()
            if body["state"] == "succeeded":
                break
            time.sleep(0.1)
        assert body["result"]["text"] == "hi, I am up"
    finally:
        out = stop(first)
    assert first.returncode == 0, out
    assert "embedded servers stopped" in out
    assert spawned_from(tmp_path) == []

    second = start_up(tmp_path, env)
    try:
        shown = read_until(second, "API at")
        assert KEY.search(shown) is None  # the first key is shown once only
        again = client.get(f"/v1/tasks/{task['id']}")
        assert again.status_code == 200
        assert again.json()["result"]["text"] == "hi, I am up"
    finally:
        # Ctrl-C, as a person stops it: the workers and the API before the servers, quietly.
        second.send_signal(signal.SIGINT)
        out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    ending = out[out.index("stopping...") :]
    for noise in ("Traceback", "WARNING", "ERROR", "never retrieved", "reconnect"):
        assert noise not in ending, ending
    assert "embedded servers stopped" in ending
    assert spawned_from(tmp_path) == []


def test_spine_up_detach_again_restarts_a_dead_server_and_says_so(
    tmp_path: Path, fake_models: FakeModelServer
) -> None:
    with embedded_data_dir(tmp_path) as data_dir:
        env = up_env(fake_models, port=free_port(), data_dir=data_dir)

        def spine(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "spine.platform.app.cli", *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        first = spine("up", "--detach")
        try:
            assert first.returncode == 0, first.stdout + first.stderr
            assert "servers run detached" in first.stdout
            assert "secret" not in first.stdout
            before = {s.name: s for s in stack_status(data_dir)}
            assert all(s.alive for s in before.values()), before
            nats_pid = before["nats"].pid
            assert nats_pid is not None
            os.kill(nats_pid, signal.SIGKILL)
            psutil.Process(nats_pid).wait(10)

            again = spine("up", "--detach")
            assert again.returncode == 0, again.stdout + again.stderr
            assert "nats was not running; restarted it" in again.stdout, again.stdout
            assert "postgres (detached, already running" in again.stdout, again.stdout
            after = {s.name: s for s in stack_status(data_dir)}
            assert all(s.alive for s in after.values()), after
            assert after["nats"].pid != nats_pid
            assert after["nats"].ports == before["nats"].ports
            assert after["postgres"].pid == before["postgres"].pid
        finally:
            down = spine("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(s.alive for s in stack_status(data_dir))
