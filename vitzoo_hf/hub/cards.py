"""What the Hub derives from repo contents: card metadata, tags, and which files go through LFS.

Card YAML comes from anyone who can commit (and, through ``/api/validate-yaml``, from anyone at all), so it is
parsed by a bounded loader: at most :data:`MAX_METADATA_BYTES` of front matter, :data:`MAX_YAML_DEPTH` levels of
nesting, :data:`MAX_YAML_NODES` nodes and no aliases (the "billion laughs"), checked on libyaml's event stream
before anything is built. What it builds is made JSON-safe (:func:`json_safe`: dates become ISO strings), so a
card can never break the JSON answer it is part of.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import math
from typing import Any

import yaml

LFS_SIZE_THRESHOLD = 10 * 1000 * 1000
BASE_MODEL_RELATIONS = ("finetune", "adapter", "merge", "quantized")

MAX_METADATA_BYTES = 256 << 10
"""The YAML front matter of a card: model-index blocks of real cards are tens of KiB."""
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 50_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CardYAMLError(ValueError):
    """YAML the hub refuses to build: too large, too deep, too many nodes, aliases, or not parseable."""


def load_yaml_bounded(raw: str) -> Any:
    """``yaml.safe_load`` with fixed bounds on size, depth, node count and no aliases (see the module doc)."""
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise CardYAMLError(f"the metadata block is larger than {MAX_METADATA_BYTES // 1024} KiB")
    depth = nodes = 0
    try:
        for event in yaml.parse(raw, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise CardYAMLError("YAML aliases (*name) are not allowed in card metadata")
            if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                nodes += 1
                if nodes > MAX_YAML_NODES:
                    raise CardYAMLError(f"the metadata block has more than {MAX_YAML_NODES} YAML nodes")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise CardYAMLError(f"the metadata block nests deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except CardYAMLError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # constructors raise plain ValueError for e.g. ``date: 2024-99-99``
        raise CardYAMLError(str(e).replace("\n", " ")) from None


def json_safe(value: Any, depth: int = 0) -> Any:
    """The JSON form of what YAML can build: ISO strings for dates, lists for sets, base64 for binary, string
    keys, None for NaN and infinities (which are not JSON)."""
    if depth > MAX_YAML_DEPTH:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else json_safe_key(k)
            out[key] = json_safe(v, depth + 1)
        return out
    if isinstance(value, (set, frozenset)):
        return [json_safe(v, depth + 1) for v in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return str(value)


def json_safe_key(key: Any) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    safe = json_safe(key, MAX_YAML_DEPTH)
    return safe if isinstance(safe, str) else str(safe)


def split_front_matter(text: str) -> tuple[str | None, str]:
    """``(yaml_text, body)``; ``yaml_text`` is None when the card has no ``---`` block."""
    if not text.startswith("---"):
        return None, text
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return None, text
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1:])
    return None, text


def parse_card(text: str) -> dict[str, Any]:
    """The card's YAML metadata (``cardData``); invalid or missing YAML gives ``{}``."""
    raw, _ = split_front_matter(text)
    if raw is None:
        return {}
    try:
        data = load_yaml_bounded(raw)
    except CardYAMLError:
        return {}
    return json_safe(data) if isinstance(data, dict) else {}


def validate_card_yaml(text: str) -> list[str]:
    """Errors that make the Hub reject a README: YAML that does not parse or is not a mapping."""
    raw, _ = split_front_matter(text)
    if raw is None:
        return []
    try:
        data = load_yaml_bounded(raw)
    except CardYAMLError as e:
        return [f"Invalid YAML in the README metadata block: {e}"]
    if data is not None and not isinstance(data, dict):
        return ["The README metadata block must be a YAML mapping."]
    return []


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def derive_tags(card: dict[str, Any], paths: list[str]) -> list[str]:
    """Tags as the real Hub derives them, so ``filter=`` queries (e.g. ``base_model:ID``) behave the same."""
    tags: list[str] = []
    tags += _as_list(card.get("library_name"))
    tags += _as_list(card.get("tags"))
    if any(p.endswith(".safetensors") for p in paths):
        tags.append("safetensors")
    tags += _as_list(card.get("pipeline_tag"))
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))]
    relation = card.get("base_model_relation")
    relation = relation if relation in BASE_MODEL_RELATIONS else "finetune"
    for base in _as_list(card.get("base_model")):
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    tags += [f"license:{lic}" for lic in _as_list(card.get("license"))]
    return list(dict.fromkeys(tags))


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns marked ``filter=lfs`` in a ``.gitattributes`` file."""
    out = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            out.append(parts[0])
    return out


def matches_lfs(path: str, patterns: list[str]) -> bool:
    """gitattributes matching: a pattern without ``/`` matches the basename, otherwise the whole path."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        target = path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
            return True
    return False


def upload_mode(path: str, size: int, sample: bytes, patterns: list[str]) -> str:
    """``lfs`` for tracked patterns, big files and binary content; ``regular`` otherwise (preupload)."""
    if matches_lfs(path, patterns) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
        return "lfs"
    return "regular"
