"""What the Hub derives from repo contents: card metadata, tags, and which files go through LFS."""

from __future__ import annotations

import fnmatch
from typing import Any

import yaml

LFS_SIZE_THRESHOLD = 10 * 1000 * 1000
BASE_MODEL_RELATIONS = ("finetune", "adapter", "merge", "quantized")


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
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def validate_card_yaml(text: str) -> list[str]:
    """Errors that make the Hub reject a README: YAML that does not parse or is not a mapping."""
    raw, _ = split_front_matter(text)
    if raw is None:
        return []
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        return [f"Invalid YAML in the README metadata block: {e}".replace("\n", " ")]
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
