"""Tests for vitzoo_hf.simclr: NT-Xent values, distributed gradient equivalence, projector I/O, two views."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vitzoo_hf.simclr import (
    PROJECTION_HEAD_FILENAME,
    ContrastiveOutput,
    ProjectionHead,
    TwoViews,
    contrastive_loss,
    gather_with_grad,
    nt_xent,
)

# ----------------------------------------------------------------------------------------------------
# NT-Xent on hand-checked examples
# ----------------------------------------------------------------------------------------------------


def test_nt_xent_matches_hand_computed_value() -> None:
    # Views a0=(1,0), a1=(0,1), b0=(2,0) (normalises to (1,0)), b1=(1,2) (normalises to (1,2)/√5).
    # Cosines: a0·a1=0, a0·b0=1, a0·b1=p, a1·b0=0, a1·b1=q, b0·b1=p with p=1/√5, q=2/√5.
    t = 0.5
    p, q = 1 / math.sqrt(5), 2 / math.sqrt(5)
    e = math.exp
    # anchor: -(positive/t) + log(sum over the three *other* samples of exp(cos/t))
    l_a0 = -1 / t + math.log(e(0 / t) + e(1 / t) + e(p / t))  # others a1, b0 (pos), b1
    l_a1 = -q / t + math.log(e(0 / t) + e(0 / t) + e(q / t))  # others a0, b0, b1 (pos)
    l_b0 = -1 / t + math.log(e(1 / t) + e(0 / t) + e(p / t))  # others a0 (pos), a1, b1
    l_b1 = -q / t + math.log(e(p / t) + e(q / t) + e(p / t))  # others a0, a1 (pos), b0
    expected = (l_a0 + l_a1 + l_b0 + l_b1) / 4

    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_b = torch.tensor([[2.0, 0.0], [1.0, 2.0]])
    loss, correct = nt_xent(z_a, z_b, temperature=t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(correct) == 4  # every anchor's nearest other sample is its positive here


def test_nt_xent_top1_counts_wrong_retrievals() -> None:
    e0, e1, e2 = torch.eye(3)
    z_a = torch.stack([e0, e1, e2])
    # b2 points (almost) along e0: anchor b2's nearest are a0/b0 (wrong); a2's nearest is still b2 (right).
    z_b = torch.stack([e0, e1, e0 + 0.1 * e2])
    _, correct = nt_xent(z_a, z_b, temperature=0.1)
    assert int(correct) == 5
    assert correct.dtype == torch.int64 and not correct.requires_grad
    # swapping the second views' order breaks the pairs of anchors 0 and 1 in both directions
    _, correct_swapped = nt_xent(torch.eye(3), torch.eye(3)[[1, 0, 2]], temperature=0.1)
    assert int(correct_swapped) == 2


def test_nt_xent_is_scale_invariant_and_rejects_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss, _ = nt_xent(z_a, z_b, 0.2)
    loss_scaled, _ = nt_xent(3 * z_a, 0.5 * z_b, 0.2)
    assert torch.allclose(loss, loss_scaled, atol=1e-6)
    with pytest.raises(ValueError):
        nt_xent(z_a, z_b[:4], 0.2)
    with pytest.raises(ValueError):
        nt_xent(z_a, z_b, 0.0)


def test_contrastive_loss_without_distributed_is_nt_xent() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert gather_with_grad(z_a) is z_a
    out = contrastive_loss(z_a, z_b, 0.3)
    loss, correct = nt_xent(z_a, z_b, 0.3)
    assert isinstance(out, ContrastiveOutput)
    assert out.loss.item() == loss.item() and int(out.correct) == int(correct) and out.total == 8
    assert out.accuracy == int(correct) / 8


# ----------------------------------------------------------------------------------------------------
# Two processes (gloo, DDP via accelerate) vs. one process on the same global batch
# ----------------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.5
GLOBAL_N = 8
EVEN = (4, 4)
UNEVEN = (3, 5)


def _make_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), ProjectionHead(8, hidden_dim=8, out_dim=4))


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    x_a = torch.randn(GLOBAL_N, 6, generator=g)
    x_b = x_a + 0.3 * torch.randn(GLOBAL_N, 6, generator=g)  # "second view": a perturbed copy
    return x_a, x_b


class _GatherSliceOnly(torch.autograd.Function):
    """Differentiable all_gather WITHOUT the all_reduce in backward: wrong scaling (grads / world size)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        bufs = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(bufs, x.contiguous())
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(bufs)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _ddp_worker(out_dir: str) -> None:
    """Runs in each of the 2 forked processes; writes loss, correct and parameter grads per variant."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # The fork inherits accelerate's singletons if the parent pytest process built an Accelerator earlier.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2 and dist.get_backend() == "gloo"
    model = accelerator.prepare(_make_model())
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    x_a, x_b = _global_batch()

    for variant in ("with_grad_even", "with_grad_uneven", "plain_gather", "slice_only"):
        splits = UNEVEN if variant == "with_grad_uneven" else EVEN
        start = sum(splits[:rank])
        stop = start + splits[rank]
        n = stop - start
        model.zero_grad(set_to_none=True)
        z = model(torch.cat([x_a[start:stop], x_b[start:stop]]))  # one forward for both views
        z_a, z_b = z[:n], z[n:]
        if variant.startswith("with_grad"):
            out = contrastive_loss(z_a, z_b, TEMPERATURE)
            loss, correct = out.loss, out.correct
            assert out.total == 2 * GLOBAL_N
        elif variant == "plain_gather":
            # The common mistake: accelerator.gather (no graph to other ranks), own rows spliced back in.
            both = torch.cat([z_a, z_b], dim=1)
            gathered = accelerator.gather(both.detach())
            gathered = torch.cat([gathered[:start], both, gathered[stop:]])
            loss, correct = nt_xent(gathered[:, :4], gathered[:, 4:], TEMPERATURE)
        else:
            gathered = _GatherSliceOnly.apply(torch.cat([z_a, z_b], dim=1))
            loss, correct = nt_xent(gathered[:, :4], gathered[:, 4:], TEMPERATURE)
        accelerator.backward(loss)
        tensors = {"loss": loss.detach().reshape(1), "correct": correct.reshape(1)}
        for name, param in accelerator.unwrap_model(model).named_parameters():
            tensors[f"grad.{name}"] = param.grad.detach().clone()
        save_file(tensors, str(Path(out_dir) / f"{variant}_rank{rank}.safetensors"))
    accelerator.wait_for_everyone()


def _single_process_reference() -> dict[str, torch.Tensor]:
    model = _make_model()
    x_a, x_b = _global_batch()
    z = model(torch.cat([x_a, x_b]))
    loss, correct = nt_xent(z[:GLOBAL_N], z[GLOBAL_N:], TEMPERATURE)
    loss.backward()
    out = {"loss": loss.detach().reshape(1), "correct": correct.reshape(1)}
    out.update({f"grad.{k}": p.grad.detach().clone() for k, p in model.named_parameters()})
    return out


def _max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if k.startswith("grad.")]
    assert keys and sorted(keys) == sorted(k for k in b if k.startswith("grad."))
    return max((a[k] - b[k]).abs().max().item() for k in keys)


_LAUNCH = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("simclr_ddp_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from accelerate import debug_launcher
debug_launcher(module._ddp_worker, args=(sys.argv[2],), num_processes=2)
"""


