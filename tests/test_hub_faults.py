"""The local hub under faults and load: kill -9 mid-upload, concurrent clients, bounded memory for big files."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from hub_fixtures import hf_cache, hub, hub_process_factory, raw_json, raw_request  # noqa: F401
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from vitzoo_hf.hub import configure_clients

REPO = "zoo-org/vit-a"


def _assert_blobs_intact(root: Path) -> None:
    """Every published blob's content hashes to its name: nothing half-written is reachable."""
    for blob in (root / "blobs").glob("*/*"):
        h = hashlib.sha256()
        with open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == blob.name, blob


def test_kill_9_during_upload_then_retry(tmp_path, hf_cache, hub_process_factory):  # noqa: F811
    root = tmp_path / "root"
    server = hub_process_factory(root)
    data = os.urandom(8 << 20)
    oid = hashlib.sha256(data).hexdigest()
    with configure_clients(server.endpoint, server.token):
        HfApi().create_repo(REPO)
    # Start a real LFS PUT, send half of the body, and kill the server while it is receiving.
    batch = {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
    _, _, body = raw_json(server.endpoint, "POST", f"/{REPO}.git/info/lfs/objects/batch", batch, token=server.token)
    href = body["objects"][0]["actions"]["upload"]["href"]
    conn = http.client.HTTPConnection(server.endpoint.split("://")[1], timeout=30)
    conn.putrequest("PUT", href.split(server.endpoint, 1)[1])
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[: len(data) // 2])
    deadline = time.monotonic() + 20
    while not any(p.stat().st_size > 0 for p in (root / "tmp").glob("*.part")):
        assert time.monotonic() < deadline, "server never started writing the upload"
        time.sleep(0.01)
    server.kill()
    conn.close()
    assert list((root / "tmp").glob("*.part")), "the kill should have left a partial scratch file"
    assert not (root / "blobs" / oid[:2] / oid).exists()

    restarted = hub_process_factory(root, token=server.token)
    assert list((root / "tmp").iterdir()) == []  # scratch cleaned at start
    _assert_blobs_intact(root)
    with configure_clients(restarted.endpoint, restarted.token):
        api = HfApi()
        # a commit referring to the never-completed object is refused, so nothing corrupt can be served
        lines = [{"key": "header", "value": {"summary": "bogus"}},
                 {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": oid,
                                              "size": len(data)}}]
        status, _, body = raw_request(restarted.endpoint, "POST", f"/api/models/{REPO}/commit/main",
                                      "\n".join(json.dumps(x) for x in lines).encode(),
                                      {"Authorization": f"Bearer {restarted.token}"})
        assert status == 422 and b"has not been uploaded" in body
        info = api.upload_file(path_or_fileobj=data, path_in_repo="model.safetensors", repo_id=REPO)
        path = hf_hub_download(REPO, "model.safetensors", revision=info.oid)
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == oid
    _assert_blobs_intact(root)


def test_eight_concurrent_clients_on_branches(hub):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO)

    def client(i: int) -> tuple[str, bytes, bytes]:
        branch = f"worker/{i}"
        c = HfApi()
        c.create_branch(REPO, branch=branch)
        weights, note = os.urandom(300_000 + i), f"worker {i}".encode()
        c.create_commit(REPO, [CommitOperationAdd("model.safetensors", weights),
                               CommitOperationAdd("note.txt", note)], commit_message=f"w{i}", revision=branch)
        got = Path(hf_hub_download(REPO, "model.safetensors", revision=branch)).read_bytes()
        got_note = Path(hf_hub_download(REPO, "note.txt", revision=branch)).read_bytes()
        assert (got, got_note) == (weights, note)
        # and everyone also commits to main at the same time: commits serialise, none is lost
        c.upload_file(path_or_fileobj=note, path_in_repo=f"all/{i}.txt", repo_id=REPO)
        return branch, weights, note

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    refs = {b.name for b in api.list_repo_refs(REPO).branches}
    assert refs == {"main"} | {r[0] for r in results}
    assert sorted(f for f in api.list_repo_files(REPO) if f.startswith("all/")) == [f"all/{i}.txt" for i in range(8)]
    assert len(api.list_repo_commits(REPO)) == 9
    for branch, weights, _ in results:
        info = api.model_info(REPO, revision=branch, files_metadata=True)
        lfs = {s.rfilename: s.lfs for s in info.siblings}["model.safetensors"]
        assert lfs.sha256 == hashlib.sha256(weights).hexdigest()


@pytest.mark.slow
def test_200mb_upload_and_download_keep_server_memory_flat(tmp_path, hf_cache, hub_process_factory):  # noqa: F811
    server = hub_process_factory(tmp_path / "root")
    proc = psutil.Process(server.pid)
    big = tmp_path / "big.safetensors"
    h = hashlib.sha256()
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(200):
            chunk = block[:-4] + i.to_bytes(4, "little")
            h.update(chunk)
            f.write(chunk)
    baseline = proc.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with configure_clients(server.endpoint, server.token):
            api = HfApi()
            api.create_repo(REPO)
            api.upload_file(path_or_fileobj=str(big), path_in_repo="big.safetensors", repo_id=REPO)
            out = Path(hf_hub_download(REPO, "big.safetensors", local_dir=tmp_path / "dl"))
    finally:
        stop.set()
        sampler.join()
    got = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == h.hexdigest()
    growth_mb = (peak - baseline) / 2**20
    print(json.dumps({"server_rss_baseline_mb": round(baseline / 2**20, 1), "growth_mb": round(growth_mb, 1)}))
    assert growth_mb < 100, f"server RSS grew by {growth_mb:.0f} MB for a 200 MB file"
