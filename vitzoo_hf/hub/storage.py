"""On-disk store of the local hub: blobs, commits, refs, repos and collections.

Layout under ``root``::

    blobs/ab/<sha256>                     file contents, content-addressed, immutable
    repos/<model|dataset>/<ns>/<name>/
        repo.json                         id, visibility, creation time
        refs.json                         {"branches": {name: sha}, "tags": {name: sha}}
        commits/<sha1>.json               immutable snapshot {path: entry} plus parents and message
        commits/<sha1>.meta               the same without the snapshot, plus the paths it changed
    collections/<owner>/<id>.json
    tmp/                                  scratch; emptied at start
    vitzoo-hub.json                       marks the folder as a store (written first, when the store is made)

A folder is only ever made into a store when it is new or empty, so the scratch folder that is emptied at start
is always the store's own (``--root ~`` must not wipe ``~/tmp``).

Crash safety comes from one rule: every file is written to ``tmp/``, fsynced and then ``os.replace``d into
place, and objects are published bottom-up (blobs, then the commit, then the ref that points to it). A process
killed at any moment therefore leaves at worst unreferenced objects or scratch files, never a half-written object
that a reader can reach. A repo is assembled in ``tmp/`` and renamed into place in one step. The inline blobs of
one commit are written without a per-file fsync and made durable together (one ``syncfs``) before the commit that
names them is published, so a 20k-file commit does not pay 40k fsyncs.

The store is private whatever the umask: the root is 0700 (re-applied at every start, so older stores are
closed too), folders 0700 and files 0600.

Commit-time path rules (see :mod:`vitzoo_hf.hub.names`): added paths pass :func:`check_upload_path` (no ``.git`` or
``.cache`` segment, nor look-alikes of them), a file and a folder cannot share a name, and two paths that are equal
after NFC normalisation cannot coexist (the second is refused with a 400 naming the first). Repo ids are unique
case-insensitively, as on the real Hub: ``Alice/pub`` cannot be created next to ``alice/pub``, and a new repo's
namespace must be spelled like the existing one; lookups are exact-case.

Memory: commit snapshots are cached by (estimated) bytes, not by count, so a few huge commits cannot hold
gigabytes. Each commit also has a small ``.meta`` file (parents, message, and the paths it changed against its
first parent), so walking history (``/commits``, "last commit per path") never parses whole snapshots; commits made
before ``.meta`` files existed are diffed against their parent once, when first walked.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .errors import (
    BadRequest,
    Conflict,
    EntryNotFound,
    NotFound,
    PreconditionFailed,
    RepoNotFound,
    RevisionNotFound,
)
from .names import (
    check_new_repo_id,
    check_path,
    check_repo_id,
    check_repo_part,
    check_revision,
    check_upload_path,
    is_commit_sha,
    nfc,
)

CHUNK = 1 << 20
COMMIT_CACHE_BYTES = 64 << 20
"""Budget of the commit cache in estimated bytes of memory: 3 x the commit's JSON (measured: 2.8 x for a 20k-file
snapshot, 3.4 MB of JSON, 9.5 MB parsed)."""
_PARSED_PER_JSON_BYTE = 3
_FSYNC_MAX = 64  # more new blobs than this in one commit: one syncfs instead of an fsync each
DIR_MODE = 0o700
FILE_MODE = 0o600
DEFAULT_BRANCH = "main"
MARKER = "vitzoo-hub.json"
_STORE_LAYOUT = ("blobs", "repos", "collections", "tmp", ".lock")  # a store made before the marker existed

# An abbreviation of the real Hub's default .gitattributes; it decides what preupload marks as LFS.
_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
_DATASET_LFS_PATTERNS = "*.mds *.mp3 *.ogg *.wav *.jpg *.jpeg *.png *.webp *.gif *.mp4 *.webm".split()


def default_gitattributes(repo_type: str) -> bytes:
    patterns = _LFS_PATTERNS + (_DATASET_LFS_PATTERNS if repo_type == "dataset" else [])
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()


def utc_iso(ts: float | None = None) -> str:
    """Hub-style timestamp, e.g. ``2026-11-29T05:39:31.000Z``."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file: what clients compare for no-op detection."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def make_entry(sha256: str, size: int, lfs: bool, git_oid: str | None = None) -> dict[str, Any]:
    """A snapshot entry. ``oid`` is the git-level id: sha1 of the content, or of the LFS pointer."""
    if lfs:
        git_oid = git_blob_sha1(lfs_pointer(sha256, size))
    assert git_oid is not None
    return {"sha256": sha256, "size": size, "lfs": lfs, "oid": git_oid}


