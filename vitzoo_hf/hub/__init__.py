"""A small Hugging Face Hub-compatible server, the embedded default Hub of vitzoo_hf.

The real clients talk to it unchanged through ``HF_ENDPOINT``; :func:`local_hub` runs one in-process and points
the clients at it, :func:`configure_clients` points them at any endpoint, and ``vitzoo hub serve`` runs one
standalone.

Rules a client can rely on (details in :mod:`.names`, :mod:`.storage` and :mod:`.api`):

* no upload path has a ``.git`` or ``.cache`` segment (``huggingface_hub``'s own rule), nor a look-alike that a
  case-insensitive or normalising file system folds into one; two paths equal after NFC cannot coexist; other
  names are byte-exact (``README.md`` and ``readme.md`` are two files);
* repo ids are unique case-insensitively (``Alice/pub`` cannot join ``alice/pub``), looked up exact-case;
* no request without a token costs more than a small, fixed amount of memory and CPU: the token is checked before
  any body is read, bodies are size-limited and JSON-only where JSON is expected, card YAML is parsed by a bounded
  loader, and every cache is bounded by bytes;
* the store is private (0700/0600) whatever the umask; a full disk is a 507, never a half-written object.
"""

from .client import ClientSettings, LocalHub, configure_clients, local_hub
from .server import HubServer


def serve(root: str, *, host: str = "127.0.0.1", port: int = 8470, tokens: list[str] | None = None,
          user: str = "vitzoo", allow_remote: bool = False) -> None:
    """Serve ``root`` in the foreground until interrupted (the library form of ``vitzoo hub serve``)."""
    if not tokens:
        raise ValueError("serve() needs at least one write token")
    server = HubServer(root, tokens, host=host, port=port, user=user, allow_remote=allow_remote)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


__all__ = ["ClientSettings", "HubServer", "LocalHub", "configure_clients", "local_hub", "serve"]
