"""The Hub protocol: routes a decoded :class:`Request` to the store and shapes the JSON the real clients expect.

Wire details (object ids, headers, pagination, error codes) follow ``hub_protocol.md``; comments here only say
why a choice was made where the reference leaves room.

Cost bounds (no request without a token may cost more than a small, fixed amount of memory and CPU):

* the token is checked before any body is read, on every write route;
* JSON bodies are read only with a JSON ``Content-Type`` (a web page can POST ``text/plain`` to localhost without
  a CORS preflight, but not ``application/json``), up to :data:`_JSON_BODY_LIMIT` bytes (413 above), must be an
  object, and are decoded with a cap on the number of values (:func:`_parse_json`), so ``[[],[],...]`` cannot
  turn 1 MiB into 60 MB of lists; nesting too deep is a 400;
* ``/api/validate-yaml`` takes bodies up to :data:`_VALIDATE_YAML_LIMIT` with at most a few JSON values and parses
  only the front matter, with the bounded loader (``cards.load_yaml_bounded``);
* ``paths-info`` takes at most :data:`_PATHS_INFO_LIMIT` paths and answers in O(paths) (folders are indexed once
  per commit);
* ``lastCommit`` (``tree?expand=true``, ``paths-info`` with ``expand``) is one pass over commit metadata, never
  over snapshots, and stops after :data:`_HISTORY_LIMIT` commits;
* caches of derived data are bounded by bytes.

A full disk (ENOSPC, EDQUOT) is answered 507 with a message; the store cleans up its scratch files.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from . import cards
from .errors import (
    BadRequest,
    Conflict,
    EntryNotFound,
    Forbidden,
    HubError,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    RepoNotFound,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from .names import REPO_TYPES, check_path, check_repo_id, check_repo_part, check_upload_path
from .storage import DEFAULT_BRANCH, Op, Repo, Store, git_blob_sha1, lfs_pointer, make_entry, utc_iso
from .wire import Request, Response, json_response

_LFS_URL_TTL = 24 * 3600
_COLLECTION_ITEM_TYPES = ("model", "dataset", "space", "paper", "collection")
_NDJSON_LINE_LIMIT = 32 << 20  # a regular (non-LFS) file is < 10 MB, i.e. < 13.4 MB of base64
_JSON_BODY_LIMIT = 1 << 20
_UPLOAD_JSON_LIMIT = 8 << 20  # preupload and LFS batch: clients send 256 files per request, ~1 KiB each
_VALIDATE_YAML_LIMIT = 4 << 20  # the whole README travels; only its front matter is parsed (bounded)
_JSON_VALUES = 200_000  # values in one JSON body (256 preupload files are ~1,300)
_NDJSON_VALUES = 1_000  # values in one NDJSON commit line (an operation has a handful)
_FORM_LIMIT = 1 << 20
_PATHS_INFO_LIMIT = 1000
_HISTORY_LIMIT = 500
_DERIVED_CACHE_BYTES = 32 << 20
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() accepts '²', which int() refuses
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_XET_HINT = ("Xet is not supported by this hub: set HF_HUB_DISABLE_XET=1 "
             "(vitzoo_hf.hub.configure_clients does this for you).")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _ascii_int(value: str | None) -> int | None:
    return int(value) if value is not None and _DIGITS.fullmatch(value) else None


def _is_json_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _read_body(req: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes: never more than that in memory."""
    declared = _ascii_int(req.headers.get("Content-Length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes is larger than this endpoint's limit of {limit}.")
    parts, total = [], 0
    for chunk in req.body.chunks(1 << 16):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"Request body is larger than this endpoint's limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


class _TooManyValues(ValueError):
    pass


def _parse_json(raw: bytes, max_values: int, what: str = "Request body") -> Any:
    """``json.loads`` that refuses (400) more than ``max_values`` values: memory stays a small multiple of the
    input whatever its shape. Strings are still decoded by the C ``scanstring``, so big string values are fast."""
    decoder = json.JSONDecoder()
    count = 0

    def counted(scan_once: Any) -> Any:
        def scan(s: str, idx: int) -> Any:
            nonlocal count
            count += 1
            if count > max_values:
                raise _TooManyValues
            return scan_once(s, idx)
        return scan

    decoder.parse_array = lambda s_end, scan_once, *a: json.decoder.JSONArray(s_end, counted(scan_once), *a)
    decoder.parse_object = lambda s_end, strict, scan_once, *a: json.decoder.JSONObject(
        s_end, strict, counted(scan_once), *a)
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        return decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except _TooManyValues:
        raise PayloadTooLarge(f"{what} has more than {max_values} JSON values.") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"{what} is not valid JSON.") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply.") from None


def _json_body(req: Request, limit: int = _JSON_BODY_LIMIT, max_values: int = _JSON_VALUES) -> dict[str, Any]:
    """A JSON object body (an empty body is ``{}``); only with a JSON Content-Type, never more than ``limit``."""
    has_body = req.headers.get("Content-Length") not in (None, "0") or req.headers.get("Transfer-Encoding")
    if has_body and not _is_json_type(req.headers.get("Content-Type")):
        raise UnsupportedMediaType("Request bodies of this endpoint must be JSON: send Content-Type: "
                                   "application/json.")
    raw = _read_body(req, limit)
    if not raw.strip():
        return {}
    body = _parse_json(raw, max_values)
    if not isinstance(body, dict):
        raise BadRequest(f"Request body must be a JSON object, not {type(body).__name__}.")
    return body


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None,
           what: str = "request body") -> Any:
    """``body[key]`` if it has the expected JSON type (None/absent gives ``default``), else a 400 naming it."""
    value = body.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise BadRequest(f"'{key}' in the {what} must be {names}, not {_JSON_NAMES.get(type(value), 'that')}.")
    return value


