"""Validation of repo ids, revisions and in-repo paths.

Everything that becomes part of a filesystem path or a ref name passes through here first, so ``..``, absolute
paths and control characters are refused with a 400 before they can reach the store.

Upload paths (:func:`check_upload_path`) follow one more rule, because clients write repo files into folders they
then trust (``hf download --local-dir`` into a git checkout): no path segment may be ``.git`` or ``.cache``, the
folders ``huggingface_hub`` itself refuses to commit to (``FORBIDDEN_FOLDERS``; a file named ``.git`` is refused too,
as it would redirect git to another repository). Look-alikes that a case-insensitive or normalising file system turns
into those names are refused as well: the segment is compared after Unicode NFC + case folding, without the
zero-width characters HFS+ ignores and without the trailing dots and spaces Windows drops, and NTFS's short name
``git~1`` counts as ``.git``. Other file names are kept byte-exact (as git and the Hub do), so ``README.md`` and
``readme.md`` are two files; but two paths that differ only in Unicode normalisation (NFC vs NFD ``é``) look the
same and are one file on macOS, so a commit that would hold both is refused (see :mod:`vitzoo_hf.hub.storage`).
"""

from __future__ import annotations

import re
import unicodedata

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


FORBIDDEN_FOLDERS = (".git", ".cache")
"""Folders ``huggingface_hub`` refuses to upload into (``huggingface_hub.utils._paths.FORBIDDEN_FOLDERS``)."""

# Characters HFS+ ignores in file names (the list git checks in ``is_hfs_dotgit``) and other invisible formatters.
_IGNORABLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u206a-\u206f\ufeff\u00ad]")


def fold_segment(segment: str) -> str:
    """What a case-insensitive, normalising file system (macOS, Windows) makes of a path segment."""
    folded = _IGNORABLE.sub("", unicodedata.normalize("NFC", segment)).casefold().rstrip(" .")
    return ".git" if folded == "git~1" else folded


def check_upload_path(path: str) -> str:
    """A path a commit may write: :func:`check_path`, and no segment that is (or becomes) ``.git`` or ``.cache``."""
    check_path(path)
    for segment in path.split("/"):
        folded = fold_segment(segment)
        for forbidden in FORBIDDEN_FOLDERS:
            if folded == forbidden:
                raise BadRequest(
                    f"Invalid path {path!r}: files under a '{forbidden}/' folder (or named '{forbidden}', in any "
                    f"case or spelling a file system folds to it, here {segment!r}) cannot be uploaded; "
                    "huggingface_hub refuses them too, because clients download repo files into folders "
                    "whose .git/ and .cache/ they trust.")
    return path


def nfc(path: str) -> str:
    """The NFC form of a path (ASCII paths are returned as they are, cheaply)."""
    return path if path.isascii() else unicodedata.normalize("NFC", path)


def is_commit_sha(rev: str) -> bool:
    return bool(_SHA.match(rev))
