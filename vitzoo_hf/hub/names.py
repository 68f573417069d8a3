"""Validation of repo ids, revisions and in-repo paths.

Everything that becomes part of a filesystem path or a ref name passes through here first, so ``..``, absolute
paths and control characters are refused with a 400 before they can reach the store.
"""

from __future__ import annotations

import re

from .errors import BadRequest

REPO_TYPES = {"models": "model", "datasets": "dataset"}
"""URL segment → repo type; spaces are not hosted here."""

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_REF_CHARS = re.compile(r"[\s~^:?*\[\\]")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def check_repo_part(part: str, what: str = "repo id") -> str:
    """A namespace or a repo name: ``[A-Za-z0-9._-]``, at most 96 characters, no ``--``/``..``, no ``.git``."""
    if not _PART.match(part) or "--" in part or ".." in part or part.endswith(".git") or part.endswith("."):
        raise BadRequest(
            f"Invalid {what} part {part!r}: use 1-96 characters from [A-Za-z0-9._-], starting with a letter or "
            "digit, without '--', '..' or a trailing '.git'."
        )
    return part


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """``namespace/name`` → ``(namespace, name)``; this hub hosts only two-segment ids."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise BadRequest(f"Invalid repo id {repo_id!r}: expected 'namespace/name'.")
    return check_repo_part(parts[0]), check_repo_part(parts[1])


RESERVED_NAMESPACES = frozenset({"api", "datasets", "models", "spaces", "collections", "organizations", "settings"})
"""First URL segments that route elsewhere (or may): a repo there could never be reached by its URLs."""


def check_new_repo_id(repo_id: str) -> tuple[str, str]:
    """A repo id that may be created: valid, and not in a namespace whose URLs belong to the API."""
    ns, name = check_repo_id(repo_id)
    if ns.lower() in RESERVED_NAMESPACES:
        raise BadRequest(f"Invalid repo id {repo_id!r}: the namespace {ns!r} is reserved (its URLs route elsewhere, "
                         f"e.g. /{ns}/...); use another organization or user name.")
    return ns, name


def check_revision(rev: str) -> str:
    """A branch, tag or commit name as git would accept it (``/`` allowed, ``..`` and control chars not)."""
    if (
        not rev
        or len(rev) > 255
        or _CONTROL.search(rev)
        or _BAD_REF_CHARS.search(rev)
        or ".." in rev
        or rev.startswith(("/", "-", "."))
        or rev.endswith(("/", ".", ".lock"))
        or "//" in rev
        or "@{" in rev
    ):
        raise BadRequest(f"Invalid revision {rev!r}: use a branch, tag or commit name without '..', spaces or "
                         "control characters.")
    return rev


def check_path(path: str) -> str:
    """A repo-relative file path: no empty, ``.`` or ``..`` segments, not absolute, no control characters."""
    if (
        not path
        or len(path) > 1000
        or path.startswith("/")
        or "\\" in path
        or _CONTROL.search(path)
        or any(seg in ("", ".", "..") for seg in path.split("/"))
    ):
        raise BadRequest(f"Invalid path {path!r}: use a relative path without '..', '.', empty segments, "
                         "backslashes or control characters.")
    return path


def is_commit_sha(rev: str) -> bool:
    return bool(_SHA.match(rev))
