"""to_momentumnet against independent computations: the original model (gamma = 0), the
momentum update written out by hand, ordinary autograd (the plain path), the
documented parameter-name mapping, and state dicts under the original model's keys."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from mresnet_core import MomentumNet, to_momentumnet
from mresnet_core.convert import RESNET_STAGES, MomentumTransformerDecoder, MomentumTransformerEncoder, renamed

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "resnext50_32x4d"]
F64 = torch.float64


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def resnet(name, seed=0):
    """A randomly initialised torchvision model with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 0.6)  # small, so deep models keep moderate activations
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


resnet_name = renamed("layer1", "layer2", "layer3", "layer4")


def assert_same_tensors(original, converted, rename):
    """Parameters and buffers: same values under the renamed keys, same counts."""
    for kind in ("named_parameters", "named_buffers"):
        want = {rename(k): v for k, v in getattr(original, kind)()}
        got = dict(getattr(converted, kind)())
        assert sorted(got) == sorted(want), kind
        for k, v in want.items():
            assert torch.equal(got[k], v) and got[k] is not v, k
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(converted) == count(original)


def has_momentum(model):
    return any(isinstance(m, MomentumNet) for m in model.modules())


# ------------------------------------------------------------------ torchvision ResNets
@pytest.mark.slow
@pytest.mark.parametrize("name", RESNETS)
def test_resnet_at_gamma_0_computes_the_original(name):
    model = resnet(name).to(F64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = to_momentumnet(model, 0.0, memory_efficient=False)

    x = torch.randn(1, 3, 64, 64, dtype=F64)
    with torch.no_grad():
        assert rel_err(converted(x), model(x)) <= 1e-6
    assert_same_tensors(model, converted, resnet_name)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        new, old = getattr(converted, stage), getattr(model, stage)
        assert isinstance(new[1], MomentumNet) and len(new[1].functions) == len(old) - 1
        assert new[1].residual is False and new[1].gamma == 0.0
    # the original is untouched
    assert not has_momentum(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_resnet_stage_follows_the_momentum_update():
    """layer2 of a ResNet-34 (4 blocks) against the update rule written out by hand."""
    model = resnet("resnet34").to(F64).eval()
    gamma = 0.5
    converted = to_momentumnet(model, gamma, memory_efficient=False)
    x = torch.randn(1, 64, 16, 16, dtype=F64)
    with torch.no_grad():
        h = model.layer2[0](x)
        v = torch.zeros_like(h)
        for block in list(model.layer2)[1:]:
            v = gamma * v + (1 - gamma) * (block(h) - h)
            h = h + v
        assert rel_err(converted.layer2(x), h) <= 1e-12


def test_keep_first_false_on_a_shape_preserving_stage():
    model = resnet("resnet18").to(F64).eval()
    converted = to_momentumnet(model, 0.0, stages=["layer1"], keep_first=False,
                               memory_efficient=False)
    assert isinstance(converted.layer1, MomentumNet) and isinstance(converted.layer2, nn.Sequential)
    assert_same_tensors(model, converted, renamed("layer1", keep_first=False))
    x = torch.randn(1, 3, 32, 32, dtype=F64)
    with torch.no_grad():
        assert rel_err(converted(x), model(x)) <= 1e-6


def test_resnet18_memory_free_training_step_matches_autograd():
    """gamma = 0.9, float32, train mode: gradients, BatchNorm statistics and the step."""
    model = resnet("resnet18", seed=1)
    free = to_momentumnet(model, 0.9, memory_efficient=True)
    plain = to_momentumnet(model, 0.9, memory_efficient=False)
    # 64x64 so that layer4's BatchNorm sees 8 values per channel: at 32x32 (2 values) even
    # float32 autograd is 3e-3 away from float64, too ill-conditioned to compare paths
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])

    def step(net):
        loss = nn.functional.cross_entropy(net(x), target)
        params = list(net.parameters())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.1 * g
        return loss, grads

    (loss1, g1), (loss0, g0) = step(free), step(plain)
    assert rel_err(loss1, loss0) <= 1e-5
    assert len(g1) == len(g0) == len(list(model.parameters()))
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) <= 1e-4
    # running statistics updated once (not again by the backward recomputation)
    for (k, a), (_, b) in zip(free.named_buffers(), plain.named_buffers(), strict=True):
        if k.endswith("num_batches_tracked"):
            assert int(a) == int(b) == 1, k
        else:
            assert rel_err(a, b) <= 1e-4, k
    with torch.no_grad():
        free.eval(), plain.eval()
        assert rel_err(free(x), plain(x)) <= 1e-4


