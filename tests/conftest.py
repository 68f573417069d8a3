"""Test-session settings: isolated caches, no telemetry, quiet progress bars."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="vitzoo-tests-hf-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
