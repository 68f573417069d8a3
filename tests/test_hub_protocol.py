"""Security and wire details of the local hub, checked over real HTTP (status codes the clients hide)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hub_fixtures import hf_cache, hub, raw_json, raw_request  # noqa: F401
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from vitzoo_hf.errors import ZooError
from vitzoo_hf.hub import HubServer, local_hub
from vitzoo_hf.hub.cli import main as hub_cli_main
from vitzoo_hf.hub.cli import run_serve

REPO = "zoo-org/vit-a"


@pytest.fixture
def repo(hub):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO)
    data = os.urandom(1000)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"hello world", path_in_repo="a.txt", repo_id=REPO)
    return hub, data


@pytest.mark.parametrize("path", [
    "/api/models/zoo-org/a..b",
    "/api/models/zoo-org/-bad",
    "/api/models/zoo-org/vit-a/revision/a..b",
    "/api/models/zoo-org/vit-a/revision/main%00",
    "/zoo-org/vit-a/resolve/main/..%2F..%2Frepo.json",
    "/zoo-org/vit-a/resolve/main/sub/../a.txt",
    "/zoo-org/vit-a/resolve/main//etc/passwd",
    "/zoo-org/vit-a/resolve/main/a%0A.txt",
    "/api/models/zoo-org/vit-a/tree/main/..%2F..",
])
def test_bad_ids_revisions_and_paths_are_400(repo, path):
    h, _ = repo
    status, headers, body = raw_json(h.endpoint, "GET", path)
    assert status == 400, (path, status, body)
    assert "Invalid" in body["error"] and headers["x-error-message"]


def test_bad_names_in_writes_are_400_and_touch_nothing(repo):
    h, _ = repo
    status, _, body = raw_json(h.endpoint, "POST", "/api/repos/create",
                               {"name": "..", "organization": "zoo-org"}, token=h.token)
    assert status == 400 and "Invalid repo id" in body["error"]
    line = json.dumps({"key": "file", "value": {"path": "../evil.txt", "content": "aGk=", "encoding": "base64"}})
    header = json.dumps({"key": "header", "value": {"summary": "x"}})
    status, _, body = raw_request(h.endpoint, "POST", "/api/models/zoo-org/vit-a/commit/main",
                                  f"{header}\n{line}\n".encode(),
                                  {"Authorization": f"Bearer {h.token}", "Content-Type": "application/x-ndjson"})
    assert status == 400 and b"Invalid path" in body
    assert not list(h.root.parent.glob("**/evil.txt"))
    assert HfApi().list_repo_files(REPO) == [".gitattributes", "a.txt", "w.bin"]


def test_writes_need_a_valid_token(repo):
    h, _ = repo
    anonymous, wrong = HfApi(token=False), HfApi(token="not-the-token")
    with pytest.raises(HfHubHTTPError, match="Writes need a token") as e:
        anonymous.create_repo("zoo-org/new")
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid token") as e:
        wrong.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        anonymous.create_branch(REPO, branch="b")
    with pytest.raises(HfHubHTTPError):
        anonymous.delete_repo(REPO)
    # reads of public repos need no token, and a stale token does not break them
    assert anonymous.list_repo_files(REPO) == wrong.list_repo_files(REPO) == [".gitattributes", "a.txt", "w.bin"]
    status, headers, _ = raw_json(h.endpoint, "GET", "/api/whoami-v2", token="nope")
    assert status == 401 and headers["x-error-code"]
    assert HfApi().whoami()["name"] == "vitzoo"


def test_lfs_upload_urls_are_signed_and_content_checked(repo):
    h, _ = repo
    data = os.urandom(5000)
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
    status, _, body = raw_json(h.endpoint, "POST", "/zoo-org/vit-a.git/info/lfs/objects/batch", batch)
    assert status == 401
    status, _, body = raw_json(h.endpoint, "POST", "/zoo-org/vit-a.git/info/lfs/objects/batch", batch,
                               token=h.token)
    href = body["objects"][0]["actions"]["upload"]["href"]
    path = href.split(h.endpoint, 1)[1]
    status, _, _ = raw_request(h.endpoint, "PUT", path.replace("sig=", "sig=0"), data)
    assert status == 401
    tampered = bytes([data[0] ^ 1]) + data[1:]
    status, _, body = raw_request(h.endpoint, "PUT", path, tampered)
    assert status == 400 and b"mismatch" in body
    assert not (h.root / "blobs" / oid[:2] / oid).exists()
    status, _, _ = raw_request(h.endpoint, "PUT", path, data)
    assert status == 200
    assert (h.root / "blobs" / oid[:2] / oid).read_bytes() == data
    _, _, body = raw_json(h.endpoint, "POST", "/zoo-org/vit-a.git/info/lfs/objects/batch", batch, token=h.token)
    assert "actions" not in body["objects"][0]  # stored: the client skips the upload


def test_resolve_headers_and_ranges(repo):
    lh, data = repo
    url = "/zoo-org/vit-a/resolve/main/w.bin"
    status, hd, body = raw_request(lh.endpoint, "HEAD", url)
    sha = HfApi().model_info(REPO).sha
    assert status == 200 and body == b"" and hd["content-length"] == "1000"
    assert hd["x-repo-commit"] == sha and hd["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert not [k for k in hd if "xet" in k] and "link" not in hd
    status, hd, _ = raw_request(lh.endpoint, "HEAD", "/zoo-org/vit-a/resolve/main/a.txt")
    assert hd["etag"] == f'"{hashlib.sha1(b"blob 11" + bytes(1) + b"hello world").hexdigest()}"'
    for rng, expect in [("bytes=100-199", data[100:200]), ("bytes=0-100000", data), ("bytes=990-", data[990:]),
                        ("bytes=-10", data[-10:])]:
        status, hd, body = raw_request(lh.endpoint, "GET", url, headers={"Range": rng})
        assert status == 206 and body == expect, rng
        assert hd["content-range"].endswith("/1000") and int(hd["content-length"]) == len(expect)
    status, hd, body = raw_request(lh.endpoint, "GET", url, headers={"Range": "bytes=1000-"})
    assert status == 416 and hd["content-range"] == "bytes */1000" and body == b""
    status, hd, body = raw_request(lh.endpoint, "GET", url)
    assert status == 200 and body == data
    status, hd, _ = raw_request(lh.endpoint, "HEAD", "/zoo-org/vit-a/resolve/main/missing.txt")
    assert status == 404 and hd["x-error-code"] == "EntryNotFound" and hd["x-repo-commit"] == sha


def test_unknown_routes_and_xet_are_fast_404_with_error_code(repo):
    lh, _ = repo
    for method, path in [("GET", "/api/agent-harnesses"), ("GET", "/api/models/zoo-org/vit-a/xet-write-token/main"),
                         ("GET", "/zoo-org/vit-a"), ("POST", "/api/unknown"), ("GET", "/api/models/zoo-org/nope")]:
        status, hd, _ = raw_request(lh.endpoint, method, path)
        assert status == 404 and hd.get("x-error-code"), path
    assert raw_request(lh.endpoint, "HEAD", "/api/telemetry/x")[0] == 200


def test_parent_commit_mismatch_is_412(repo):
    api = HfApi()
    first = api.model_info(REPO).sha
    api.upload_file(path_or_fileobj=b"2", path_in_repo="two.txt", repo_id=REPO)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(REPO, [CommitOperationAdd("three.txt", b"3")], commit_message="late",
                          parent_commit=first)
    assert e.value.response.status_code == 412
    api.create_commit(REPO, [CommitOperationAdd("three.txt", b"3")], commit_message="ok",
                      parent_commit=api.model_info(REPO).sha)


def test_urls_follow_the_host_the_client_used(repo):
    h, _ = repo
    port = h.endpoint.rsplit(":", 1)[1]
    _, _, body = raw_json(h.endpoint, "POST", "/api/repos/create", {"name": "n", "organization": "o",
                          "type": "dataset"}, token=h.token, headers={"Host": f"localhost:{port}"})
    assert body["url"] == f"http://localhost:{port}/datasets/o/n"


def test_tokens_never_reach_disk(tmp_path, hf_cache):  # noqa: F811
    with local_hub(tmp_path / "root", token="s3cret-token-value") as h:
        HfApi().create_repo(REPO)
        HfApi().upload_file(path_or_fileobj=b"x" * 100, path_in_repo="x.txt", repo_id=REPO)
        for p in h.root.rglob("*"):
            if p.is_file():
                assert b"s3cret-token-value" not in p.read_bytes(), p


def test_restart_keeps_everything_and_one_server_per_root(tmp_path, hf_cache):  # noqa: F811
    root = tmp_path / "root"
    with local_hub(root):
        api = HfApi()
        api.create_repo(REPO)
        info = api.upload_file(path_or_fileobj=b"persist", path_in_repo="p.txt", repo_id=REPO)
        api.create_tag(REPO, tag="v1")
        with pytest.raises(RuntimeError, match="already served"):
            HubServer(root, ["t"], port=0)
    (root / "tmp" / "leftover.part").write_bytes(b"garbage")
    with local_hub(root):
        api = HfApi()
        assert api.model_info(REPO, revision="v1").sha == info.oid
        status, _, body = raw_request(api.endpoint, "GET", f"/zoo-org/vit-a/resolve/{info.oid}/p.txt")
        assert (status, body) == (200, b"persist")
        assert list((root / "tmp").iterdir()) == []


def test_non_loopback_bind_needs_explicit_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="allow_remote"):
        HubServer(tmp_path / "r", ["t"], host="0.0.0.0", port=0)
    assert hub_cli_main(["serve", "--root", str(tmp_path / "r"), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    with pytest.raises(ZooError, match="out of range"):
        run_serve(type("A", (), {"port": 70000, "host": "127.0.0.1"})())


def test_validate_yaml_and_quoted_names(repo):
    h, _ = repo
    status, _, body = raw_json(h.endpoint, "POST", "/api/validate-yaml",
                               {"content": "---\nlicense: [mit\n---\n", "repoType": "model"})
    assert status == 400 and body["errors"]
    assert raw_json(h.endpoint, "POST", "/api/validate-yaml", {"content": "---\na: 1\n---\n"})[0] == 200
    api = HfApi()
    api.create_branch(REPO, branch="run/epoch-1")
    api.upload_file(path_or_fileobj=b"q", path_in_repo="ckpt/e 1/w+x.txt", repo_id=REPO, revision="run/epoch-1")
    raw = f"/zoo-org/vit-a/resolve/{quote('run/epoch-1', safe='')}/{quote('ckpt/e 1/w+x.txt')}"
    assert raw_request(h.endpoint, "GET", raw)[2] == b"q"
    tree = raw_json(h.endpoint, "GET", f"/api/models/zoo-org/vit-a/tree/{quote('run/epoch-1', safe='')}/"
                                         f"{quote('ckpt/e 1', safe='')}?recursive=false&expand=false")[2]
    assert [e["path"] for e in tree] == ["ckpt/e 1/w+x.txt"]
    assert Path(api.hf_hub_download(REPO, "ckpt/e 1/w+x.txt", revision="run/epoch-1")).read_bytes() == b"q"