# ------------------------------------------------------------------ other containers
class AddBlock(nn.Module):
    """A block that adds its own skip connection, with an optional extra argument."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, scale=1.0):
        return x + scale * torch.tanh(self.lin(x))


class TinyStages(nn.Module):
    """Not a torchvision model, but has layer1..layer4: detected as a ResNet."""

    def __init__(self, d=4):
        super().__init__()
        for i, depth in enumerate([1, 2, 3, 2], start=1):
            setattr(self, f"layer{i}", nn.Sequential(*[AddBlock(d) for _ in range(depth)]))

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def test_layer1_to_layer4_detected_on_any_model():
    torch.manual_seed(0)
    model = TinyStages().to(F64)
    converted = to_momentumnet(model, 0.0, memory_efficient=False)
    assert isinstance(converted.layer1, nn.Sequential) and len(converted.layer1) == 1  # kept
    depths = [len(getattr(converted, s)[1].functions) for s in ("layer2", "layer3", "layer4")]
    assert depths == [1, 2, 1]
    assert_same_tensors(model, converted, resnet_name)
    x = torch.randn(3, 4, dtype=F64)
    assert rel_err(converted(x), model(x)) <= 1e-6


class Looping(nn.Module):
    """Iterates over a ModuleList and passes an extra argument to every block."""

    def __init__(self, d=4, depth=4):
        super().__init__()
        self.body = nn.Module()
        self.body.blocks = nn.ModuleList([AddBlock(d) for _ in range(depth)])

    def forward(self, x, scale):
        for block in self.body.blocks:
            x = block(x, scale)
        return x


@pytest.mark.parametrize("keep_first", [True, False])
def test_module_list_by_dotted_path(keep_first):
    torch.manual_seed(0)
    model = Looping().to(F64)
    x, scale = torch.randn(3, 4, dtype=F64), torch.tensor(0.7, dtype=F64)
    plain0 = to_momentumnet(model, 0.0, stages=["body.blocks"], keep_first=keep_first,
                            memory_efficient=False)
    assert isinstance(plain0.body.blocks, nn.ModuleList)
    assert_same_tensors(model, plain0,
                        renamed("body.blocks", keep_first=keep_first, module_list=True))
    assert rel_err(plain0(x, scale), model(x, scale)) <= 1e-6

    gamma = 0.25  # by hand
    blocks = list(model.body.blocks)
    h = blocks.pop(0)(x, scale) if keep_first else x
    v = torch.zeros_like(h)
    for block in blocks:
        v = gamma * v + (1 - gamma) * (block(h, scale) - h)
        h = h + v
    free = to_momentumnet(model, gamma, stages="body.blocks", keep_first=keep_first)
    assert rel_err(free(x, scale), h) <= 1e-9


# ------------------------------------------------------------------ transformers
def encoder(dropout=0.0, num_layers=3, norm=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=dropout, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(16) if norm else None)
    with torch.no_grad():  # the layers start as clones of one another: make them differ
        for p in enc.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(-0.2, 0.2)
    return enc.to(F64)


def masks(seq=6, batch=2):
    """A causal mask, and a key padding mask as booleans (True: pad) and as floats."""
    causal = nn.Transformer.generate_square_subsequent_mask(seq, dtype=F64)
    pad = torch.zeros(batch, seq, dtype=torch.bool)
    pad[1, -2:] = True  # the second sequence is 2 tokens shorter (left-aligned)
    return causal, pad, torch.zeros(batch, seq, dtype=F64).masked_fill(pad, float("-inf"))


MASKINGS = {  # (causal mask, float padding mask) -> encoder keyword arguments
    "causal": lambda c, p: dict(mask=c, is_causal=True),
    "causal_detected": lambda c, p: dict(mask=c),
    "padding": lambda c, p: dict(src_key_padding_mask=p),
    "causal_and_padding": lambda c, p: dict(mask=c, is_causal=True, src_key_padding_mask=p),
}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the original's fast path
@pytest.mark.parametrize("keep_first", [False, True])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("masking", list(MASKINGS))
def test_transformer_encoder_at_gamma_0_computes_the_original(masking, mode, keep_first):
    enc = encoder().train(mode == "train")
    converted = to_momentumnet(enc, 0.0, stages=["layers"], keep_first=keep_first,
                               memory_efficient=False)
    assert isinstance(converted, MomentumTransformerEncoder) and converted.training == enc.training
    depth = len(enc.layers) - keep_first
    assert len(converted.layers[-1].functions) == depth
    assert_same_tensors(enc, converted, renamed("layers", keep_first=keep_first, module_list=True))

    causal, pad, padding = masks()
    kwargs = MASKINGS[masking](causal, padding)
    x = torch.randn(2, 6, 16, dtype=F64)
    with torch.no_grad():
        want, got = enc(x, **kwargs), converted(x, **kwargs)
        if masking == "padding":
            # the original takes its nested-tensor fast path here (eval, no grad, padding
            # mask only), which sets padded positions to 0 before norm: compare real tokens
            want, got = want[~pad], got[~pad]
        assert rel_err(got, want) <= 1e-6
        unmasked = converted(x)
        assert rel_err(unmasked[~pad], converted(x, **kwargs)[~pad]) > 1e-3  # the mask matters


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_memory_free_transformer_matches_plain(mode):
    enc = encoder().train(mode == "train")
    plain = to_momentumnet(enc, 0.5, stages=["layers"], keep_first=False, memory_efficient=False)
    free = to_momentumnet(enc, 0.5, stages=["layers"], keep_first=False, memory_efficient=True)
    causal, _, padding = masks()
    x = torch.randn(2, 6, 16, dtype=F64, requires_grad=True)
    kwargs = dict(mask=causal, is_causal=True, src_key_padding_mask=padding)

    def run(net):
        out = net(x, **kwargs)
        return out, torch.autograd.grad((out ** 2).sum(), [x, *net.parameters()])

    (y1, g1), (y0, g0) = run(free), run(plain)
    assert rel_err(y1, y0) <= 1e-6
    assert len(g1) == len(g0) == 1 + len(list(enc.parameters()))
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) <= 1e-6
    # and with a plain gamma = 0.5 momentum update written out by hand
    with torch.no_grad():
        h, v = x, torch.zeros_like(x)
        for layer in enc.layers:
            v = 0.5 * v + 0.5 * (layer(h, src_mask=causal, is_causal=True,
                                       src_key_padding_mask=padding) - h)
            h = h + v
        assert rel_err(y0, enc.norm(h)) <= 1e-9


def test_memory_free_transformer_with_dropout_replays_it():
    enc = encoder(dropout=0.2).train()
    plain = to_momentumnet(enc, 0.5, stages=["layers"], keep_first=False, memory_efficient=False)
    free = to_momentumnet(enc, 0.5, stages=["layers"], keep_first=False, memory_efficient=True)
    causal = masks()[0]
    x = torch.randn(2, 6, 16, dtype=F64, requires_grad=True)
    results = []
    for net in (free, plain):
        torch.manual_seed(5)
        out = net(x, mask=causal, is_causal=True)
        results.append((out, torch.autograd.grad(out.sum(), [x, *net.parameters()])))
    (y1, g1), (y0, g0) = results
    assert rel_err(y1, y0) <= 1e-6
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) <= 1e-6


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 16).to(F64)
        self.encoder = encoder(num_layers=2)
        self.head = nn.Linear(16, 3).to(F64)

    def forward(self, x, mask=None):
        return self.head(self.encoder(self.embed(x), mask=mask, is_causal=mask is not None))


@pytest.mark.parametrize("path", ["encoder.layers", "encoder"])
def test_encoder_inside_a_model_by_dotted_path(path):
    model = TinyLM()
    converted = to_momentumnet(model, 0.0, stages=[path], keep_first=False, memory_efficient=False)
    assert isinstance(converted.encoder, MomentumTransformerEncoder)
    assert isinstance(model.encoder, nn.TransformerEncoder) and not has_momentum(model)
    assert_same_tensors(model, converted,
                        renamed("encoder.layers", keep_first=False, module_list=True))
    x, causal = torch.randn(2, 6, 3, dtype=F64), masks()[0]
    assert rel_err(converted(x, causal), model(x, causal)) <= 1e-6
    free = to_momentumnet(model, 0.5, stages=[path], keep_first=False)
    x.requires_grad_(True)
    g_free = torch.autograd.grad(free(x, causal).sum(), x)[0]
    plain = to_momentumnet(model, 0.5, stages=[path], keep_first=False, memory_efficient=False)
    g_plain = torch.autograd.grad(plain(x, causal).sum(), x)[0]
    assert rel_err(g_free, g_plain) <= 1e-6


def test_full_transformer_encoder_and_decoder():
    torch.manual_seed(0)
    model = nn.Transformer(16, 2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=32,
                           dropout=0.0, batch_first=True).to(F64).eval()
    converted = to_momentumnet(model, 0.0, stages=["encoder.layers", "decoder.layers"],
                               keep_first=False, memory_efficient=False)
    assert isinstance(converted.decoder, MomentumTransformerDecoder)
    src, tgt = torch.randn(2, 5, 16, dtype=F64), torch.randn(2, 4, 16, dtype=F64)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=F64)
    with torch.no_grad():
        want = model(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
        assert rel_err(converted(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True), want) <= 1e-6
        assert rel_err(converted(src, tgt), want) > 1e-3
    # memory-free: gradients reach the encoder through the decoder's memory argument
    src.requires_grad_(True)
    grads = []
    for memory_efficient in (True, False):
        net = to_momentumnet(model, 0.5, stages=["encoder", "decoder"], keep_first=False,
                             memory_efficient=memory_efficient).train()
        out = net(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
        grads.append(torch.autograd.grad((out ** 2).sum(), [src, *net.parameters()]))
    for a, b in zip(*grads, strict=True):
        assert rel_err(a, b) <= 1e-6


# ------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def small_resnet():
    return resnet("resnet18")


def test_not_a_module():
    with pytest.raises(TypeError, match="expects an nn.Module, got str"):
        to_momentumnet("resnet18")


def test_model_without_stages():
    with pytest.raises(ValueError, match=r"Sequential has no residual container 'layer1'.*stages="):
        to_momentumnet(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"stages=\['layers'\], keep_first=False"):
        to_momentumnet(encoder())


def test_wrong_path_is_named(small_resnet):
    with pytest.raises(ValueError, match=r"stage 'layer2\.blocks' not found: layer2 \(Sequential\) "
                                         r"has no submodule 'blocks'"):
        to_momentumnet(small_resnet, stages=["layer1", "layer2.blocks"])


def test_container_that_is_not_a_sequence(small_resnet):
    with pytest.raises(TypeError, match="stage 'fc' is a Linear, not a sequence of modules"):
        to_momentumnet(small_resnet, stages=["fc"])
    with pytest.raises(TypeError, match="list of dotted paths"):
        to_momentumnet(small_resnet, stages=[1])
    with pytest.raises(ValueError, match="twice"):
        to_momentumnet(small_resnet, stages=["layer1", "layer1"])


def test_first_block_that_changes_shape_needs_keep_first(small_resnet):
    with pytest.raises(ValueError, match=r"block layer2\.0 \(BasicBlock\) changes the shape of its "
                                         r"input \(it has a downsample branch.*keep_first=True"):
        to_momentumnet(small_resnet, keep_first=False)


def test_later_block_that_changes_shape_is_named():
    model = nn.Module()
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
    model.body = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 16, 2, down))
    with pytest.raises(ValueError, match=r"block body\.2 \(BasicBlock\) changes the shape.*"
                                         "only a stage's first block"):
        to_momentumnet(model, stages=["body"])
    model.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8))
    with pytest.raises(ValueError, match=r"block body\.1 \(Linear\) changes the shape .*4 -> 8"):
        to_momentumnet(model, stages=["body"])


class Widen(nn.Module):
    """Changes shape in a way only running it shows."""

    def forward(self, x):
        return torch.cat([x, x], dim=-1)


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_shape_change_seen_only_at_run_time(memory_efficient):
    model = nn.Module()
    model.body = nn.Sequential(AddBlock(4), Widen())
    converted = to_momentumnet(model, 0.5, stages=["body"], memory_efficient=memory_efficient)
    with pytest.raises(ValueError, match=r"Widen must return a tensor shaped like its input"):
        converted.body(torch.randn(2, 4))


@pytest.mark.parametrize("gamma, error, message", [
    (1.5, ValueError, r"gamma must be a number in \[0, 1\]"),
    (-0.1, ValueError, r"gamma must be a number in \[0, 1\]"),
    (float("nan"), ValueError, r"gamma must be a number in \[0, 1\]"),
    ("0.9", TypeError, "gamma must be a number in"),
    (None, TypeError, "gamma must be a number in"),
    (True, TypeError, "gamma must be a number in"),
])
def test_bad_gamma(small_resnet, gamma, error, message):
    with pytest.raises(error, match=message):
        to_momentumnet(small_resnet, gamma)


def test_gamma_0_needs_the_plain_path(small_resnet):
    with pytest.raises(ValueError, match="cannot be inverted.*memory_efficient=False"):
        to_momentumnet(small_resnet, 0.0, memory_efficient=True)
    assert not has_momentum(small_resnet)
    # the default ("auto") never picks exact inversion for gamma = 0
    converted = to_momentumnet(small_resnet, 0.0)
    converted(torch.randn(2, 3, 16, 16)).sum().backward()
    modes = [m.training_mode for m in converted.modules() if isinstance(m, MomentumNet)]
    assert modes and "exact" not in modes


def test_renamed_follows_the_documented_mapping():
    r = renamed(*RESNET_STAGES)
    assert r("layer2.0.conv1.weight") == "layer2.0.conv1.weight"
    assert r("layer2.3.conv1.weight") == "layer2.1.functions.2.conv1.weight"
    assert r("fc.weight") == "fc.weight"
    t = renamed("layers", keep_first=False, module_list=True)
    assert t("layers.4.linear1.bias") == "layers.0.functions.4.linear1.bias"
    s = renamed("body", keep_first=False)
    assert s("body.2.weight") == "body.functions.2.weight"


# ------------------------------------------------------------------ state dicts
# state_dict() uses the original model's keys (the module structure stays in
# named_parameters); load_state_dict takes those and the structural names.
def _bn_state(model, seed):
    """Distinct BatchNorm counters, so that num_batches_tracked is checked too."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=g)))
    return model


