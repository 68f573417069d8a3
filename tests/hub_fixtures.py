"""Shared fixtures for the local hub tests: isolated client caches, in-process hubs, hub subprocesses.

Import the fixtures you use into a test module (``from hub_fixtures import hub  # noqa: F401``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vitzoo_hf.hub import LocalHub, local_hub

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HF_HOME. The libraries capture their cache paths at import, so those constants are patched too."""
    import datasets.config
    import huggingface_hub.constants as hc

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name, value in {
        "HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets", "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
    }.items():
        monkeypatch.setattr(hc, name, str(value))
    monkeypatch.setattr(hc, "HF_HUB_DISABLE_TELEMETRY", True)
    for name, value in {
        "HF_CACHE_HOME": str(home), "HF_DATASETS_CACHE": home / "datasets",
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
    return home


@pytest.fixture
def hub(tmp_path: Path, hf_cache: Path) -> Iterator[LocalHub]:
    """An in-process hub on a fresh root, with the clients configured for it."""
    with local_hub(tmp_path / "hub_root") as h:
        yield h


@pytest.fixture
def paged_hub(tmp_path: Path, hf_cache: Path) -> Iterator[LocalHub]:
    """Like ``hub`` but with two items per page, so every paginated listing follows Link headers."""
    with local_hub(tmp_path / "hub_root", page_size=2) as h:
        yield h


def make_folder(path: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        p = path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def connect(endpoint: str, timeout: float = 10) -> socket.socket:
    """A raw TCP connection to a hub endpoint (http://HOST:PORT), for requests no client would send."""
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_head(s: socket.socket) -> bytes:
    """Read until the end of a response head (or until the hub closes), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def raw_request(endpoint: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request (no client library), for status codes and headers the clients hide."""
    host = endpoint.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_json(endpoint: str, method: str, path: str, payload: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    status, resp_headers, body = raw_request(endpoint, method, path,
                                             None if payload is None else json.dumps(payload).encode(), hdrs)
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = body
    return status, resp_headers, data


class HubProcess:
    """``python -m vitzoo_hf.hub serve`` in a subprocess: for kill -9 and RSS measurements."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.token = token or secrets.token_urlsafe(16)
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self) -> HubProcess:
        env = {**os.environ, "VITZOO_HUB_TOKENS": self.token,
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(self.root), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = re.search(r"at (http://\S+)", line)
            if m:
                self.endpoint = m.group(1)
                return self
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"hub process exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        raise TimeoutError("hub process did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def hub_process_factory(tmp_path: Path) -> Iterator[Any]:
    """Start hub subprocesses on demand; all are stopped at teardown."""
    started: list[HubProcess] = []

    def start(root: Path | None = None, token: str | None = None) -> HubProcess:
        p = HubProcess(root or tmp_path / "proc_root", token).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
