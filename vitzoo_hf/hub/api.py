"""The Hub protocol: routes a decoded :class:`Request` to the store and shapes the JSON the real clients expect.

Wire details (object ids, headers, pagination, error codes) follow ``hub_protocol.md``; comments here only say
why a choice was made where the reference leaves room.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from . import cards
from .errors import (
    BadRequest,
    Conflict,
    EntryNotFound,
    HubError,
    NotFound,
    RepoNotFound,
    Unauthorized,
    Unprocessable,
)
from .names import REPO_TYPES, check_path, check_repo_id, check_repo_part
from .storage import DEFAULT_BRANCH, Op, Repo, Store, git_blob_sha1, lfs_pointer, make_entry, utc_iso
from .wire import Request, Response, json_response

_LFS_URL_TTL = 24 * 3600
_COLLECTION_ITEM_TYPES = ("model", "dataset", "space", "paper", "collection")
_NDJSON_LINE_LIMIT = 128 << 20
_XET_HINT = ("Xet is not supported by this hub: set HF_HUB_DISABLE_XET=1 "
             "(vitzoo_hf.hub.configure_clients does this for you).")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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
        self._derived: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
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

    def _repo(self, req: Request, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        """The repo if the caller may see it; private repos are indistinguishable from missing ones."""
        check_repo_id(repo_id)
        if write:
            self._require_write(req)
        repo = self.store.get_repo(repo_type, repo_id)
        if repo is None or (repo.private and not self._authed(req)):
            raise RepoNotFound(f"Repository {repo_id} not found (or it is private and no valid token was sent).")
        return repo

    # ----------------------------------------------------------------------------------------- routing
    def handle(self, req: Request) -> Response:
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
            body = req.json()
            if "private" in body:
                self.store.set_private(repo, bool(body["private"]))
            return json_response({})
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _repo_url(req: Request, repo: Repo | str, repo_type: str = "model") -> str:
        if isinstance(repo, Repo):
            repo_type, repo = repo.type, repo.id
        return f"{req.base_url}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"

    def _paginate(self, req: Request, items: list[Any], page_size: int | None = None) -> Response:
        """One page plus an absolute ``Link: <next>; rel="next"`` that repeats every query parameter."""
        size = max(1, page_size or self.page_size)
        try:
            offset = int(base64.urlsafe_b64decode((req.q("cursor") or "MA==").encode()).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise BadRequest("Invalid pagination cursor.") from None
        page = items[offset: offset + size]
        headers = {}
        if offset + size < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
            params = [(k, v) for k, vs in req.query.items() if k != "cursor" for v in vs] + [("cursor", cursor)]
            headers["Link"] = f'<{req.base_url}{req.raw_path}?{urlencode(params)}>; rel="next"'
        return json_response(page, headers=headers)

    def _derive(self, repo: Repo, commit: dict[str, Any]) -> dict[str, Any]:
        """Card data and tags of a commit; cached because commits are immutable."""
        key = (str(repo.dir), commit["id"])
        with self._derived_lock:
            hit = self._derived.get(key)
        if hit is not None:
            return hit
        readme = commit["files"].get("README.md")
        card: dict[str, Any] = {}
        if readme and readme["size"] <= (4 << 20):
            card = cards.parse_card(self.store.read_blob(readme["sha256"]).decode("utf-8", "replace"))
        paths = list(commit["files"])
        derived = {"card": card, "tags": cards.derive_tags(card, paths)}
        with self._derived_lock:
            self._derived[key] = derived
            while len(self._derived) > 4096:
                self._derived.popitem(last=False)
        return derived

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

    def _create_repo(self, req: Request) -> Response:
        self._require_write(req)
        body = req.json()
        repo_type = self._body_repo_type(body)
        repo_id = f"{body.get('organization') or self.user}/{body.get('name') or ''}"
        check_repo_id(repo_id)
        namespace = repo_id.split("/", 1)[0]
        if self.orgs is not None and namespace != self.user and namespace not in self.orgs:
            raise HubError(f"You don't have the rights to create a repo under the namespace {namespace!r}",
                           status=403)
        private = bool(body.get("private")) or body.get("visibility") == "private"
        url = self._repo_url(req, repo_id, repo_type)
        try:
            repo = self.store.create_repo(repo_type, repo_id, private, self.user)
        except Conflict as e:
            raise Conflict(e.message, extra={"url": url}) from None
        return json_response({"url": url, "name": repo.id, "id": repo.object_id})

    def _delete_repo(self, req: Request) -> Response:
        body = req.json()
        repo_type = self._body_repo_type(body)
        repo = self._repo(req, repo_type, f"{body.get('organization') or self.user}/{body.get('name') or ''}",
                          write=True)
        self.store.delete_repo(repo)
        return json_response({})

    def _validate_yaml(self, req: Request) -> Response:
        body = req.json()
        errors = cards.validate_card_yaml(str(body.get("content") or ""))
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
            except HubError:  # deleted concurrently
                continue
            summary = self._summary(repo, commit)
            if any(f not in summary["tags"] for f in filters):
                continue
            if req.qbool("full"):
                summary["siblings"] = [{"rfilename": p} for p in sorted(commit["files"])]
            if req.qbool("cardData") or "cardData" in req.qlist("expand"):
                summary["cardData"] = self._derive(repo, commit)["card"]
            out.append(self._expand(summary, req.qlist("expand")))
        sort = req.q("sort")
        if sort in ("lastModified", "createdAt", "id"):
            out.sort(key=lambda r: r.get(sort) or "", reverse=req.q("direction") != "1")
        limit = req.q("limit")
        page = min(self.page_size, int(limit)) if limit and limit.isdigit() and int(limit) > 0 else None
        return self._paginate(req, out, page)

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
        start = req.json().get("startingPoint") or DEFAULT_BRANCH
        self.store.create_ref(repo, "branches", name, self.store.resolve(repo, start))
        return json_response({})

    def _tag(self, req: Request, repo: Repo, rev: str) -> Response:
        if req.method == "DELETE":
            self.store.delete_ref(repo, "tags", rev)
            return json_response({})
        tag = req.json().get("tag")
        if not isinstance(tag, str):
            raise BadRequest("Missing 'tag' in the request body.")
        self.store.create_ref(repo, "tags", tag, self.store.resolve(repo, rev))
        return json_response({})

    # ----------------------------------------------------------------------------------- tree & friends
    @staticmethod
    def _dir_oid(files: dict[str, Any], d: str) -> str:
        h = hashlib.sha1()
        for p in sorted(p for p in files if p.startswith(d + "/")):
            h.update(f"{p}\0{files[p]['oid']}\n".encode())
        return h.hexdigest()

    def _entry(self, files: dict[str, Any], path: str) -> dict[str, Any]:
        e = files.get(path)
        if e is None:
            return {"type": "directory", "oid": self._dir_oid(files, path), "size": 0, "path": path}
        out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = {"oid": e["sha256"], "size": e["size"],
                          "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
        return out

    def _add_last_commits(self, repo: Repo, commit_id: str, entries: list[dict[str, Any]]) -> None:
        """``lastCommit`` per entry: the newest commit (first-parent) that changed it; history capped at 500."""
        pending = {e["path"]: e for e in entries}
        history = self.store.history(repo, commit_id)
        for _, commit in zip(range(500), history, strict=False):
            parent = self.store.read_commit(repo, commit["parents"][0])["files"] if commit["parents"] else {}
            for path in list(pending):
                now = commit["files"].get(path) or self._dir_oid(commit["files"], path)
                before = parent.get(path) or self._dir_oid(parent, path)
                if now != before or not commit["parents"]:
                    pending.pop(path)["lastCommit"] = {"id": commit["id"], "title": commit["title"],
                                                       "date": commit["date"]}
            if not pending:
                break

    def _tree(self, req: Request, repo: Repo, rev: str, path: str) -> Response:
        commit_id = self.store.resolve(repo, rev)
        files = self.store.read_commit(repo, commit_id)["files"]
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
        entries = [self._entry(files, d) for d in sorted(dirs)] + [self._entry(files, p) for p in sorted(file_paths)]
        expand = req.qbool("expand")
        page_size = min(self.page_size, 50) if expand else self.page_size
        response = self._paginate(req, entries, page_size)
        if expand:  # only the page being returned pays for the history walk
            page = json.loads(response.body)
            self._add_last_commits(repo, commit_id, page)
            response.body = json.dumps(page).encode()
        return response

    def _paths_info(self, req: Request, repo: Repo, rev: str) -> Response:
        commit_id = self.store.resolve(repo, rev)
        files = self.store.read_commit(repo, commit_id)["files"]
        form = req.form()
        out = []
        for raw in form.get("paths", []):
            path = raw.strip("/")
            check_path(path)
            if path in files or any(p.startswith(path + "/") for p in files):
                out.append(self._entry(files, path))
        if (form.get("expand") or ["false"])[0] == "true":
            self._add_last_commits(repo, commit_id, out)
        return json_response(out)

    def _commits(self, req: Request, repo: Repo, rev: str) -> Response:
        formatted = "formatted" in req.qlist("expand")
        out = []
        for c in self.store.history(repo, self.store.resolve(repo, rev)):
            item = {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                    "authors": [{"user": c["author"]}]}
            if formatted:
                item["formatted"] = {"title": c["title"], "message": c["message"]}
            out.append(item)
        return self._paginate(req, out, min(self.page_size, 50))

    # ------------------------------------------------------------------------------------------ uploads
    def _preupload(self, req: Request, repo: Repo, rev: str) -> Response:
        commit = self.store.read_commit(repo, self.store.resolve(repo, rev))
        files = commit["files"]
        ga = files.get(".gitattributes")
        patterns = cards.lfs_patterns(self.store.read_blob(ga["sha256"]).decode("utf-8", "replace")) if ga else []
        body = req.json()
        out = []
        for f in body.get("files") or []:
            path = check_path(str(f.get("path", "")))
            try:
                sample = base64.b64decode(f.get("sample") or "")
            except (binascii.Error, ValueError):
                raise BadRequest(f"Invalid base64 sample for {path}.") from None
            remote = files.get(path)
            oid = (remote["sha256"] if remote["lfs"] else remote["oid"]) if remote else None
            out.append({"path": path, "uploadMode": cards.upload_mode(path, int(f.get("size") or 0), sample, patterns),
                        "shouldIgnore": False, "oid": oid})
        return json_response({"files": out, "commitOid": commit["id"]})

    def _sign(self, oid: str, size: int, exp: int) -> str:
        return hmac.new(self._secret, f"{oid}:{size}:{exp}".encode(), hashlib.sha256).hexdigest()

    def _lfs_batch(self, req: Request, repo: Repo) -> Response:
        body = req.json()
        if body.get("operation") != "upload":
            raise BadRequest("Only the LFS 'upload' operation is supported; download through /resolve.")
        prefix = "datasets/" if repo.type == "dataset" else ""
        exp = int(time.time()) + _LFS_URL_TTL
        origin = req.server_url or req.base_url  # never the Host header: the client uploads where we tell it
        objects = []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) \
                    or size < 0:
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
        if req.method != "PUT" or len(s) != 2 or not s[1].isdigit():
            raise NotFound(f"Not found: {req.method} {req.raw_path}")
        oid, size = s[0], int(s[1])
        exp = req.q("exp") or ""
        sig = req.q("sig") or ""
        if not exp.isdigit() or not hmac.compare_digest(sig, self._sign(oid, size, int(exp))):
            raise Unauthorized("Invalid LFS upload URL signature: request a new one through the LFS batch API.")
        if int(exp) < time.time():
            raise Unauthorized("Expired LFS upload URL: request a new one through the LFS batch API.")
        declared = req.headers.get("Content-Length")
        if declared is not None and int(declared) != size:
            raise BadRequest(f"Upload size mismatch: expected {size} bytes, Content-Length is {declared}.")
        if self.store.blob_size(oid) == size:
            return json_response({})
        self.store.put_blob_stream(req.body.chunks(), oid, size)
        return json_response({})

    def _lfs_verify(self, req: Request) -> Response:
        body = req.json()
        oid, size = body.get("oid"), body.get("size")
        if not isinstance(oid, str) or self.store.blob_size(oid) != size:
            raise NotFound(f"LFS object {oid} of size {size} has not been uploaded.")
        return json_response({})

    def _commit(self, req: Request, repo: Repo, branch: str) -> Response:
        if req.qbool("create_pr"):
            raise BadRequest("Pull requests are not supported by this hub; commit to a branch instead.")
        header: dict[str, Any] = {}
        ops: list[Op] = []
        while line := req.body.readline(_NDJSON_LINE_LIMIT):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise BadRequest("Invalid NDJSON commit line.") from None
            if key == "header":
                header = value
            elif key == "file":
                path = check_path(str(value.get("path", "")))
                if value.get("encoding", "base64") != "base64":
                    raise BadRequest(f"Unsupported encoding for {path}: use base64.")
                try:
                    data = base64.b64decode(value.get("content") or "", validate=True)
                except (binascii.Error, ValueError):
                    raise BadRequest(f"Invalid base64 content for {path}.") from None
                sha, size = self.store.put_blob(data)
                ops.append(Op("add", path, make_entry(sha, size, False, git_blob_sha1(data))))
            elif key == "lfsFile":
                path = check_path(str(value.get("path", "")))
                oid = str(value.get("oid", ""))
                stored = self.store.blob_size(oid) if re.fullmatch(r"[0-9a-f]{64}", oid) else None
                if stored is None:
                    raise Unprocessable(f"LFS object {oid} for {path} has not been uploaded.")
                if value.get("size") is not None and value["size"] != stored:
                    raise Unprocessable(f"LFS object {oid} has {stored} bytes, the commit says {value['size']}.")
                ops.append(Op("add", path, make_entry(oid, stored, True)))
            elif key == "deletedFile":
                ops.append(Op("delete", str(value.get("path", ""))))
            elif key == "deletedFolder":
                ops.append(Op("delete_folder", str(value.get("path", ""))))
            else:
                raise BadRequest(f"Unsupported commit operation {key!r}.")
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
                if len(s) == 2 and m == "DELETE":
                    self.store.delete_collection(slug)
                    return json_response({})
                if len(s) == 2 and m == "PATCH":
                    body = req.json()
                    for key in ("title", "description", "position", "private", "theme"):
                        if key in body:
                            collection[key] = body[key]
                    return self._save_collection(collection)
                if s[2:] == ["items"] and m == "POST":
                    return self._add_collection_item(req, collection)
                if len(s) == 4 and s[2] == "items" and m in ("PATCH", "DELETE"):
                    return self._edit_collection_item(req, collection, s[3])
        raise NotFound(f"Not found: {req.method} {req.raw_path}")

    def _visible_items(self, req: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collection items the caller may see: a private (or since deleted) repo is left out for anonymous readers."""
        if self._authed(req):
            return items
        out = []
        for item in items:
            if item["type"] in ("model", "dataset"):
                try:
                    repo = self.store.get_repo(item["type"], item["id"])
                except HubError:
                    continue
                if repo is None or repo.private:
                    continue
            out.append(item)
        return out

    def _save_collection(self, collection: dict[str, Any]) -> Response:
        collection["lastUpdated"] = utc_iso()
        collection["items"].sort(key=lambda i: i["position"])
        self.store.save_collection(collection)
        return json_response(collection)

    def _create_collection(self, req: Request) -> Response:
        self._require_write(req)
        body = req.json()
        title = str(body.get("title") or "").strip()
        if not title:
            raise BadRequest("A collection needs a non-empty 'title'.")
        namespace = check_repo_part(str(body.get("namespace") or self.user), "namespace")
        with self.store.collection_lock():
            for existing in self.store.list_collections():
                if existing["owner"]["name"] == namespace and existing["title"] == title:
                    raise Conflict(f"Collection {title!r} already exists", extra=existing)
            slug_name = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "collection"
            collection = {"slug": f"{namespace}/{slug_name}-{secrets.token_hex(12)}", "title": title,
                          "description": body.get("description"),
                          "owner": {"name": namespace, "type": "user" if namespace == self.user else "org"},
                          "items": [], "position": 0, "private": bool(body.get("private")), "theme": "blue",
                          "upvotes": 0, "lastUpdated": utc_iso()}
            return self._save_collection(collection)

    def _add_collection_item(self, req: Request, collection: dict[str, Any]) -> Response:
        body = req.json()
        item = body.get("item") or {}
        item_id, item_type = str(item.get("id") or ""), item.get("type")
        if item_type not in _COLLECTION_ITEM_TYPES or not item_id:
            raise BadRequest(f"Collection items need an 'id' and a 'type' in {', '.join(_COLLECTION_ITEM_TYPES)}.")
        if item_type in ("model", "dataset"):
            self._repo(req, item_type, item_id)
        if any(i["id"] == item_id and i["type"] == item_type for i in collection["items"]):
            raise Conflict(f"{item_type} {item_id} is already in the collection")
        new = {"_id": secrets.token_hex(12), "id": item_id, "type": item_type,
               "position": max((i["position"] for i in collection["items"]), default=-1) + 1}
        if body.get("note"):
            new["note"] = {"text": str(body["note"]), "html": str(body["note"])}
        collection["items"].append(new)
        return self._save_collection(collection)

    def _edit_collection_item(self, req: Request, collection: dict[str, Any], object_id: str) -> Response:
        matches = [i for i in collection["items"] if i["_id"] == object_id]
        if not matches:
            raise NotFound(f"Item {object_id} is not in collection {collection['slug']}")
        if req.method == "DELETE":
            collection["items"].remove(matches[0])
        else:
            body = req.json()
            if "note" in body:
                matches[0]["note"] = {"text": str(body["note"]), "html": str(body["note"])}
            if "position" in body:
                matches[0]["position"] = int(body["position"])
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