def tv_model(name):
    return lambda seed: _bn_state(resnet(name, seed).to(F64).eval(), seed)


def tiny_lm(seed):
    torch.manual_seed(seed)
    model = TinyLM()
    model.encoder = encoder(num_layers=3, seed=seed)
    return model.eval()


def full_transformer(seed):
    torch.manual_seed(seed)
    return nn.Transformer(16, 2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=32,
                          dropout=0.0, batch_first=True).to(F64).eval()


def looping(seed):
    torch.manual_seed(seed)
    return Looping().to(F64)


def _tgt_mask():
    return nn.Transformer.generate_square_subsequent_mask(4, dtype=F64)


# name: (make(seed), to_momentumnet keywords, names of named_parameters, inputs())
CONVERSIONS = {
    "resnet18": (tv_model("resnet18"), {}, resnet_name,
                 lambda: (torch.randn(2, 3, 32, 32, dtype=F64),)),
    "resnet50": (tv_model("resnet50"), {}, resnet_name,
                 lambda: (torch.randn(2, 3, 32, 32, dtype=F64),)),
    "sequential_keep_first_false": (
        tv_model("resnet18"), dict(stages=["layer1"], keep_first=False),
        renamed("layer1", keep_first=False), lambda: (torch.randn(2, 3, 32, 32, dtype=F64),)),
    "module_list": (looping, dict(stages=["body.blocks"]),
                    renamed("body.blocks", module_list=True),
                    lambda: (torch.randn(3, 4, dtype=F64), torch.tensor(0.7, dtype=F64))),
    "module_list_keep_first_false": (
        looping, dict(stages=["body.blocks"], keep_first=False),
        renamed("body.blocks", keep_first=False, module_list=True),
        lambda: (torch.randn(3, 4, dtype=F64), torch.tensor(0.7, dtype=F64))),
    "transformer_encoder": (
        lambda seed: encoder(seed=seed).eval(), dict(stages=["layers"], keep_first=False),
        renamed("layers", keep_first=False, module_list=True),
        lambda: (torch.randn(2, 6, 16, dtype=F64), masks()[0])),
    "transformer_encoder_keep_first": (
        lambda seed: encoder(seed=seed).eval(), dict(stages=["layers"], keep_first=True),
        renamed("layers", keep_first=True, module_list=True),
        lambda: (torch.randn(2, 6, 16, dtype=F64), masks()[0])),
    "encoder_in_a_model": (tiny_lm, dict(stages=["encoder"], keep_first=False),
                           renamed("encoder.layers", keep_first=False, module_list=True),
                           lambda: (torch.randn(2, 6, 3, dtype=F64), masks()[0])),
    "encoder_and_decoder": (
        full_transformer, dict(stages=["encoder", "decoder"], keep_first=False),
        renamed("encoder.layers", "decoder.layers", keep_first=False, module_list=True),
        lambda: (torch.randn(2, 5, 16, dtype=F64), torch.randn(2, 4, 16, dtype=F64), None,
                 _tgt_mask())),
}