@dataclass(frozen=True)
class Repo:
    """A repo's identity and settings (``repo.json``)."""

    type: str  # "model" | "dataset"
    id: str  # "ns/name"
    object_id: str  # 24-hex, like the Hub's _id
    private: bool
    created_at: str
    dir: Path

    @property
    def namespace(self) -> str:
        return self.id.split("/")[0]


@dataclass
class Op:
    """One commit operation: ``kind`` is ``add`` (with ``entry``), ``delete`` or ``delete_folder``."""

    kind: str
    path: str
    entry: dict[str, Any] | None = None


def _mkdir(path: Path) -> None:
    """``mkdir -p`` with folders 0700 whatever the umask."""
    if path.is_dir():
        return
    _mkdir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
        os.chmod(path, DIR_MODE)


def _open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
    """A new file that only the store's owner can read (0600 whatever the umask)."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


_libc = None


def _syncfs(path: Path) -> None:
    """Flush every written file on the file system of ``path`` (one call instead of one fsync per file)."""
    global _libc
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc is None:
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
                _libc.syncfs  # noqa: B018 - probe
            except (OSError, AttributeError):
                _libc = False
        if _libc and _libc.syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _claim(root: Path) -> None:
    """Make ``root`` a store if it is new or empty; refuse a non-empty folder that is not one."""
    from vitzoo_hf.errors import ZooError

    if (root / MARKER).is_file():
        return
    if root.exists() and not root.is_dir():
        raise ZooError(f"hub root {root} is a file, not a folder: pass a new or empty folder as --root")
    _mkdir(root)
    present = {p.name for p in root.iterdir()}
    legacy = {"blobs", "repos", "collections"} <= present and present <= set(_STORE_LAYOUT)
    if present and not legacy:
        raise ZooError(f"hub root {root} is not a vitzoo hub store (it has no {MARKER}) and is not empty; "
                       f"pass a new or empty folder as --root (e.g. {root / 'hub'}), so that nothing in it "
                       "is ever touched")
    marker = {"format": 1, "created_at": utc_iso()}
    tmp = root / f".{MARKER}.{secrets.token_hex(6)}"
    fd = _open_private(tmp)
    with open(fd, "w") as f:
        f.write(json.dumps(marker) + "\n")
    os.replace(tmp, root / MARKER)
    _fsync_dir(root)


class Store:
    """All persistent state. Thread-safe; one process per root (guarded by an exclusive lock file)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.blobs = self.root / "blobs"
        self.repos = self.root / "repos"
        self.collections_dir = self.root / "collections"
        self.tmp = self.root / "tmp"
        _claim(self.root)
        os.chmod(self.root, DIR_MODE)  # also closes a store made world-readable by an older version
        for d in (self.blobs, self.repos / "model", self.repos / "dataset", self.collections_dir):
            _mkdir(d)
        self._lock_file = open(_open_private(self.root / ".lock", os.O_RDWR | os.O_CREAT), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"{self.root} is already served by another hub process") from None
        # Scratch files of a killed process are garbage by construction: nothing refers to them.
        shutil.rmtree(self.tmp, ignore_errors=True)
        _mkdir(self.tmp)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._commit_cache: OrderedDict[tuple[str, str], tuple[dict[str, Any], int]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_guard = threading.Lock()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        self._lock_file.close()

    # ----------------------------------------------------------------------------------------------- atomics
    def _lock(self, key: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.RLock())

    def _tmp_path(self, suffix: str = "") -> Path:
        return self.tmp / (secrets.token_hex(12) + suffix)

    def _write_atomic(self, dest: Path, data: bytes) -> None:
        """Write ``dest`` so that readers see either the old file or the complete new one."""
        tmp = self._tmp_path()
        try:
            with open(_open_private(tmp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _mkdir(dest.parent)
            os.replace(tmp, dest)
        finally:  # a failed write (ENOSPC) leaves no scratch file behind
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(dest.parent)

    def _write_json(self, dest: Path, obj: Any) -> None:
        self._write_atomic(dest, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())

    # ------------------------------------------------------------------------------------------------- blobs
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadRequest(f"Invalid sha256 {sha256!r}: expected 64 lowercase hex digits.")
        return self.blobs / sha256[:2] / sha256

    def blob_size(self, sha256: str) -> int | None:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def put_blob_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
                        expected_size: int | None = None, sync: bool = True) -> tuple[str, int]:
        """Stream chunks to a scratch file while hashing; publish it under its sha256 only if it checks out.

        Never writes more than ``expected_size`` bytes: a longer body is refused as soon as it passes the size.
        ``sync=False`` skips the fsyncs; the caller then calls :meth:`sync` before publishing anything that
        refers to the blob.
        """
        tmp = self._tmp_path(".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(_open_private(tmp), "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise BadRequest(f"Upload size mismatch: expected {expected_size} bytes, the body is "
                                         "longer.")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            sha = digest.hexdigest()
            if expected_size is not None and size != expected_size:
                raise BadRequest(f"Upload size mismatch: expected {expected_size} bytes, received {size}.")
            if expected_sha256 is not None and sha != expected_sha256:
                raise BadRequest(f"Upload content mismatch: sha256 of the body is {sha}, "
                                 f"expected {expected_sha256}.")
            dest = self.blob_path(sha)
            _mkdir(dest.parent)
            os.replace(tmp, dest)
            if sync:
                _fsync_dir(dest.parent)
            return sha, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put_blob(self, data: bytes, sync: bool = True) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        if self.blob_size(sha) == len(data):
            return sha, len(data)
        return self.put_blob_stream([data], sha, len(data), sync=sync)

    def sync(self, blobs: Iterable[str] = ()) -> None:
        """Make blobs written with ``sync=False`` durable: an fsync each (and of their folders) for a few, one
        ``syncfs`` of the store's file system for many (which also flushes other programs' writes there)."""
        blobs = sorted(set(blobs))
        if len(blobs) > _FSYNC_MAX:
            _syncfs(self.root)
            return
        for sha in blobs:
            fd = os.open(self.blob_path(sha), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in {self.blob_path(sha).parent for sha in blobs}:
            _fsync_dir(folder)

    def open_blob(self, sha256: str) -> BinaryIO:
        return open(self.blob_path(sha256), "rb")

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # ------------------------------------------------------------------------------------------------- repos
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        ns, name = check_repo_id(repo_id)
        if repo_type not in ("model", "dataset"):
            raise BadRequest(f"Unsupported repo type {repo_type!r}: this hub hosts models and datasets.")
        return self.repos / repo_type / ns / name

    def _load_repo(self, repo_type: str, d: Path) -> Repo | None:
        try:
            meta = json.loads((d / "repo.json").read_text())
        except FileNotFoundError:
            return None
        return Repo(type=repo_type, id=meta["id"], object_id=meta["object_id"], private=meta["private"],
                    created_at=meta["created_at"], dir=d)

    def get_repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self._load_repo(repo_type, self._repo_dir(repo_type, repo_id))

    def list_repos(self, repo_type: str) -> list[Repo]:
        out = []
        base = self.repos / repo_type
        for ns in sorted(base.iterdir()):
            for d in sorted(ns.iterdir()) if ns.is_dir() else ():
                repo = self._load_repo(repo_type, d)
                if repo is not None:
                    out.append(repo)
        return out

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> Repo:
        """Create a repo with an initial ``.gitattributes`` commit on ``main`` (the Hub does the same)."""
        check_new_repo_id(repo_id)
        dest = self._repo_dir(repo_type, repo_id)
        with self._lock(f"create:{repo_type}"):
            if dest.exists():
                raise Conflict(f"You already created this {repo_type} repo", code="RepoExists")
            self._check_case_collision(repo_type, repo_id)
            staging = self._tmp_path(".repo")
            try:
                self._stage_repo(staging, repo_type, repo_id, private, author)
                _mkdir(dest.parent)
                os.rename(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _fsync_dir(dest.parent)
        repo = self._load_repo(repo_type, dest)
        assert repo is not None
        return repo

    def _check_case_collision(self, repo_type: str, repo_id: str) -> None:
        """Repo ids are unique case-insensitively and a namespace has one spelling (the real Hub's rule)."""
        ns, name = repo_id.split("/")
        for existing_ns in (self.repos / repo_type).iterdir():
            if existing_ns.name.lower() != ns.lower():
                continue
            if existing_ns.name != ns and any(existing_ns.iterdir()):
                raise BadRequest(f"Cannot create {repo_id}: the namespace exists as {existing_ns.name!r} (namespaces "
                               f"are case-insensitive); use {existing_ns.name}/{name}.")
            for d in existing_ns.iterdir():
                if d.name.lower() == name.lower() and d.name != name and (d / "repo.json").exists():
                    raise Conflict(f"Cannot create {repo_id}: {existing_ns.name}/{d.name} exists and repo ids are "
                                   "case-insensitive.", code="RepoExists",
                                   extra={"existing": f"{existing_ns.name}/{d.name}"})

    def _stage_repo(self, staging: Path, repo_type: str, repo_id: str, private: bool, author: str) -> None:
        _mkdir(staging / "commits")
        now = time.time()
        sha, size = self.put_blob(default_gitattributes(repo_type))
        gitattributes = make_entry(sha, size, False, git_blob_sha1(default_gitattributes(repo_type)))
        commit = self._new_commit([], {".gitattributes": gitattributes}, "initial commit", "", author, now)
        self._write_json(staging / "commits" / f"{commit['id']}.meta", self._meta(commit, [".gitattributes"]))
        self._write_json(staging / "commits" / f"{commit['id']}.json", commit)
        self._write_json(staging / "refs.json", {"branches": {DEFAULT_BRANCH: commit["id"]}, "tags": {}})
        meta = {"id": repo_id, "object_id": secrets.token_hex(12), "private": bool(private),
                "created_at": utc_iso(now)}
        self._write_json(staging / "repo.json", meta)

    def delete_repo(self, repo: Repo) -> None:
        with self._lock(str(repo.dir)):
            trash = self._tmp_path(".deleted")
            os.rename(repo.dir, trash)
            _fsync_dir(repo.dir.parent)
        shutil.rmtree(trash, ignore_errors=True)
        with self._cache_guard:
            for key in [k for k in self._commit_cache if k[0] == str(repo.dir)]:
                self._cache_bytes -= self._commit_cache.pop(key)[1]

    def set_private(self, repo: Repo, private: bool) -> Repo:
        with self._lock(str(repo.dir)):
            meta = json.loads((repo.dir / "repo.json").read_text())
            meta["private"] = bool(private)
            self._write_json(repo.dir / "repo.json", meta)
        return self._load_repo(repo.type, repo.dir) or repo

    # -------------------------------------------------------------------------------------- refs & commits
    def refs(self, repo: Repo) -> dict[str, dict[str, str]]:
        try:
            return json.loads((repo.dir / "refs.json").read_text())
        except FileNotFoundError:
            raise RepoNotFound(f"Repository {repo.id} not found") from None

    def read_commit(self, repo: Repo, commit_id: str) -> dict[str, Any]:
        key = (str(repo.dir), commit_id)
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        try:
            raw = (repo.dir / "commits" / f"{commit_id}.json").read_bytes()
        except FileNotFoundError:
            raise RevisionNotFound(f"Commit {commit_id} not found in {repo.id}") from None
        commit = json.loads(raw)
        self._cache_put(key, commit, _PARSED_PER_JSON_BYTE * len(raw))
        return commit

    def resolve(self, repo: Repo, rev: str) -> str:
        """Branch, then tag, then full commit sha, then a unique sha prefix of at least 7 hex digits."""
        check_revision(rev)
        refs = self.refs(repo)
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        commits = repo.dir / "commits"
        if is_commit_sha(rev) and (commits / f"{rev}.json").exists():
            return rev
        if 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev):
            matches = [p.stem for p in commits.glob(f"{rev}*.json")]
            if len(matches) == 1:
                return matches[0]
        raise RevisionNotFound(f"Invalid rev id: {rev}")

    def history(self, repo: Repo, commit_id: str) -> Iterator[dict[str, Any]]:
        """First-parent history, newest first, as :meth:`commit_meta` dicts (no snapshots)."""
        cid: str | None = commit_id
        while cid:
            meta = self.commit_meta(repo, cid)
            yield meta
            cid = meta["parents"][0] if meta["parents"] else None

    def commit_meta(self, repo: Repo, commit_id: str) -> dict[str, Any]:
        """A commit without its snapshot, plus ``changed`` (paths changed against the first parent; every path
        for a root commit). Cheap: read from the ``.meta`` file, computed once for commits that have none."""
        key = (str(repo.dir), commit_id + ".meta")
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        try:
            raw = (repo.dir / "commits" / f"{commit_id}.meta").read_bytes()
            meta = json.loads(raw)
        except (FileNotFoundError, ValueError):
            commit = self.read_commit(repo, commit_id)
            parent = self.read_commit(repo, commit["parents"][0])["files"] if commit["parents"] else {}
            meta = self._meta(commit, self._changed(parent, commit["files"]))
            raw = json.dumps(meta).encode()
            with contextlib.suppress(OSError):  # derived from immutable commits: computed once per store
                self._write_json(repo.dir / "commits" / f"{commit_id}.meta", meta)
        self._cache_put(key, meta, _PARSED_PER_JSON_BYTE * len(raw))
        return meta

    @staticmethod
    def _meta(commit: dict[str, Any], changed: list[str]) -> dict[str, Any]:
        return {**{k: v for k, v in commit.items() if k != "files"}, "changed": changed}

    @staticmethod
    def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
        return sorted({p for p, e in after.items() if before.get(p) != e} | (before.keys() - after.keys()))

    def _cache_get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The cached value under `key`, marked most recently used; None on a miss."""
        with self._cache_guard:
            hit = self._commit_cache.get(key)
            if hit is None:
                return None
            self._commit_cache.move_to_end(key)
            return hit[0]

    def _cache_put(self, key: tuple[str, str], value: dict[str, Any], size: int) -> None:
        with self._cache_guard:
            if key not in self._commit_cache and size <= COMMIT_CACHE_BYTES // 2:
                self._commit_cache[key] = (value, size)
                self._cache_bytes += size
            while self._cache_bytes > COMMIT_CACHE_BYTES and self._commit_cache:
                self._cache_bytes -= self._commit_cache.popitem(last=False)[1][1]

    @staticmethod
    def _new_commit(parents: list[str], files: dict[str, Any], title: str, message: str, author: str,
                    ts: float) -> dict[str, Any]:
        body = {"parents": parents, "files": files, "title": title, "message": message, "author": author,
                "date": utc_iso(ts), "nonce": base64.b32encode(os.urandom(5)).decode()}
        body["id"] = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return body

    def commit(self, repo: Repo, branch: str, ops: list[Op], title: str, message: str, author: str,
               parent_commit: str | None = None) -> str:
        """Apply ``ops`` on top of ``branch`` and move the branch; serialised per repo."""
        with self._lock(str(repo.dir)):
            refs = self.refs(repo)
            if branch not in refs["branches"]:
                if branch in refs["tags"] or is_commit_sha(branch):
                    raise BadRequest(f"Cannot commit to {branch!r}: commits must target a branch.")
                raise RevisionNotFound(f"Branch {branch!r} not found in {repo.id}; create it first.")
            head = refs["branches"][branch]
            if parent_commit is not None and self._parent_commit(repo, parent_commit) != head:
                raise PreconditionFailed(
                    f"A commit has happened since the parent commit {parent_commit}: {branch} is now at {head}."
                )
            before = self.read_commit(repo, head)["files"]
            files = self._apply(dict(before), ops)
            commit = self._new_commit([head], files, title, message, author, time.time())
            self._write_json(repo.dir / "commits" / f"{commit['id']}.meta",
                             self._meta(commit, self._changed(before, files)))
            self._write_json(repo.dir / "commits" / f"{commit['id']}.json", commit)
            refs["branches"][branch] = commit["id"]
            self._write_json(repo.dir / "refs.json", refs)
            return commit["id"]

    @staticmethod
    def _apply(files: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
        """``files`` with ``ops`` applied, in O(files + ops): folders and NFC forms are indexed once."""
        folders: dict[str, int] = {}  # folder -> number of files under it

        def index(path: str, delta: int) -> None:
            i = path.find("/")
            while i >= 0:
                folder = path[:i]
                folders[folder] = folders.get(folder, 0) + delta
                if not folders[folder]:
                    del folders[folder]
                i = path.find("/", i + 1)

        for p in files:
            index(p, 1)
        by_nfc = {nfc(p): p for p in files if not p.isascii()}
        for op in ops:
            if op.kind == "add":
                path = check_upload_path(op.path)
                if path in folders:
                    raise BadRequest(f"Cannot add file {path!r}: a folder with this name exists.")
                parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
                if any(p in files for p in parents):
                    raise BadRequest(f"Cannot add file {path!r}: one of its parent folders is a file.")
                key = nfc(path)
                twin = key if key != path and key in files else by_nfc.get(key)
                if twin is not None and twin != path and twin in files:
                    raise BadRequest(f"Cannot add file {path!r}: {twin!r} exists and differs only in Unicode "
                                     "normalisation (NFC vs NFD); the two would be one file on macOS. "
                                     "Delete one, or use the same spelling.")
                if not path.isascii():
                    by_nfc[key] = path
                if path not in files:
                    index(path, 1)
                files[path] = op.entry
            elif op.kind == "delete":
                path = check_path(op.path)
                if path not in files:
                    raise EntryNotFound(f"A file with this name doesn't exist: {path}")
                del files[path]
                index(path, -1)
                by_nfc.pop(nfc(path), None)
            elif op.kind == "delete_folder":
                path = check_path(op.path.rstrip("/"))
                if path in folders:
                    for p in [p for p in files if p.startswith(path + "/")]:
                        del files[p]
                        index(p, -1)
                        by_nfc.pop(nfc(p), None)
            else:
                raise BadRequest(f"Unknown commit operation {op.kind!r}.")
        return files

    def _parent_commit(self, repo: Repo, parent_commit: object) -> str:
        """The commit a ``parentCommit`` names: a full sha, or a unique prefix of 7+ hex digits (the shorthand
        huggingface_hub documents). Compared exactly with the branch head; never as a prefix of it."""
        rev = str(parent_commit)
        if not (7 <= len(rev) <= 40 and all(c in "0123456789abcdef" for c in rev)):
            raise BadRequest(f"Invalid parentCommit {rev!r}: give the full commit sha (40 lowercase hex digits).")
        if len(rev) == 40:
            return rev
        matches = [p.stem for p in (repo.dir / "commits").glob(f"{rev}*.json")]
        return matches[0] if len(matches) == 1 else rev  # else: not (uniquely) a commit here, so not the head

    def create_ref(self, repo: Repo, kind: str, name: str, commit_id: str) -> None:
        """``kind`` is ``branches`` or ``tags``; 409 if the name is taken."""
        check_revision(name)
        if is_commit_sha(name):
            raise BadRequest(f"Invalid ref name {name!r}: it looks like a commit sha.")
        with self._lock(str(repo.dir)):
            refs = self.refs(repo)
            if name in refs[kind]:
                raise Conflict(f"{'Branch' if kind == 'branches' else 'Tag'} {name!r} already exists")
            self.read_commit(repo, commit_id)
            refs[kind][name] = commit_id
            self._write_json(repo.dir / "refs.json", refs)

    def delete_ref(self, repo: Repo, kind: str, name: str) -> None:
        with self._lock(str(repo.dir)):
            refs = self.refs(repo)
            if name not in refs[kind]:
                raise RevisionNotFound(f"{'Branch' if kind == 'branches' else 'Tag'} {name!r} not found")
            if kind == "branches" and name == DEFAULT_BRANCH:
                raise BadRequest(f"Cannot delete the default branch {DEFAULT_BRANCH!r}.")
            del refs[kind][name]
            self._write_json(repo.dir / "refs.json", refs)

    # ------------------------------------------------------------------------------------------ collections
    def _collection_path(self, slug: str) -> Path:
        owner, _, ident = slug.partition("/")
        check_repo_part(owner, "collection slug")
        check_repo_part(ident, "collection slug")
        return self.collections_dir / owner / f"{ident}.json"

    @contextlib.contextmanager
    def collection_lock(self) -> Iterator[None]:
        with self._lock("collections"):
            yield

    def get_collection(self, slug: str) -> dict[str, Any]:
        try:
            return json.loads(self._collection_path(slug).read_text())
        except FileNotFoundError:
            raise NotFound(f"Collection {slug} not found") from None

    def save_collection(self, collection: dict[str, Any]) -> None:
        _mkdir(self._collection_path(collection["slug"]).parent)
        self._write_json(self._collection_path(collection["slug"]), collection)

    def delete_collection(self, slug: str) -> None:
        path = self._collection_path(slug)
        if not path.exists():
            raise NotFound(f"Collection {slug} not found")
        path.unlink()

    def list_collections(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.collections_dir.glob("*/*.json"))]