def test_two_process_loss_and_grads_equal_single_process(tmp_path: Path) -> None:
    # debug_launcher forks. Forking this pytest process is unsafe once any earlier test has run an OpenMP
    # parallel region (the children deadlock in libgomp's barrier), so launch from a fresh interpreter.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH, __file__, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = _single_process_reference()
    grad_scale = max(v.abs().max().item() for k, v in ref.items() if k.startswith("grad."))
    assert grad_scale > 1e-3  # the comparison below is not vacuous

    for variant in ("with_grad_even", "with_grad_uneven"):
        for rank in (0, 1):
            got = load_file(str(tmp_path / f"{variant}_rank{rank}.safetensors"))
            assert torch.allclose(got["loss"], ref["loss"], atol=1e-6), (variant, rank)
            assert int(got["correct"]) == int(ref["correct"])
            assert _max_grad_diff(got, ref) < 1e-6, (variant, rank)

    # Negative controls: same loss value, wrong gradients.
    plain = load_file(str(tmp_path / "plain_gather_rank0.safetensors"))
    assert torch.allclose(plain["loss"], ref["loss"], atol=1e-6)
    assert _max_grad_diff(plain, ref) > 1e-2 * grad_scale
    # Without the all_reduce in backward, DDP's averaging leaves exactly 1/world_size of the gradient.
    sliced = load_file(str(tmp_path / "slice_only_rank0.safetensors"))
    halved = {k: v / 2 if k.startswith("grad.") else v for k, v in ref.items()}
    assert _max_grad_diff(sliced, halved) < 1e-6
    assert _max_grad_diff(sliced, ref) > 0.25 * grad_scale