def convert(name, seed=0):
    make, kwargs, rename, inputs = CONVERSIONS[name]
    original = make(seed)
    return original, to_momentumnet(original, 0.0, memory_efficient=False, **kwargs).eval()


def assert_holds(converted, original, rename):
    """Every parameter and buffer of ``converted`` (found through the module structure,
    not through state_dict) equals the one of ``original`` it comes from."""
    got = {**dict(converted.named_parameters()), **dict(converted.named_buffers())}
    for k, v in [*original.named_parameters(), *original.named_buffers()]:
        assert torch.equal(got[rename(k)], v), k


def outputs(model, name):
    torch.manual_seed(3)
    with torch.no_grad():
        return model(*CONVERSIONS[name][3]())


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_state_dict_has_the_original_keys_in_order(name):
    original, converted = convert(name)
    assert list(converted.state_dict()) == list(original.state_dict())
    for k, v in converted.state_dict().items():
        assert torch.equal(v, original.state_dict()[k]), k
    # named_parameters keep the module structure (the documented mapping)
    rename = CONVERSIONS[name][2]
    assert [n for n, _ in converted.named_parameters()] == \
        [rename(n) for n, _ in original.named_parameters()]


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_original_checkpoint_loads_into_the_converted_model(name):
    """Weights of a differently initialised original land where they belong."""
    _, converted = convert(name, seed=0)
    other = CONVERSIONS[name][0](1)
    assert rel_err(outputs(converted, name), outputs(other, name)) > 1e-3  # they differ
    assert not converted.load_state_dict(other.state_dict(), strict=True).missing_keys
    assert_holds(converted, other, CONVERSIONS[name][2])
    assert rel_err(outputs(converted, name), outputs(other, name)) <= 1e-6


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_converted_checkpoint_loads_into_the_original_model(name):
    _, converted = convert(name, seed=0)
    fresh = CONVERSIONS[name][0](2)
    fresh.load_state_dict(converted.state_dict(), strict=True)
    assert_holds(converted, fresh, CONVERSIONS[name][2])
    assert rel_err(outputs(fresh, name), outputs(converted, name)) <= 1e-6


