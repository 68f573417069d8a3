"""Issue 17, items 1, 2, 3, 7 (endpoints) and 8: the hub under a hostile local client, over real HTTP.

Every test here failed on the hub before the fix (checked against main at 8247887). Requests are raw (sockets or
http.client) where the real clients would refuse to send them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hub_fixtures import REPO_ROOT, connect, hf_cache, hub, raw_json, raw_request, read_head  # noqa: F401
from huggingface_hub import HfApi, snapshot_download

from vitzoo_hf.hub import local_hub

REPO = "zoo-org/vit-a"


def _auth(h) -> dict[str, str]:
    return {"Authorization": f"Bearer {h.token}"}


def _ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _commit_raw(h, repo: str, *ops: dict, summary: str = "raw") -> tuple[int, dict, object]:
    body = _ndjson({"key": "header", "value": {"summary": summary}}, *ops)
    status, headers, data = raw_request(h.endpoint, "POST", f"/api/models/{repo}/commit/main", body,
                                        {**_auth(h), "Content-Type": "application/x-ndjson"})
    try:
        return status, headers, json.loads(data)
    except ValueError:
        return status, headers, data


def _file_op(path: str, content: bytes = b"x") -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(),
                                     "encoding": "base64"}}


def _send_while_reading(endpoint: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Send a big body from a thread while reading the answer: the hub may answer (and close) before it is all
    sent, which is what a bounded endpoint does."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with connect(endpoint, timeout=60) as s:
        def pump() -> None:
            try:
                s.sendall(head.encode() + body)
            except OSError:
                pass

        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        answer = read_head(s)
        if b"Content-Length:" in answer:
            length = int(answer.split(b"Content-Length:", 1)[1].split(b"\r\n", 1)[0])
            while len(answer.split(b"\r\n\r\n", 1)[1]) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        sender.join(30)
    return answer


# ------------------------------------------------------------------ item 1: bounded unauthenticated costs
def test_validate_yaml_refuses_non_json_bodies(hub):  # noqa: F811
    """A web page can POST text/plain to localhost without a CORS preflight; the hub must not parse it."""
    body = json.dumps({"content": "---\nlicense: mit\n---\n"}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, headers, data = raw_request(hub.endpoint, "POST", "/api/validate-yaml", body,
                                            {"Content-Type": ctype})
        assert status == 415, (ctype, status, data)
        assert b"application/json" in data
    assert raw_json(hub.endpoint, "POST", "/api/validate-yaml", {"content": "---\nlicense: mit\n---\n"})[0] == 200


@pytest.mark.parametrize("content, needle", [
    ("---\na: &a [x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi",
                                                                                         strict=True)) + "---\n",
     "aliases"),  # billion laughs
    ("---\nk: " + "[" * 5000 + "\n---\n", "nest"),
    ("---\nk: " + "[" * 100 + "]" * 100 + "\n---\n", "nests deeper than 64"),
    ("---\nk: [" + "1, " * 60000 + "1]\n---\n", "nodes"),
    ("---\n" + "k: " + "x" * (300 << 10) + "\n---\n", "KiB"),
])
def test_validate_yaml_is_bounded(hub, content, needle):  # noqa: F811
    t0 = time.process_time()  # CPU time of this process (client and in-process hub): robust on a loaded box
    status, _, data = raw_json(hub.endpoint, "POST", "/api/validate-yaml", {"content": content})
    assert time.process_time() - t0 < 1.0
    assert status == 400 and needle in data["errors"][0]["message"], data


def test_validate_yaml_refuses_a_huge_body(hub):  # noqa: F811
    body = json.dumps({"content": "x" * (8 << 20)}).encode()
    answer = _send_while_reading(hub.endpoint, "POST", "/api/validate-yaml", body, {"Content-Type": "application/json"})
    assert answer.startswith(b"HTTP/1.1 413") and b"limit" in answer, answer[:300]


def test_json_bodies_are_bounded_by_their_number_of_values(hub):  # noqa: F811
    """1 MiB of ``[[],[],...]`` is ~60 MB of Python lists: refused while decoding, memory stays near the input."""
    bomb = b'{"content": "", "x": [' + b"[]," * 340_000 + b"[]]}"
    tracemalloc.start()
    try:
        status, _, data = raw_request(hub.endpoint, "POST", "/api/validate-yaml", bomb,
                                      {"Content-Type": "application/json"})
        peak = tracemalloc.get_traced_memory()[1]  # the hub runs in this process: its allocations are traced
    finally:
        tracemalloc.stop()
    assert status == 413 and b"JSON values" in data, (status, data[:200])
    assert peak < 12 * len(bomb), f"{peak >> 20} MiB traced for a {len(bomb) >> 10} KiB body"


WRITE_ROUTES = [
    ("DELETE", "/api/repos/delete"),
    ("POST", "/api/repos/create"),
    ("POST", f"/api/models/{REPO}/commit/main"),
    ("POST", f"/api/models/{REPO}/preupload/main"),
    ("POST", f"/api/models/{REPO}/branch/dev"),
    ("POST", f"/api/models/{REPO}/tag/main"),
    ("PUT", f"/api/models/{REPO}/settings"),
    ("POST", f"/{REPO}.git/info/lfs/objects/batch"),
    ("POST", "/api/collections"),
]


@pytest.mark.parametrize("method, path", WRITE_ROUTES)
def test_the_token_is_checked_before_any_body_is_read(hub, method, path):  # noqa: F811
    """An anonymous body is never parsed: broken or deeply nested JSON without a token is a 401, not a 400/500."""
    HfApi().create_repo(REPO)
    for body in (b"{not json " * 1000, b"[" * 200_000):
        status, _, data = raw_request(hub.endpoint, method, path, body, {"Content-Type": "application/json"})
        assert status == 401, (path, status, data[:200])


def test_paths_info_caps_the_number_of_paths(hub):  # noqa: F811
    HfApi().create_repo(REPO)
    path = f"/api/models/{REPO}/paths-info/main"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, data = raw_request(hub.endpoint, "POST", path, ("paths=zz&" * 1001).encode(), form)
    assert status == 400 and b"at most 1000" in data
    body = "&".join(f"paths=p{i}" for i in range(999)) + "&paths=.gitattributes&expand=true"
    status, _, data = raw_request(hub.endpoint, "POST", path, body.encode(), form)
    assert status == 200 and [e["path"] for e in json.loads(data)] == [".gitattributes"]


def test_last_commit_per_path_matches_history(hub):  # noqa: F811
    """The one-pass lastCommit (tree?expand=true, paths-info expand) equals the newest commit touching each path."""
    api = HfApi()
    api.create_repo(REPO)
    for i, files in enumerate([["a/x.txt", "a/b/y.txt", "c.txt"], ["a/b/y.txt"], ["c.txt", "d/z.txt"], []]):
        ops = [_file_op(p, f"{p}{i}".encode()) for p in files] or [{"key": "deletedFile",
                                                                     "value": {"path": "d/z.txt"}}]
        assert _commit_raw(hub, REPO, *ops, summary=f"c{i}")[0] == 200
    titles = {e.path: e.last_commit.title for e in api.list_repo_tree(REPO, recursive=True, expand=True)}
    assert titles == {"a": "c1", "a/b": "c1", "a/x.txt": "c0", "a/b/y.txt": "c1", "c.txt": "c2",
                      ".gitattributes": "initial commit"}
    info = api.get_paths_info(REPO, ["a", "a/x.txt", "c.txt", "nope"], expand=True)
    assert {e.path: e.last_commit.title for e in info} == {"a": "c1", "a/x.txt": "c0", "c.txt": "c2"}


def test_last_commits_of_a_store_made_before_commit_metadata(tmp_path, hf_cache):  # noqa: F811
    """Commits without a ``.meta`` file (older stores) are diffed once and give the same answer."""
    root = tmp_path / "store"
    with local_hub(root) as h:
        HfApi().create_repo(REPO)
        for i, path in enumerate(["a/x.txt", "b.txt", "a/y.txt"]):
            assert _commit_raw(h, REPO, _file_op(path), summary=f"c{i}")[0] == 200
        before = {e.path: e.last_commit.title for e in HfApi().list_repo_tree(REPO, recursive=True, expand=True)}
    metas = list(root.rglob("*.meta"))
    assert len(metas) == 4
    for m in metas:
        m.unlink()
    with local_hub(root):
        after = {e.path: e.last_commit.title for e in HfApi().list_repo_tree(REPO, recursive=True, expand=True)}
    assert after == before == {".gitattributes": "initial commit", "a": "c2", "a/x.txt": "c0", "a/y.txt": "c2",
                               "b.txt": "c1"}
    assert len(list(root.rglob("*.meta"))) == 4  # written back: computed once per store


def test_a_chunked_lfs_upload_stops_at_the_signed_size(hub):  # noqa: F811
    HfApi().create_repo(REPO)
    data = b"ten bytes!"
    oid = hashlib.sha256(data).hexdigest()
    status, _, batch = raw_json(hub.endpoint, "POST", f"/{REPO}.git/info/lfs/objects/batch",
                                {"operation": "upload", "objects": [{"oid": oid, "size": 10}]}, token=hub.token,
                                headers={"Content-Type": "application/vnd.git-lfs+json"})
    href = batch["objects"][0]["actions"]["upload"]["href"]
    target = href.split("://", 1)[1].split("/", 1)[1]
    largest = 0
    with connect(hub.endpoint) as s:
        s.sendall(f"PUT /{target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(8):  # 8 MiB for a 10-byte object, watching what lands in tmp/ meanwhile
            s.sendall(b"100000\r\n" + b"z" * (1 << 20) + b"\r\n")
            time.sleep(0.05)
            largest = max([largest, *(p.stat().st_size for p in (hub.root / "tmp").iterdir() if p.is_file())])
        s.sendall(b"0\r\n\r\n")
        answer = read_head(s)
    assert answer.startswith(b"HTTP/1.1 400") and b"size mismatch" in answer, answer[:300]
    assert largest <= 10, f"{largest} bytes written to tmp/ for a 10-byte object"


def test_ndjson_lines_are_bounded_and_read_in_linear_time(hub):  # noqa: F811
    HfApi().create_repo(REPO)
    big = os.urandom(9 << 20)  # a regular file just under the LFS threshold: a ~12 MiB base64 line
    t0 = time.process_time()
    status, _, data = _commit_raw(hub, REPO, _file_op("big.bin", big))
    assert status == 200, data
    assert time.process_time() - t0 < 5
    answer = _send_while_reading(hub.endpoint, "POST", f"/api/models/{REPO}/commit/main", b"x" * (34 << 20),
                                 {**_auth(hub), "Content-Type": "application/x-ndjson"})
    assert answer.startswith(b"HTTP/1.1 413") and b"NDJSON line longer" in answer, answer[:300]


def test_a_20k_file_commit_is_fast(hub):  # noqa: F811
    """20,000 files in one NDJSON commit (took 31 s before: a quadratic folder check and 40k fsyncs)."""
    HfApi().create_repo(REPO)
    ops = [_file_op(f"d{i % 50}/f{i}.txt", str(i % 200).encode()) for i in range(20_000)]
    t0 = time.process_time()
    status, _, data = _commit_raw(hub, REPO, *ops)
    elapsed = time.process_time() - t0  # CPU seconds of client + in-process hub
    assert status == 200, data
    assert elapsed < 8, f"{elapsed:.1f} s"
    assert len(HfApi().list_repo_files(REPO)) == 20_001


# ------------------------------------------------------------------------ item 2: no planted files
PLANTED = [".git/config", "sub/.git/hooks/pre-commit", ".git", ".cache/huggingface/download/x.metadata",
           "a/.cache/y", ".GIT/config", ".Git/config", ".git./config", ".git /config", "git~1/config",
           ".g\u200cit/config", "\ufeff.git/config", ".ca\u00adche/x"]


@pytest.mark.parametrize("path", PLANTED)
def test_paths_clients_trust_are_refused_at_commit_time(hub, path):  # noqa: F811
    HfApi().create_repo(REPO)
    status, headers, data = _commit_raw(hub, REPO, _file_op(path, b"[core]\n\tfsmonitor = touch /tmp/pwned\n"))
    assert status == 400, (path, status, data)
    assert ("'.git/'" in data["error"] or "'.cache/'" in data["error"]) and "huggingface_hub" in data["error"]
    blob = hashlib.sha256(b"lfs").hexdigest()
    status, _, data = _commit_raw(hub, REPO, {"key": "lfsFile", "value": {"path": path, "oid": blob, "size": 3}})
    assert status == 400, (path, status, data)
    assert path not in HfApi().list_repo_files(REPO)


def test_download_into_a_git_checkout_cannot_touch_its_git_folder(hub, tmp_path):  # noqa: F811
    HfApi().create_repo(REPO)
    assert _commit_raw(hub, REPO, _file_op(".git/config", b"[core]\n\tfsmonitor = evil\n"))[0] == 400
    assert _commit_raw(hub, REPO, _file_op("dot.git/config.txt", b"fine"), _file_op(".github/x.yml", b"ok"))[0] == 200
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    config = (checkout / ".git" / "config").read_bytes()
    snapshot_download(REPO, local_dir=checkout)
    assert (checkout / ".git" / "config").read_bytes() == config
    assert (checkout / "dot.git" / "config.txt").read_text() == "fine"


def test_nfc_and_nfd_twins_cannot_coexist_but_case_variants_can(hub):  # noqa: F811
    HfApi().create_repo(REPO)
    nfc, nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    assert _commit_raw(hub, REPO, _file_op(nfc))[0] == 200
    status, _, data = _commit_raw(hub, REPO, _file_op(nfd))
    assert status == 400 and "normalisation" in data["error"] and nfc in data["error"]
    assert _commit_raw(hub, REPO, _file_op("K.txt"))[0] == 200
    assert _commit_raw(hub, REPO, _file_op("\u212a.txt"))[0] == 400  # KELVIN SIGN: NFC is 'K'
    status, _, data = _commit_raw(hub, REPO, _file_op(nfd), _file_op(nfd + "2"), {"key": "deletedFile",
                                                                                  "value": {"path": nfc}})
    assert status == 400  # the twin is refused when added, whatever comes later in the commit
    assert _commit_raw(hub, REPO, _file_op("README.md"), _file_op("readme.md"))[0] == 200  # like git and the Hub
    files = HfApi().list_repo_files(REPO)
    assert nfc in files and nfd not in files and {"README.md", "readme.md"} <= set(files)


def test_repo_ids_are_unique_case_insensitively(hub):  # noqa: F811
    api = HfApi()
    api.create_repo("alice/pub")
    status, _, data = raw_json(hub.endpoint, "POST", "/api/repos/create", {"organization": "Alice", "name": "pub"},
                               token=hub.token)
    assert status == 400 and "'alice'" in data["error"]
    status, _, data = raw_json(hub.endpoint, "POST", "/api/repos/create", {"organization": "alice", "name": "PUB"},
                               token=hub.token)
    assert status == 409 and data["url"].endswith("/alice/pub")
    assert api.create_repo("alice/PUB", exist_ok=True).repo_id == "alice/pub"
    assert [m.id for m in api.list_models(author="alice")] == ["alice/pub"]


# ------------------------------------------------------------------------ item 3: one bad card
def _card(h, repo: str, yaml_text: str) -> None:
    status, _, data = _commit_raw(h, repo, _file_op("README.md", f"---\n{yaml_text}\n---\n# card\n".encode()))
    assert status == 200, data


def test_dates_in_card_data_are_iso_strings(hub, tmp_path):  # noqa: F811
    HfApi().create_repo(REPO)
    _card(hub, REPO, "date: 2024-01-01\nwhen: 2024-01-01 10:00:00\nratio: .nan\n1: one\nbin: !!binary aGk=\n"
                     "s: !!set {a, b}")
    status, _, info = raw_json(hub.endpoint, "GET", f"/api/models/{REPO}")
    assert status == 200
    assert info["cardData"] == {"date": "2024-01-01", "when": "2024-01-01T10:00:00", "ratio": None, "1": "one",
                                "bin": "aGk=", "s": ["a", "b"]}
    snapshot_download(REPO, local_dir=tmp_path / "dl")
    assert (tmp_path / "dl" / "README.md").is_file()


@pytest.mark.parametrize("bad", ["date: 2024-99-99", "a: &x [1]\nb: *x", "k: " + "[" * 200 + "]" * 200,
                                 "\tbad: [", "- just\n- a list"])
def test_a_bad_card_degrades_only_its_own_repo(hub, bad):  # noqa: F811
    api = HfApi()
    api.create_repo("zoo-org/good")
    _card(hub, "zoo-org/good", "license: mit\ntags: [zoo]")
    api.create_repo("zoo-org/bad")
    _card(hub, "zoo-org/bad", bad)
    status, _, listing = raw_json(hub.endpoint, "GET", "/api/models?cardData=true&full=true")
    assert status == 200, listing
    by_id = {m["id"]: m for m in listing}
    assert by_id["zoo-org/good"]["cardData"] == {"license": "mit", "tags": ["zoo"]}
    assert by_id["zoo-org/bad"]["cardData"] == {}
    assert raw_json(hub.endpoint, "GET", "/api/models/zoo-org/bad")[0] == 200
    assert [m.id for m in api.list_models(filter="zoo")] == ["zoo-org/good"]


# ------------------------------------------------------------- item 7 (endpoints): clean 4xx, never 500
def test_malformed_requests_get_a_4xx_and_no_traceback(hub, capfd):  # noqa: F811
    HfApi().create_repo(REPO)
    ep, tok = hub.endpoint, hub.token
    j = {"Content-Type": "application/json"}
    anonymous = [
        ("GET", "/api/models?limit=%C2%B2", None, {}),
        ("GET", "/api/models?cursor=wrI%3D", None, {}),  # base64 of '²'
        ("PUT", f"/_lfs/upload/{'a' * 64}/%C2%B2", b"", {}),
        ("PUT", f"/_lfs/upload/{'a' * 64}/10?exp=%C2%B2&sig=x", b"", {}),
        ("PUT", f"/_lfs/upload/{'a' * 64}/10?exp=99999999999&sig=%C3%A9", b"", {}),
        ("POST", "/api/validate-yaml", b"[1,2]", j),
        ("POST", "/api/validate-yaml", b'"' + b"[" * 5000, j),
        ("POST", "/api/validate-yaml", b"[" * 100000, j),
        ("POST", "/api/validate-yaml", b'{"content": 5}', j),
        ("DELETE", "/api/repos/delete", b"[1]", j),
        ("DELETE", "/api/repos/delete", b"[" * 100000, j),
    ]
    auth = {**j, "Authorization": f"Bearer {tok}"}
    nd = {"Authorization": f"Bearer {tok}", "Content-Type": "application/x-ndjson"}
    commit = f"/api/models/{REPO}/commit/main"
    authed = [
        ("DELETE", "/api/repos/delete", b"[1]", auth),
        ("DELETE", "/api/repos/delete", b"[" * 100000, auth),
        ("POST", commit, b'{"key": "header", "value": [1]}\n', nd),
        ("POST", commit, b'{"key": "header", "value": "x"}\n', nd),
        ("POST", commit, b'{"key": "file", "value": 7}\n', nd),
        ("POST", commit, b'{"key": "file", "value": {"path": "a", "content": 5}}\n', nd),
        ("POST", commit, b'{"key": "lfsFile", "value": {"path": "a", "oid": 5}}\n', nd),
        ("POST", commit, b'{"key": "deletedFile", "value": {"path": ["a"]}}\n', nd),
        ("POST", commit, b'[1]\n', nd),
        ("POST", commit, b'{"key": "header", "value": {"summary": "x", "parentCommit": [1]}}\n', nd),
        ("POST", f"/api/models/{REPO}/preupload/main", b'{"files": [1]}', auth),
        ("POST", f"/api/models/{REPO}/preupload/main", b'{"files": {"a": 1}}', auth),
        ("POST", f"/api/models/{REPO}/preupload/main", b'{"files": [{"path": "a", "size": "x"}]}', auth),
        ("POST", f"/api/models/{REPO}/tag/main", b'[1]', auth),
        ("POST", f"/api/models/{REPO}/tag/main", b'{"tag": 5}', auth),
        ("POST", f"/api/models/{REPO}/branch/dev", b'{"startingPoint": 5}', auth),
        ("PUT", f"/api/models/{REPO}/settings", b'"private"', auth),
        ("PUT", f"/api/models/{REPO}/settings", b'{"private": "yes"}', auth),
        ("POST", f"/{REPO}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": [1, "x"]}', auth),
        ("POST", f"/{REPO}.git/info/lfs/objects/verify", b'[1]', auth),
        ("POST", "/api/collections", b'{"title": ["x"]}', auth),
        ("POST", "/api/repos/create", b'{"name": ["x"]}', auth),
    ]
    for method, path, body, headers in anonymous + authed:
        status, _, data = raw_request(ep, method, path, body, headers)
        assert status < 500, (method, path, body[:40] if body else body, status, data[:200])
        ok_200 = path.startswith("/api/models?") or path.endswith("/batch")  # limit ignored; per-object LFS errors
        assert status != 200 or ok_200, (method, path, data[:200])
    assert raw_json(ep, "GET", "/api/models")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def _tmpfs_hub(tmp_path: Path, size: str) -> tuple[subprocess.Popen, str, Path] | None:
    """A hub subprocess whose store is a tiny tmpfs (in a private mount namespace: root not needed)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    env = {**os.environ, "VITZOO_HUB_TOKENS": "tok",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    script = (f'mount -t tmpfs -o size={size} tmpfs "{mnt}" || exit 97; exec "{sys.executable}" -m vitzoo_hf.hub '
              f'serve --root "{mnt}/hub" --port 0')
    try:
        proc = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    except FileNotFoundError:
        return None
    line = proc.stdout.readline()
    if "at http://" not in line:
        proc.kill()
        proc.wait()
        return None
    return proc, line.split("at ", 1)[1].strip(), Path(f"/proc/{proc.pid}/root") / str(mnt).lstrip("/") / "hub"


def test_a_full_disk_is_a_507_with_a_message_and_leaves_no_scratch_files(tmp_path):
    started = _tmpfs_hub(tmp_path, "3m")
    if started is None:
        pytest.skip("no unprivileged mount namespaces here (unshare -Urm)")
    proc, ep, root = started
    try:
        tok = {"Authorization": "Bearer tok"}
        assert raw_json(ep, "POST", "/api/repos/create", {"name": "r", "organization": "o"}, token="tok")[0] == 200
        nd = {**tok, "Content-Type": "application/x-ndjson"}
        big = _ndjson({"key": "header", "value": {"summary": "s"}}, _file_op("big.bin", os.urandom(4 << 20)))
        status, headers, data = raw_request(ep, "POST", "/api/models/o/r/commit/main", big, nd)
        assert status == 507 and b"disk is full" in data, (status, data)
        data = os.urandom(5 << 20)
        oid = hashlib.sha256(data).hexdigest()
        _, _, batch = raw_json(ep, "POST", "/o/r.git/info/lfs/objects/batch",
                               {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}, token="tok")
        href = batch["objects"][0]["actions"]["upload"]["href"]
        status, _, body = raw_request(ep, "PUT", "/" + href.split("://", 1)[1].split("/", 1)[1], data)
        assert status == 507 and b"disk is full" in body
        assert list((root / "tmp").iterdir()) == []
        assert raw_json(ep, "GET", "/api/models/o/r")[0] == 200  # still serving, nothing half-written
        assert raw_json(ep, "POST", "/api/repos/create", {"name": "r2", "organization": "o"}, token="tok")[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err


# ------------------------------------------------------------------------ item 8: the store and the token
def test_the_store_is_private_whatever_the_umask(tmp_path, hf_cache):  # noqa: F811
    old = os.umask(0o022)
    try:
        with local_hub(tmp_path / "store") as h:
            HfApi().create_repo(REPO, private=True)
            assert _commit_raw(h, REPO, _file_op("secret.txt", b"s3cret"))[0] == 200
    finally:
        os.umask(old)
    root = tmp_path / "store"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for p in root.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    os.chmod(root, 0o755)  # a store left open by an older version is closed at the next start
    with local_hub(root):
        assert stat.S_IMODE(root.stat().st_mode) == 0o700


def _serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    base = {k: v for k, v in os.environ.items() if k != "VITZOO_HUB_TOKENS"}
    env = {**base, **(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "vitzoo_hf.cli", "hub", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert "at http://" in line, proc.stderr.read() if proc.poll() is not None else line
    return proc, line.split("at ", 1)[1].strip()


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.terminate()
    return proc.communicate(timeout=20)


def test_tokens_from_a_file_or_the_environment_and_a_warning_for_argv(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("# hub tokens\nfile-token\n")
    proc, ep = _serve(["--root", str(tmp_path / "a"), "--token-file", str(token_file)])
    assert raw_json(ep, "GET", "/api/whoami-v2", token="file-token")[0] == 200
    assert raw_json(ep, "GET", "/api/whoami-v2", token="# hub tokens")[0] == 401
    out, err = _stop(proc)
    assert "WARNING" not in err and "file-token" not in out + err

    proc, ep = _serve(["--root", str(tmp_path / "b")], {"VITZOO_HUB_TOKENS": "env-token"})
    assert raw_json(ep, "GET", "/api/whoami-v2", token="env-token")[0] == 200
    out, err = _stop(proc)
    assert "WARNING" not in err

    proc, ep = _serve(["--root", str(tmp_path / "c"), "--token", "argv-token"])
    assert raw_json(ep, "GET", "/api/whoami-v2", token="argv-token")[0] == 200
    out, err = _stop(proc)
    assert "WARNING: --token" in err and "--token-file" in err and "argv-token" not in out + err

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for bad in (str(empty), str(tmp_path / "missing")):
        run = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "hub", "serve", "--root", str(tmp_path / "d"),
                              "--port", "0", "--token-file", bad], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert run.returncode == 2 and "--token-file" in run.stderr and "Traceback" not in run.stderr


def test_private_collections_and_hidden_items_leave_no_trace(hub):  # noqa: F811
    api = HfApi()
    for name in ("pub-a", "pub-b"):
        api.create_repo(f"zoo-org/{name}")
    api.create_repo("zoo-org/secret-model", private=True)
    secret = api.create_collection("Project Nightingale", namespace="zoo-org", private=True)
    public = api.create_collection("Public zoo", namespace="zoo-org")
    api.add_collection_item(public.slug, "zoo-org/pub-a", "model")
    api.add_collection_item(public.slug, "zoo-org/secret-model", "model")
    api.add_collection_item(public.slug, secret.slug, "collection")
    api.add_collection_item(public.slug, "zoo-org/pub-b", "model")
    assert len(api.get_collection(public.slug).items) == 4  # the owner sees everything
    for path in (f"/api/collections/{public.slug}", "/api/collections?owner=zoo-org"):
        status, _, data = raw_request(hub.endpoint, "GET", path)
        assert status == 200
        assert b"nightingale" not in data.lower() and b"secret" not in data
        body = json.loads(data)
        items = body["items"] if isinstance(body, dict) else body[0]["items"]
        assert [i["id"] for i in items] == ["zoo-org/pub-a", "zoo-org/pub-b"]
        assert [i["position"] for i in items] == [0, 1]


def test_org_restricts_every_write(tmp_path, hf_cache):  # noqa: F811
    root = tmp_path / "store"
    with local_hub(root):
        HfApi().create_repo("other/legacy")  # made while every namespace was writable
    with local_hub(root, orgs=["zoo-org"]) as h:
        api = HfApi()
        api.create_repo("zoo-org/ok")
        assert _commit_raw(h, "zoo-org/ok", _file_op("a.txt"))[0] == 200
        status, _, data = _commit_raw(h, "other/legacy", _file_op("a.txt"))
        assert status == 403 and "--org" in data["error"]
        for method, path, payload in [
            ("DELETE", "/api/repos/delete", {"organization": "other", "name": "legacy"}),
            ("POST", "/api/models/other/legacy/branch/dev", {}),
            ("PUT", "/api/models/other/legacy/settings", {"private": True}),
            ("POST", "/api/collections", {"title": "t", "namespace": "other"}),
            ("POST", "/api/repos/create", {"organization": "other", "name": "new"}),
        ]:
            status, _, data = raw_json(h.endpoint, method, path, payload, token=h.token)
            assert status == 403, (path, status, data)
        assert raw_json(h.endpoint, "GET", "/api/models/other/legacy")[0] == 200  # reads stay open
        assert api.create_collection("mine", namespace="zoo-org").slug.startswith("zoo-org/")