# ----------------------------------------------------------------------------------------------------
# ProjectionHead
# ----------------------------------------------------------------------------------------------------


def test_projection_head_shapes_and_default_sizes() -> None:
    head = ProjectionHead(16)
    assert head.config == {"in_dim": 16, "hidden_dim": 16, "out_dim": 128}
    assert head(torch.randn(3, 16)).shape == (3, 128)
    assert [type(m) for m in head.children()] == [nn.Linear, nn.ReLU, nn.Linear]
    with pytest.raises(ValueError):
        ProjectionHead(0)


def test_projection_head_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = ProjectionHead(12, hidden_dim=20, out_dim=7)
    file = head.save(tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / PROJECTION_HEAD_FILENAME and file.is_file()
    for where in (file.parent, file):
        loaded = ProjectionHead.load(where)
        assert loaded.config == head.config
        for (k1, v1), (k2, v2) in zip(head.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert k1 == k2 and torch.equal(v1, v2)
        x = torch.randn(4, 12)
        assert torch.equal(head(x), loaded(x))
    with pytest.raises(FileNotFoundError):
        ProjectionHead.load(tmp_path / "missing")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError):
        ProjectionHead.load(tmp_path / "other.safetensors")


# ----------------------------------------------------------------------------------------------------
# TwoViews
# ----------------------------------------------------------------------------------------------------


def _grey_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8), mode="L")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_two_views_greyscale_input_gives_two_rgb_views(as_tensor: bool) -> None:
    image = _grey_image()
    if as_tensor:
        image = torch.from_numpy(np.array(image)).unsqueeze(0)  # (1, 28, 28) uint8
    views = TwoViews(size=32)
    torch.manual_seed(0)
    v1, v2 = views(image)
    for v in (v1, v2):
        assert type(v) is torch.Tensor and v.shape == (3, 32, 32) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
    assert not torch.allclose(v1, v2)


def test_two_views_reproducible_under_manual_seed() -> None:
    image = _grey_image()
    views = TwoViews(size=24, scale=(0.2, 1.0), p_blur=1.0, blur_kernel=3)
    torch.manual_seed(7)
    first = views(image)
    torch.manual_seed(7)
    again = views(image)
    torch.manual_seed(8)
    other = views(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_two_views_identity_settings_only_normalise() -> None:
    # With every random step disabled the output is exactly the normalised RGB copy of the input.
    image = _grey_image()
    views = TwoViews(
        size=28, scale=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    torch.manual_seed(0)
    v1, v2 = views(image)
    expected = (torch.from_numpy(np.array(image)).float() / 255 - 0.5) / 0.5
    for v in (v1, v2):
        # the flip is the only remaining randomness
        assert torch.allclose(v, expected.expand(3, 28, 28), atol=1e-6) or torch.allclose(
            v, expected.flip(-1).expand(3, 28, 28), atol=1e-6
        )
    assert views.config["blur_kernel"] == 3
    with pytest.raises(ValueError):
        TwoViews(blur_kernel=4)
    with pytest.raises(ValueError):
        TwoViews(p_gray=1.5)
