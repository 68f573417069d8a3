"""Point the real clients (huggingface_hub, datasets, transformers) at a Hub endpoint, and back.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT`` **once, at import time**, into module constants
(``huggingface_hub.constants.ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_URL_HOSTS``,
``utils._http._HUB_ORIGINS``, the module-level ``HfApi``/``HfFileSystem`` instances, ``datasets.config.HF_ENDPOINT``
and ``HUB_DATASETS_URL``, and transformers' shared ``HfApi`` once built). Setting the environment variable
after they were imported changes nothing. So :func:`configure_clients` sets the environment (for modules
imported later and for subprocesses) **and** patches those constants in every module already imported, and
:meth:`ClientSettings.restore` undoes both.

Xet is disabled only for the local server, which speaks plain LFS; against the real Hub it stays on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_DEFAULT_ENDPOINT = "https://huggingface.co"
_ENV_KEYS = ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_TOKEN")
_MISSING = object()


def _url_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _targets(endpoint: str, disable_xet: bool) -> list[tuple[str, str, Any]]:
    """``(module, attribute, value)`` for every import-time capture of the endpoint we know of."""
    from_env_hosts = {urlsplit(_DEFAULT_ENDPOINT).hostname, "hub-ci.huggingface.co", urlsplit(endpoint).hostname}
    return [
        ("huggingface_hub.constants", "ENDPOINT", endpoint),
        ("huggingface_hub.constants", "HUGGINGFACE_CO_URL_TEMPLATE",
         endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        ("huggingface_hub.constants", "HF_URL_HOSTS", frozenset(h for h in from_env_hosts if h)),
        ("huggingface_hub.constants", "HF_HUB_DISABLE_XET", disable_xet),
        ("huggingface_hub.utils._http", "_HUB_ORIGINS",
         frozenset(_url_origin(u) for u in (_DEFAULT_ENDPOINT, "https://hub-ci.huggingface.co", endpoint))),
        ("datasets.config", "HF_ENDPOINT", endpoint),
        ("datasets.config", "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
    ]


def _env_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", _DEFAULT_ENDPOINT).rstrip("/")


def _env_disable_xet() -> bool:
    return os.environ.get("HF_HUB_DISABLE_XET", "").upper() in ("1", "ON", "YES", "TRUE")


def _reset_client_instances(endpoint: str) -> None:
    """Module-level client objects copied the endpoint when they were built; repoint them."""
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    if hf_api is not None and hasattr(hf_api, "api"):
        hf_api.api.endpoint = endpoint
    hffs_mod = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs_mod is not None:
        fs = getattr(hffs_mod, "hffs", None)
        if fs is not None:
            fs.endpoint = endpoint
            fs._api.endpoint = endpoint
            fs.dircache.clear()
            fs._repo_and_revision_exists_cache.clear()
        # fsspec caches HfFileSystem instances (and their directory listings) across calls.
        hffs_mod.HfFileSystem.clear_instance_cache()
    tf_hub = sys.modules.get("transformers.utils.hub")
    shared = getattr(tf_hub, "_hf_api", None)  # transformers' lazily built shared HfApi
    if shared is not None:
        shared.endpoint = endpoint


@dataclass
class ClientSettings:
    """The settings :func:`configure_clients` replaced; call :meth:`restore` (or use as a context manager)."""

    endpoint: str
    _env: dict[str, str | None] = field(default_factory=dict)
    _attrs: dict[tuple[str, str], Any] = field(default_factory=dict)
    _restored: bool = False

    def restore(self) -> None:
        if self._restored:
            return
        self._restored = True
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # Modules imported while configured captured our endpoint; give them what the restored env implies.
        previous = _env_endpoint()
        for module, attr, value in _targets(previous, _env_disable_xet()):
            mod = sys.modules.get(module)
            if mod is not None:
                saved = self._attrs.get((module, attr), _MISSING)
                setattr(mod, attr, value if saved is _MISSING else saved)
        const = sys.modules.get("huggingface_hub.constants")
        _reset_client_instances(const.ENDPOINT if const is not None else previous)

    def __enter__(self) -> ClientSettings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def configure_clients(endpoint: str, token: str | None = None, *, local: bool | None = None) -> ClientSettings:
    """Point huggingface_hub, datasets and transformers at ``endpoint``, whether or not they are imported yet.

    ``token`` becomes ``HF_TOKEN``. ``local`` (default: endpoint is not ``*.huggingface.co``) disables Xet, which
    the local hub does not speak; for the real Hub Xet is left as it was.
    """
    endpoint = endpoint.rstrip("/")
    if local is None:
        host = urlsplit(endpoint).hostname or ""
        local = not (host == "huggingface.co" or host.endswith(".huggingface.co"))
    settings = ClientSettings(endpoint, _env={k: os.environ.get(k) for k in _ENV_KEYS})
    os.environ["HF_ENDPOINT"] = endpoint
    if local:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    if token is not None:
        os.environ["HF_TOKEN"] = token
    for module, attr, value in _targets(endpoint, True if local else _env_disable_xet()):
        mod = sys.modules.get(module)
        if mod is not None:
            settings._attrs[(module, attr)] = getattr(mod, attr, None)
            setattr(mod, attr, value)
    _reset_client_instances(endpoint)
    return settings


@dataclass
class LocalHub:
    """A running in-process hub with the clients pointed at it."""

    server: Any  # HubServer
    token: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def root(self) -> Path:
        return self.server.store.root


@contextlib.contextmanager
def local_hub(root: str | os.PathLike[str], *, token: str | None = None, host: str = "127.0.0.1",
              port: int = 0, user: str = "vitzoo", page_size: int = 1000,
              orgs: list[str] | None = None) -> Iterator[LocalHub]:
    """Serve ``root`` on a free port in a background thread and configure the clients for it.

    Inside the block ``HfApi()``, ``hf_hub_download``, ``datasets.load_dataset``/``push_to_hub`` and
    ``transformers`` ``from_pretrained``/``push_to_hub`` all talk to the local hub, with ``token`` (generated when
    not given) as ``HF_TOKEN``. ``orgs`` restricts writes to the user's and these namespaces (default: any).
    Previous settings are restored and the server stopped on exit.
    """
    from .server import HubServer

    token = token or secrets.token_urlsafe(24)
    server = HubServer(root, [token], host=host, port=port, user=user, page_size=page_size, orgs=orgs).start()
    try:
        with configure_clients(server.endpoint, token, local=True):
            yield LocalHub(server, token)
    finally:
        server.close()
