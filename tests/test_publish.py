"""Publishing the smoke zoo to a local hub: repos, branches, cards, metadata dataset, collection; idempotence,
resuming after a kill, verification of altered files, transformers loading without vitzoo_hf, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand
from vitzoo_hf.cli import main
from vitzoo_hf.errors import ZooError
from vitzoo_hf.hub import local_hub
from vitzoo_hf.publish import publish, retry_delay, with_retries

REPO_ROOT = Path(__file__).resolve().parents[1]
BRANCHES = {"main", "epoch-000", "epoch-001", "epoch-002"}


def hub_state(api: HfApi, namespace: str) -> dict[str, dict]:
    """Every repo of a namespace: branch -> {path: LFS sha256 or git blob id}, plus all commit ids."""
    state = {}
    repos = [("model", m.id) for m in api.list_models(author=namespace)]
    repos += [("dataset", d.id) for d in api.list_datasets(author=namespace)]
    for repo_type, repo in repos:
        branches, commits = {}, set()
        for b in api.list_repo_refs(repo, repo_type=repo_type).branches:
            tree = api.list_repo_tree(repo, revision=b.name, recursive=True, repo_type=repo_type)
            branches[b.name] = {e.path: (e.lfs.sha256 if e.lfs else e.blob_id) for e in tree if hasattr(e, "blob_id")}
            commits |= {c.commit_id for c in api.list_repo_commits(repo, revision=b.name, repo_type=repo_type)}
        state[repo] = {"branches": branches, "commits": commits}
    return state


def test_repos_branches_cards_and_collection(pubhub):
    api = HfApi()
    specs = {s.name: s for s in expand(pubhub.bp)}
    models = {m.id: m for m in api.list_models(author="zoo-org")}
    assert set(models) == {f"zoo-org/{n}" for n in specs}
    for name, s in specs.items():
        repo = f"zoo-org/{name}"
        refs = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
        assert set(refs) == BRANCHES
        assert refs["main"] == refs["epoch-002"]  # main holds the final epoch
        files = set(api.list_repo_files(repo, revision="epoch-000"))
        assert {"model.safetensors", "config.json", "modeling.py", "README.md", "training/config.json",
                "training/result.json", "training/manifest.json"} <= files
        assert layout.TRAINING_STATE_FILE not in files
        contrastive = s.task == "contrastive" and s.stage == "pretraining"
        assert ("projection_head.safetensors" in files) == contrastive
        assert (layout.PREDICTIONS_FILE in files) == (not contrastive)
        card = ModelCard.load(api.hf_hub_download(repo, "README.md", revision="epoch-001")).data.to_dict()
        assert card["library_name"] == "transformers" and card["license"] == "cc-by-4.0"
        assert card["pipeline_tag"] == ("image-feature-extraction" if contrastive else "image-classification")
        assert card.get("base_model") == (f"zoo-org/{s.parent}" if s.parent else None)
        assert f"optimizer:{s.optimizer}" in card["tags"] and "zoo:smoke" in card["tags"]
        acc = card["model-index"][0]["results"][0]["metrics"][0]["value"]
        final = [json.loads(x) for x in (Path(pubhub.zoo_dir) / (f"pretraining/{name}" if not s.parent else
                 f"finetuning/{s.parent}/{name}") / layout.RESULT_FILE).read_text().splitlines()][-1]
        assert acc == pytest.approx(final["validation_accuracy"])
        # the training record rides along, and the published manifest covers exactly the published files
        manifest = json.loads(Path(api.hf_hub_download(repo, "training/manifest.json", revision="epoch-002"))
                              .read_text())
        assert manifest["epoch"] == 2 and layout.TRAINING_STATE_FILE not in manifest["sha256"]
    from datasets import get_dataset_config_names

    assert sorted(get_dataset_config_names(pubhub.meta)) == ["checkpoints", "labels", "models", "predictions"]
    slug = pubhub.report.collection
    items = {(i.item_type, i.item_id) for i in api.get_collection(slug).items}
    assert items == {("dataset", pubhub.meta)} | {("model", f"zoo-org/{n}") for n in specs}


def test_metadata_dataset_filters_and_lineage(pubhub):
    from datasets import load_dataset

    specs = expand(pubhub.bp)
    models = load_dataset(pubhub.meta, "models", split="train")
    sgd = models.filter(lambda r: r["optimizer"] == "sgd" and r["head"] == "mlp")
    assert sorted(sgd["name"]) == sorted(s.name for s in specs if s.optimizer == "sgd" and s.head == "mlp")
    ckpts = load_dataset(pubhub.meta, "checkpoints", split="train")
    assert len(ckpts) == 3 * len(specs)
    api = HfApi()
    for row in ckpts.select(range(6)):  # every row's commit is that branch's head, its sha256 the LFS oid
        refs = {b.name: b.target_commit for b in api.list_repo_refs(row["repo_id"]).branches}
        assert row["commit"] == refs[row["branch"]]
        info = api.get_paths_info(row["repo_id"], ["model.safetensors"], revision=row["commit"])[0]
        assert info.lfs.sha256 == row["weights_sha256"] and info.size == row["weights_size"]
    # the Hub's model tree: base_model filter lists exactly a backbone's children
    for backbone in (s for s in specs if s.stage == "pretraining"):
        found = {m.id for m in api.list_models(author="zoo-org", filter=f"base_model:zoo-org/{backbone.name}")}
        assert found == {f"zoo-org/{s.name}" for s in specs if s.parent == backbone.name}


def test_transformers_loads_a_branch_without_vitzoo_hf(pubhub, tmp_path):
    """A user with only transformers: remote code from the branch, same logits as the local checkpoint."""
    from vitzoo_hf.modeling import ZooViTForImageClassification

    spec = next(s for s in expand(pubhub.bp) if s.stage == "finetuning" and s.head == "mlp")
    repo = f"zoo-org/{spec.name}"
    script = textwrap.dedent(f"""
        import sys, torch
        from safetensors.torch import save_file
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({repo!r}, revision="epoch-001",
                                                                trust_remote_code=True).eval()
        torch.manual_seed(0)
        x = torch.randn(3, 3, 16, 16)
        with torch.no_grad():
            save_file({{"logits": model(pixel_values=x).logits}}, sys.argv[1])
        import json, numpy as np
        from PIL import Image
        from transformers import pipeline
        image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8), dtype=np.uint8)).convert("RGB")
        classify = pipeline("image-classification", model={repo!r}, revision="epoch-001", trust_remote_code=True)
        print(json.dumps(classify(image, top_k=3)))
        assert not any(m == "vitzoo_hf" or m.startswith("vitzoo_hf.") for m in sys.modules), "vitzoo_hf imported"
        print(type(model).__name__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HOME"] = str(tmp_path / "fresh_hf_home")  # download everything anew
    out = tmp_path / "logits.safetensors"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top3, name = proc.stdout.strip().splitlines()[-2:]
    assert name == "ZooViTForImageClassification"
    from safetensors.torch import load_file

    ckpt = Path(pubhub.zoo_dir) / "finetuning" / str(spec.parent) / spec.name / "checkpoint_000001"
    local = ZooViTForImageClassification.from_pretrained(ckpt).eval()
    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = local(pixel_values=x).logits
    torch.testing.assert_close(load_file(str(out))["logits"], expected, rtol=0, atol=0)
    # the pipeline (image processor + id2label from the branch) agrees with the local checkpoint
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8), dtype=np.uint8)).convert("RGB")
    with torch.no_grad():
        probs = local(**AutoImageProcessor.from_pretrained(ckpt)(image, return_tensors="pt")).logits.softmax(-1)[0]
    scores, ids = probs.topk(3)
    got = json.loads(top3)
    assert [g["label"] for g in got] == [local.config.id2label[int(i)] for i in ids]
    assert [g["score"] for g in got] == pytest.approx(scores.tolist(), abs=1e-5)


