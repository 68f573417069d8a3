"""`vitzoo demo --blueprint smoke`: the whole system end to end, a second run that changes nothing, and Ctrl-C
during generation and during publishing followed by the same command giving the same report."""

import hashlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitzoo_hf.cli import main

DEMO = [sys.executable, "-m", "vitzoo_hf.cli", "demo", "--blueprint", "smoke", "--no-progress", "--jobs", "1"]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "smoke demo"  # a space in the path, as users have
    assert main(["demo", "--blueprint", "smoke", "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    return out


def test_report_has_every_section_and_figure(demo):
    md = (demo / "report" / "index.md").read_text()
    for title in ("Population analysis", "Lineage recovery", "Weight averaging", "Every model on the Hub"):
        assert f"## {title}" in md
    assert "(this stage wrote nothing)" not in md
    assert md.count("`vitzoo-demo/smoke-") >= 10  # every model's repo id
    html = (demo / "report" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 4 and all((demo / "report" / src).is_file() for src in images)
    assert "<table>" in html


def test_second_run_skips_everything_and_changes_nothing(demo):
    report, hub = _tree_digest(demo / "report"), _tree_digest(demo / "hub")
    report.pop("timings.json")
    t = time.perf_counter()
    assert main(["demo", "--blueprint", "smoke", "--out", str(demo), "--no-progress", "--jobs", "1"]) == 0
    assert time.perf_counter() - t < 60  # seconds, not a rerun (a full smoke demo takes minutes)
    again = _tree_digest(demo / "report")
    again.pop("timings.json")
    assert again == report
    assert {k: v for k, v in _tree_digest(demo / "hub").items() if not k.startswith("tmp")} == \
        {k: v for k, v in hub.items() if not k.startswith("tmp")}


def _interrupt_when(cmd: list[str], ready, timeout: float = 900) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while proc.poll() is None and not ready() and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert "Traceback" not in out, out[-3000:]
    return proc.returncode


def test_ctrl_c_in_generation_and_publishing_then_rerun_gives_the_same_report(demo, tmp_path):
    out = tmp_path / "interrupted"
    cmd = [*DEMO, "--out", str(out)]
    # Ctrl-C once the first fine-tune has a checkpoint (generation under way) ...
    rc = _interrupt_when(cmd, lambda: any((out / "zoo" / "finetuning").glob("*/*/checkpoint_000000")))
    assert rc != 0
    # ... then, in the rerun, once publishing has started.
    repos = out / "hub" / "repos"
    rc = _interrupt_when(cmd, lambda: repos.is_dir() and any(repos.rglob("*")))
    assert rc != 0
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report" / "index.md").read_text().replace(str(out), "DIR") == \
        (demo / "report" / "index.md").read_text().replace(str(demo), "DIR")


def test_bad_out_is_refused_without_touching_it(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    assert main(["demo", "--blueprint", "smoke", "--out", str(precious)]) == 2
    assert "not a vitzoo demo" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_closing_hints_work_as_printed(demo, tmp_path):
    """The commands the demo prints at the end run as printed for this demo's paths (only the port is swapped for
    a free one, as other servers may hold the default; `vitzoo` is the installed console script)."""
    import os
    import shutil
    import socket

    from vitzoo_hf.demo import HINT_PORT, Demo, next_steps

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve, load, train, analyze = (c.replace(str(HINT_PORT), str(port))
                                   for c in next_steps(Demo(demo, "smoke"), "vitzoo-demo/smoke-metadata"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shutil.which("vitzoo") is None:  # a source checkout: the console script pip would install
        (bin_dir / "vitzoo").write_text(f"#!/bin/sh\nexec {sys.executable} -m vitzoo_hf.cli \"$@\"\n")
        (bin_dir / "vitzoo").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(["bash", "-c", f"exec {serve}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env)
    try:
        assert "serving" in server.stdout.readline()
        outputs = []
        for cmd in (load, train, analyze):
            proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=tmp_path)
            assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
            outputs.append(proc.stdout)
        assert "SGD models" in outputs[0]
    finally:
        server.terminate()
        server.wait(30)
    assert (demo / "analysis" / "findings.md").is_file()
