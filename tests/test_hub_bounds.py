"""Issue 17, "Must show": the worst unauthenticated request per endpoint, against a 20k-file, 25-commit repo.

The repo is built through the storage layer (the same ``Store.commit`` the commit endpoint calls; 20k HTTP commits
would only measure the build). A fresh hub process then serves it, so its peak RSS (``VmHWM``) covers only the
hostile requests. Bound asserted: peak RSS <= :data:`RSS_BOUND_MIB` MiB, and every answer costs the server
<= 1 CPU-second (CPU time from ``/proc``, so a loaded CI box does not make it flaky; wall time is printed).
Before the fix: tree?expand=true cost 11 s of CPU, paths-info 10.6 s, validate-yaml 3.27 GB per 10 MB.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hub_fixtures import hub_process_factory, raw_request, read_head  # noqa: F401

from vitzoo_hf.hub.storage import Op, Store, git_blob_sha1, make_entry

RSS_BOUND_MIB = 256
CPU_BOUND_S = 1.0
N_FILES, N_COMMITS = 20_000, 25
BIG = "big/repo"


def _build(root) -> list[str]:
    store = Store(root)
    try:
        repo = store.create_repo("model", BIG, False, "builder")
        entries = []
        for i in range(100):  # 100 distinct contents for 20k paths: the endpoints' costs are per path
            data = f"content {i}\n".encode()
            sha, size = store.put_blob(data, sync=False)
            entries.append(make_entry(sha, size, False, git_blob_sha1(data)))
        store.sync(e["sha256"] for e in entries)
        card = (b"---\nlicense: mit\ndate: 2024-01-01\ntags: [zoo]\n---\n# big\n")
        sha, size = store.put_blob(card)
        ops = [Op("add", f"d{i % 100}/s{i % 7}/f{i}.txt", entries[i % 100]) for i in range(N_FILES)]
        ops.append(Op("add", "README.md", make_entry(sha, size, False, git_blob_sha1(card))))
        commits = [store.commit(repo, "main", ops, "20k files", "", "builder")]
        for k in range(N_COMMITS - 1):
            commits.append(store.commit(repo, "main", [Op("add", f"d{k}/s0/f{k}.txt", entries[(k + 1) % 100])],
                                        f"edit {k}", "", "builder"))
        bad = store.create_repo("model", "other/bad-card", False, "builder")
        sha, size = store.put_blob(b"---\ndate: 2024-99-99\n---\n")
        store.commit(bad, "main", [Op("add", "README.md", make_entry(sha, size, False, git_blob_sha1(
            b"---\ndate: 2024-99-99\n---\n")))], "bad card", "", "builder")
        return commits
    finally:
        store.close()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{pid}/status").read()).group(1)) / 1024


def _send_big(endpoint: str, method: str, path: str, size: int, headers: str = "") -> int:
    """An anonymous request with a ``size``-byte body, sent while the answer is read (the hub may answer early)."""
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n{headers}\r\n".encode())

        def pump() -> None:
            block = b"[" * (1 << 20)
            try:
                for _ in range(size >> 20):
                    s.sendall(block)
            except OSError:
                pass  # the hub answered and closed without reading it all: fine

        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        head = read_head(s)
        sender.join(30)
    return int(head.split()[1])


def test_worst_unauthenticated_requests_stay_within_fixed_bounds(tmp_path, hub_process_factory):  # noqa: F811
    root = tmp_path / "store"
    commits = _build(root)
    hub = hub_process_factory(root)
    ep, pid = hub.endpoint, hub.pid
    r = f"/api/models/{BIG}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    j = {"Content-Type": "application/json"}
    flow = "---\nk: [" + "1," * 49_000 + "1]\n---\n"  # just under the node limit
    requests = [
        ("GET", "/api/models?full=true&cardData=true", None, {}),
        ("GET", f"{r}?blobs=true", None, {}),
        ("GET", f"{r}/tree/main?recursive=true&expand=true", None, {}),
        ("GET", f"{r}/tree/{commits[0]}?recursive=false&expand=true", None, {}),
        ("GET", f"{r}/tree/main/d3?recursive=true&expand=true", None, {}),
        ("GET", f"{r}/tree/main?recursive=true", None, {}),
        ("GET", f"{r}/commits/main", None, {}),
        ("POST", f"{r}/paths-info/main", ("paths=zz&" * 1000).encode(), form),
        ("POST", f"{r}/paths-info/main", ("&".join(f"paths=d{i % 100}/s{i % 7}" for i in range(1000))
                                           + "&expand=true").encode(), form),
        ("POST", f"{r}/paths-info/main", ("paths=.gitattributes&" * 60_000).encode(), form),
        ("POST", "/api/validate-yaml", json.dumps({"content": flow}).encode(), j),
        ("POST", "/api/validate-yaml", json.dumps({"content": flow + "x" * (900 << 10)}).encode(), j),
        ("POST", "/api/validate-yaml", json.dumps({"content": "---\nk: " + "[" * 900 + "\n---\n"}).encode(), j),
        ("POST", "/api/validate-yaml", b"[" * (3 << 20), j),
        ("GET", f"/{BIG}/resolve/main/README.md", None, {}),
        ("GET", "/api/collections", None, {}),
    ]
    # every snapshot once: the commit cache must stay bounded by bytes
    requests += [("GET", f"{r}/revision/{c}", None, {}) for c in commits]
    worst_cpu, report = 0.0, []
    for method, path, body, headers in requests:
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        status, _, data = raw_request(ep, method, path, body, headers)
        cpu, wall = _cpu_seconds(pid) - cpu0, time.monotonic() - t0
        report.append(f"{method} {path[:60]} -> {status} cpu {cpu:.2f} s wall {wall:.2f} s")
        assert status < 500, (path, status, data[:300])
        assert cpu <= CPU_BOUND_S, report[-1]
        worst_cpu = max(worst_cpu, cpu)
    for method, path in [("DELETE", "/api/repos/delete"), ("POST", f"{r}/commit/main"),
                         ("PUT", f"/_lfs/upload/{'a' * 64}/16777216?exp=1&sig=x")]:
        cpu0 = _cpu_seconds(pid)
        status = _send_big(ep, method, path, 16 << 20, "Content-Type: application/json\r\n")
        assert status == 401 and _cpu_seconds(pid) - cpu0 <= CPU_BOUND_S, (path, status)
    with ThreadPoolExecutor(4) as pool:  # four of the worst at once
        jobs = [pool.submit(raw_request, ep, "POST", "/api/validate-yaml",
                            json.dumps({"content": flow}).encode(), j) for _ in range(4)]
        jobs += [pool.submit(raw_request, ep, "GET", f"{r}/tree/{c}?recursive=true&expand=true")
                 for c in commits[:4]]
        assert all(job.result()[0] < 500 for job in jobs)
    peak = _peak_rss_mib(pid)
    print("\n".join(report), f"\npeak RSS {peak:.0f} MiB, worst answer {worst_cpu:.2f} CPU-s")
    assert peak <= RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB > {RSS_BOUND_MIB} MiB"
    assert raw_request(ep, "GET", "/api/whoami-v2")[0] == 401  # still answering
