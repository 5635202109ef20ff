"""experiments.common: the helpers every notebook shares."""
import math
from pathlib import Path

import pytest
import torch

from mresnet_core import exact
from mresnet_core.experiments import common


def test_toy_functions_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = common.toy_functions(3, d=4, hidden=5, seed=7), common.toy_functions(3, d=4, hidden=5, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    for fa, fb in zip(a, b, strict=True):
        for pa, pb in zip(fa.parameters(), fb.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert not torch.equal(a[0][0].weight, a[1][0].weight)  # independent layers


def test_grid_input_is_exact_in_float32_and_fixed_point():
    x = common.grid_input((16, 8), seed=3)
    assert x.dtype == torch.float32
    assert torch.equal(exact.to_float(exact.to_fixed(x), torch.float32), x)
    assert torch.equal(x.double(), (x.double() * 2**20).round() / 2**20)


def test_relative_error_flags_non_finite_results():
    t = torch.ones(3)
    assert common.relative_error(t, t) == 0.0
    assert common.relative_error(torch.tensor([1.0, float("nan"), 1.0]), t) == math.inf
    assert common.relative_error(torch.tensor([1.0, float("inf"), 1.0]), t) == math.inf
    assert common.relative_error(2 * t, t) == pytest.approx(1.0)


def test_check_claims_raises_naming_the_false_claims(capsys):
    common.check_claims({"a holds": True}, identities={"an identity": True})
    out = capsys.readouterr().out
    assert "[ok] a holds" in out and "identity / algebra checks" in out
    with pytest.raises(AssertionError, match="claims that failed: b fails; c fails"):
        common.check_claims({"a holds": True, "b fails": False}, identities={"c fails": 0})
    assert "[FAILED] b fails" in capsys.readouterr().out


def test_a_smoke_run_prints_measured_claims_and_asserts_only_identities(monkeypatch, capsys):
    """run_all.sh --smoke (MRESNET_SMOKE=1): at its sizes a measured claim means nothing,
    so a false one is printed, not raised; a false identity still fails; the output says
    that nothing is a measurement."""
    monkeypatch.setenv("MRESNET_SMOKE", "1")
    assert common.smoke_run()
    common.check_claims({"b fails": False}, identities={"an identity": True}, reported={"r": False})
    out = capsys.readouterr().out
    assert "SMOKE RUN" in out and "nothing below is a measurement" in out and "[FAILED] b fails" in out
    with pytest.raises(AssertionError, match="claims that failed: c fails$"):
        common.check_claims({"b fails": False}, identities={"c fails": False})
    monkeypatch.setenv("MRESNET_SMOKE", "0")
    assert not common.smoke_run()
    with pytest.raises(AssertionError, match="b fails"):
        common.check_claims({"b fails": False})


def test_paper_vs_this_run_takes_computed_values_only():
    table = common.paper_vs_this_run([{"claim": "x", "paper": "yes", "this run: value": 0.5, "this run: ok": True}])
    assert list(table.columns) == ["claim", "paper", "this run: value", "this run: ok"]
    with pytest.raises(TypeError, match="must be a number or a boolean"):
        common.paper_vs_this_run([{"claim": "x", "paper": "yes", "this run": "0.5 (typed)"}])
    with pytest.raises(ValueError, match="no 'this run"):
        common.paper_vs_this_run([{"claim": "x", "paper": "yes"}])


def test_format_this_run_shows_every_value_of_a_mixed_column():
    table = common.paper_vs_this_run([
        {"claim": "a", "paper": "-", "this run": 3.6e-7},
        {"claim": "b", "paper": "-", "this run": True},
        {"claim": "c", "paper": "-", "this run": 51},
        {"claim": "d", "paper": "-", "this run": 580000000000.0},
        {"claim": "e", "paper": "-", "this run": 3.3218}])
    shown = common.format_this_run(table)
    assert list(shown["this run"]) == ["3.6e-07", True, 51, "5.8e+11", "3.3218"]
    assert "3.6e-07" in shown.to_string() and table["this run"].iloc[0] == 3.6e-7  # the input is left as it was
    assert list(shown["claim"]) == ["a", "b", "c", "d", "e"]


def test_cache_key_follows_settings_and_code_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    first = common.checkpoint_path("quick", "run", {"steps": 10})
    assert first.parent == tmp_path / "quick"
    assert common.checkpoint_path("quick", "run", {"steps": 10}) == first
    assert common.checkpoint_path("quick", "run", {"steps": 11}) != first
    monkeypatch.setattr(common, "code_version", lambda: "changed-code")
    assert common.checkpoint_path("quick", "run", {"steps": 10}) != first
    with pytest.raises(ValueError, match="plain name"):
        common.results_dir("../up")


def test_code_version_covers_the_c_kernels(tmp_path, monkeypatch):
    """The default exact backend is C: editing exact_kernels.c must change the cache key."""
    import shutil

    package = Path(common.__file__).resolve().parents[1]
    copy = tmp_path / "mresnet_core"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    monkeypatch.setattr(common, "__file__", str(copy / "experiments" / "common.py"))
    common.code_version.cache_clear()
    try:
        before = common.code_version()
        (copy / "exact_kernels.c").write_text((copy / "exact_kernels.c").read_text() + "\n/* edited */\n")
        common.code_version.cache_clear()
        assert common.code_version() != before
    finally:
        common.code_version.cache_clear()


def test_environment_line_names_versions_and_machine():
    import torchvision

    line = common.environment_line()
    for part in (torch.__version__, torchvision.__version__, common.code_version(), "cores", "torch threads", "GPU"):
        assert part in line


def test_cached_training_is_reused_only_for_the_same_length(tmp_path):
    def run(steps, path):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        gen = torch.Generator().manual_seed(0)
        losses = common.train_steps(model, lambda s: (torch.randn(8, 2, generator=gen), torch.zeros(8, 1)),
                                    torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
                                    steps, checkpoint=path, progress=False)
        return model, losses

    path = tmp_path / "run.pt"
    model, losses = run(5, path)
    assert path.exists() and len(losses) == 5
    again, cached = run(5, path)
    assert cached == losses and torch.equal(again.weight, model.weight)
    longer, more = run(6, path)
    assert len(more) == 6
