"""Publishing survives a SIGKILL at any moment (issue 17 item 6): kill the publisher right after the Hub applied its
Nth request of a kind, or kill it and let that request complete only after the rerun has read the refs (a slow
Hub finishing a dead client's request); rerun once; the Hub then equals an uninterrupted publish: the same refs,
the same tree on every branch, as many commits, nothing reported as repaired.

The killed publisher is forked from a warm "zygote" process (imports paid once), so a kill point costs a partial
publish plus one rerun.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from huggingface_hub import HfApi

from vitzoo_hf.hub import HubServer, configure_clients
from vitzoo_hf.hub.wire import BodyReader, Request
from vitzoo_hf.publish import publish

REPO_ROOT = Path(__file__).resolve().parents[1]
NS = "zoo-org"
TOKEN = "kill-test-token-0123456789"

ZYGOTE = r"""
import json, os, sys
from vitzoo_hf.publish import publish
import datasets, sklearn.datasets, huggingface_hub, torch  # everything a publish imports, before any fork
out = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ["HF_TOKEN"] = job["token"]
        try:
            publish(job["zoo"], job["namespace"], endpoint=job["endpoint"], progress=False, verbose=True)
        except BaseException as e:
            print("publish failed:", repr(e), flush=True)
            os._exit(1)
        os._exit(0)
    print(json.dumps({"pid": pid}), file=out, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), file=out, flush=True)
