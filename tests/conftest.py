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


@pytest.fixture(scope="session")
def published_smoke(smoke_all, tmp_path_factory):
    """The smoke zoo published once (`--epochs all`) under `zoo-org` to a local hub that lives for the session.
    The clients are pointed at it only inside tests that ask for `pubhub`."""
    import secrets
    from types import SimpleNamespace

    from vitzoo_hf.hub import HubServer, configure_clients
    from vitzoo_hf.publish import publish

    bp, zoo_dir = smoke_all
    token = secrets.token_urlsafe(16)
    server = HubServer(tmp_path_factory.mktemp("pubhub"), [token], port=0).start()
    try:
        with configure_clients(server.endpoint, token, local=True):
            report = publish(zoo_dir, "zoo-org", endpoint=server.endpoint, epochs="all", progress=False)
        yield SimpleNamespace(bp=bp, zoo_dir=zoo_dir, endpoint=server.endpoint, token=token, report=report,
                              namespace="zoo-org", meta="zoo-org/smoke-metadata")
    finally:
        server.close()


@pytest.fixture
def pubhub(published_smoke):
    """`published_smoke` with huggingface_hub / datasets / transformers pointed at its hub."""
    from vitzoo_hf.hub import configure_clients

    with configure_clients(published_smoke.endpoint, published_smoke.token, local=True):
        yield published_smoke