@pytest.mark.parametrize("name", ["resnet18", "module_list", "module_list_keep_first_false",
                                  "sequential_keep_first_false", "encoder_and_decoder"])
def test_checkpoint_with_structural_names_still_loads(name):
    """What earlier versions saved (the named_parameters names) loads, and is saved again
    under the original names: an old checkpoint's way into the original model."""
    _, converted = convert(name, seed=0)
    other = CONVERSIONS[name][0](1)
    rename = CONVERSIONS[name][2]
    legacy = {rename(k): v for k, v in other.state_dict().items()}
    assert sorted(legacy) != sorted(other.state_dict())  # the names differ
    converted.load_state_dict(legacy, strict=True)
    assert_holds(converted, other, rename)
    fresh = CONVERSIONS[name][0](2)
    fresh.load_state_dict(converted.state_dict(), strict=True)
    assert_holds(converted, fresh, rename)
    # and a converted model's own structural state (named_parameters and buffers)
    _, again = convert(name, seed=2)
    again.load_state_dict({**dict(converted.named_parameters()), **dict(converted.named_buffers())})
    assert_holds(again, other, rename)


def test_load_errors_name_the_original_keys():
    original, converted = convert("resnet18")
    state = original.state_dict()
    del state["layer3.1.bn2.running_mean"]
    state["layer2.7.conv1.weight"] = state["layer2.1.conv1.weight"]  # no such block
    result = converted.load_state_dict(state, strict=False)
    assert result.missing_keys == ["layer3.1.bn2.running_mean"]
    assert result.unexpected_keys == ["layer2.7.conv1.weight"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layer3\.1\.bn2'):
        converted.load_state_dict(state)


def test_tensors_only_the_converted_model_has_keep_their_names():
    original, converted = convert("resnet18")
    stack = converted.layer2[1]
    stack.init_velocity = copy.deepcopy(stack.functions[0])  # a learned v0 = f(x0)
    keys = list(converted.state_dict())
    extra = [k for k in keys if k not in original.state_dict()]
    assert extra and all(k.startswith("layer2.1.init_velocity.") for k in extra)
    assert [k for k in keys if k not in extra] == list(original.state_dict())
    # back into an identical converted model, strictly; into the original without them
    _, again = convert("resnet18", seed=1)
    again.layer2[1].init_velocity = copy.deepcopy(again.layer2[1].functions[0])
    again.load_state_dict(converted.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                  converted.state_dict().values(), strict=True))
    result = original.load_state_dict(converted.state_dict(), strict=False)
    assert result.unexpected_keys == extra and not result.missing_keys
    result = again.load_state_dict(original.state_dict(), strict=False)
    # (BatchNorm fills in a missing num_batches_tracked when the checkpoint has no version)
    assert result.missing_keys == [k for k in extra if not k.endswith("num_batches_tracked")]
    assert not result.unexpected_keys


