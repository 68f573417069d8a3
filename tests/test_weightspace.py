"""Weight-space datasets on the real smoke zoo: representations, function-preserving augmentation (equal logits on
real checkpoints, and a non-symmetry that changes them), lineage splits, streaming from the local Hub."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitzoo_hf.errors import ZooError
from vitzoo_hf.symmetries import apply_permutation, random_permutation, vit_permutation_spec
from vitzoo_hf.weightspace import (
    PermutationAugment,
    WeightSpaceDataset,
    WeightSpaceStream,
    collate,
    folds,
    sample_rows,
    split,
)
from vitzoo_hf.weightspace import representations as reps
from vitzoo_hf.weightspace.dataset import load_state_dict
from vitzoo_hf.weightspace.splits import Split, group_of, roots
from vitzoo_hf.zoo import Zoo


@pytest.fixture(scope="module")
def zoo(smoke_all):
    return Zoo.from_dir(smoke_all[1])


def _classifier(zoo, head: str) -> str:
    return next(r["name"] for r in zoo.models if r["head"] == head and r["task"] == "supervised")


# ---- representations --------------------------------------------------------------------------------------------


def test_flat_round_trips_through_its_layer_index(zoo):
    sd = zoo.state_dict(_classifier(zoo, "mlp"))
    vec, index = reps.flatten(sd, "all")
    assert vec.numel() == sum(t.numel() for t in sd.values()) == index.size
    back = reps.unflatten(vec, index)
    assert set(back) == set(reps.canonical(sd)) and all(torch.equal(back[reps.normalise_key(k)], sd[k]) for k in sd)
    s = index["layers.1.mlp.fc1.weight"]  # canonical keys: no `vit.` prefix  # a slice is the tensor, in place
    assert torch.equal(vec[s.start:s.stop].view(s.shape), sd["vit.layers.1.mlp.fc1.weight"])
    backbone, bindex = reps.flatten(sd)  # default: backbone only, the part every checkpoint shares
    assert not any(k.startswith("classifier") for k in bindex.keys)
    assert backbone.numel() == sum(t.numel() for k, t in sd.items() if not k.startswith("classifier"))
    with pytest.raises(ZooError, match="selects no tensor"):
        reps.flatten(sd, "no-such-layer")


def test_tokens_hold_every_weight_once_in_fixed_width(zoo):
    sd = zoo.state_dict(_classifier(zoo, "linear"))
    for width in (7, 64):
        t = reps.tokenize(sd, width, "all")
        assert t.tokens.shape[1] == width and t.mask.shape == t.tokens.shape
        assert int(t.mask.sum()) == sum(v.numel() for v in sd.values())  # every value once, the rest padding
        assert float(t.tokens[~t.mask].abs().sum()) == 0.0
        assert torch.equal(t.index, torch.arange(len(t)))
        # layer ids increase through the sequence, positions restart at 0 in each module
        assert bool((t.layer[1:] >= t.layer[:-1]).all()) and len(t.modules) == int(t.layer.max()) + 1
        starts = torch.nonzero(torch.diff(t.layer, prepend=torch.tensor([-1]))).flatten()
        assert bool((t.position[starts] == 0).all())
    # a q_proj row is its weight row followed by its bias, cut into tokens
    t = reps.tokenize(sd, 64, "all")
    lid = t.modules.index("layers.0.attention.q_proj")
    first = t.tokens[t.layer == lid][:2].reshape(-1)[: sd["vit.layers.0.attention.q_proj.weight"].shape[1] + 1]
    expect = torch.cat([sd["vit.layers.0.attention.q_proj.weight"][0], sd["vit.layers.0.attention.q_proj.bias"][:1]])
    assert torch.equal(first, expect)


def test_stats_match_numpy_and_scipy(zoo):
    import numpy as np
    from scipy import stats as sps

    sd = zoo.state_dict(_classifier(zoo, "mlp"))
    x, names = reps.stats(sd)
    assert len(names) == x.numel() == 10 * sum(not k.startswith("classifier") for k in sd)
    key = "vit.layers.0.mlp.fc2.weight"
    got = dict(zip(reps.STATS, x[names.index(f"{reps.normalise_key(key)}:mean"):][:10].tolist(), strict=True))
    w = sd[key].double().numpy().ravel()
    expect = {"mean": w.mean(), "std": w.std(), "q0": w.min(), "q25": np.quantile(w, .25), "q50": np.median(w),
              "q75": np.quantile(w, .75), "q100": w.max(), "skewness": sps.skew(w), "kurtosis": sps.kurtosis(w),
              "l2_norm": np.linalg.norm(w)}
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    hx, _ = reps.head_stats(sd)
    assert torch.isfinite(hx).all()
    assert torch.isnan(reps.head_stats(zoo.state_dict(next(r["name"] for r in zoo.models if not r["parent"])))[0]).all()


# ---- augmentation -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(zoo):
    from vitzoo_hf.averaging.methods import evaluation_dataset

    ds = evaluation_dataset(zoo.record(_classifier(zoo, "mlp")), progress=False)
    return torch.stack([ds[i][0] for i in range(32)])


def _logits(model, sd, x):
    model.load_state_dict(sd)
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_augmentation_preserves_logits_of_real_checkpoints(zoo, images, head):
    name = _classifier(zoo, head)
    model = zoo.load_model(name)
    sd = zoo.state_dict(name)
    aug = PermutationAugment(seed=0)
    heads = model.config.num_attention_heads
    before = _logits(model, sd, images)
    views = [aug(sd, heads) for _ in range(3)]
    for view in views:
        assert sum(not torch.equal(view[k], sd[k]) for k in sd) >= len(sd) - 4  # almost every tensor moved
        after = _logits(model, view, images)
        assert (after - before).abs().max() <= 1e-5
    assert not torch.equal(views[0]["vit.layers.0.mlp.fc1.weight"], views[1]["vit.layers.0.mlp.fc1.weight"])
    # per kind alone too (heads as units, within-head, MLP head units, ...)
    for kind in ("res", "mlp", "heads", "within_head", "head_hidden"):
        view = PermutationAugment(kinds=(kind,), seed=1)(sd, heads)
        assert (_logits(model, view, images) - before).abs().max() <= 1e-5, kind
    assert torch.equal(PermutationAugment(seed=0)(sd, heads)["vit.layers.1.mlp.fc2.weight"],
                       views[0]["vit.layers.1.mlp.fc2.weight"])  # seeded: reproducible


def test_a_permutation_across_heads_changes_the_logits(zoo, images):
    """Negative control: Q/K rows permuted without respecting head boundaries is not a symmetry."""
    name = _classifier(zoo, "mlp")
    model = zoo.load_model(name)
    sd = zoo.state_dict(name)
    spec = vit_permutation_spec(sd, model.config.num_attention_heads)
    perms = spec.identity()
    d, dh = spec.sizes["qk.0"], spec.head_dim
    crossing = torch.roll(torch.arange(d), dh // 2)  # every head takes half its rows from the next head
    perms["qk.0"] = crossing
    broken = apply_permutation(spec, perms, sd)
    assert (_logits(model, broken, images) - _logits(model, sd, images)).abs().max() > 1e-3
    # and the same dataset path with a valid permutation stays equal
    ok = apply_permutation(spec, random_permutation(spec, 5), sd)
    assert (_logits(model, ok, images) - _logits(model, sd, images)).abs().max() <= 1e-5


def test_augmented_dataset_draws_a_new_view_per_access(zoo):
    ds = WeightSpaceDataset(zoo, "flat", target="accuracy", augment=PermutationAugment(seed=3))
    a, b = ds[5]["x"], ds[5]["x"]
    assert not torch.equal(a, b) and a.norm() == pytest.approx(b.norm().item(), rel=1e-5)
    plain = WeightSpaceDataset(zoo, "flat", target="accuracy")
    assert torch.equal(plain[5]["x"], plain[5]["x"])


# ---- datasets and targets -----------------------------------------------------------------------------------------


def test_targets_come_from_the_metadata(zoo):
    rows = sample_rows(zoo, where={"stage": "finetuning"})
    assert len(rows) == sum(1 for c in zoo.checkpoints if zoo.model(c["name"])["parent"])
    for r in rows:
        ck, m = zoo.checkpoint(r["name"], r["epoch"]), zoo.model(r["name"])
        assert r["accuracy"] == ck["validation_accuracy"] and r["final_accuracy"] == m["validation_accuracy"]
        assert r["ggap"] == pytest.approx(ck["train_accuracy"] - ck["validation_accuracy"])
        assert r["backbone"] == m["parent"]
    ds = WeightSpaceDataset(zoo, "stats", target="head", where=lambda r: r["stage"] == "finetuning", epochs="final")
    assert ds.classes == ["linear", "mlp"] and len(ds) == len(rows) // 3
    assert [ds.classes[int(ds[i]["y"])] for i in range(len(ds))] == [r["head"] for r in ds.rows]
    with pytest.raises(ZooError, match="unknown target"):
        WeightSpaceDataset(zoo, "stats", target="colour")
    with pytest.raises(ZooError, match="selects no checkpoint"):
        WeightSpaceDataset(zoo, "stats", where={"optimizer": "lion"})
    with pytest.raises(ZooError, match="not a column"):
        WeightSpaceDataset(zoo, "stats", where={"optimiser": "sgd"})


def test_tokens_batch_through_a_dataloader(zoo):
    ds = WeightSpaceDataset(zoo, "tokens", target="optimizer", where={"stage": "finetuning"})
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["x"].shape[0] == 4 and batch["x"].shape[2] == 64 and batch["y"].dtype == torch.int64
    assert not batch["padding"].any()
    short = {**ds[0], "x": ds[0]["x"][:10], "mask": ds[0]["mask"][:10], "layer": ds[0]["layer"][:10],
             "position": ds[0]["position"][:10], "index": ds[0]["index"][:10]}
    padded = collate([ds[1], short])
    assert padded["padding"][1, 10:].all() and not padded["padding"][1, :10].any()


# ---- splits -------------------------------------------------------------------------------------------------------


@st.composite
def forests(draw):
    """A random zoo lineage: backbones, children, grandchildren."""
    n_roots = draw(st.integers(2, 6))
    parents: dict[str, str | None] = {f"b{i}": None for i in range(n_roots)}
    for j in range(draw(st.integers(0, 25))):
        parents[f"m{j}"] = draw(st.sampled_from(sorted(parents)))
    return parents


@settings(max_examples=60, deadline=None)
@given(forests(), st.integers(0, 10_000), st.floats(0.05, 0.95))
def test_no_lineage_crosses_a_split_and_the_seed_fixes_it(parents, seed, fraction):
    rows = [{"name": n, "epoch": e} for n in parents for e in range(3)]  # three epochs of every run
    groups = group_of(rows, parents)
    s = split(groups, fraction, seed)
    assert s == split(groups, fraction, seed)  # same seed, same split
    train, test = s.indices(groups)
    assert train and test and len(train) + len(test) == len(rows)
    root = roots(parents)
    assert not {root[rows[i]["name"]] for i in train} & {root[rows[i]["name"]] for i in test}
    assert not {rows[i]["name"] for i in train} & {rows[i]["name"] for i in test}  # no run on both sides
    fs = folds(groups, seed=seed)
    tested = [g for f in fs for g in f.test]
    assert sorted(tested) == sorted(set(groups))  # every lineage tested exactly once
    for f in fs:
        assert not set(f.train) & set(f.test)


def test_split_is_recorded_and_seeds_differ(zoo, tmp_path):
    ds = WeightSpaceDataset(zoo, "stats", target="accuracy")
    groups = ds.groups()
    assert set(groups) == {r["name"] for r in zoo.models if not r["parent"]}
    a = split(groups, 0.5, seed=0)
    assert Split.load(a.save(tmp_path / "split.json")) == a
    assert {split(groups, 0.5, seed=s).test for s in range(10)} == {(g,) for g in set(groups)}
    runs = ds.groups("run")
    s = split(runs, 0.3, seed=2, level="run")
    train, test = s.indices(runs)
    assert not {ds.rows[i]["name"] for i in train} & {ds.rows[i]["name"] for i in test}
    with pytest.raises(ZooError, match="at least two"):
        split(["only"], 0.5)


# ---- streaming from the Hub ---------------------------------------------------------------------------------------


def test_stream_from_the_hub_writes_nothing_and_holds_one_checkpoint(pubhub, tmp_path):
    import gc
    import os
    import tracemalloc

    hub_zoo = Zoo.from_hub(pubhub.meta)
    local = Zoo.from_dir(pubhub.zoo_dir)
    cache = os.environ["HF_HOME"]

    def weight_files() -> int:
        return sum(f == "model.safetensors" for _, _, fs in os.walk(cache) for f in fs)

    before = weight_files()
    stream = WeightSpaceStream(hub_zoo, "flat", target="final_accuracy")
    sizes = [c["weights_size"] for c in hub_zoo.checkpoints]
    gc.collect()
    tracemalloc.start()
    seen, first = [], None
    for s in stream:
        seen.append((s["name"], s["epoch"], float(s["x"].norm())))
        if len(seen) == 3:  # the peak of the first three checkpoints (connection set-up included) ...
            first = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
    rest = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(seen) == len(hub_zoo.checkpoints)
    assert weight_files() == before  # nothing downloaded to disk
    # ... bounds the peak of the 27 after them: they add less than half of what keeping them would (2.6 MB)
    assert rest < first + 0.5 * sum(sizes[3:]), (first, rest)
    # the same tensors as the folder
    name, epoch, norm = seen[7]
    assert norm == pytest.approx(reps.flatten(local.state_dict(name, epoch))[0].norm().item(), rel=1e-6)
    # a datasets.IterableDataset over the same stream, split between two nodes
    from datasets.distributed import split_dataset_by_node

    hf = WeightSpaceStream(hub_zoo, "stats", target="optimizer", where={"stage": "finetuning"}).to_hf(num_shards=4)
    halves = [[(r["name"], r["epoch"]) for r in split_dataset_by_node(hf, rank=i, world_size=2)] for i in range(2)]
    assert not set(halves[0]) & set(halves[1])
    assert len(halves[0]) + len(halves[1]) == sum(1 for c in hub_zoo.checkpoints if hub_zoo.model(c["name"])["parent"])


def test_stream_refuses_a_tampered_checkpoint(pubhub, monkeypatch):
    hub_zoo = Zoo.from_hub(pubhub.meta)
    ck = hub_zoo.checkpoints[0]
    real = hub_zoo.checkpoint(ck["name"], ck["epoch"])
    monkeypatch.setitem(real, "weights_sha256", "0" * 64)
    with pytest.raises(ZooError, match="sha256"):
        load_state_dict(hub_zoo, ck["name"], ck["epoch"], stream=True)
    assert not math.isnan(sum(float(v.sum()) for v in load_state_dict(hub_zoo, ck["name"], 0, stream=False).values()))


def test_the_readme_meta_model_loop_runs(smoke_all):
    """The README's 15-line loop, verbatim but for the zoo it opens."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- weightspace:loop -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    code = code.replace('Zoo.from_hub("vitzoo-demo/mini-metadata")', f"Zoo.from_dir({str(smoke_all[1])!r})")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.isfinite(scope["held_out"]) and len(scope["test"]) == 12 and len(scope["train"]) == 12
