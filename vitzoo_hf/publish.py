"""Publish a zoo folder to the Hugging Face Hub: a repo per model, a branch per epoch, model cards, the metadata
dataset and a collection; verify what is there; resume what was interrupted.

Layout on the Hub (the conventions of Pythia/OLMo checkpoints, hub_conventions.md):

    ORG/<model>              main = final epoch; branch `epoch-NNN` per published checkpoint (incl. epoch-000);
                             every branch: the checkpoint folder's files (weights, transformers config, modelling
                             code, predictions, projection head, ...; not the optimizer state), README.md (card),
                             training/{config,result,manifest}.json (the zoo's training record)
    ORG/<zoo>-metadata       dataset repo, Parquet configs models / checkpoints / predictions / labels
    collection "<zoo> model zoo" holding all of them

Why publishing is idempotent and resumable: every step compares the Hub's tree (LFS sha256 / git blob ids, no
download) with the local files and commits only differences. A new branch is created only *from a complete
commit*: each epoch is first committed to `main` (one atomic commit with all its files), then `epoch-NNN` is
created at that commit; so `main` walks through the epochs and ends at the final one, and a kill at any point
leaves only complete branches (and `main` at a complete, earlier epoch until the rerun moves it on). Epochs
added once `main` holds the final one (`--epochs final`, later `all`) walk a scratch branch instead, so `main`
never goes back (each run its own scratch branch: a killed run's late requests touch only the killed run's).
Existing branches whose files differ from the local ones (altered on the Hub, or the zoo changed) get one commit
on that branch, and are reported. After committing, every touched branch is listed again and compared file by file.

A killed run's requests may still complete on the Hub after the rerun has read the refs, so every step accepts
their effect: commits name their parent, and a branch that moved under us means "plan this repo again"; a
branch that exists already with the right files is success (with other files, the new plan repairs it).

Round trips: a fresh repo's commits are planned in full, so one preupload request learns every file's upload mode
and one LFS batch uploads every object; each commit and each branch is then one request. A few repos are
published at once (`jobs`): each request waits on the Hub's disk syncs or the network, not on our CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from vitzoo_hf import layout, metadata
from vitzoo_hf.errors import ZooError
from vitzoo_hf.zoo import TRAINING_DIR

SCRATCH_PREFIX = "vitzoo-publishing"  # working refs for epochs added after main holds the final one; one per run
JOBS = 4  # repos published at once: the Hub's answers wait on disk syncs, so a few in flight keep it busy
RETRY_STATUS = (408, 412, 429, 500, 502, 503, 504)  # 412: the branch moved under us; re-plan and retry
MAX_ATTEMPTS = 6


# --------------------------------------------------------------------------------------------------------------
# What to publish


@dataclass(frozen=True)
class EpochSelection:
    kind: str  # "all" | "final" | "every"
    every: int = 1

    def choose(self, available: Sequence[int], final: int) -> list[int]:
        if self.kind == "final":
            return [final]
        picked = [e for e in available if self.kind == "all" or e % self.every == 0]
        return sorted({*picked, final})


def parse_epochs(value: str) -> EpochSelection:
    if value in ("all", "final"):
        return EpochSelection(value)
    m = re.fullmatch(r"every:(\d+)", value)
    if m and int(m.group(1)) > 0:
        return EpochSelection("every", int(m.group(1)))
    raise ZooError(f"--epochs {value!r} is not valid; use all, final or every:K with K a positive integer "
                   "(e.g. every:10)")


@dataclass
class RepoFile:
    """A file as it should be in a branch: its content (a local path or bytes) and its digests."""

    path: str
    sha256: str
    size: int
    source: Path | bytes

    def content(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()

    @cached_property
    def git_sha1(self) -> str:
        from huggingface_hub.utils.sha import git_hash

        return git_hash(self.content())

    def operation(self):
        from huggingface_hub import CommitOperationAdd

        src = self.source if isinstance(self.source, bytes) else str(self.source)
        return CommitOperationAdd(path_in_repo=self.path, path_or_fileobj=src)


def _bytes_file(path: str, data: bytes) -> RepoFile:
    import hashlib

    return RepoFile(path, hashlib.sha256(data).hexdigest(), len(data), data)


def checkpoint_files(m: metadata.LocalModel, epoch: int, card: str) -> dict[str, RepoFile]:
    """Everything a branch holds: the checkpoint folder (less the optimizer state and the manifest, which goes
    under training/), the model card and the training record."""
    ckpt = m.checkpoints[epoch]
    manifest = m.manifest(epoch)
    digests = manifest["sha256"]
    files: dict[str, RepoFile] = {}
    for p in sorted(ckpt.iterdir()):
        if not p.is_file() or p.name in metadata.UNPUBLISHED_FILES or p.name == layout.MANIFEST_FILE:
            continue
        if p.name in digests:
            files[p.name] = RepoFile(p.name, digests[p.name], p.stat().st_size, p)
        else:  # a file the manifest does not cover (added after training): hash it here
            files[p.name] = _bytes_file(p.name, p.read_bytes())
    published = {**manifest, "sha256": {k: v for k, v in digests.items() if k not in metadata.UNPUBLISHED_FILES}}
    extra = {
        "README.md": card.encode(),
        f"{TRAINING_DIR}/{layout.MANIFEST_FILE}": json.dumps(published, indent=1).encode(),
        f"{TRAINING_DIR}/{layout.CONFIG_FILE}": (m.path / layout.CONFIG_FILE).read_bytes(),
        f"{TRAINING_DIR}/{layout.RESULT_FILE}": (m.path / layout.RESULT_FILE).read_bytes(),
    }
    files.update({path: _bytes_file(path, data) for path, data in extra.items()})
    return files


def diff(desired: dict[str, RepoFile], remote: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, why) for every desired file the remote tree lacks or holds with other content. LFS files are
    compared by sha256 (the LFS oid), regular ones by git blob id; nothing is downloaded."""
    out = []
    for path, f in desired.items():
        r = remote.get(path)
        if r is None:
            out.append((path, "missing on the Hub"))
        elif r.lfs is not None:
            if r.lfs.sha256 != f.sha256:
                out.append((path, f"Hub sha256 {r.lfs.sha256} != local {f.sha256}"))
        elif r.blob_id != f.git_sha1:
            out.append((path, f"Hub content (git blob {r.blob_id[:12]}) differs from local (sha256 {f.sha256})"))
    return out


