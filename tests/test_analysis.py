"""Population analysis: statistics and distances against scipy/torch on real checkpoints, agreement by hand,
the paper's tables on the smoke zoo, and the same tables from the metadata alone (no weights on disk)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file

from vitzoo_hf.analysis import checkpoint_statistics
from vitzoo_hf.analysis.agreement import agreement, agreement_matrix, group_agreement
from vitzoo_hf.analysis.distances import (
    between_cluster,
    l2_distance,
    l2_distance_files,
    pairwise_distances,
    pairwise_distances_arrays,
)
from vitzoo_hf.analysis.sketch import SKETCH_DIM, sketch, sketch_distance
from vitzoo_hf.analysis.weights import Moments, weight_statistics
from vitzoo_hf.cli import main

REL = 1e-6


def _weights(zoo_dir: Path) -> list[Path]:
    return sorted(zoo_dir.rglob("model.safetensors"))


def _backbone(path: Path) -> dict[str, np.ndarray]:
    """Reference reader, independent of vitzoo_hf.analysis: every tensor but the classifier head, `vit.` dropped."""
    return {k.removeprefix("vit."): v for k, v in load_numpy(str(path)).items()
            if not k.removeprefix("vit.").startswith("classifier.")}


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)


# ------------------------------------------------------------------------------------------------------------
# Weight statistics


def test_statistics_equal_scipy_on_every_smoke_checkpoint(smoke_all):
    _, zoo_dir = smoke_all
    paths = _weights(zoo_dir)
    assert len(paths) == 30  # 10 models x epochs 0..2
    for path in paths:
        x = np.concatenate([v.reshape(-1) for _, v in sorted(_backbone(path).items())]).astype(np.float64)
        ours = weight_statistics(path)
        assert ours["count"] == x.size
        assert _close(ours["skewness"], float(scipy.stats.skew(x))), path
        assert _close(ours["kurtosis"], float(scipy.stats.kurtosis(x))), path
        assert _close(ours["l2_norm"], float(np.linalg.norm(x))), path
    # scope "all" includes the classifier head; per-tensor statistics are each tensor's own
    path = next(p for p in paths if "ft-mlp" in str(p))
    every = np.concatenate([v.reshape(-1) for _, v in sorted(load_numpy(str(path)).items())]).astype(np.float64)
    assert _close(weight_statistics(path, scope="all")["kurtosis"], float(scipy.stats.kurtosis(every)))
    per = weight_statistics(path, per_tensor=True)
    w = _backbone(path)["layers.0.mlp.fc1.weight"].astype(np.float64).reshape(-1)
    assert _close(per["layers.0.mlp.fc1.weight"]["skewness"], float(scipy.stats.skew(w)))


def test_moments_have_no_cancellation_for_offset_tensors():
    """LayerNorm-like tensors: mean 1, spread 1e-4; merged with zero-mean ones (exact pairwise merge)."""
    rng = np.random.default_rng(0)
    parts = [(1.0 + 1e-4 * rng.standard_normal(5000)).astype(np.float32),
             (0.02 * rng.gamma(2.0, 1.0, 20000) - 3.0).astype(np.float32),
             np.full(7, 1.0, dtype=np.float32)]
    for chosen in (parts[:1], parts):
        x = np.concatenate(chosen).astype(np.float64)
        m = sum((Moments.of(p) for p in chosen), Moments())
        assert _close(m.skewness, float(scipy.stats.skew(x)))
        assert _close(m.kurtosis, float(scipy.stats.kurtosis(x)))
        assert _close(m.l2_norm, float(np.linalg.norm(x)))
    assert math.isnan(Moments.of(np.ones(10, np.float32)).kurtosis)  # zero variance: undefined, like scipy
    diverged = parts[1].copy()
    diverged[3] = np.nan  # a diverged checkpoint: NaN statistics, not garbage from fast-math assumptions
    assert all(math.isnan(v) for v in Moments.of(diverged).summary().values() if isinstance(v, float))


# ------------------------------------------------------------------------------------------------------------
# Distances


def _state(rng, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {"a.weight": scale * torch.randn(300, 70, generator=rng), "a.bias": scale * torch.randn(70, generator=rng),
            "b.weight": scale * torch.randn(5, 4, 3, generator=rng), "cls": scale * torch.randn(1, 1, 9, generator=rng)}


def _torch_distance(a: dict, b: dict) -> float:
    flat = [torch.cat([t[k].double().reshape(-1) for k in sorted(t)]) for t in (a, b)]
    return float(torch.linalg.norm(flat[0] - flat[1]))


def test_distances_equal_torch_including_near_identical_pairs(tmp_path):
    rng = torch.Generator().manual_seed(0)
    far = _state(rng)  # the centring reference below: far from both near-identical models
    a = _state(rng)
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in a.values()))
    noise = _state(rng)
    noise_norm = math.sqrt(sum(float(v.double().square().sum()) for v in noise.values()))
    b = {k: a[k] + (1e-4 * norm / noise_norm) * noise[k] for k in a}  # differs by ~1e-4 of the norm
    c = {k: v * 1.5 for k, v in a.items()}
    models = [far, a, b, c]
    truth = np.array([[_torch_distance(x, y) for y in models] for x in models])
    assert 0.5e-4 < truth[1, 2] / norm < 2e-4

    assert _close(l2_distance(a, b), truth[1, 2])
    paths = []
    for i, m in enumerate(models):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({f"vit.{k}": v.contiguous() for k, v in m.items()} | {"classifier.weight": torch.randn(3, 3)},
                  str(paths[-1]))
    assert _close(l2_distance_files(paths[1], paths[2]), truth[1, 2])
    # blocks that cut tensors mid-way (block=1000 elements), centred on a model far from the close pair
    for got in (pairwise_distances(paths, block=1000), pairwise_distances(paths, reference=3),
                pairwise_distances_arrays(models, block=333)):
        off = ~np.eye(4, dtype=bool)
        np.testing.assert_allclose(got[off], truth[off], rtol=REL)
        assert np.all(np.diag(got) == 0) and np.array_equal(got, got.T)


def test_distance_to_parent_on_smoke_checkpoints(smoke_all):
    _, zoo_dir = smoke_all
    parent = zoo_dir / "pretraining" / "smoke-vith32l2p8-16-sup-s42-b32"
    child = next((zoo_dir / "finetuning" / parent.name).glob("*-ft-linear-adamw-*"))
    parent_w = parent / "checkpoint_000002" / "model.safetensors"
    start = checkpoint_statistics(child / "checkpoint_000000" / "model.safetensors", parent_w)
    assert start["l2_to_parent"] == 0.0  # a fine-tune starts from its parent's final backbone
    final = checkpoint_statistics(child / "checkpoint_000002" / "model.safetensors", parent_w)
    a, b = _backbone(child / "checkpoint_000002" / "model.safetensors"), _backbone(parent_w)
    ref = float(torch.linalg.norm(torch.cat([torch.from_numpy(a[k] - b[k]).double().reshape(-1) for k in sorted(a)])))
    assert ref > 0 and _close(final["l2_to_parent"], ref)
    assert checkpoint_statistics(parent_w)["l2_to_parent"] is None
    assert len(final["sketch"]) == SKETCH_DIM


def test_cluster_summaries():
    m = np.array([[0, 1, 5, 6], [1, 0, 7, 8], [5, 7, 0, 2], [6, 8, 2, 0]], dtype=float)
    out = between_cluster(m, ["sup", "sup", "con", "con"])
    assert out["sup"].tolist() == [1] and out["con"].tolist() == [2]
    assert sorted(out["all"].tolist()) == [1, 2, 5, 6, 7, 8]


# ------------------------------------------------------------------------------------------------------------
# Agreement


def test_agreement_hand_made():
    p = [[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 0]]
    assert agreement(p[0], p[1]) == 0.75 and agreement(p[0], p[2]) == 0.5 and agreement(p[1], p[2]) == 0.75
    np.testing.assert_array_equal(agreement_matrix(p), [[1, .75, .5], [.75, 1, .75], [.5, .75, 1]])
    s = group_agreement(p)
    assert s.n == 3 and _close(s.mean, 2 / 3) and _close(s.std, float(np.std([.75, .5, .75])))
    assert group_agreement(p[:1]).n == 0


# ------------------------------------------------------------------------------------------------------------
# Sketch


def test_sketch_is_linear_deterministic_and_estimates_distances():
    rng = torch.Generator().manual_seed(1)
    a = _state(rng)
    d = _state(rng, 1e-3)
    b = {k: a[k] + d[k] for k in a}
    sa, sb, sd = sketch(a), sketch(b), sketch(d)
    assert sa.dtype == np.float32 and sa.shape == (SKETCH_DIM,)
    # linear: sketch(a) - sketch(b) = sketch(a - b), up to float32 rounding of the stored buckets
    np.testing.assert_allclose(sb.astype(np.float64) - sa, sd, atol=4 * np.abs(sa).max() * 2**-24)
    true = _torch_distance(a, b)
    assert abs(sketch_distance(sa, sb) / true - 1) < 0.15  # ~2 % std; 15 % is > 6 sigma
    # pinned values: the same bits on every machine and library version (change SKETCH_VERSION to change them)
    pinned = sketch({"w": np.arange(1, 2049, dtype=np.float32) / 2048})
    assert [float(pinned[i]) for i in (0, 1, 1023)] == PINNED
    assert np.array_equal(sketch(reversed(list(a.items()))), sa)  # order of tensors does not matter


PINNED = [0.49853515625, -0.39453125, 0.48779296875]


# ------------------------------------------------------------------------------------------------------------
# Tables from a zoo


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    return _table_text(path.read_text())


def _table_text(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_analyze_smoke_zoo_writes_the_papers_tables(smoke_all, tmp_path):
    _, zoo_dir = smoke_all
    out = tmp_path / "analysis"
    assert main(["analyze", str(zoo_dir), "--out", str(out), "--threshold", "0"]) == 0
    head, rows = _table(out / "table1.md")
    assert head == ["λP", "Accuracy", "Skewness", "Kurtosis", "L2 norm", "L2 within cluster", "L2 between cluster"]
    assert [r[0] for r in rows] == ["Supervised", "Contrastive", "All"]
    head, rows = _table(out / "table2.md")
    assert head == ["factor", "value", "Accuracy", "GGap", "Agreement", "Skewness", "Kurtosis", "L2 norm",
                    "L2 distance"]
    assert [tuple(r[:2]) for r in rows] == [("Pre-training", "Sup."), ("Pre-training", "Contr."), ("Head", "MLP"),
                                             ("Head", "Linear"), ("Optimizer", "AdamW"), ("Optimizer", "SGD"),
                                             ("LR", "1e-3"), ("All", "–")]
    head, rows = _table(out / "table6.md")
    assert head == ["Pre-training", "Optimizer", "Head", "LR", "Min", "Max", "µ (σ)", "Gen gap", "Agreement"]
    assert [tuple(r[:4]) for r in rows] == [(t, o, h, "1e-3") for t in ("Contrastive", "Supervised")
                                             for o in ("AdamW", "SGD") for h in ("Linear", "MLP")]
    for key, task, seed in (("table7", "sup", "42"), ("table8", "con", "7")):
        head, rows = _table(out / f"{key}.md")
        assert head[:3] == ["Seed", "Batch size", "Validation accuracy"] and [r[:2] for r in rows] == [[seed, "32"]]
        result = (zoo_dir / "pretraining" / f"smoke-vith32l2p8-16-{task}-s{seed}-b32" / "result.json")
        final = [json.loads(x) for x in result.read_text().splitlines()][-1]
        assert rows[0][2] == f"{100 * final['validation_accuracy']:.2f}"
    with open(out / "checkpoint_stats.csv") as f:
        stats = list(csv.DictReader(f))
    assert list(stats[0])[:6] == ["model", "epoch", "skewness", "kurtosis", "l2_norm", "l2_to_parent"]
    assert len(stats) == 30
    fine0 = [r for r in stats if "-ft-" in r["model"] and r["epoch"] == "0"]
    assert len(fine0) == 8 and all(float(r["l2_to_parent"]) == 0.0 for r in fine0)
    for name in ("table1.csv", "table2.tex", "table6.tex", "distance_matrix.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("accuracy_over_epochs.png", "weight_statistics.png", "distance_matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_paper_zoo_gets_the_papers_values_beside_ours(smoke_all):
    from vitzoo_hf.analysis.population import collect
    from vitzoo_hf.analysis.tables import table1, table6, table7
    from vitzoo_hf.zoo import Zoo

    pop = collect(Zoo.from_dir(smoke_all[1]), progress=False)
    assert "(paper)" not in table1(pop).to_markdown()
    pop.name = "paper"  # the `paper` blueprint's zoo: rows are matched to the paper's by their keys
    t = table1(pop)
    assert t.header()[:4] == ["λP", "Accuracy", "Accuracy (paper)", "Skewness"]
    assert t.header()[-2:] == ["L2 between cluster", "L2 between cluster (paper)"]
    _, rows = _table_text(t.to_markdown())
    assert rows[0][2] == "68.39±4.85" and rows[0][-1] == "2689±425" and rows[2][-1] == "2753±476"
    _, rows = _table_text(table6(pop).to_markdown())
    assert rows[0][:4] == ["Contrastive", "AdamW", "Linear", "1e-3"] and rows[0][5] == "76.37"
    _, rows = _table_text(table7(pop).to_markdown())
    assert rows == [["42", "32", rows[0][2], "–", rows[0][4], "–"]]  # the paper has no (42, 32) run


def test_tables_from_metadata_alone_equal_tables_from_weights(smoke_all, tmp_path):
    """Statistics and sketches in the `checkpoints` table, every weights file deleted: the same tables (Table 1's
    between-cluster distance then comes from the sketches, within their error)."""
    from vitzoo_hf.analysis.population import collect
    from vitzoo_hf.analysis.tables import all_tables
    from vitzoo_hf.zoo import Zoo

    _, zoo_dir = smoke_all
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    zoo = Zoo.from_dir(copy)
    if any(r["sketch"] is None for r in zoo.checkpoints):  # publish time: the metadata gets the statistics
        parents = {r["name"]: r["parent"] for r in zoo.models}
        zoo.checkpoints = zoo.checkpoints.map(lambda r: checkpoint_statistics(
            zoo.weights_path(r["name"], r["epoch"]),
            zoo.weights_path(parents[r["name"]]) if parents[r["name"]] else None))
    from_weights = all_tables(collect(Zoo.from_dir(zoo_dir), distances="exact", progress=False), threshold=0.0)
    for path in _weights(copy):
        path.unlink()
    metadata_only = collect(zoo, distances="sketch", progress=False)
    assert metadata_only.filled == 0
    from_metadata = all_tables(metadata_only, threshold=0.0)
    for ours, ref in zip(from_metadata, from_weights, strict=True):
        if ours.key != "table1":
            assert ours.to_csv() == ref.to_csv(), ours.key
            continue
        assert [r[:-1] for r in ours.rows] == [r[:-1] for r in ref.rows]
        est, exact = ours.rows[-1][-1].mean, ref.rows[-1][-1].mean  # between cluster, all: one pair here
        assert abs(est / exact - 1) < 0.15


def test_analyze_refuses_bad_input(smoke_all, tmp_path, capsys):
    _, zoo_dir = smoke_all
    assert main(["analyze", str(zoo_dir), "--out", str(tmp_path / "a"), "--threshold", "65"]) == 2
    assert "did you mean 0.65" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "neither a zoo folder nor a Hub repo id" in capsys.readouterr().err
    assert main(["analyze", str(zoo_dir), "--out", str(tmp_path / "c"), "--update-metadata"]) == 2
    assert "--update-metadata needs a published zoo" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------------------
# Published zoos (a local hub)


def _outputs(folder: Path) -> dict[str, str]:
    names = [f"table{i}.{ext}" for i in (1, 2, 6, 7, 8) for ext in ("md", "csv", "tex")]
    return {n: (folder / n).read_text() for n in [*names, "checkpoint_stats.csv", "distance_matrix.csv"]}


def test_folder_and_published_zoo_give_identical_tables(pubhub, tmp_path):
    local, hub, sketched = tmp_path / "local", tmp_path / "hub", tmp_path / "sketched"
    assert main(["analyze", str(pubhub.zoo_dir), "--out", str(local), "--threshold", "0"]) == 0
    assert main(["analyze", pubhub.meta, "--out", str(hub), "--threshold", "0", "--distances", "exact"]) == 0
    assert _outputs(hub) == _outputs(local)
    # from the metadata alone (the default for a Hub source): only distances between final checkpoints differ
    assert main(["analyze", pubhub.meta, "--out", str(sketched), "--threshold", "0"]) == 0
    ours, ref = _outputs(sketched), _outputs(local)
    for name in ref:
        if name.startswith("table1") or name == "distance_matrix.csv":
            continue
        assert ours[name] == ref[name], name
    exact = np.loadtxt(local / "distance_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    est = np.loadtxt(sketched / "distance_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    off = ~np.eye(10, dtype=bool)
    assert np.all(np.abs(est[off] / exact[off] - 1) < 0.2)


def test_update_metadata_fills_a_zoo_published_without_statistics(pubhub, tmp_path):
    """A metadata repo published before statistics existed: `--update-metadata` computes them from the weights
    and pushes them in one commit; the next analysis needs no weights."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from vitzoo_hf.analysis.run import CHECKPOINTS_PARQUET
    from vitzoo_hf.zoo import Zoo

    api = HfApi()
    repo = "analysis-org/smoke-nostats-metadata"  # its own namespace: the publish tests count zoo-org's commits
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    ops = []
    for path in api.list_repo_files(pubhub.meta, repo_type="dataset"):
        data = Path(api.hf_hub_download(pubhub.meta, path, repo_type="dataset")).read_bytes()
        if path == CHECKPOINTS_PARQUET:
            table = pq.read_table(io.BytesIO(data))
            for col in ("skewness", "kurtosis", "l2_norm", "l2_to_parent", "sketch"):
                table = table.set_column(table.schema.get_field_index(col), col,
                                         pa.nulls(table.num_rows, type=table.schema.field(col).type))
            buf = io.BytesIO()
            pq.write_table(table, buf)
            data = buf.getvalue()
        ops.append(CommitOperationAdd(path, data))
    api.create_commit(repo, repo_type="dataset", operations=ops, commit_message="metadata without statistics")
    assert all(r["sketch"] is None for r in Zoo.from_hub(repo).checkpoints)
    before = len(api.list_repo_commits(repo, repo_type="dataset"))
    assert main(["analyze", repo, "--out", str(tmp_path / "a"), "--threshold", "0", "--update-metadata"]) == 0
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == before + 1
    filled = Zoo.from_hub(repo).checkpoints
    reference = Zoo.from_hub(pubhub.meta).checkpoints if pubhub_has_statistics(pubhub) else None
    assert all(r["sketch"] is not None and r["l2_norm"] is not None for r in filled)
    if reference is not None:
        assert filled["l2_norm"] == reference["l2_norm"] and filled["sketch"] == reference["sketch"]
    assert main(["analyze", repo, "--out", str(tmp_path / "b"), "--threshold", "0", "--update-metadata"]) == 0
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == before + 1  # nothing left to update
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def pubhub_has_statistics(pubhub) -> bool:
    from vitzoo_hf.zoo import Zoo

    return all(r["sketch"] is not None for r in Zoo.from_hub(pubhub.meta).checkpoints)