_JSON_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "an array",
               float: "a number", type(None): "null"}


def _ndjson_lines(req: Request, limit: int) -> Iterator[bytes]:
    """The body's lines in linear time (each byte is scanned once), each at most ``limit`` bytes."""
    buf = bytearray()
    scan = 0
    for chunk in req.body.chunks(1 << 20):
        buf += chunk
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                scan = len(buf)
                if scan > limit:
                    raise PayloadTooLarge(f"NDJSON line longer than {limit} bytes.")
                break
            if nl > limit:
                raise PayloadTooLarge(f"NDJSON line longer than {limit} bytes.")
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            scan = 0
            yield line
    if buf:
        yield bytes(buf)


class HubApp:
    """All Hub semantics; stateless apart from the store and in-memory caches of immutable data."""

    def __init__(self, store: Store, tokens: Iterable[str], user: str = "vitzoo", page_size: int = 1000,
                 orgs: Iterable[str] | None = None) -> None:
        self.store = store
        self.user = check_repo_part(user, "user name")
        # None: every namespace is writable (a single-user hub). A list: only the user and these organisations,
        # as on the real Hub (creating a repo elsewhere is refused with 403).
        self.orgs = None if orgs is None else sorted({check_repo_part(o, "organisation") for o in orgs})
        self.page_size = page_size
        # Only hashes are kept, so a memory dump or a log line never reveals a token.
        self._token_hashes = [_token_hash(t) for t in tokens]
        if not self._token_hashes:
            raise ValueError("the hub needs at least one write token")
        self._secret = secrets.token_bytes(32)  # signs LFS upload URLs, which clients PUT without auth
        self._derived: OrderedDict[tuple[str, str, str], tuple[Any, int]] = OrderedDict()
        self._derived_bytes = 0
        self._derived_lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- auth
    def _authed(self, req: Request) -> bool:
        token = req.token
        if not token:
            return False
        h = _token_hash(token)
        return any(hmac.compare_digest(h, known) for known in self._token_hashes)

    def _require_write(self, req: Request) -> None:
        if self._authed(req):
            return
        if req.token:
            raise Unauthorized("Invalid token: writes need one of the tokens the hub was started with "
                               "(set HF_TOKEN to it).")
        raise Unauthorized("Writes need a token: set HF_TOKEN to one of the tokens printed or configured "
                           "when the hub was started.")

    def _check_namespace(self, namespace: str, what: str = "repos") -> None:
        """With ``--org``, writes are allowed only under the user's name and those organisations (403 elsewhere)."""
        if self.orgs is not None and namespace != self.user and namespace not in self.orgs:
            raise Forbidden(f"You don't have the rights to write {what} under the namespace {namespace!r}: this hub "
                            f"allows writes only under {', '.join([self.user, *self.orgs])} (see --org).")

    def _repo(self, req: Request, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        """The repo if the caller may see it; private repos are indistinguishable from missing ones."""
        check_repo_id(repo_id)
        if write:
            self._require_write(req)
            self._check_namespace(repo_id.split("/")[0])
        repo = self.store.get_repo(repo_type, repo_id)
        if repo is None or (repo.private and not self._authed(req)):
            raise RepoNotFound(f"Repository {repo_id} not found (or it is private and no valid token was sent).")
        return repo

    # ----------------------------------------------------------------------------------------- routing
    def handle(self, req: Request) -> Response:
        try:
            return self._route(req)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise InsufficientStorage("The hub's disk is full: nothing was stored. Free space on the hub's "
                                          "--root file system and retry.") from None
            raise

    def _route(self, req: Request) -> Response:
        s = req.segments
        if s and s[0] == "api":
            return self._api(req, s[1:])
        if len(s) >= 3 and s[0] == "_lfs" and s[1] == "upload":
            return self._lfs_put(req, s[2:])
        repo_type, rest = ("dataset", s[1:]) if s and s[0] == "datasets" else ("model", s)
        if s and s[0] == "spaces":
            raise RepoNotFound("Spaces are not hosted by this hub.")
        if len(rest) >= 3 and rest[2] == "resolve":
            return self._resolve(req, repo_type, f"{rest[0]}/{rest[1]}", rest[3:])
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
            repo = self._repo(req, repo_type, f"{rest[0]}/{rest[1][:-4]}", write=True)
            if rest[5] == "batch" and req.method == "POST":
                return self._lfs_batch(req, repo)
            if rest[5] == "verify" and req.method == "POST":
                return self._lfs_verify(req)
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    def _api(self, req: Request, s: list[str]) -> Response:
        m = req.method
        if s == ["whoami-v2"]:
            return self._whoami(req)
        if s == ["repos", "create"] and m == "POST":
            return self._create_repo(req)
        if s == ["repos", "delete"] and m == "DELETE":
            return self._delete_repo(req)
        if s == ["validate-yaml"] and m == "POST":
            return self._validate_yaml(req)
        if len(s) == 1 and s[0] in ("models", "datasets", "spaces") and m == "GET":
            return self._list_repos(req, REPO_TYPES.get(s[0]))
        if s and s[0] == "collections":
            return self._collections(req, s[1:])
        if s and s[0] == "telemetry":
            return Response(200)
        if len(s) >= 3 and s[0] in REPO_TYPES:
            return self._repo_api(req, REPO_TYPES[s[0]], f"{s[1]}/{s[2]}", s[3:])
        if len(s) >= 3 and s[0] == "spaces":
            raise RepoNotFound("Spaces are not hosted by this hub.")
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    def _repo_api(self, req: Request, repo_type: str, repo_id: str, s: list[str]) -> Response:
        m = req.method
        head = s[0] if s else ""
        if head.startswith("xet-"):
            raise NotFound(_XET_HINT)
        write = m in ("POST", "PUT", "DELETE", "PATCH") and head not in ("paths-info",)
        repo = self._repo(req, repo_type, repo_id, write=write)
        rev = "/".join(s[1:]) if len(s) > 1 else None
        if not s and m == "GET":
            return self._info(req, repo, None)
        if head == "revision" and rev and m == "GET":
            return self._info(req, repo, rev)
        if s == ["refs"] and m == "GET":
            return self._refs(req, repo)
        if head == "branch" and rev and m in ("POST", "DELETE"):
            return self._branch(req, repo, rev)
        if head == "tag" and rev and m in ("POST", "DELETE"):
            return self._tag(req, repo, rev)
        if head == "tree" and len(s) >= 2 and m == "GET":
            return self._tree(req, repo, s[1], "/".join(s[2:]))
        if head == "paths-info" and rev and m == "POST":
            return self._paths_info(req, repo, rev)
        if head == "commits" and rev and m == "GET":
            return self._commits(req, repo, rev)
        if head == "preupload" and rev and m == "POST":
            return self._preupload(req, repo, rev)
        if head == "commit" and rev and m == "POST":
            return self._commit(req, repo, rev)
        if s == ["settings"] and m == "PUT":
            private = _field(_json_body(req), "private", bool)
            if private is not None:
                self.store.set_private(repo, private)
            return json_response({})
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _repo_url(req: Request, repo: Repo | str, repo_type: str = "model") -> str:
        if isinstance(repo, Repo):
            repo_type, repo = repo.type, repo.id
        return f"{req.base_url}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"

    def _paginate(self, req: Request, items: Iterable[Any], page_size: int | None = None) -> Response:
        """One page plus an absolute ``Link: <next>; rel="next"`` that repeats every query parameter. ``items`` may
        be a lazy iterable (history): only what the page needs is consumed."""
        size = max(1, page_size or self.page_size)
        try:
            offset = _ascii_int(base64.urlsafe_b64decode((req.q("cursor") or "MA==").encode()).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError):
            offset = None
        if offset is None:
            raise BadRequest("Invalid pagination cursor.")
        head = list(itertools.islice(items, offset + size + 1))
        page = head[offset: offset + size]
        headers = {}
        if len(head) > offset + size:
            cursor = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
            params = [(k, v) for k, vs in req.query.items() if k != "cursor" for v in vs] + [("cursor", cursor)]
            headers["Link"] = f'<{req.base_url}{req.raw_path}?{urlencode(params)}>; rel="next"'
        return json_response(page, headers=headers)

    def _cached(self, key: tuple[str, str, str]) -> Any:
        with self._derived_lock:
            hit = self._derived.get(key)
            if hit is not None:
                self._derived.move_to_end(key)
                return hit[0]
        return None

    def _cache(self, key: tuple[str, str, str], value: Any, size: int) -> Any:
        """Keep ``value`` (about ``size`` bytes) in the LRU of derived data, which is bounded by bytes."""
        with self._derived_lock:
            if key not in self._derived and size <= _DERIVED_CACHE_BYTES // 4:
                self._derived[key] = (value, size)
                self._derived_bytes += size
            while self._derived_bytes > _DERIVED_CACHE_BYTES and self._derived:
                self._derived_bytes -= self._derived.popitem(last=False)[1][1]
        return value

    def _derive(self, repo: Repo, commit: dict[str, Any]) -> dict[str, Any]:
        """Card data and tags of a commit; cached because commits are immutable. A card that cannot be read or
        parsed degrades to ``{}`` for this repo only."""
        key = (str(repo.dir), commit["id"], "card")
        hit = self._cached(key)
        if hit is not None:
            return hit
        readme = commit["files"].get("README.md")
        card: dict[str, Any] = {}
        if isinstance(readme, dict):
            try:  # only the head: a front matter longer than the bound is refused anyway
                with self.store.open_blob(readme["sha256"]) as f:
                    head = f.read(cards.MAX_METADATA_BYTES + 4096)
                card = cards.parse_card(head.decode("utf-8", "replace"))
            except (OSError, HubError, KeyError, TypeError):
                card = {}
        try:
            tags = cards.derive_tags(card, list(commit["files"]))
        except (TypeError, ValueError):
            tags = []
        derived = {"card": card, "tags": tags}
        return self._cache(key, derived, 1024 + len(json.dumps(card)))

    def _dir_oids(self, repo: Repo, commit: dict[str, Any]) -> dict[str, str]:
        """Every folder of a commit with its oid (a hash of its files), in one pass over the sorted paths."""
        key = (str(repo.dir), commit["id"], "dirs")
        hit = self._cached(key)
        if hit is not None:
            return hit
        files = commit["files"]
        hashers: dict[str, Any] = {}
        for p in sorted(files):
            line = f"{p}\0{files[p]['oid']}\n".encode()
            i = p.find("/")
            while i >= 0:
                d = p[:i]
                h = hashers.get(d)
                if h is None:
                    h = hashers[d] = hashlib.sha1()
                h.update(line)
                i = p.find("/", i + 1)
        oids = {d: h.hexdigest() for d, h in hashers.items()}
        return self._cache(key, oids, 120 * len(oids) + sum(map(len, oids)))

    def _summary(self, repo: Repo, commit: dict[str, Any]) -> dict[str, Any]:
        d = self._derive(repo, commit)
        out: dict[str, Any] = {"_id": repo.object_id, "id": repo.id, "author": repo.namespace, "sha": commit["id"],
                               "lastModified": commit["date"], "createdAt": repo.created_at,
                               "private": repo.private, "disabled": False, "gated": False, "downloads": 0,
                               "likes": 0, "tags": d["tags"]}
        if repo.type == "model":
            out["modelId"] = repo.id
            out["library_name"] = d["card"].get("library_name")
            out["pipeline_tag"] = d["card"].get("pipeline_tag")
        return out

    @staticmethod
    def _sibling(path: str, e: dict[str, Any], blobs: bool) -> dict[str, Any]:
        if not blobs:
            return {"rfilename": path}
        out: dict[str, Any] = {"rfilename": path, "size": e["size"], "blobId": e["oid"]}
        if e["lfs"]:
            out["lfs"] = {"sha256": e["sha256"], "size": e["size"],
                          "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
        return out

    @staticmethod
    def _expand(obj: dict[str, Any], keys: list[str]) -> dict[str, Any]:
        if not keys:
            return obj
        return {k: v for k, v in obj.items() if k in keys or k in ("_id", "id")}

    # ---------------------------------------------------------------------------------------- endpoints
    def _whoami(self, req: Request) -> Response:
        if not self._authed(req):
            raise Unauthorized("Invalid user token.")
        namespaces = set(self.orgs) if self.orgs is not None else {
            r.namespace for t in ("model", "dataset") for r in self.store.list_repos(t)}
        orgs = [{"type": "org", "name": ns} for ns in sorted(namespaces - {self.user})]
        return json_response({"type": "user", "name": self.user, "fullname": self.user, "email": None,
                              "orgs": orgs,
                              "auth": {"type": "access_token",
                                       "accessToken": {"displayName": "vitzoo-hub", "role": "write"}}})

    @staticmethod
    def _body_repo_type(body: dict[str, Any]) -> str:
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise BadRequest(f"Unsupported repo type {repo_type!r}: this hub hosts models and datasets.")
        return repo_type

    def _body_repo_id(self, body: dict[str, Any]) -> str:
        repo_id = f"{_field(body, 'organization', str) or self.user}/{_field(body, 'name', str, '')}"
        check_repo_id(repo_id)
        return repo_id

    def _create_repo(self, req: Request) -> Response:
        self._require_write(req)
        body = _json_body(req)
        repo_type = self._body_repo_type(body)
        repo_id = self._body_repo_id(body)
        self._check_namespace(repo_id.split("/", 1)[0])
        private = bool(body.get("private")) or body.get("visibility") == "private"
        try:
            repo = self.store.create_repo(repo_type, repo_id, private, self.user)
        except Conflict as e:  # the url of the repo that exists (its spelling may differ in case)
            existing = e.extra.get("existing", repo_id)
            raise Conflict(e.message, code=e.code, extra={"url": self._repo_url(req, existing, repo_type)}) from None
        return json_response({"url": self._repo_url(req, repo_id, repo_type), "name": repo.id, "id": repo.object_id})

    def _delete_repo(self, req: Request) -> Response:
        self._require_write(req)  # before the body: an anonymous caller costs nothing
        body = _json_body(req)
        repo = self._repo(req, self._body_repo_type(body), self._body_repo_id(body), write=True)
        self.store.delete_repo(repo)
        return json_response({})

    def _validate_yaml(self, req: Request) -> Response:
        """No token needed (the client calls it before every README commit), so bounded: body size, card size,
        YAML size, depth, node count and no aliases (``cards.load_yaml_bounded``)."""
        body = _json_body(req, _VALIDATE_YAML_LIMIT, max_values=100)
        errors = cards.validate_card_yaml(_field(body, "content", str, ""))
        payload = {"errors": [{"message": e} for e in errors], "warnings": []}
        return json_response(payload, 400 if errors else 200)

    def _info(self, req: Request, repo: Repo, rev: str | None) -> Response:
        commit = self.store.read_commit(repo, self.store.resolve(repo, rev or DEFAULT_BRANCH))
        info = self._summary(repo, commit)
        blobs = req.qbool("blobs")
        info["cardData"] = self._derive(repo, commit)["card"]
        info["siblings"] = [self._sibling(p, e, blobs) for p, e in sorted(commit["files"].items())]
        info["usedStorage"] = sum(e["size"] for e in commit["files"].values())
        return json_response(self._expand(info, req.qlist("expand")))

    def _list_repos(self, req: Request, repo_type: str | None) -> Response:
        if repo_type is None:
            return json_response([])
        authed = self._authed(req)
        author, search = req.q("author"), (req.q("search") or "").lower()
        filters = req.qlist("filter")
        out = []
        for repo in self.store.list_repos(repo_type):
            if (repo.private and not authed) or (author and repo.namespace != author):
                continue
            if search and search not in repo.id.lower():
                continue
            try:
                commit = self.store.read_commit(repo, self.store.resolve(repo, DEFAULT_BRANCH))
                summary = self._summary(repo, commit)
            except (HubError, OSError, ValueError, KeyError, TypeError):  # deleted concurrently, or damaged:
                continue  # one repo never breaks the listing of the others
            if any(f not in summary["tags"] for f in filters):
                continue
            if req.qbool("full"):
                summary["siblings"] = [{"rfilename": p} for p in sorted(commit["files"])]
            if req.qbool("cardData") or "cardData" in req.qlist("expand"):
                summary["cardData"] = self._derive(repo, commit)["card"]
            out.append(self._expand(summary, req.qlist("expand")))
        sort = req.q("sort")
        if sort in ("lastModified", "createdAt", "id"):
            out.sort(key=lambda r: str(r.get(sort) or ""), reverse=req.q("direction") != "1")
        limit = _ascii_int(req.q("limit"))
        return self._paginate(req, out, min(self.page_size, limit) if limit else None)

    def _refs(self, req: Request, repo: Repo) -> Response:
        refs = self.store.refs(repo)
        out: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                         for n, c in sorted(refs["branches"].items())],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(refs["tags"].items())],
        }
        if req.qbool("include_prs"):
            out["pullRequests"] = []
        return json_response(out)

    def _branch(self, req: Request, repo: Repo, name: str) -> Response:
        if req.method == "DELETE":
            self.store.delete_ref(repo, "branches", name)
            return json_response({})
        start = _field(_json_body(req), "startingPoint", str) or DEFAULT_BRANCH
        self.store.create_ref(repo, "branches", name, self.store.resolve(repo, start))
        return json_response({})

    def _tag(self, req: Request, repo: Repo, rev: str) -> Response:
        if req.method == "DELETE":
            self.store.delete_ref(repo, "tags", rev)
            return json_response({})
        tag = _field(_json_body(req), "tag", str)
        if not tag:
            raise BadRequest("Missing 'tag' in the request body.")
        self.store.create_ref(repo, "tags", tag, self.store.resolve(repo, rev))
        return json_response({})

    # ----------------------------------------------------------------------------------- tree & friends
    @staticmethod
    def _entry(files: dict[str, Any], dirs: dict[str, str], path: str) -> dict[str, Any]:
        e = files.get(path)
        if e is None:
            return {"type": "directory", "oid": dirs[path], "size": 0, "path": path}
        out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = {"oid": e["sha256"], "size": e["size"],
                          "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
        return out

    def _add_last_commits(self, repo: Repo, commit_id: str, entries: list[dict[str, Any]]) -> None:
        """``lastCommit`` per entry: the newest first-parent commit that changed it (a file, or anything under a
        folder). One pass over commit metadata (each commit lists the paths it changed), at most
        :data:`_HISTORY_LIMIT` commits; entries older than that get no ``lastCommit`` (the clients allow it)."""
        pending = {e["path"]: e for e in entries}
        for _, meta in zip(range(_HISTORY_LIMIT), self.store.history(repo, commit_id), strict=False):
            if not pending:
                break
            hit = set()
            for p in meta["changed"] if meta["parents"] else list(pending):
                if p in pending:
                    hit.add(p)
                i = p.rfind("/")
                while i > 0:
                    if p[:i] in pending:
                        hit.add(p[:i])
                    i = p.rfind("/", 0, i)
            for p in hit:
                pending.pop(p)["lastCommit"] = {"id": meta["id"], "title": meta["title"], "date": meta["date"]}

    def _tree(self, req: Request, repo: Repo, rev: str, path: str) -> Response:
        commit_id = self.store.resolve(repo, rev)
        commit = self.store.read_commit(repo, commit_id)
        files = commit["files"]
        path = path.strip("/")
        if path:
            check_path(path)
        prefix = f"{path}/" if path else ""
        under = [p for p in files if p.startswith(prefix)]
        if path and not under:
            raise EntryNotFound(f"{path} does not exist (or is a file) at revision {rev}.")
        recursive = req.qbool("recursive")
        dirs: set[str] = set()
        file_paths = []
        for p in under:
            parts = p[len(prefix):].split("/")
            if recursive:
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                file_paths.append(p)
            elif len(parts) > 1:
                dirs.add(prefix + parts[0])
            else:
                file_paths.append(p)
        oids = self._dir_oids(repo, commit) if dirs else {}
        entries = [self._entry(files, oids, d) for d in sorted(dirs)] + \
                  [self._entry(files, oids, p) for p in sorted(file_paths)]
        expand = req.qbool("expand")
        page_size = min(self.page_size, 50) if expand else self.page_size
        response = self._paginate(req, entries, page_size)
        if expand:  # only the page being returned pays for the history walk
            page = json.loads(response.body)
            self._add_last_commits(repo, commit_id, page)
            response.body = json.dumps(page).encode()
        return response

    def _paths_info(self, req: Request, repo: Repo, rev: str) -> Response:
        """O(paths): folders are indexed once per commit; at most :data:`_PATHS_INFO_LIMIT` paths per request."""
        commit_id = self.store.resolve(repo, rev)
        commit = self.store.read_commit(repo, commit_id)
        files = commit["files"]
        try:
            form = parse_qs(_read_body(req, _FORM_LIMIT).decode("utf-8", "replace"), keep_blank_values=True,
                            max_num_fields=_PATHS_INFO_LIMIT + 10)
        except ValueError:  # more fields than that
            raise BadRequest(f"Too many paths: ask for at most {_PATHS_INFO_LIMIT} per request.") from None
        raw_paths = form.get("paths", [])
        if len(raw_paths) > _PATHS_INFO_LIMIT:
            raise BadRequest(f"Too many paths ({len(raw_paths)}): ask for at most {_PATHS_INFO_LIMIT} per request.")
        paths = list(dict.fromkeys(p.strip("/") for p in raw_paths))
        dirs = self._dir_oids(repo, commit)
        out = []
        for path in paths:
            check_path(path)
            if path in files or path in dirs:
                out.append(self._entry(files, dirs, path))
        if (form.get("expand") or ["false"])[0] == "true":
            self._add_last_commits(repo, commit_id, out)
        return json_response(out)

    def _commits(self, req: Request, repo: Repo, rev: str) -> Response:
        formatted = "formatted" in req.qlist("expand")

        def items() -> Iterator[dict[str, Any]]:  # lazy: a page reads only the history it shows
            for c in self.store.history(repo, self.store.resolve(repo, rev)):
                item = {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                        "authors": [{"user": c["author"]}]}
                if formatted:
                    item["formatted"] = {"title": c["title"], "message": c["message"]}
                yield item

        return self._paginate(req, items(), min(self.page_size, 50))

    # ------------------------------------------------------------------------------------------ uploads
    def _preupload(self, req: Request, repo: Repo, rev: str) -> Response:
        commit = self.store.read_commit(repo, self.store.resolve(repo, rev))
        files = commit["files"]
        ga = files.get(".gitattributes")
        patterns = cards.lfs_patterns(self.store.read_blob(ga["sha256"]).decode("utf-8", "replace")) if ga else []
        body = _json_body(req, _UPLOAD_JSON_LIMIT)
        out = []
        for f in _field(body, "files", list, []):
            if not isinstance(f, dict):
                raise BadRequest("Each item of 'files' must be an object with 'path', 'size' and 'sample'.")
            path = check_path(_field(f, "path", str, "", "file item"))
            try:
                sample = base64.b64decode(_field(f, "sample", str, "", "file item"))
            except (binascii.Error, ValueError):
                raise BadRequest(f"Invalid base64 sample for {path}.") from None
            size = _field(f, "size", int, 0, "file item")
            remote = files.get(path)
            oid = (remote["sha256"] if remote["lfs"] else remote["oid"]) if remote else None
            out.append({"path": path, "uploadMode": cards.upload_mode(path, size, sample, patterns),
                        "shouldIgnore": False, "oid": oid})
        return json_response({"files": out, "commitOid": commit["id"]})

    def _sign(self, oid: str, size: int, exp: int) -> str:
        return hmac.new(self._secret, f"{oid}:{size}:{exp}".encode(), hashlib.sha256).hexdigest()

    def _lfs_batch(self, req: Request, repo: Repo) -> Response:
        body = _json_body(req, _UPLOAD_JSON_LIMIT)
        if body.get("operation") != "upload":
            raise BadRequest("Only the LFS 'upload' operation is supported; download through /resolve.")
        prefix = "datasets/" if repo.type == "dataset" else ""
        exp = int(time.time()) + _LFS_URL_TTL
        origin = req.server_url or req.base_url  # never the Host header: the client uploads where we tell it
        objects = []
        for obj in _field(body, "objects", list, []):
            oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
            if not isinstance(oid, str) or not _SHA256.fullmatch(oid) or not isinstance(size, int) \
                    or isinstance(size, bool) or size < 0:
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "oid must be a sha256 hex digest and size >= 0"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if self.store.blob_size(oid) != size:  # already stored: no actions, the client skips the upload
                item["actions"] = {
                    "upload": {"href": f"{origin}/_lfs/upload/{oid}/{size}?exp={exp}&sig="
                                       f"{self._sign(oid, size, exp)}", "header": {}, "expires_in": _LFS_URL_TTL},
                    "verify": {"href": f"{origin}/{prefix}{repo.id}.git/info/lfs/objects/verify",
                               "expires_in": _LFS_URL_TTL},
                }
            objects.append(item)
        return json_response({"transfer": "basic", "hash_algo": "sha256", "objects": objects},
                             headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, req: Request, s: list[str]) -> Response:
        """Basic-transfer upload: authorised by the signed URL, streamed to disk, checked against the oid."""
        size = _ascii_int(s[1]) if len(s) == 2 else None
        if req.method != "PUT" or size is None or not _SHA256.fullmatch(s[0]):
            raise NotFound(f"Not found: {req.method} {req.raw_path}")
        oid = s[0]
        exp = _ascii_int(req.q("exp"))
        sig = req.q("sig") or ""
        if exp is None or not hmac.compare_digest(sig.encode("utf-8", "replace"),
                                                  self._sign(oid, size, exp).encode()):
            raise Unauthorized("Invalid LFS upload URL signature: request a new one through the LFS batch API.")
        if exp < time.time():
            raise Unauthorized("Expired LFS upload URL: request a new one through the LFS batch API.")
        declared = req.headers.get("Content-Length")
        if declared is not None and _ascii_int(declared) != size:
            raise BadRequest(f"Upload size mismatch: expected {size} bytes, Content-Length is {declared}.")
        if self.store.blob_size(oid) == size:
            return json_response({})
        self.store.put_blob_stream(req.body.chunks(), oid, size)  # stops as soon as the body passes ``size``
        return json_response({})

    def _lfs_verify(self, req: Request) -> Response:
        body = _json_body(req)
        oid, size = body.get("oid"), body.get("size")
        if not isinstance(oid, str) or not _SHA256.fullmatch(oid) or self.store.blob_size(oid) != size:
            raise NotFound(f"LFS object {oid} of size {size} has not been uploaded.")
        return json_response({})

    def _commit(self, req: Request, repo: Repo, branch: str) -> Response:
        """NDJSON commit: lines are read in linear time; inline blobs are made durable with one sync before the
        commit that names them is published. Paths are checked at commit time (``names.check_upload_path``)."""
        if req.qbool("create_pr"):
            raise BadRequest("Pull requests are not supported by this hub; commit to a branch instead.")
        header: dict[str, Any] = {}
        ops: list[Op] = []
        unsynced: list[str] = []
        for line in _ndjson_lines(req, _NDJSON_LINE_LIMIT):
            if not line.strip():
                continue
            item = _parse_json(line, _NDJSON_VALUES, "An NDJSON commit line")
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise BadRequest("Invalid NDJSON commit line: expected {\"key\": ..., \"value\": {...}}.")
            key = item["key"]
            value = _field(item, "value", dict, {}, f"{key!r} line")
            if key == "header":
                header = value
                continue
            path = _field(value, "path", str, "", f"{key!r} line")
            if key == "file":
                path = check_upload_path(path)
                if _field(value, "encoding", str, "base64", "'file' line") != "base64":
                    raise BadRequest(f"Unsupported encoding for {path}: use base64.")
                try:
                    data = base64.b64decode(_field(value, "content", str, "", "'file' line"), validate=True)
                except (binascii.Error, ValueError):
                    raise BadRequest(f"Invalid base64 content for {path}.") from None
                sha = hashlib.sha256(data).hexdigest()
                if self.store.blob_size(sha) != len(data):
                    unsynced.append(sha)
                sha, size = self.store.put_blob(data, sync=False)
                ops.append(Op("add", path, make_entry(sha, size, False, git_blob_sha1(data))))
            elif key == "lfsFile":
                path = check_upload_path(path)
                oid = _field(value, "oid", str, "", "'lfsFile' line")
                stored = self.store.blob_size(oid) if _SHA256.fullmatch(oid) else None
                if stored is None:
                    raise Unprocessable(f"LFS object {oid} for {path} has not been uploaded.")
                declared = _field(value, "size", int, None, "'lfsFile' line")
                if declared is not None and declared != stored:
                    raise Unprocessable(f"LFS object {oid} has {stored} bytes, the commit says {declared}.")
                ops.append(Op("add", path, make_entry(oid, stored, True)))
            elif key == "deletedFile":
                ops.append(Op("delete", path))
            elif key == "deletedFolder":
                ops.append(Op("delete_folder", path))
            else:
                raise BadRequest(f"Unsupported commit operation {key!r}.")
        if unsynced:
            self.store.sync(unsynced)
        summary = str(header.get("summary") or "Commit")
        commit_id = self.store.commit(repo, branch, ops, summary, str(header.get("description") or ""),
                                      self.user, header.get("parentCommit"))
        return json_response({"success": True, "commitOid": commit_id,
                              "commitUrl": f"{self._repo_url(req, repo)}/commit/{commit_id}",
                              "commitMessage": summary, "hookOutput": "", "pullRequestUrl": None})

    # ---------------------------------------------------------------------------------------- downloads
    def _resolve(self, req: Request, repo_type: str, repo_id: str, s: list[str]) -> Response:
        if req.method not in ("GET", "HEAD"):
            raise HubError("Only GET and HEAD are allowed on /resolve.", status=405)
        repo = self._repo(req, repo_type, repo_id)
        if len(s) < 2:
            raise EntryNotFound("Missing revision or file path in the /resolve URL.")
        commit_id = self.store.resolve(repo, s[0])
        path = check_path("/".join(s[1:]))
        entry = self.store.read_commit(repo, commit_id)["files"].get(path)
        if entry is None:
            raise EntryNotFound(f"{path} does not exist at revision {s[0]}.", headers={"X-Repo-Commit": commit_id})
        size = entry["size"]
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        name = path.rsplit("/", 1)[-1]
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(size)})
        blob = self.store.blob_path(entry["sha256"])
        status, start, length = 200, 0, size
        rng = _parse_range(req.headers.get("Range"), size)
        if rng == "unsatisfiable":
            return Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        if rng is not None:
            start, end = rng
            status, length = 206, end - start + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Response(status, b"", headers, file=(blob, start, length))

    # -------------------------------------------------------------------------------------- collections
    def _collections(self, req: Request, s: list[str]) -> Response:
        m = req.method
        if not s:
            if m == "POST":
                return self._create_collection(req)
            if m == "GET":
                return self._list_collections(req)
        elif len(s) >= 2:
            slug = f"{s[0]}/{s[1]}"
            with self.store.collection_lock():
                collection = self.store.get_collection(slug)
                if collection["private"] and not self._authed(req):
                    raise NotFound(f"Collection {slug} not found")
                if len(s) == 2 and m == "GET":
                    return json_response({**collection, "items": self._visible_items(req, collection["items"])})
                self._require_write(req)
                self._check_namespace(collection["owner"]["name"], "collections")
                if len(s) == 2 and m == "DELETE":
                    self.store.delete_collection(slug)
                    return json_response({})
                if len(s) == 2 and m == "PATCH":
                    body = _json_body(req)
                    kinds = {"title": str, "description": str, "position": int, "private": bool, "theme": str}
                    for key, kind in kinds.items():
                        value = _field(body, key, kind)
                        if value is not None:
                            collection[key] = value
                    if not str(collection["title"]).strip():
                        raise BadRequest("A collection needs a non-empty 'title'.")
                    return self._save_collection(collection)
                if s[2:] == ["items"] and m == "POST":
                    return self._add_collection_item(req, collection)
                if len(s) == 4 and s[2] == "items" and m in ("PATCH", "DELETE"):
                    return self._edit_collection_item(req, collection, s[3])
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    def _visible_items(self, req: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collection items the caller may see. For anonymous readers a private (or since deleted) repo or
        collection is left out, and positions are renumbered 0..n-1, so neither a slug (which carries a title) nor
        a gap in the positions reveals what is hidden."""
        if self._authed(req):
            return items
        out = []
        for item in items:
            try:
                if item["type"] in ("model", "dataset"):
                    repo = self.store.get_repo(item["type"], item["id"])
                    if repo is None or repo.private:
                        continue
                elif item["type"] == "collection" and self.store.get_collection(item["id"])["private"]:
                    continue
            except HubError:
                continue
            out.append({**item, "position": len(out)})
        return out

    def _save_collection(self, collection: dict[str, Any]) -> Response:
        collection["lastUpdated"] = utc_iso()
        collection["items"].sort(key=lambda i: i["position"])
        self.store.save_collection(collection)
        return json_response(collection)

    def _create_collection(self, req: Request) -> Response:
        self._require_write(req)
        body = _json_body(req)
        title = _field(body, "title", str, "").strip()
        if not title:
            raise BadRequest("A collection needs a non-empty 'title'.")
        namespace = check_repo_part(_field(body, "namespace", str) or self.user, "namespace")
        self._check_namespace(namespace, "collections")
        with self.store.collection_lock():
            for existing in self.store.list_collections():
                if existing["owner"]["name"] == namespace and existing["title"] == title:
                    raise Conflict(f"Collection {title!r} already exists", extra=existing)
            slug_name = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "collection"
            collection = {"slug": f"{namespace}/{slug_name}-{secrets.token_hex(12)}", "title": title,
                          "description": _field(body, "description", str),
                          "owner": {"name": namespace, "type": "user" if namespace == self.user else "org"},
                          "items": [], "position": 0, "private": bool(body.get("private")), "theme": "blue",
                          "upvotes": 0, "lastUpdated": utc_iso()}
            return self._save_collection(collection)

    def _add_collection_item(self, req: Request, collection: dict[str, Any]) -> Response:
        body = _json_body(req)
        item = _field(body, "item", dict, {})
        item_id, item_type = _field(item, "id", str, "", "item"), _field(item, "type", str, None, "item")
        if item_type not in _COLLECTION_ITEM_TYPES or not item_id:
            raise BadRequest(f"Collection items need an 'id' and a 'type' in {', '.join(_COLLECTION_ITEM_TYPES)}.")
        if item_type in ("model", "dataset"):
            self._repo(req, item_type, item_id)
        elif item_type == "collection":
            self.store.get_collection(item_id)
        if any(i["id"] == item_id and i["type"] == item_type for i in collection["items"]):
            raise Conflict(f"{item_type} {item_id} is already in the collection")
        new = {"_id": secrets.token_hex(12), "id": item_id, "type": item_type,
               "position": max((i["position"] for i in collection["items"]), default=-1) + 1}
        note = _field(body, "note", str)
        if note:
            new["note"] = {"text": note, "html": note}
        collection["items"].append(new)
        return self._save_collection(collection)

    def _edit_collection_item(self, req: Request, collection: dict[str, Any], object_id: str) -> Response:
        matches = [i for i in collection["items"] if i["_id"] == object_id]
        if not matches:
            raise NotFound(f"Item {object_id} is not in collection {collection['slug']}")
        if req.method == "DELETE":
            collection["items"].remove(matches[0])
        else:
            body = _json_body(req)
            note, position = _field(body, "note", str), _field(body, "position", int)
            if note is not None:
                matches[0]["note"] = {"text": note, "html": note}
            if position is not None:
                matches[0]["position"] = position
        return self._save_collection(collection)

    def _list_collections(self, req: Request) -> Response:
        authed = self._authed(req)
        owners, items = req.qlist("owner"), req.qlist("item")
        out = []
        for c in self.store.list_collections():
            if (c["private"] and not authed) or (owners and c["owner"]["name"] not in owners):
                continue
            visible = self._visible_items(req, c["items"])
            refs = {f"{i['type']}s/{i['id']}" for i in visible}
            if items and not all(i in refs for i in items):
                continue
            # the client numbers listed collections itself (it passes ``position``), so omit ours
            out.append({**{k: v for k, v in c.items() if k != "position"}, "items": visible[:4]})
        return self._paginate(req, out)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive, ``"unsatisfiable"``, or None for no/unparseable Range (serve it all)."""
    if not header or not header.strip().startswith("bytes="):
        return None
    spec = header.strip()[6:].split(",")[0].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":  # suffix range: the last N bytes
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)
