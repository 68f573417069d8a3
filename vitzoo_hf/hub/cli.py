"""``vitzoo hub serve``: run the local Hub-compatible server in the foreground."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from vitzoo_hf.errors import ZooError

TOKENS_ENV = "VITZOO_HUB_TOKENS"


def add_hub_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hub serve`` on the main CLI's subparsers; the handler is ``args.func``."""
    hub = subparsers.add_parser("hub", help="local Hugging Face Hub-compatible server")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    serve = hub_sub.add_parser(
        "serve", help="serve a Hub-compatible API from a directory",
        description="Serve a Hub-compatible API (huggingface_hub, datasets and transformers work against it "
                    "through HF_ENDPOINT) from a directory that survives restarts.")
    serve.add_argument("--root", required=True, help="storage directory (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8470, help="port (default: 8470; 0 picks a free one)")
    serve.add_argument("--token", action="append", default=[],
                       help="write token (repeatable). Discouraged: argv is visible to every user in `ps`; use "
                            f"--token-file or ${TOKENS_ENV} (comma-separated) instead. One is generated and printed "
                            "if none is given.")
    serve.add_argument("--token-file", action="append", default=[], metavar="PATH",
                       help="read write tokens from PATH, one per line (repeatable; '#' starts a comment)")
    serve.add_argument("--user", default="vitzoo", help="user name reported to clients (default: vitzoo)")
    serve.add_argument("--org", action="append", default=None,
                       help="an organisation the user belongs to (repeatable); when given, repos can only be "
                            "created under the user's name and these (default: any namespace)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address (anyone who can reach it can read public repos)")
    serve.add_argument("--verbose", action="store_true", help="log every request (paths only) to stderr")
    serve.set_defaults(func=run_serve)
    return hub


def run_serve(args: argparse.Namespace) -> None:
    from .errors import HubError
    from .names import RESERVED_NAMESPACES, check_repo_part
    from .server import HubServer, is_loopback

    if not (0 <= args.port <= 65535):
        raise ZooError(f"--port {args.port} is out of range: use 0-65535.")
    try:
        check_repo_part(args.user, "user name")
    except HubError:
        raise ZooError(f"--user {args.user!r} is not a valid Hub user name: use 1-96 characters from [A-Za-z0-9._-], "
                       "starting with a letter or digit (e.g. --user vitzoo).") from None
    if args.user.lower() in RESERVED_NAMESPACES:
        raise ZooError(f"--user {args.user!r} is reserved (its URLs route elsewhere): pick another name.")
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ZooError(f"--host {args.host} is not a loopback address: add --allow-remote to expose the hub "
                           "on the network, or use --host 127.0.0.1.")
        print(f"WARNING: serving on {args.host}: anyone who can reach this address can read public repos.",
              file=sys.stderr)
    tokens = [t.strip() for t in args.token if t.strip()]
    if tokens:
        print(f"WARNING: --token puts the token in the command line, which every user of this machine can read "
              f"(ps, /proc): prefer --token-file PATH or ${TOKENS_ENV}.", file=sys.stderr)
    tokens += [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]
    tokens += read_token_files(args.token_file)
    generated = None
    if not tokens:
        generated = secrets.token_urlsafe(24)
        tokens = [generated]
    try:
        server = HubServer(args.root, tokens, host=args.host, port=args.port, user=args.user,
                           allow_remote=args.allow_remote, verbose=args.verbose, orgs=args.org)
    except OSError as e:
        raise ZooError(f"Cannot serve on {args.host}:{args.port}: {e.strerror or e}. "
                       "Pick another --port (or stop the other server).") from None
    except RuntimeError as e:
        raise ZooError(f"{e}: stop that process or use another --root.") from None
    print(f"vitzoo hub serving {server.store.root} at {server.endpoint}", flush=True)
    print(f"  export HF_ENDPOINT={server.endpoint} HF_HUB_DISABLE_XET=1", flush=True)
    if generated:  # printed once, here only: it is never logged or stored
        print(f"  generated write token (export HF_TOKEN=...): {generated}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def read_token_files(paths: list[str]) -> list[str]:
    """Tokens from files, one per line; a missing or empty file is a clear error, never a silent default."""
    tokens = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                found = [line.split("#", 1)[0].strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise ZooError(f"--token-file {path}: cannot read it ({getattr(e, 'strerror', None) or e}); give a "
                           "readable file with one token per line.") from None
        found = [t for t in found if t]
        if not found:
            raise ZooError(f"--token-file {path} has no token: write one token per line.")
        tokens += found
    return tokens


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m vitzoo_hf.hub serve ...``) until the main CLI wires this in."""
    parser = argparse.ArgumentParser(prog="python -m vitzoo_hf.hub")
    add_hub_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hub", *(argv if argv is not None else sys.argv[1:])])
    try:
        args.func(args)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
