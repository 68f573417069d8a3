"""Data safety and security of the local hub, over real HTTP to 127.0.0.1 (raw sockets where framing matters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hub_fixtures import REPO_ROOT, connect, hf_cache, hub, raw_json, raw_request, read_head  # noqa: F401
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from vitzoo_hf.hub import local_hub

REPO = "zoo-org/vit-a"


# ------------------------------------------------------------------------------------------- the store's folder
def test_serve_refuses_a_non_empty_folder_that_is_not_a_store(tmp_path):
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    (home / "tmp" / "precious.txt").write_text("keep me")
    (home / "notes.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "hub", "serve", "--root", str(home),
                               "--port", "0"], capture_output=True, text=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the hub started serving a folder that is not a store")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(home) in proc.stderr and "not a vitzoo hub store" in proc.stderr and "empty" in proc.stderr
    assert (home / "tmp" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "tmp"]  # nothing created either


def test_a_new_store_is_marked_and_only_its_own_tmp_is_cleaned(tmp_path, hf_cache):  # noqa: F811
    root = tmp_path / "empty"
    root.mkdir()  # an existing empty folder is fine
    with local_hub(root) as h:
        HfApi().create_repo(REPO)
        assert raw_json(h.endpoint, "GET", f"/api/models/{REPO}")[0] == 200
    assert (root / "vitzoo-hub.json").is_file()
    (root / "tmp" / "leftover.part").write_bytes(b"scratch of a killed server")
    with local_hub(root) as h:
        assert raw_json(h.endpoint, "GET", f"/api/models/{REPO}")[0] == 200
    assert list((root / "tmp").iterdir()) == []


def test_a_store_made_before_the_marker_is_adopted(tmp_path, hf_cache):  # noqa: F811
    root = tmp_path / "old"
    with local_hub(root):
        HfApi().create_repo(REPO)
    (root / "vitzoo-hub.json").unlink()
    with local_hub(root) as h:
        assert raw_json(h.endpoint, "GET", f"/api/models/{REPO}")[0] == 200
    assert (root / "vitzoo-hub.json").is_file()


# ---------------------------------------------------------------------------------------------- chunked bodies
def _raw_exchange(endpoint: str, request: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes and read the response head, leaving our side of the connection open."""
    with connect(endpoint, timeout=timeout) as s:
        s.sendall(request)
        return read_head(s)


@pytest.mark.parametrize("size_line", [b"-5", b"-1", b"ffffffffffffffffffff", b"0x10", b"+5", b"1_0"])
@pytest.mark.parametrize("path", [b"/api/models/zoo-org/vit-a/commit/main", b"/api/models"])
def test_bad_chunk_sizes_are_400_and_the_server_keeps_serving(hub, size_line, path):  # noqa: F811
    HfApi().create_repo(REPO)
    method = b"POST" if b"commit" in path else b"GET"
    request = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Authorization: Bearer " + hub.token.encode() + b"\r\n\r\n" + size_line + b"\r\n" + b"x" * 100)
    try:
        head = _raw_exchange(hub.endpoint, request)
    except TimeoutError:
        pytest.fail("the server waited for the rest of the connection instead of refusing the chunk size")
    assert head.startswith(b"HTTP/1.1 400"), head[:200]
    assert raw_json(hub.endpoint, "GET", f"/api/models/{REPO}")[0] == 200


# ------------------------------------------------------------------------------------------------- collections
def test_collections_hide_private_repos_from_anonymous_readers(hub):  # noqa: F811
    api = HfApi()
    api.create_repo("zoo-org/public")
    api.create_repo("zoo-org/secret", private=True)
    collection = api.create_collection("Zoo")
    api.add_collection_item(collection.slug, "zoo-org/public", "model")
    api.add_collection_item(collection.slug, "zoo-org/secret", "model")
    assert [i.item_id for i in api.get_collection(collection.slug).items] == ["zoo-org/public", "zoo-org/secret"]

    status, _, body = raw_json(hub.endpoint, "GET", f"/api/collections/{collection.slug}")
    assert status == 200 and [i["id"] for i in body["items"]] == ["zoo-org/public"]
    status, _, listed = raw_json(hub.endpoint, "GET", "/api/collections?owner=vitzoo")
    assert status == 200 and [i["id"] for i in listed[0]["items"]] == ["zoo-org/public"]
    # asking for collections that hold the private repo must not confirm that it exists
    assert raw_json(hub.endpoint, "GET", "/api/collections?item=models/zoo-org/secret")[2] == []
    assert len(raw_json(hub.endpoint, "GET", "/api/collections?item=models/zoo-org/secret", token=hub.token)[2]) == 1
    assert [i.item_id for i in HfApi(token=False).get_collection(collection.slug).items] == ["zoo-org/public"]


# ------------------------------------------------------------------------------------------- names and headers
def test_error_headers_carry_no_carriage_return(hub):  # noqa: F811
    api = HfApi()
    slug = api.create_collection("Papers").slug
    item = {"item": {"id": "2101.00001\rX-Injected: yes", "type": "paper"}}
    assert raw_json(hub.endpoint, "POST", f"/api/collections/{slug}/items", item, token=hub.token)[0] == 200
    body = json.dumps(item).encode()
    request = (f"POST /api/collections/{slug}/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {hub.token}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    head = _raw_exchange(hub.endpoint, request).split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 409")
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    assert b"X-Injected" in head and not any(line.startswith(b"X-Injected") for line in head.split(b"\r\n"))


@pytest.mark.parametrize("namespace", ["api", "datasets", "spaces", "models", "Datasets"])
def test_repos_in_namespaces_that_route_elsewhere_are_refused(hub, namespace):  # noqa: F811
    for repo_type in ("model", "dataset"):
        status, _, body = raw_json(hub.endpoint, "POST", "/api/repos/create",
                                   {"name": "x", "organization": namespace, "type": repo_type}, token=hub.token)
        assert status == 400 and namespace in body["error"] and "reserved" in body["error"], body
    assert not any((hub.root / "repos").glob(f"*/{namespace}"))
    with pytest.raises(HfHubHTTPError):
        HfApi().create_repo(f"{namespace}/x")


def test_parent_commit_must_be_the_head_not_a_prefix_of_it(hub):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO)
    head = api.model_info(REPO).sha
    header = {"key": "header", "value": {"summary": "x", "parentCommit": head[:1]}}
    line = {"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}}
    status, _, body = raw_request(hub.endpoint, "POST", f"/api/models/{REPO}/commit/main",
                                  f"{json.dumps(header)}\n{json.dumps(line)}\n".encode(),
                                  {"Authorization": f"Bearer {hub.token}"})
    assert status in (400, 412), (status, body)
    assert api.model_info(REPO).sha == head
    header["value"]["parentCommit"] = ""
    status, _, body = raw_request(hub.endpoint, "POST", f"/api/models/{REPO}/commit/main",
                                  f"{json.dumps(header)}\n{json.dumps(line)}\n".encode(),
                                  {"Authorization": f"Bearer {hub.token}"})
    assert status in (400, 412), (status, body)
    # the full sha and huggingface_hub's documented 7-character shorthand both name the head exactly
    api.create_commit(REPO, [CommitOperationAdd("b.txt", b"b")], commit_message="full", parent_commit=head)
    head = api.model_info(REPO).sha
    api.create_commit(REPO, [CommitOperationAdd("c.txt", b"c")], commit_message="short", parent_commit=head[:7])
    assert api.list_repo_files(REPO) == [".gitattributes", "b.txt", "c.txt"]
