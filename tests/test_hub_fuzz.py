"""Issue 17, "Must show": arbitrary bytes, paths and JSON at every endpoint, with and without a token.

Asserted for every request: no 5xx, no traceback on the server's stderr, and the server still answers.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from urllib.parse import quote, urlencode

from hub_fixtures import hf_cache, raw_json  # noqa: F401
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitzoo_hf.hub import local_hub

SEED, PRIVATE = "zoo-org/fuzz", "zoo-org/priv"
OID = hashlib.sha256(b"lfs-object").hexdigest()

ROUTES = [  # (method, template); {repo} {rev} {path} {slug} {item} {oid} {size} {seg} are filled in per example
    ("GET", "/api/whoami-v2"), ("POST", "/api/repos/create"), ("DELETE", "/api/repos/delete"),
    ("POST", "/api/validate-yaml"), ("GET", "/api/models"), ("GET", "/api/datasets"), ("GET", "/api/spaces"),
    ("GET", "/api/{t}/{repo}"), ("GET", "/api/{t}/{repo}/revision/{rev}"), ("GET", "/api/{t}/{repo}/refs"),
    ("GET", "/api/{t}/{repo}/tree/{rev}/{path}"), ("GET", "/api/{t}/{repo}/tree/{rev}"),
    ("GET", "/api/{t}/{repo}/commits/{rev}"), ("POST", "/api/{t}/{repo}/paths-info/{rev}"),
    ("POST", "/api/{t}/{repo}/preupload/{rev}"), ("POST", "/api/{t}/{repo}/commit/{rev}"),
    ("POST", "/api/{t}/{repo}/branch/{rev}"), ("DELETE", "/api/{t}/{repo}/branch/{rev}"),
    ("POST", "/api/{t}/{repo}/tag/{rev}"), ("DELETE", "/api/{t}/{repo}/tag/{rev}"),
    ("PUT", "/api/{t}/{repo}/settings"), ("GET", "/api/{t}/{repo}/xet-read-token/{rev}"),
    ("GET", "/{p}{repo}/resolve/{rev}/{path}"), ("HEAD", "/{p}{repo}/resolve/{rev}/{path}"),
    ("POST", "/{p}{repo}.git/info/lfs/objects/batch"), ("POST", "/{p}{repo}.git/info/lfs/objects/verify"),
    ("PUT", "/_lfs/upload/{oid}/{size}"), ("GET", "/api/collections"), ("POST", "/api/collections"),
    ("GET", "/api/collections/{slug}"), ("PATCH", "/api/collections/{slug}"),
    ("DELETE", "/api/collections/{slug}"), ("POST", "/api/collections/{slug}/items"),
    ("PATCH", "/api/collections/{slug}/items/{item}"), ("DELETE", "/api/collections/{slug}/items/{item}"),
    ("GET", "/{seg}"), ("POST", "/{seg}/{seg}/{seg}"), ("OPTIONS", "/api/models"),
]
KEYS = ["name", "organization", "type", "private", "visibility", "content", "repoType", "files", "path", "size",
        "sample", "operation", "objects", "oid", "tag", "message", "startingPoint", "title", "namespace",
        "description", "item", "id", "note", "position", "theme", "summary", "parentCommit", "encoding", "key",
        "value", "transfer"]
CONTENT_TYPES = ["application/json", "application/x-ndjson", "application/x-www-form-urlencoded", "text/plain",
                 "application/vnd.git-lfs+json", None, "application/json; charset=utf-8"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=30), st.sampled_from(["main", SEED, OID, "README.md", ".git/config"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner,
                                                 max_size=5)), max_leaves=20)
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)

# a path segment: arbitrary text percent-encoded, raw percent-escaped bytes (often invalid UTF-8), or a known name
segments = st.one_of(
    st.text(max_size=20).map(lambda t: quote(t, safe="")),
    st.binary(max_size=8).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    st.sampled_from(["main", "..", ".", "%2E%2E", "%2F", "%C2%B2", "refs%2Fpr%2F1", "a" * 300, "README.md", ""]),
)


def _ndjson(lines: list) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


ndjson_line = st.one_of(
    st.fixed_dictionaries({"key": st.sampled_from(["header", "file", "lfsFile", "deletedFile", "deletedFolder"]),
                           "value": st.one_of(json_objects, json_values)}),
    st.builds(lambda p, c: {"key": "file", "value": {"path": p, "content": base64.b64encode(c).decode()}},
              st.text(max_size=30), st.binary(max_size=50)),
    json_values,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda o: json.dumps(o).encode()),
    st.lists(ndjson_line, max_size=5).map(_ndjson),
    st.lists(st.tuples(st.sampled_from(["paths", "expand", "x"]), st.text(max_size=30)), max_size=6).map(
        lambda kv: urlencode(kv).encode()),
    st.sampled_from([b"[" * 5000, b'"' + b"[" * 5000, b"[1,2]", b"{}", b"null", b'{"content": "---\\na: *b\\n---"}']),
)
queries = st.lists(st.tuples(
    st.sampled_from(["limit", "cursor", "expand", "recursive", "full", "cardData", "blobs", "filter", "sort",
                     "direction", "search", "author", "exp", "sig", "owner", "item", "create_pr", "include_prs"]),
    st.one_of(st.text(max_size=12), st.sampled_from(["true", "1", "-1", "²", "MA==", "LTE=", "99999999999"]))),
    max_size=4)


@st.composite
def requests(draw):
    method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]))
    t = draw(st.sampled_from(["models", "datasets", "spaces"]))
    fill = {
        "t": t, "p": {"models": "", "datasets": "datasets/", "spaces": "spaces/"}[t],
        "repo": draw(st.one_of(st.sampled_from([SEED, PRIVATE, "zoo-org/none"]),
                               st.tuples(segments, segments).map("/".join))),
        "rev": draw(st.one_of(st.sampled_from(["main", "dev", "v1", "0" * 40]), segments)),
        "path": draw(st.one_of(st.sampled_from(["README.md", "a/b.txt", "a", ".git/config"]),
                               st.lists(segments, min_size=1, max_size=3).map("/".join))),
        "slug": draw(st.one_of(st.sampled_from(["zoo-org/none-0123"]), st.tuples(segments, segments).map("/".join))),
        "item": draw(segments), "oid": draw(st.one_of(st.just(OID), segments)),
        "size": draw(st.one_of(st.sampled_from(["10", "0", "%C2%B2", "-1", "99999999999999999999"]), segments)),
    }
    path = template
    for key, value in fill.items():
        path = path.replace("{" + key + "}", value)
    while "{seg}" in path:
        path = path.replace("{seg}", draw(segments), 1)
    query = draw(queries)
    if query:
        path += "?" + urlencode(query)
    return method, path, draw(bodies), draw(st.sampled_from(CONTENT_TYPES)), draw(st.booleans())


def test_no_request_breaks_the_hub(tmp_path, hf_cache, capfd):  # noqa: F811
    with local_hub(tmp_path / "hub") as h:
        api = HfApi()
        api.create_repo(SEED)
        api.create_repo(PRIVATE, private=True)
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# card\n", path_in_repo="README.md", repo_id=SEED)
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id=SEED)
        host = h.endpoint.split("://", 1)[1]
        seen: set[int] = set()

        @settings(max_examples=400, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def run(request):
            method, path, body, ctype, with_token = request
            headers = {"Content-Type": ctype} if ctype else {}
            if with_token:
                headers["Authorization"] = f"Bearer {h.token}"
            conn = http.client.HTTPConnection(host, timeout=20)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
            seen.add(resp.status)
            assert resp.status < 500, (method, path, body, ctype, with_token, resp.status)
            assert raw_json(h.endpoint, "GET", "/api/whoami-v2", token=h.token)[0] == 200

        run()
        assert raw_json(h.endpoint, "GET", "/api/models")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert {200, 400, 401, 404} <= seen  # the examples reached the handlers, not only the router