def test_second_publish_makes_no_commit(pubhub):
    api = HfApi()
    before = hub_state(api, "zoo-org")
    report = publish(pubhub.zoo_dir, "zoo-org", endpoint=pubhub.endpoint, progress=False)
    assert (report.commits, report.branches_created, report.files_committed, report.repaired) == (0, 0, 0, [])
    assert hub_state(api, "zoo-org") == before
    assert sum(len(s["commits"]) for s in before.values()) == pubhub.report.commits + len(before)  # + initial ones


def _publish_cli(zoo_dir: Path, endpoint: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "vitzoo_hf.cli", "publish", str(zoo_dir), "--namespace",
                             "zoo-org", "--endpoint", endpoint, "--no-progress", "--verbose", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_killed_publish_resumes_to_the_same_state_and_altered_files_are_reported(pubhub, tmp_path):
    reference = hub_state(HfApi(), "zoo-org")
    with local_hub(tmp_path / "hub2", token=pubhub.token) as hub:
        api = HfApi()
        proc = _publish_cli(pubhub.zoo_dir, hub.endpoint)
        commits = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            commits += line.startswith("commit ")
            if commits == 11:  # mid-zoo: some repos done, one in the middle of its epochs
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(60)
        assert proc.returncode == -signal.SIGKILL
        partial = hub_state(api, "zoo-org")
        # every branch that exists is complete: it equals the reference's branch
        for repo, st in partial.items():
            for branch, files in st["branches"].items():
                if branch != "main":
                    assert files == reference[repo]["branches"][branch], (repo, branch)
        report = publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, progress=False)
        assert report.repaired == []
        resumed = hub_state(api, "zoo-org")
        meta = pubhub.meta
        assert set(resumed) == set(reference)
        assert {r: s["branches"] for r, s in resumed.items() if r != meta} == \
            {r: s["branches"] for r, s in reference.items() if r != meta}
        # the metadata repo: same files; only commit shas (checkpoints.commit) and the collection slug (card) are
        # specific to a hub
        same = {"models", "predictions", "labels", ".gitattributes"}
        for ours, theirs in ((resumed[meta]["branches"], reference[meta]["branches"]),):
            assert set(ours) == set(theirs) == {"main"} and set(ours["main"]) == set(theirs["main"])
            assert {p: d for p, d in ours["main"].items() if p.split("/")[0] in same} == \
                {p: d for p, d in theirs["main"].items() if p.split("/")[0] in same}
        # no duplicate commits: as many per repo as an uninterrupted publish
        assert {r: len(s["commits"]) for r, s in resumed.items()} == \
            {r: len(s["commits"]) for r, s in reference.items()}

        # someone overwrites a checkpoint on the Hub: --verify names repo, branch and file; publish repairs it
        spec = next(s for s in expand(pubhub.bp) if s.stage == "finetuning")
        repo = f"zoo-org/{spec.name}"
        api.upload_file(path_or_fileobj=b"not the weights", path_in_repo="model.safetensors", repo_id=repo,
                        revision="epoch-001")
        with pytest.raises(ZooError, match=f"{repo}@epoch-001: model.safetensors: Hub sha256 .* != local"):
            publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, verify_only=True, progress=False)
        report = publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, progress=False)
        assert len(report.repaired) == 1 and f"{repo}@epoch-001: model.safetensors" in report.repaired[0]
        assert report.commits == 2  # the repair, and the metadata's `commit` of that branch
        publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, verify_only=True, progress=False)


