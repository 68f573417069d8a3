"""Test-session settings: isolated caches, no telemetry, quiet progress bars."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="vitzoo-tests-hf-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_all(tmp_path_factory):
    """The whole smoke zoo (both tasks), generated once per session through the CLI."""
    from vitzoo_hf.blueprint import load_blueprint
    from vitzoo_hf.cli import main

    out = tmp_path_factory.mktemp("smoke-zoo")
    assert main(["generate", "smoke", "--out", str(out)]) == 0
    return load_blueprint("smoke"), out
