"""A small Hugging Face Hub-compatible server, the embedded default Hub of vitzoo_hf.

The real clients talk to it unchanged through ``HF_ENDPOINT``; :func:`local_hub` runs one in-process and points
the clients at it, :func:`configure_clients` points them at any endpoint, and ``vitzoo hub serve`` runs one
standalone.
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
