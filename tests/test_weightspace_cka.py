"""CKA: the math on random data (identity, orthogonal and scale invariance, not invariant to any linear map, equal
to the Gram-matrix definition, debiased variant), permutation-augmented copies of a real checkpoint at CKA 1, and
`vitzoo analyze --cka` end to end on the smoke zoo."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitzoo_hf.weightspace import PermutationAugment
from vitzoo_hf.weightspace.cka import (
    checkpoint_features,
    cka_gram,
    debiased_cka,
    fixed_images,
    hsic_unbiased,
    linear_cka,
)
from vitzoo_hf.zoo import Zoo


def _data(seed: int, n: int, p: int, q: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x[:, : min(p, q)] @ torch.randn(min(p, q), q, generator=g, dtype=torch.float64) \
        + 0.5 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y, g


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(8, 40), st.integers(2, 12), st.integers(2, 12),
       st.floats(0.01, 100.0))
def test_linear_cka_invariances_and_definition(seed, n, p, q, scale):
    x, y, g = _data(seed, n, p, q)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    value = linear_cka(x, y)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert value == pytest.approx(cka_gram(x, y), rel=1e-9, abs=1e-12)  # features form == Gram-matrix definition
    assert value == pytest.approx(linear_cka(y, x), rel=1e-12)
    qx, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    qy, _ = torch.linalg.qr(torch.randn(q, q, generator=g, dtype=torch.float64))
    assert linear_cka(x @ qx, y @ qy) == pytest.approx(value, rel=1e-9, abs=1e-12)  # orthogonal transforms
    assert linear_cka(scale * x, y / scale) == pytest.approx(value, rel=1e-9, abs=1e-12)  # isotropic scaling
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(value, rel=1e-9, abs=1e-12)  # centring
    assert debiased_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert debiased_cka(x @ qx, scale * y) == pytest.approx(debiased_cka(x, y), rel=1e-8, abs=1e-10)


def test_cka_is_not_invariant_to_any_invertible_map():
    x, y, g = _data(0, 50, 6, 6)
    skew = torch.diag(torch.tensor([100.0, 1, 1, 1, 1, 0.01], dtype=torch.float64))  # invertible, not orthogonal
    assert abs(linear_cka(x @ skew, y) - linear_cka(x, y)) > 0.05


def test_direct_formula_on_random_data():
    x, y, _ = _data(3, 20, 5, 7)
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = (torch.linalg.norm(yc.T @ xc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc)))
    assert linear_cka(x, y) == pytest.approx(float(direct), rel=1e-12)
    # unbiased HSIC: the elementwise formula of Song et al. (2012), Eq. 5
    n = 8
    k, l = x[:n] @ x[:n].T, y[:n] @ y[:n].T  # noqa: E741
    kt, lt = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))
    one = torch.ones(n, dtype=torch.float64)
    expect = (torch.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
              - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))
    assert float(hsic_unbiased(k, l)) == pytest.approx(float(expect), rel=1e-10)
    # the debiased estimator is much less inflated on independent wide features
    g = torch.Generator().manual_seed(9)
    a, b = (torch.randn(30, 200, generator=g, dtype=torch.float64) for _ in range(2))
    assert linear_cka(a, b) > 0.5 and abs(debiased_cka(a, b)) < 0.1


@pytest.fixture(scope="module")
def zoo(smoke_all):
    return Zoo.from_dir(smoke_all[1])


def test_permuted_copies_of_a_real_checkpoint_have_cka_one(zoo):
    name = next(r["name"] for r in zoo.models if r["head"] == "mlp" and r["task"] == "supervised")
    other = next(r["name"] for r in zoo.models if r["task"] == "contrastive" and r["parent"])
    x, idx, _ = fixed_images(zoo, name, 48, seed=0)
    assert len(idx) == 48 and idx == sorted(set(idx))
    ckpts = [(name, 2), (name, 2), (other, 2)]
    plain = checkpoint_features(zoo, ckpts, x, progress=False)
    permuted = checkpoint_features(zoo, ckpts[:1], x, augment=PermutationAugment(seed=4), progress=False)[0]
    for layer in plain[0]:
        assert not torch.allclose(permuted[layer], plain[0][layer])  # the residual stream really moved ...
        assert linear_cka(plain[0][layer], permuted[layer]) == pytest.approx(1.0, abs=1e-6)  # ... CKA cannot tell
        assert debiased_cka(plain[0][layer], permuted[layer]) == pytest.approx(1.0, abs=1e-6)
        assert linear_cka(plain[0][layer], plain[1][layer]) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(plain[0]["final"], plain[2]["final"]) < 0.99  # a different model is not at 1


def test_analyze_cka_writes_matrices_and_heat_maps(smoke_all, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "analysis"
    proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "analyze", str(smoke_all[1]), "--out", str(out),
                           "--cka", "--cka-images", "32"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "cka" / "cka.json").read_text())
    n = len(meta["checkpoints"])
    assert n == 10 and len(meta["image_indices"]) == 32 and meta["layers"][-1] == "final"
    for tag in ("cka", "cka_debiased"):
        rows = list(csv.reader((out / "cka" / f"{tag}_final.csv").open()))
        m = torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]])
        assert m.shape == (n, n) and torch.allclose(m, m.T) and torch.allclose(torch.diag(m), torch.ones(n))
        assert (out / "cka" / f"{tag}_final.png").stat().st_size > 5000
    proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "analyze", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "x"), "--cka"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
