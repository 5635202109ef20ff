"""experiments.table1: the drop-in checks behind the Table 1 notebook."""
import os

import pytest
import torch
from torch import nn

from mresnet_core import to_momentumnet
from mresnet_core.experiments import table1


def test_load_resnet_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert table1.cached_checkpoint("resnet18") is None
    model, weights = table1.load_resnet("resnet18", seed=1)
    assert weights.startswith("random (seed 1; no checkpoint")
    assert not model.training
    bn = model.bn1.weight.detach()
    assert float(bn.min()) >= 0.2 and float(bn.max()) <= 0.6
    # a corrupt checkpoint in the cache is reported, not downloaded over
    url = "resnet18-f37072fd.pth"
    os.makedirs(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / url).write_bytes(b"not a checkpoint")
    assert table1.cached_checkpoint("resnet18") is not None
    _, weights = table1.load_resnet("resnet18")
    assert "unreadable" in weights


def test_compare_tensors_detects_a_changed_value():
    model, _ = table1.load_resnet("resnet18", pretrained=False)
    conv = to_momentumnet(model, 0.0, memory_efficient=False)
    ok = table1.compare_tensors(model, conv, table1.resnet_names)
    assert ok.same_names and ok.all_equal and ok.all_copies
    assert ok.params_original == ok.params_converted == 11689512
    with torch.no_grad():
        conv.layer1[1].functions[0].conv1.weight[0, 0, 0, 0] += 1
    assert not table1.compare_tensors(model, conv, table1.resnet_names).all_equal


def test_lipschitz_lower_bound_of_a_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(6, 6, bias=False)
    bound = table1.lipschitz_lower_bound(lin, torch.randn(1, 6), iters=100)
    top = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
    assert bound <= top * (1 + 1e-5) and bound == pytest.approx(top, rel=1e-3)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 5.0])
def test_a_torchvision_block_has_a_residual_lipschitz_constant_of_at_least_one(scale):
    """f(x) = relu(g(x) + x) - x is -x on every coordinate where g(x) + x < 0: Lip(f) >= 1
    for any weights (why the Table 1 notebook makes no Lipschitz claim about training)."""
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(scale)
    x = torch.randn(2, 4, 6, 6)
    bound = table1.lipschitz_lower_bound(lambda z: block(z) - z, x, iters=50)
    assert bound >= 1 - 1e-4


def test_unconstrained_training_fits_inverts_and_bounds_before_and_after():
    out = table1.unconstrained_training("resnet18", steps=3, batch=2, size=32, gamma=0.9, seed=0)
    assert len(out["losses"]) == 3 and out["losses"][-1] < out["losses"][0]
    assert out["inverse_ok"]
    assert out["lipschitz_init"] >= 1 - 1e-4 and out["lipschitz"] >= 1 - 1e-4


def test_resnet_report_small():
    row = table1.resnet_report("resnet18", batch=2, size=32, pretrained=False)
    assert row["tensors equal"] and row["new copies"] and row["layer3 exact inverse"]
    assert row["gamma=0 rel. error"] <= 1e-5
    assert row["parameters (original)"] == row["parameters (Momentum)"]
    assert row["stack depths"] == "1/1/1/1"
    assert row["saved MiB (original)"] > 0 and row["saved MiB (Momentum, memory-free)"] > 0


def test_transformer_report_small():
    row = table1.transformer_report(batch=2, seq=5, d_model=8, nhead=2, layers=3)
    assert row["tensors equal"] and row["layers exact inverse"]
    assert row["gamma=0 rel. error"] <= 1e-5 and row["memory-free gradient rel. error"] <= 1e-5
    assert row["saved MiB (Momentum, memory-free)"] < row["saved MiB (original)"]


def test_table1_has_momentum_net_as_the_only_full_row():
    full = [k for k, v in table1.TABLE1.items() if all(v)]
    assert full == ["Momentum Net"] and len(table1.TABLE1_COLUMNS) == 3