def test_adding_epochs_later_never_moves_main_back(pubhub, tmp_path):
    reference = hub_state(HfApi(), "zoo-org")
    with local_hub(tmp_path / "hub3", token=pubhub.token) as hub:
        api = HfApi()
        publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, epochs="final", progress=False)
        repos = [m.id for m in api.list_models(author="zoo-org")]
        heads = {r: {b.name: b.target_commit for b in api.list_repo_refs(r).branches} for r in repos}
        assert all(set(h) == {"main", "epoch-002"} and h["main"] == h["epoch-002"] for h in heads.values())
        report = publish(pubhub.zoo_dir, "zoo-org", endpoint=hub.endpoint, epochs="every:1", progress=False)
        assert report.branches_created == 2 * len(repos) and report.repaired == []
        after = hub_state(api, "zoo-org")
        for r in repos:  # main and epoch-002 untouched; the new branches equal an all-epochs publish's
            assert {b.name: b.target_commit for b in api.list_repo_refs(r).branches if b.name in heads[r]} == heads[r]
            assert after[r]["branches"] == reference[r]["branches"]


def test_publishing_never_writes_into_the_zoo(pubhub):
    before = {p: p.stat().st_mtime_ns for p in Path(pubhub.zoo_dir).rglob("*")}
    publish(pubhub.zoo_dir, "zoo-org", endpoint=pubhub.endpoint, progress=False)
    assert {p: p.stat().st_mtime_ns for p in Path(pubhub.zoo_dir).rglob("*")} == before