"""


class Zygote:
    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def start(self, **job: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> int:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())["status"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def small_zoo(smoke_all, tmp_path_factory) -> Path:
    """One backbone of the smoke zoo and two of its fine-tunes (3 repos, 3 epochs each): every request kind of a
    publish, in a few seconds."""
    _, zoo = smoke_all
    out = tmp_path_factory.mktemp("small-zoo")
    backbone = sorted((zoo / "pretraining").iterdir())[0]
    shutil.copytree(backbone, out / "pretraining" / backbone.name)
    children = sorted((zoo / "finetuning" / backbone.name).iterdir())[:2]
    for child in children:
        shutil.copytree(child, out / "finetuning" / backbone.name / child.name)
    return out


def kind_of(req: Request) -> str | None:
    s, m = req.segments, req.method
    if s[:3] == ["api", "repos", "create"]:
        return "create-repo"
    if s[:1] == ["_lfs"]:
        return "lfs-put"
    if s[:2] == ["api", "validate-yaml"]:
        return "validate-yaml"
    if s[:2] == ["api", "collections"] and m == "POST":
        return "collection-item" if s[-1] == "items" else "collection"
    if s and s[-1] in ("batch", "verify") and "lfs" in s:
        return f"lfs-{s[-1]}"
    if s[:1] == ["api"] and len(s) >= 5 and m == "POST":
        kind = {"preupload": "preupload", "commit": "commit", "branch": "branch"}.get(s[4])
        return f"dataset-{kind}" if kind and s[1] == "datasets" else kind
    if s[:1] == ["api"] and len(s) == 5 and s[4] == "refs":
        return "refs"
    return None


def repo_of(req: Request) -> str | None:
    s = req.segments
    if s[:1] == ["api"] and len(s) >= 4 and s[1] in ("models", "datasets"):
        return f"{s[2]}/{s[3]}"
    return None


class KillHook:
    """Wraps the hub app: at the Nth request of `kind`, SIGKILL the publisher; `late`: kill first and apply that
    request only once the rerun has read the refs of its repo (the refs answer waits until it is applied)."""

    def __init__(self, app: Any, kind: str, n: int, late: bool) -> None:
        self.app, self.handle = app, app.handle
        self.kind, self.n, self.late = kind, n, late
        self.seen = 0
        self.pid: int | None = None
        self.fired = threading.Event()
        self.refs_read = threading.Event()
        self.applied = threading.Event()
        self.late_repo: str | None = None
        self.lock = threading.Lock()
        app.handle = self

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        self.fired.set()

    def __call__(self, req: Request):
        kind = kind_of(req)
        if kind == "refs" and self.late and self.fired.is_set() and not self.refs_read.is_set() \
                and self.late_repo in (None, repo_of(req)):
            response = self.handle(req)  # the rerun's view of the refs, taken before the late request lands
            self.refs_read.set()
            self.applied.wait(30)
            return response
        with self.lock:
            if kind == self.kind:
                self.seen += 1
            hit = kind == self.kind and self.seen == self.n
        if not hit:
            return self.handle(req)
        if not self.late:
            response = self.handle(req)
            self.kill()
            return response
        body = req.body.read_all(1 << 30)  # the request has arrived in full; the Hub is slow to apply it
        req.body = BodyReader(io.BytesIO(body), len(body), False)
        self.late_repo = repo_of(req)
        self.kill()
        assert self.refs_read.wait(60), "the rerun never read the refs"
        try:
            return self.handle(req)
        finally:
            self.applied.set()


def hub_state(api: HfApi) -> dict[str, Any]:
    """Per repo: branch -> (tree {path: oid}, commit count); the collection's items; for the metadata dataset,
    the files that do not name commits (those are checked against the refs instead)."""
    state: dict[str, Any] = {}
    repos = [("model", m.id) for m in api.list_models(author=NS)] + \
        [("dataset", d.id) for d in api.list_datasets(author=NS)]
    for repo_type, repo in repos:
        branches = {}
        for b in api.list_repo_refs(repo, repo_type=repo_type).branches:
            tree = api.list_repo_tree(repo, revision=b.name, recursive=True, repo_type=repo_type)
            files = {e.path: (e.lfs.sha256 if e.lfs else e.blob_id) for e in tree if hasattr(e, "blob_id")}
            if repo_type == "dataset":
                files = {p: o for p, o in files.items() if not p.startswith(("checkpoints/", "README.md"))}
            commits = len(list(api.list_repo_commits(repo, revision=b.name, repo_type=repo_type)))
            branches[b.name] = (files, commits)
        state[repo] = branches
    state["collections"] = sorted((c.title, sorted(i.item_id for i in api.get_collection(c.slug).items))
                                  for c in api.list_collections(owner=NS))
    return state


def check_metadata_names_the_branch_heads(api: HfApi) -> None:
    meta = next(d.id for d in api.list_datasets(author=NS))
    path = api.hf_hub_download(meta, "checkpoints/train-00000-of-00001.parquet", repo_type="dataset")
    rows = pd.read_parquet(path)
    heads = {r: {b.name: b.target_commit for b in api.list_repo_refs(r).branches} for r in set(rows["repo_id"])}
    assert all(heads[r][b] == c for r, b, c in zip(rows["repo_id"], rows["branch"], rows["commit"], strict=True))


@pytest.fixture(scope="module")
def reference(small_zoo, tmp_path_factory) -> dict[str, Any]:
    with HubServer(tmp_path_factory.mktemp("ref-hub"), [TOKEN], port=0) as server, \
            configure_clients(server.endpoint, TOKEN, local=True):
        publish(small_zoo, NS, endpoint=server.endpoint, progress=False)
        return hub_state(HfApi())


KILL_POINTS = [  # (request kind, Nth of that kind, late), every kind a publish sends, some twice
    ("create-repo", 2, False), ("preupload", 2, True), ("lfs-batch", 1, False), ("lfs-put", 4, False),
    ("lfs-verify", 3, True), ("validate-yaml", 2, False), ("commit", 2, True), ("commit", 5, False),
    ("branch", 3, True), ("branch", 4, False), ("collection", 1, True), ("collection-item", 2, False),
    ("dataset-commit", 1, True),
]


@pytest.mark.parametrize(("kind", "n", "late"), KILL_POINTS,
                         ids=[f"{k}-{n}{'-late' if late else ''}" for k, n, late in KILL_POINTS])
def test_a_publish_killed_at_any_request_finishes_on_one_rerun(zygote, small_zoo, reference, tmp_path, kind, n,
                                                               late):  # the zygote imports while `reference` runs
    with HubServer(tmp_path / "hub", [TOKEN], port=0) as server:
        hook = KillHook(server.app, kind, n, late)
        hook.pid = zygote.start(zoo=str(small_zoo), namespace=NS, endpoint=server.endpoint, token=TOKEN,
                                log=str(tmp_path / "killed.log"))
        status = zygote.wait()
        log = (tmp_path / "killed.log").read_text()
        assert hook.fired.is_set(), f"the publish never sent {n} {kind} request(s):\n{log[-3000:]}"
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, log[-3000:]
        with configure_clients(server.endpoint, TOKEN, local=True):
            t = time.monotonic()
            report = publish(small_zoo, NS, endpoint=server.endpoint, progress=False)
            assert not late or hook.applied.is_set()
            assert report.repaired == [] and report.problems == []
            state = hub_state(HfApi())
            assert state == reference, f"rerun after a kill at {kind} #{n} ({time.monotonic() - t:.1f} s)"
            check_metadata_names_the_branch_heads(HfApi())
