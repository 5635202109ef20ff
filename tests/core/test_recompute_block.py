"""The first block of a converted stage, recomputed in backward (recompute.RecomputeBlock,
convert.MomentumStage), against calling the block with ordinary autograd."""

import pytest
import torch
from torch import nn

from mresnet_core import exact, to_momentumnet
from mresnet_core.convert import MomentumStage
from mresnet_core.memory import describe, training_step_memory
from mresnet_core.models import build_deep_resnet, build_resnet
from mresnet_core.recompute import recompute_block


class NoisyBlock(nn.Module):
    """Changes shape, draws random numbers and moves BatchNorm statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x))))


def run(block, x, recompute):
    torch.manual_seed(5)
    xd = x.detach().requires_grad_(True)
    out = recompute_block(block, xd) if recompute else block(xd)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), xd.grad, [p.grad.clone() for p in block.parameters()], \
        [b.clone() for b in block.buffers()]


def test_a_recomputed_block_gives_the_bits_of_ordinary_autograd():
    """Same output, input and parameter gradients, and BatchNorm statistics moved once,
    with dropout drawn the same in the recomputation."""
    torch.manual_seed(0)
    block, x = NoisyBlock().double(), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    ref_block = NoisyBlock().double()
    ref_block.load_state_dict(block.state_dict())
    mine, ref = run(block, x, True), run(ref_block, x, False)
    assert torch.equal(mine[0], ref[0]) and torch.equal(mine[1], ref[1])
    for a, b in zip(mine[2] + mine[3], ref[2] + ref[3], strict=True):
        assert torch.equal(a, b)
    assert int(block.bn.num_batches_tracked) == 1


def test_a_recomputed_block_passes_gradcheck():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).double()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    w = next(block.parameters())
    assert torch.autograd.gradcheck(lambda x, w: recompute_block(block, x), (x, w))


def test_a_parameter_edited_before_backward_is_an_error():
    block = nn.Linear(4, 3)
    out = recompute_block(block, torch.randn(2, 4, requires_grad=True))
    with torch.no_grad():
        block.weight.add_(1.0)
    with pytest.raises(exact.ReconstructionError, match="changed in place"):
        out.sum().backward()


def narrow(mode, seed=0):
    torch.manual_seed(seed)
    return to_momentumnet(build_resnet(50, width=8), 0.9, memory_efficient=mode)


def step(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]


def test_converted_stages_recompute_their_first_block_and_train_as_backprop_does():
    """'recompute' stacks with recomputed first blocks: the bits of ordinary backprop."""
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    mine, ref = narrow("recompute"), narrow("backprop")
    got, want = step(mine, x, y), step(ref, x, y)
    stages = [m for m in mine.modules() if isinstance(m, MomentumStage)]
    assert len(stages) == 4
    plans = [plan for s in stages for plan in s._first_plans.values()]
    assert len(plans) == 4 and all(plan["recompute"] for plan in plans)
    for a, b in zip(got[0] + got[1], want[0] + want[1], strict=True):
        assert torch.equal(a, b)


def test_recomputing_first_blocks_lowers_the_whole_step_peak(monkeypatch):
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = lambda out: nn.functional.cross_entropy(out, y)  # noqa: E731
    with_recompute = training_step_memory(narrow("auto"), x, loss=loss).whole_step
    monkeypatch.setattr(MomentumStage, "RECOMPUTE_FIRST_FACTOR", float("inf"))
    without = training_step_memory(narrow("auto"), x, loss=loss).whole_step
    assert with_recompute < 0.95 * without


def first_block_modes(model, x, y):
    step(model, x, y)
    return [r["mode"] for r in describe(model) if r["path"].endswith(".0")]


def test_forced_exact_recomputes_a_first_block_only_before_a_deep_stack():
    """ResNet-50's stacks (2, 3, 5, 2 layers): forced exact inversion leaves the first
    blocks to ordinary backprop, "auto" recomputes them; stacks of 8 layers: both do."""
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    assert first_block_modes(narrow("exact"), x, y) == ["backprop"] * 4
    assert first_block_modes(narrow("auto"), x, y) == ["recompute"] * 4
    torch.manual_seed(0)
    deep = to_momentumnet(build_deep_resnet(9, width=4), 0.9, memory_efficient="exact")  # stacks of 8
    assert first_block_modes(deep, x, y) == ["recompute"] * 4


def test_backprop_and_evaluation_call_the_first_block_itself(monkeypatch):
    import mresnet_core.convert as convert

    def refuse(block, x):
        raise AssertionError("recomputed")

    monkeypatch.setattr(convert, "recompute_block", refuse)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    step(narrow("backprop"), x, y)
    model = narrow("exact")
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        model(x)