def test_bad_input_stops_before_uploading(published_smoke, tmp_path, capsys, monkeypatch):
    zoo = published_smoke.zoo_dir
    corrupted = tmp_path / "corrupted"
    shutil.copytree(zoo, corrupted)
    weights = next(corrupted.glob("finetuning/*/*/checkpoint_000001/model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with local_hub(tmp_path / "hub", orgs=["zoo-org"]) as hub:
        cases = {
            "rejected the token": (["publish", str(zoo), "--namespace", "zoo-org"], "wrong-token"),
            "namespace 'nobody' is unknown": (["publish", str(zoo), "--namespace", "nobody"], hub.token),
            "cannot reach the Hub": (["publish", str(zoo), "--namespace", "zoo-org", "--endpoint",
                                      "http://127.0.0.1:9"], hub.token),
            "is corrupted": (["publish", str(corrupted), "--namespace", "zoo-org"], hub.token),
            "is not a zoo folder": (["publish", str(tmp_path), "--namespace", "zoo-org"], hub.token),
            "--epochs 'every:0' is not valid": (["publish", str(zoo), "--namespace", "zoo-org", "--epochs",
                                                 "every:0"], hub.token),
        }
        for expected, (argv, token) in cases.items():
            monkeypatch.setenv("HF_TOKEN", token)
            capsys.readouterr()
            assert main([*argv, "--no-progress"]) == 2, expected
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and expected in err, err
            assert "Traceback" not in err and token not in err
        monkeypatch.setenv("HF_TOKEN", hub.token)
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        assert list(api.list_models()) == [] and list(api.list_datasets()) == []
        assert list(api.list_collections(owner="zoo-org")) == []


def test_retries_honour_retry_after_and_back_off():
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def failure(status: int, headers: dict[str, str] | None = None) -> HfHubHTTPError:
        request = httpx2.Request("POST", "http://hub/api/models/o/r/commit/main")
        return HfHubHTTPError("boom", response=httpx2.Response(status, headers=headers or {}, request=request))

    assert retry_delay(failure(429, {"Retry-After": "7"}), 0) == 7.0
    assert [retry_delay(failure(503), a) for a in range(3)] == [1.0, 2.0, 4.0]
    assert retry_delay(failure(404), 0) is None
    assert retry_delay(httpx2.ConnectError("refused"), 1) == 2.0
    errors = [failure(429, {"Retry-After": "3"}), failure(502)]
    slept: list[float] = []

    def flaky():
        if errors:
            raise errors.pop(0)
        return "done"

    assert with_retries("step", flaky, log=lambda _: None, sleep=slept.append) == "done"
    assert slept == [3.0, 2.0]
    with pytest.raises(ZooError, match="step failed.*rerun the same command"):
        with_retries("step", lambda: (_ for _ in ()).throw(failure(500)), log=lambda _: None,
                     sleep=lambda _: None, attempts=2)


def test_publish_survives_a_hub_restart(published_smoke, tmp_path, monkeypatch):
    """The hub is killed (SIGKILL) mid-publish and restarted on the same port a moment later: the publisher's
    retries carry on and the run ends complete and verified."""
    import socket
    import threading
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VITZOO_HUB_TOKENS": published_smoke.token,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(tmp_path / "hub"),
                                 "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=env)
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        return proc

    hubs = [serve()]
    log: list[str] = []

    def restart_later() -> None:
        time.sleep(1.5)  # meanwhile the publisher meets refused connections
        hubs.append(serve())

    def on_log(line: str) -> None:
        log.append(line)
        if sum(x.startswith("commit ") for x in log) == 7 and len(hubs) == 1 and hubs[0].poll() is None:
            hubs[0].kill()
            hubs[0].wait(10)
            threading.Thread(target=restart_later, daemon=True).start()

    monkeypatch.setenv("HF_TOKEN", published_smoke.token)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        report = publish(published_smoke.zoo_dir, "zoo-org", endpoint=endpoint, progress=False, verbose=True,
                         log=on_log)
        assert len(hubs) == 2 and any("retrying in" in x for x in log), log
        assert report.repos == len(expand(published_smoke.bp))
        check = publish(published_smoke.zoo_dir, "zoo-org", endpoint=endpoint, verify_only=True, progress=False)
        assert check.problems == []
    finally:
        for h in hubs:
            h.kill()