class Holder(nn.Module):
    """DistributedDataParallel-style: the model as the attribute ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@pytest.mark.parametrize("wrap, prefix", [(nn.Sequential, "0."), (Holder, "module.")])
@pytest.mark.parametrize("name", ["resnet18", "encoder_in_a_model"])
def test_wrapped_model_uses_the_original_keys_under_its_prefix(name, wrap, prefix):
    original, converted = convert(name)
    wrapped = wrap(converted)
    state = wrapped.state_dict()
    assert list(state) == [prefix + k for k in original.state_dict()]
    other = CONVERSIONS[name][0](1)
    wrapped.load_state_dict({prefix + k: v for k, v in other.state_dict().items()})
    assert_holds(converted, other, CONVERSIONS[name][2])
    fresh = CONVERSIONS[name][0](2)
    fresh.load_state_dict({k.removeprefix(prefix): v for k, v in wrapped.state_dict().items()})
    assert_holds(converted, fresh, CONVERSIONS[name][2])
    assert list(converted.state_dict(prefix="x.")) == ["x." + k for k in original.state_dict()]
    # a converted container on its own: the original container's keys
    path = "layer2" if name == "resnet18" else "encoder"
    part, part_original = converted.get_submodule(path), original.get_submodule(path)
    assert list(part.state_dict()) == list(part_original.state_dict())
    part.load_state_dict(part_original.state_dict())


def test_copies_and_saved_files_keep_the_original_keys(tmp_path):
    original, converted = convert("resnet18")
    keys = list(original.state_dict())
    twin = copy.deepcopy(converted)
    assert list(twin.state_dict()) == keys
    other = CONVERSIONS["resnet18"][0](1)
    twin.load_state_dict(other.state_dict())  # loads into the copy only
    assert_holds(twin, other, resnet_name)
    assert_holds(converted, original, resnet_name)

    torch.save(twin.state_dict(), tmp_path / "weights.pt")
    loaded = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert list(loaded) == keys
    converted.load_state_dict(loaded)
    assert_holds(converted, other, resnet_name)
    original.load_state_dict(loaded)
    assert_holds(converted, original, resnet_name)

    torch.save(twin, tmp_path / "model.pt")  # the whole module, hooks pickled with it
    whole = torch.load(tmp_path / "model.pt", weights_only=False)
    assert list(whole.state_dict()) == keys
    whole.load_state_dict(CONVERSIONS["resnet18"][0](2).state_dict())
    assert_holds(twin, other, resnet_name)


def test_training_resumes_from_a_torchvision_checkpoint():
    """Model and optimizer state of a torchvision run continue in the converted model
    (optimizer state is keyed by parameter order, which the conversion keeps)."""
    model = CONVERSIONS["resnet18"][0](0).train()
    x, y = torch.randn(4, 3, 32, 32, dtype=F64), torch.tensor([1, 2, 3, 4])

    def step(net, opt):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    _, resumed = convert("resnet18", seed=1)
    resumed.train().load_state_dict(copy.deepcopy(model.state_dict()))
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    step(model, opt), step(resumed, opt2)
    state = resumed.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert rel_err(state[k], v) <= 1e-9, k
        else:  # num_batches_tracked
            assert torch.equal(state[k], v), k


def test_private_hook_registration_of_older_torch(monkeypatch):
    """torch < 2.5 has only the private state-dict hook methods: same behaviour."""
    from mresnet_core import _torch_private
    monkeypatch.setattr(_torch_private, "PUBLIC_STATE_DICT_HOOKS", False)
    original, converted = convert("resnet18")
    assert list(converted.state_dict()) == list(original.state_dict())
    other = CONVERSIONS["resnet18"][0](1)
    converted.load_state_dict(other.state_dict())
    assert_holds(converted, other, resnet_name)
    twin = copy.deepcopy(converted)
    twin.load_state_dict(original.state_dict())
    assert_holds(twin, original, resnet_name)