# --------------------------------------------------------------------------------------------------------------
# Talking to the Hub politely


def _status(err: BaseException) -> int | None:
    return getattr(getattr(err, "response", None), "status_code", None)


def _is_transport(err: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(err, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - httpx2 is a hard dependency of huggingface_hub 2.x
        pass
    return isinstance(err, ConnectionError | TimeoutError)


def retry_delay(err: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying after `err` (None: do not retry). Honours Retry-After on 429/503."""
    status = _status(err)
    if status in RETRY_STATUS:
        after = err.response.headers.get("Retry-After")  # type: ignore[attr-defined]
        if after and after.strip().isdigit():
            return min(float(after), 300.0)
        return min(2.0**attempt, 60.0)
    if _is_transport(err):
        return min(2.0**attempt, 60.0)
    return None


class _Raced(Exception):
    """The Hub changed under a step (a killed run's late request, another publisher): plan the step again."""


def with_retries(what: str, fn: Callable[[], Any], log: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep, attempts: int = MAX_ATTEMPTS) -> Any:
    """Run a re-plannable step; rate limits, server errors and lost connections are retried with backoff, and a
    step that met a concurrent change (:class:`_Raced`) is planned again at once."""
    for attempt in range(attempts):
        try:
            return fn()
        except ZooError:
            raise
        except _Raced as race:
            if attempt == attempts - 1:
                raise ZooError(f"{what} failed: {race} on every attempt (is another publisher running?); rerun "
                               "the same command when it has finished") from None
            log(f"{what}: {race}; planning again")
        except Exception as err:
            delay = retry_delay(err, attempt)
            if delay is None or attempt == attempts - 1:
                raise ZooError(_hub_error(what, err)) from None
            log(f"{what}: {_short(err)}; retrying in {delay:.0f} s")
            sleep(delay)
    raise AssertionError("unreachable")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _hub_error(what: str, err: BaseException) -> str:
    status = _status(err)
    if _is_transport(err) or status in RETRY_STATUS:
        return (f"{what} failed: the Hub is unreachable or overloaded ({_short(err)}); rerun the same command "
                "to resume where it stopped")
    if status in (401, 403):
        return f"{what} was refused ({_short(err)}); check that the token may write to this namespace"
    return f"{what} failed ({_short(err)}); rerun the same command to resume, or report this error"


# --------------------------------------------------------------------------------------------------------------
# The publisher


@dataclass
class Report:
    repos: int = 0
    commits: int = 0
    branches_created: int = 0
    files_committed: int = 0
    bytes_preuploaded: int = 0
    repaired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    metadata_repo: str = ""
    collection: str = ""

    def summary(self) -> str:
        return (f"{self.repos} model repos + {self.metadata_repo}: {self.commits} commits, "
                f"{self.branches_created} new branches, {self.files_committed} files committed "
                f"({self.bytes_preuploaded / 1e6:.1f} MB of LFS uploaded), {len(self.repaired)} repaired, "
                f"in {self.seconds:.1f} s; collection {self.collection}")


class Publisher:
    def __init__(self, zoo_dir: str | Path, namespace: str, *, epochs: str = "all", private: bool = False,
                 verify_only: bool = False, progress: bool = True, verbose: bool = False,
                 log: Callable[[str], None] | None = None, jobs: int = JOBS) -> None:
        import secrets
        import threading

        self.selection = parse_epochs(epochs)
        self.jobs = max(1, jobs)
        self.scratch = f"{SCRATCH_PREFIX}-{secrets.token_hex(4)}"  # this run's own: a killed run's late requests
        self._lock = threading.Lock()                                # touch only theirs
        self._log_lock = threading.Lock()
        self.zoo_dir = Path(zoo_dir)
        self.namespace = namespace
        self.private = private
        self.verify_only = verify_only
        self.progress = progress
        self.verbose = verbose
        self._log = log
        self.report = Report()

    # ---- logging -----------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """One message at a time, whichever repo's thread it comes from (callbacks need not be thread-safe)."""
        with self._log_lock:
            if self._log is not None:
                self._log(message)
                return
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def detail(self, message: str) -> None:
        if self.verbose:
            self.log(message)

    # ---- preflight ---------------------------------------------------------------------------------------------

    @cached_property
    def api(self):
        from huggingface_hub import HfApi

        return HfApi()

    def check_namespace_format(self) -> None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(f"{self.namespace}/x")
        except HFValidationError:
            raise ZooError(f"--namespace {self.namespace!r} is not a valid Hub user or organisation name "
                           "(letters, digits, '-', '_', '.'; no '--' or '..')") from None

    def check_token(self) -> dict[str, Any]:
        """Token and endpoint, before anything is read from or written to the Hub."""
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalTokenNotFoundError

        endpoint = constants.ENDPOINT
        try:
            who = self.api.whoami()
        except LocalTokenNotFoundError:
            raise ZooError("no Hub token: set HF_TOKEN to a write token or run `hf auth login`") from None
        except Exception as err:
            if _status(err) == 401:
                raise ZooError(f"the Hub at {endpoint} rejected the token (401: invalid or expired); set HF_TOKEN "
                               "to a valid write token or run `hf auth login`") from None
            raise ZooError(f"cannot reach the Hub at {endpoint} ({_short(err)}); check --endpoint / HF_ENDPOINT "
                           "and the network") from None
        role = (who.get("auth", {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise ZooError("the Hub token is read-only; publishing needs a write token (set HF_TOKEN)")
        return who

    def check_namespace(self, who: dict[str, Any], probe_repo: str) -> None:
        """The namespace must be the user or one of their organisations. A Hub that lists no such org is asked
        by creating the (needed anyway) metadata repo there: a real Hub refuses unknown namespaces."""
        allowed = {who.get("name"), *(o.get("name") for o in who.get("orgs", []))}
        if self.namespace in allowed:
            return
        try:
            self.api.create_repo(probe_repo, repo_type="dataset", private=self.private, exist_ok=True)
        except Exception as err:
            if _status(err) in (401, 403, 404):
                raise ZooError(f"namespace {self.namespace!r} is unknown on this Hub or the token may not write to "
                               f"it (you are {who.get('name')!r}; orgs: {sorted(a for a in allowed if a)}); give "
                               "--namespace your user or an organisation you belong to") from None
            raise ZooError(_hub_error(f"creating {probe_repo}", err)) from None

    def verify_local(self, models: list[metadata.LocalModel], chosen: dict[str, list[int]]) -> None:
        from tqdm.auto import tqdm

        from vitzoo_hf.checkpoints import verify_checkpoint

        todo = [(m, e) for m in models for e in chosen[m.name]]
        for m, e in tqdm(todo, desc="verify zoo", unit="ckpt", disable=not self.progress, leave=False):
            verify_checkpoint(m.checkpoints[e])

    # ---- plan --------------------------------------------------------------------------------------------------

    def load_zoo(self) -> None:
        self.models = metadata.scan(self.zoo_dir)
        self.zoo = metadata.zoo_name(self.models)
        incomplete = [m.name for m in self.models if not m.complete]
        if incomplete:
            raise ZooError(f"{len(incomplete)} model(s) of {self.zoo_dir} are not fully trained (e.g. "
                           f"{incomplete[0]}); finish them with `vitzoo generate BLUEPRINT --out {self.zoo_dir}` "
                           "before publishing")
        self.by_name = {m.name: m for m in self.models}
        self.chosen = {m.name: self.selection.choose(list(m.checkpoints), m.final_epoch) for m in self.models}
        self.meta_repo = f"{self.namespace}/{metadata.metadata_repo_name(self.zoo)}"
        self.rows = {r["name"]: r for r in metadata.table(
            "models", (metadata.model_row(m, self.namespace) for m in self.models))}

    def card(self, m: metadata.LocalModel) -> str:
        from vitzoo_hf.cards import render_model_card

        row = self.rows[m.name]
        children = sorted(r["repo_id"] for r in self.rows.values() if r["parent"] == m.name)
        siblings = sum(1 for r in self.rows.values() if m.parent and r["parent"] == m.parent) - (1 if m.parent
                                                                                                  else 0)
        parent_ds = self.rows[m.parent]["dataset"] if m.parent in self.rows else None
        return render_model_card(self.zoo, row, m.record, m.results, children, siblings, len(self.models),
                                 self.meta_repo, parent_dataset=parent_ds)

    # ---- one model repo ----------------------------------------------------------------------------------------

    def _tree(self, repo_id: str, revision: str, repo_type: str = "model") -> dict[str, Any]:
        from huggingface_hub.hf_api import RepoFile as HubFile

        return {e.path: e for e in self.api.list_repo_tree(repo_id, revision=revision, recursive=True,
                                                            repo_type=repo_type) if isinstance(e, HubFile)}

    def _refs(self, repo_id: str, repo_type: str = "model", create: bool = True) -> dict[str, str] | None:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = self.api.list_repo_refs(repo_id, repo_type=repo_type)
        except RepositoryNotFoundError:
            if not create:
                return None
            self.api.create_repo(repo_id, repo_type=repo_type, private=self.private, exist_ok=True)
            refs = self.api.list_repo_refs(repo_id, repo_type=repo_type)
        return {b.name: b.target_commit for b in refs.branches}

    def _commit(self, repo_id: str, branch: str, files: list[RepoFile], parent: str, message: str,
                repo_type: str = "model", ops: list[Any] | None = None) -> str:
        """One atomic commit of `files` on `branch`, only if the branch is still at `parent` (else :class:`_Raced`:
        a request of a killed run, or another publisher, moved it; the caller plans again)."""
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            info = self.api.create_commit(repo_id, ops if ops is not None else [f.operation() for f in files],
                                          commit_message=message, revision=branch, parent_commit=parent,
                                          repo_type=repo_type)
        except RevisionNotFoundError:
            raise _Raced(f"{repo_id}@{branch} disappeared") from None
        except Exception as err:
            if _status(err) == 412:
                raise _Raced(f"{repo_id}@{branch} moved") from None
            raise
        with self._lock:
            self.report.commits += 1
            self.report.files_committed += len(files)
        self.detail(f"commit {repo_id}@{branch} {info.oid[:10]} ({len(files)} files)")
        return info.oid

    def _branch(self, repo_id: str, branch: str, sha: str, files: dict[str, RepoFile]) -> str:
        """Create `branch` at `sha`; return the commit it points at. A branch that exists already (a killed run's
        request completed after we read the refs) is success if it holds `files`, else :class:`_Raced` (the plan
        that follows repairs it with a commit)."""
        try:
            self.api.create_branch(repo_id, branch=branch, revision=sha, exist_ok=False)
        except Exception as err:
            if _status(err) != 409:
                raise
            head = (self._refs(repo_id, create=False) or {}).get(branch)
            if head is None or (head != sha and diff(files, self._tree(repo_id, head))):
                raise _Raced(f"{repo_id}@{branch} appeared with other content") from None
            self.detail(f"branch {repo_id}@{branch} exists already at {head[:10]} with the right files")
            return head
        with self._lock:
            self.report.branches_created += 1
        self.detail(f"branch {repo_id}@{branch} -> {sha[:10]}")
        return sha

    def _delete_branch(self, repo_id: str, branch: str) -> None:
        """Delete a branch of ours; one already gone is fine."""
        try:
            self.api.delete_branch(repo_id, branch=branch)
        except Exception as err:
            if _status(err) != 404:
                raise

    def _preupload(self, repo_id: str, files: list[RepoFile]) -> None:
        """Upload every LFS object a repo's commits will need in one batch, so each commit then only refers to
        them (the commits themselves build fresh operations: their no-op detection is per target branch)."""
        big = {f.sha256: f for f in files if f.path.endswith(".safetensors")}
        if not big:
            return
        self.api.preupload_lfs_files(repo_id, [f.operation() for f in big.values()], revision="main")
        with self._lock:
            self.report.bytes_preuploaded += sum(f.size for f in big.values())

    def _prepared_operations(self, repo_id: str, root: str, commits: list[list[RepoFile]]) -> list[list[Any]]:
        """The operations of every commit to come in a fresh repo, preuploaded together at its initial commit
        `root`: one request learns every file's upload mode and one LFS batch uploads every object, so each commit
        then costs a single request. (At `root` no path exists, so huggingface_hub's no-op pruning, which compares
        with the preupload revision, prunes nothing: we computed the changes per target branch ourselves.)"""
        ops = [[f.operation() for f in files] for files in commits]
        flat = [op for commit in ops for op in commit]
        if flat:
            self.api.preupload_lfs_files(repo_id, flat, revision=root, free_memory=False)
            lfs = {op.upload_info.sha256.hex(): op.upload_info.size for op in flat
                   if getattr(op, "_upload_mode", None) == "lfs"}
            with self._lock:
                self.report.bytes_preuploaded += sum(lfs.values())
        return ops

    def publish_model(self, m: metadata.LocalModel) -> dict[int, str]:
        """Bring one model repo in line with the local model; return {epoch: commit sha} of its branches.

        Every step is safe to repeat and to meet the effects of a killed run: commits name their parent (a branch
        moved under us means plan again), an existing branch with the right files is success, leftover scratch
        branches are deleted."""
        repo = f"{self.namespace}/{m.name}"
        epochs, final = self.chosen[m.name], m.final_epoch
        card = self.card(m)
        desired = {e: checkpoint_files(m, e, card) for e in epochs}
        refs = self._refs(repo, create=not self.verify_only)
        if refs is None:
            self.report.problems.append(f"{repo}: repository missing on the Hub")
            return {}
        # Plan: compare every existing branch (and main) with the local files.
        steps: list[tuple[str, int, list[str]]] = []
        for e in epochs:
            b = metadata.branch_name(e)
            if b not in refs:
                steps.append(("create", e, []))
                if self.verify_only:
                    self.report.problems.append(f"{repo}: branch {b} missing on the Hub")
                continue
            changed = diff(desired[e], self._tree(repo, refs[b]))
            if changed:
                steps.append(("update", e, [p for p, _ in changed]))
                for path, why in changed:
                    msg = f"{repo}@{b}: {path}: {why}"
                    with self._lock:
                        (self.report.problems if self.verify_only else self.report.repaired).append(msg)
                    if not self.verify_only:
                        self.log(f"repairing {msg}")
        main_state = {p: e for p, e in self._tree(repo, refs["main"]).items()}
        if self.verify_only:
            for path, why in diff(desired[final], main_state):
                self.report.problems.append(f"{repo}@main: {path}: {why}")
            return {e: refs[metadata.branch_name(e)] for e in epochs if metadata.branch_name(e) in refs}
        main_files = {p: _RemoteLike.of(f) for p, f in main_state.items()}
        # New epochs are committed onto a walking branch, then branched off its complete commit. That is `main`,
        # unless main already holds the final epoch (epochs added later): then a scratch branch, so main never
        # goes back. The commits are planned in full first, so their uploads can go in one batch.
        main_done = not diff(desired[final], main_files)
        walker = self.scratch if main_done and any(kind == "create" for kind, _, _ in steps) else "main"
        walker_files = dict(main_files)
        commits: list[tuple[str, int, list[RepoFile]]] = []
        for kind, e, paths in steps:
            if kind == "update":
                commits.append((kind, e, [desired[e][p] for p in paths]))
            else:
                changed = [desired[e][p] for p, _ in diff(desired[e], walker_files)]
                walker_files.update({f.path: _RemoteLike.from_file(f) for f in changed})
                commits.append((kind, e, changed))
        end_main = walker_files if walker == "main" else main_files
        commits.append(("final", final, [desired[final][p] for p, _ in diff(desired[final], end_main)]))
        if set(main_state) <= {".gitattributes"} and not any(kind == "update" for kind, _, _ in commits):
            ops: list[list[Any] | None] = list(self._prepared_operations(repo, refs["main"],
                                                                          [files for _, _, files in commits]))
        else:  # resuming or repairing: the commits check for no-ops against their own branch
            self._preupload(repo, [f for _, _, files in commits for f in files])
            ops = [None] * len(commits)
        leftovers = [b for b in refs if b.startswith(SCRATCH_PREFIX)]  # left by a killed run
        for name in leftovers:
            self._delete_branch(repo, name)
        if walker != "main":
            self.api.create_branch(repo, branch=walker, revision=refs["main"])
        touched: dict[str, int] = {}
        walker_sha = refs["main"]
        for (kind, e, files), commit_ops in zip(commits, ops, strict=True):
            b = metadata.branch_name(e)
            msg = f"{m.name}: epoch {e} ({b})"
            if kind == "update":
                refs[b] = self._commit(repo, b, files, refs[b], f"Update {msg}", ops=commit_ops)
            elif kind == "create":  # commit the epoch (atomic), then branch off that complete commit
                if files:
                    walker_sha = self._commit(repo, walker, files, walker_sha, f"Publish {msg}", ops=commit_ops)
                refs[b] = self._branch(repo, b, walker_sha, desired[e])
            else:
                if walker == "main":
                    refs["main"] = walker_sha
                else:
                    self._delete_branch(repo, walker)
                if files:
                    refs["main"] = self._commit(repo, "main", files, refs["main"],
                                                f"Publish {m.name}: final epoch {final}", ops=commit_ops)
                    touched["main"] = final
                continue
            touched[b] = e
        # Verify every branch we touched against the local files (LFS sha256 / git blob ids from the tree API).
        for b, e in touched.items():
            bad = diff(desired[e], self._tree(repo, refs[b]))
            if bad:
                path, why = bad[0]
                raise ZooError(f"verification failed after upload: {repo}@{b}: {path}: {why}; rerun the same "
                               "command to repair it")
        if walker != "main" or leftovers:  # a killed run's late create_branch of its scratch may land meanwhile
            for name in [b for b in self._refs(repo, create=False) or {} if b.startswith(SCRATCH_PREFIX)]:
                self._delete_branch(repo, name)
        return {e: refs[metadata.branch_name(e)] for e in epochs}

    # ---- metadata dataset and collection -----------------------------------------------------------------------

    def start_metadata(self) -> None:
        """Build the metadata tables in a background thread while the repos upload: loading the validation sets
        and reading every checkpoint's weights for its statistics is the slow, Hub-independent part (tens of
        seconds for the mini zoo); only the checkpoints' commit column waits for the Hub (`metadata_files`)."""
        import threading

        self._stats: dict[tuple[Path, Path | None], dict[str, Any]] = {}
        self._prepared: dict[str, Any] = {}

        def statistics(weights: Path, parent: Path | None) -> dict[str, Any]:
            key = (weights, parent)
            if key not in self._stats:
                self._stats[key] = metadata.checkpoint_statistics(weights, parent)
            return self._stats[key]

        def build() -> None:
            try:
                missing: list[str] = []
                self._prepared["tables"] = metadata.build_tables(
                    self.models, self.namespace, epochs=lambda m: self.chosen[m.name], with_labels=True,
                    missing_labels=missing, statistics=statistics)
                self._prepared["missing"] = missing
            except BaseException as err:  # re-raised in metadata_files, in the main thread
                self._prepared["error"] = err

        self._statistics = statistics
        self._builder = threading.Thread(target=build, name="metadata-tables", daemon=True)
        self._builder.start()

    def metadata_files(self, commits: dict[tuple[str, int], str], collection_url: str) -> dict[str, RepoFile]:
        from vitzoo_hf.cards import render_dataset_card

        if not hasattr(self, "_builder"):
            self.start_metadata()
        self._builder.join()
        if "error" in self._prepared:
            raise self._prepared["error"]
        tables = dict(self._prepared["tables"])
        # The one Hub-dependent column: every checkpoint's commit (the statistics are computed already).
        tables["checkpoints"] = metadata.build_tables(self.models, self.namespace,
                                                      epochs=lambda m: self.chosen[m.name], commits=commits,
                                                      with_labels=False, statistics=self._statistics)["checkpoints"]
        for key in self._prepared.pop("missing", []):
            self.log(f"warning: validation labels of {key} unavailable (its data set cannot be loaded here); the "
                     "labels config will lack them")
        files = {}
        for config, table in tables.items():
            buf = io.BytesIO()
            table.to_parquet(buf)
            path = f"{config}/train-00000-of-00001.parquet"
            files[path] = _bytes_file(path, buf.getvalue())
        datasets = sorted({m.record["factors"]["dataset"] for m in self.models})
        card = render_dataset_card(self.zoo, self.namespace, self.meta_repo, tables, collection_url, datasets)
        files["README.md"] = _bytes_file("README.md", card.encode())
        return files

    def publish_metadata(self, commits: dict[tuple[str, int], str], collection_url: str) -> None:
        files = self.metadata_files(commits, collection_url)
        refs = self._refs(self.meta_repo, "dataset", create=not self.verify_only)
        if refs is None:
            self.report.problems.append(f"{self.meta_repo}: metadata dataset missing on the Hub")
            return
        changed = diff(files, self._tree(self.meta_repo, refs["main"], "dataset"))
        if self.verify_only:
            self.report.problems += [f"{self.meta_repo}: {p}: {why} (metadata out of date)" for p, why in changed]
            return
        if changed:
            self._commit(self.meta_repo, "main", [files[p] for p, _ in changed], refs["main"],
                         f"Publish the metadata of the {self.zoo} zoo", "dataset")
            refs = self._refs(self.meta_repo, "dataset")
            bad = diff(files, self._tree(self.meta_repo, refs["main"], "dataset"))
            if bad:
                raise ZooError(f"verification failed after upload: {self.meta_repo}@main: {bad[0][0]}: {bad[0][1]}")

    def collection(self) -> str:
        """The zoo's collection (created once), holding the metadata dataset and every model repo."""
        title = f"{self.zoo} model zoo"
        if self.verify_only:
            found = [c for c in self.api.list_collections(owner=self.namespace, limit=1000) if c.title == title]
            if not found:
                self.report.problems.append(f"collection {title!r} missing in {self.namespace}")
            return found[0].slug if found else ""
        desc = f"ViT model zoo '{self.zoo}': {len(self.models)} models, a branch per epoch; metadata: {self.meta_repo}"
        # The metadata repo is filled after the collection is made; it must exist to be an item (when the namespace
        # is the user's own, check_namespace did not need to create it).
        if not self.api.repo_exists(self.meta_repo, repo_type="dataset"):  # creations are rate-limited on the Hub
            self.api.create_repo(self.meta_repo, repo_type="dataset", private=self.private, exist_ok=True)
        col = self.api.create_collection(title, namespace=self.namespace, description=desc[:150],
                                         private=self.private, exists_ok=True)
        present = {(i.item_type, i.item_id) for i in self.api.get_collection(col.slug).items}
        wanted = [("dataset", self.meta_repo)] + [("model", f"{self.namespace}/{m.name}") for m in self.models]
        for item_type, item_id in wanted:
            if (item_type, item_id) not in present:
                self.api.add_collection_item(col.slug, item_id, item_type, exists_ok=True)
        return col.slug

    # ---- the whole run -----------------------------------------------------------------------------------------

    def run(self) -> Report:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.check_namespace_format()
        self.load_zoo()
        who = self.check_token()
        self.verify_local(self.models, self.chosen)
        if not self.verify_only:
            self.check_namespace(who, self.meta_repo)
        self.start_metadata()
        commits: dict[tuple[str, int], str] = {}
        bar = tqdm(total=len(self.models), desc=f"{'verify' if self.verify_only else 'publish'} {self.zoo}",
                   unit="repo", disable=not self.progress)
        # A few repos at once: each step waits on the Hub (its disk syncs, the network), not on our CPU.
        with ThreadPoolExecutor(min(self.jobs, len(self.models)) or 1, thread_name_prefix="publish") as pool:
            futures = {pool.submit(with_retries, f"publishing {self.namespace}/{m.name}",
                                   lambda m=m: self.publish_model(m), self.log): m for m in self.models}
            try:
                for future in as_completed(futures):
                    m = futures[future]
                    commits.update({(m.name, e): sha for e, sha in future.result().items()})
                    self.report.repos += 1
                    bar.set_postfix_str(m.name[-40:], refresh=False)
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        bar.close()
        slug = with_retries("creating the collection", self.collection, self.log)
        self.report.collection = slug
        self.report.metadata_repo = self.meta_repo
        collection_url = f"/collections/{slug}" if slug else "/collections"
        with_retries(f"publishing {self.meta_repo}", lambda: self.publish_metadata(commits, collection_url),
                     self.log)
        self.report.seconds = time.perf_counter() - t0
        return self.report


class _RemoteLike:
    """The bits of a Hub tree entry that `diff` reads, for the state of `main` we just committed."""

    def __init__(self, blob_id: str | None, lfs_sha256: str | None) -> None:
        self.blob_id = blob_id
        self.lfs = type("Lfs", (), {"sha256": lfs_sha256})() if lfs_sha256 else None

    @classmethod
    def of(cls, entry: Any) -> _RemoteLike:
        return cls(entry.blob_id, entry.lfs.sha256 if entry.lfs is not None else None)

    @classmethod
    def from_file(cls, f: RepoFile) -> _RemoteLike:
        """What we just committed is exactly the local file (verified at the end against the real tree)."""
        return cls(None, f.sha256)


# --------------------------------------------------------------------------------------------------------------
# Entry points


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Our bar counts repos; the libraries' per-file upload and Parquet bars would bury it."""
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_was_off, ds_was_on = are_progress_bars_disabled(), datasets.is_progress_bar_enabled()
    disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if ds_was_on:
            datasets.enable_progress_bars()


def publish(zoo_dir: str | Path, namespace: str, *, endpoint: str | None = None, epochs: str = "all",
            private: bool = False, verify_only: bool = False, progress: bool = True, verbose: bool = False,
            log: Callable[[str], None] | None = None, jobs: int = JOBS) -> Report:
    """Publish (or with `verify_only`, check) a zoo folder under `namespace`, `jobs` repos at once; see the module
    docstring."""
    import os

    from vitzoo_hf.hub import configure_clients

    target = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    with configure_clients(target), _quiet_libraries():  # Xet off for a local hub (plain LFS), on for the Hub
        publisher = Publisher(zoo_dir, namespace, epochs=epochs, private=private, verify_only=verify_only,
                              progress=progress, verbose=verbose, log=log, jobs=jobs)
        report = publisher.run()
    if verify_only and report.problems:
        shown = "; ".join(report.problems[:3])
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise ZooError(f"verification found {len(report.problems)} difference(s) between the Hub and "
                       f"{zoo_dir}: {shown}{more}; run `vitzoo publish` without --verify to repair")
    return report


def run(args: argparse.Namespace) -> None:
    report = publish(args.zoo_dir, args.namespace, endpoint=args.endpoint, epochs=args.epochs,
                     private=args.private, verify_only=args.verify, progress=not args.no_progress,
                     verbose=args.verbose)
    if args.verify:
        print(f"verified {report.repos} model repos and {report.metadata_repo}: the Hub matches {args.zoo_dir}")
    else:
        print(f"published {report.summary()}")
