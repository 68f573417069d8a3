"""The one exception type a CLI user sees as a one-line message instead of a traceback, and the wrapper that
turns it (and the few system errors a user can cause: bad paths, damaged files) into that line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class ZooError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it."""


def run_cli(prog: str, body: Callable[[], object]) -> int:
    """Run a command body; user errors become `prog: error: ...` on stderr (a line per problem) and exit code 2."""
    from safetensors import SafetensorError

    def fail(message: str) -> int:
        for line in message.splitlines() or [""]:  # several problems: one line each
            print(f"{prog}: error: {line}", file=sys.stderr)
        return 2

    try:
        code = body()
    except ZooError as err:
        return fail(str(err))
    except SafetensorError as err:
        return fail(f"a safetensors file is unreadable ({err}); delete it (or its checkpoint folder) and rerun")
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # an unwritable --out, a path that is a file, a full disk, ...
        where = f": {err.filename}" if err.filename else ""
        return fail(f"{err.strerror or err}{where}; check the path, its permissions and free space")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0  # a body may return its exit code
