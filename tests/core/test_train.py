"""train.py: seeded runs repeat exactly, --resume (after a stop or a kill) ends where an
uninterrupted run ends, bad arguments change no saved file, and torchrun (2 CPU
processes, gloo) takes the same steps as one process on the same global batch."""
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mresnet_core.data import load_data, make_loader
from mresnet_core.models import momentum_stacks, set_gamma
from mresnet_core.train import (CHECKPOINT, ConfigError, TrainConfig, build_parser, config_from_args,
                                evaluate, main, quick_config, train)

ROOT = Path(__file__).resolve().parents[2]
# a tiny Momentum ResNet on two digits at 8x8: 270 training images, 9 steps an epoch
TINY = TrainConfig(model="mresnet18", dataset="digits", width=4, image_size=8, classes=(0, 1), batch_size=32,
                   lr=0.05, epochs=2, threads=1)
TINY_ARGS = ["-m", "mresnet18", "--dataset", "digits", "--width", "4", "--image-size", "8", "--classes", "0", "1",
             "--batch-size", "32", "--lr", "0.05", "--threads", "1"]


def _env():
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mresnet_core.train", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _metrics(history):
    """What must repeat: everything but the wall time and the machine's memory readings."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "peak_memory_mib")} for row in history]


def _same_run(ckpt_path, reference):
    """The checkpoint at ckpt_path holds exactly the reference run's weights and metrics."""
    ckpt = torch.load(ckpt_path, weights_only=False)
    state = reference.model.state_dict()
    assert ckpt["model"].keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(ckpt["model"][k], v), k
    assert _metrics(ckpt["history"]) == _metrics(reference.history)
    assert _metrics(json.loads((Path(ckpt_path).parent / "metrics.json").read_text())) == \
        _metrics(reference.history)


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted in-process run of TINY (2 epochs)."""
    return train(TINY, progress=False, verbose=False)


def test_seeded_runs_repeat_exactly(reference):
    again = train(TINY, progress=False, verbose=False)
    assert _metrics(again.history) == _metrics(reference.history)
    assert [row["epoch"] for row in again.history] == [1, 2]
    for a, b in zip(again.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)
    other = train(replace(TINY, seed=1, epochs=1), progress=False, verbose=False)
    assert _metrics(other.history) != _metrics(reference.history[:1])
    assert reference.history[-1]["test_acc"] > 65  # it learns (two digits, chance 50 %)


def test_resume_in_process_is_exact(reference, tmp_path):
    train(replace(TINY, epochs=1, out=str(tmp_path)), progress=False, verbose=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ("epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds,peak_memory_mib,"
                        "peak_memory_kind") and len(lines) == 2
    row = json.loads((tmp_path / "metrics.json").read_text())[0]
    # the process's peak resident set in the epoch: at least the model's and the data's
    assert row["peak_memory_kind"] == "cpu-rss" and row["peak_memory_mib"] > 50
    resumed = train(replace(TINY, out=str(tmp_path), resume=True), progress=False, verbose=False)
    assert _metrics(resumed.history) == _metrics(reference.history)
    _same_run(tmp_path / CHECKPOINT, reference)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


def test_refit_a_given_model_at_another_gamma(reference, capsys):
    """The notebooks' workflow: train, change gamma, evaluate, refit the same model."""
    model = copy.deepcopy(reference.model)
    set_gamma(model, 0.5)
    data = load_data("digits", image_size=8, classes=(0, 1))
    loss, acc = evaluate(model, make_loader(data.test, 64, train=False))
    assert 0 <= acc <= 100 and loss > 0
    refit = train(replace(TINY, epochs=1, lr=0.01), model=model, data=data, progress=False)
    assert refit.model is model and len(refit.history) == 1
    assert all(s.gamma == 0.5 for s in momentum_stacks(model))
    assert "model: the given NarrowResNet (44,358 parameters), gamma 0.5" in capsys.readouterr().out
    before = dict(reference.model.named_parameters())
    assert any(not torch.equal(p, before[k]) for k, p in model.named_parameters())


@pytest.mark.slow
def test_the_number_of_workers_changes_nothing_but_speed():
    """Each sample's augmentation has its own seed: 0, 1 or 2 DataLoader workers give the
    same run, bit for bit, and the same run twice."""
    runs = [train(replace(TINY, epochs=2, workers=w), progress=False, verbose=False) for w in (0, 2, 1, 2)]
    assert all(_metrics(r.history) == _metrics(runs[0].history) for r in runs[1:])
    for name, p in runs[0].model.state_dict().items():
        assert torch.equal(p, runs[1].model.state_dict()[name]), name


def test_cli_keeps_the_reference_scripts_options():
    args = build_parser().parse_args(["-m", "mresnet101", "-g", "0.5", "-i", "1", "--seed", "3"])
    config = config_from_args(args)
    assert (config.model, config.gamma, config.init_velocity, config.seed) == ("mresnet101", 0.5, "block", 3)
    assert config.dataset == "cifar10" and config.download  # run_CIFAR_10.py's data set, fetched if missing
    assert config.out == "results/train/cifar10/mresnet101-w64-g0.5-i1-s3" and config.memory == "auto"
    other = config_from_args(build_parser().parse_args(["-m", "mresnet101", "-g", "0.5", "-i", "0", "--seed", "3"]))
    assert other.out != config.out  # -i 1 after -i 0: two folders
    assert config_from_args(build_parser().parse_args(["-s", "elsewhere"])).out == "elsewhere"
    assert (config.epochs, config.lr, config.lr_milestones, config.batch_size) == (220, 0.01, (180,), 128)
    assert config_from_args(build_parser().parse_args(["-i", "0", "--no-memory-free"])).init_velocity == "zero"
    for flags, mode in ((["--memory-free"], "exact"), (["--no-memory-free"], "backprop"),
                        (["--memory", "recompute"], "recompute"), ([], "auto")):
        assert config_from_args(build_parser().parse_args(flags)).memory == mode


def test_api_rejects_a_model_change_on_resume(reference, tmp_path):
    train(replace(TINY, epochs=1, out=str(tmp_path)), progress=False, verbose=False)
    with pytest.raises(ConfigError, match="model: checkpoint 'mresnet18' vs now 'resnet18'"):
        train(replace(TINY, model="resnet18", out=str(tmp_path), resume=True), progress=False)


@pytest.mark.slow
def test_cli_resume_after_a_stop_matches_an_uninterrupted_run(reference, tmp_path):
    first = _cli(*TINY_ARGS, "--epochs", "1", "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "digits 01: 270 train / 90 test images, 3x8x8, 2 classes" in first.stdout
    assert "gamma 0.9" in first.stdout and "device: cpu, 1 threads" in first.stdout
    second = _cli(*TINY_ARGS, "--epochs", "2", "--out", str(tmp_path), "--resume")
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch 1" in second.stdout
    _same_run(tmp_path / CHECKPOINT, reference)


@pytest.mark.slow
def test_cli_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mresnet_core.train", *TINY_ARGS, "--epochs",
                             "50", "--out", str(tmp_path), "--no-progress"], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / CHECKPOINT
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()
    done = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= done < 50
    resumed = _cli(*TINY_ARGS, "--epochs", str(done + 1), "--out", str(tmp_path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = train(replace(TINY, epochs=done + 1), progress=False, verbose=False)
    _same_run(ckpt, reference)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv,message", [
    (["-m", "resnet20"], "invalid choice: 'resnet20'"),
    (["-g", "1.5"], r"gamma must be a number in \[0, 1\]"),
    (["-m", "resnet18", "--resume"], "another configuration"),
    (["--resume", "--lr", "0.1"], "lr: checkpoint 0.05 vs now 0.1"),
    ([], "already holds a run"),
    (["--resume", "--epochs", "0"], "epochs must be a positive integer"),
    (["--dataset", "cifar10"], "class subsets .* exist for digits and fashion-mnist only"),
    (["--resume", "--no-augment"], "augment: checkpoint True vs now False"),
    (["--resume", "--out", "{tmp}/empty"], "nothing to resume"),
    (["--threads", "0", "--out", "{tmp}/new"], "threads must be a positive integer"),
    (["--device", "foo", "--out", "{tmp}/new"], "unknown device 'foo'"),
    (["--lr-factor", "-5", "--out", "{tmp}/new"], r"lr_factor .* must lie in \(0, 1\], got -5"),
    (["--out", "{tmp}/run/config.json"], "is a file, not a folder"),
    (["-m", "resnet18", "--weights", "FOO", "--stem", "imagenet", "--width", "64", "--out", "{tmp}/new"],
     "unknown weights 'FOO' for resnet18; choose one of IMAGENET1K_V1"),
])
def test_bad_arguments_change_no_saved_file(argv, message, tmp_path, capsys):
    run = tmp_path / "run"
    train(replace(TINY, epochs=1, out=str(run)), progress=False, verbose=False)
    before = _snapshot(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(run)]
    with pytest.raises(SystemExit) as exit_info:
        main(TINY_ARGS + ["--epochs", "1", "--no-progress"] + argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_missing_data_is_a_clear_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--no-download",
              "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert re.search("CIFAR-10 is not in .*--data-dir.*--dataset digits", capsys.readouterr().err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "none").exists()


def test_the_reference_command_offline_is_one_line_naming_cifar10(tmp_path):
    """``-m mresnet18 -g 0.9`` alone trains on CIFAR-10, downloading it: offline that is
    one line on stderr naming CIFAR-10 and how to get it, exit status 2, no traceback,
    and no folder left behind (a fresh process: the download really fails here)."""
    code = ("import urllib.error\n"
            "from torchvision.datasets import utils\n"
            "def no_network(*a, **k): raise urllib.error.URLError('[Errno -2] Name or service not known')\n"
            "utils.download_url = no_network\n"
            "from mresnet_core.train import main\n"
            "main(['-m', 'mresnet18', '-g', '0.9', '--epochs', '1'])\n")
    env = {**_env(), "MRESNET_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"CIFAR-10 is not in .*data.cifar10 and could not be downloaded.*load_data", lines[0])
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_help_documents_the_paper_settings():
    result = _cli("--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("--lr-milestones", "--resume", "--memory-free", "cifar10", "torchrun", "the paper: 0.9", "MRESNET_EXACT_BACKEND=eager"):
        assert text in result.stdout


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from mresnet_core.train import TrainConfig, train
steps = []
config = TrainConfig(**{config})
train(config, progress=False, verbose=False,
      callback=lambda model, epoch: steps.append([p.detach().clone() for p in model.parameters()]))
if dist.get_rank() == 0:
    torch.save(steps, sys.argv[1])
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_takes_the_single_process_steps(tmp_path):
    """2 CPU processes (gloo) on half batches each == 1 process on the global batch, step by
    step, for a memory-free Momentum ResNet. BatchNorm uses its running statistics
    (freeze_bn): in training mode each process would normalise with its own half batch,
    and SyncBatchNorm refuses CPU tensors in this torch. No augmentation: each process
    draws its random shifts from its own generator, so the crops would differ."""
    config = replace(TINY, epochs=1, freeze_bn=True, augment=False)
    fields = {k: getattr(config, k) for k in ("model", "dataset", "width", "image_size", "classes", "batch_size",
                                              "lr", "epochs", "threads", "freeze_bn", "augment")}
    script = tmp_path / "ddp_steps.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).replace("{config}", repr(fields)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", str(script), str(tmp_path / "steps.pt")],
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(tmp_path / "steps.pt")
    single = []
    model = train(config, progress=False, verbose=False,
                  callback=lambda m, e: single.append([p.detach().clone() for p in m.parameters()])).model
    assert all(s.memory_efficient for s in model.modules() if hasattr(s, "memory_efficient"))
    assert len(distributed) == len(single) == 9
    for step, (a, b) in enumerate(zip(distributed, single)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"step {step + 1}")
    assert not torch.equal(single[-1][0], single[0][0])  # the steps did move the weights


@pytest.mark.slow
def test_quick_profile_learns_the_digits():
    """The notebooks' quick profile reaches the accuracy the report quotes (ResNet-18)."""
    result = train(quick_config("resnet18"), progress=False, verbose=False)
    assert result.history[-1]["test_acc"] >= 95
    assert [row["lr"] for row in result.history] == pytest.approx([0.05] * 4 + [0.005] * 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_asked_for_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(TINY_ARGS + ["--epochs", "1", "--no-progress", "--device", "cuda", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_an_unreadable_checkpoint_is_a_clear_error_and_stays(content, tmp_path, capsys):
    run = tmp_path / "run"
    train(replace(TINY, epochs=1, out=str(run)), progress=False, verbose=False)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100] if content is None else content)  # None: truncated
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(TINY_ARGS + ["--epochs", "2", "--no-progress", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is not a readable checkpoint of this trainer" in err
    assert len(err.strip().splitlines()) == 1 and _snapshot(tmp_path) == before


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_nothing_non_finite(tmp_path, capsys):
    run = tmp_path / "wild"
    with pytest.raises(SystemExit) as exit_info:
        main(TINY_ARGS + ["--no-progress", "-m", "resnet18", "--epochs", "3", "--lr", "1e6", "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "diverged" in err and "learning rate 1e+06" in err
    if (run / "metrics.json").exists():  # epochs before the divergence: finite, strict JSON
        history = json.loads((run / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"]) for row in history)
        assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == len(history)


def test_a_finished_run_loads_and_evaluates_from_its_folder(reference, tmp_path, capsys):
    from mresnet_core.train import load_run

    run = tmp_path / "run"
    done = train(replace(TINY, epochs=1, out=str(run)), progress=False, verbose=False)
    loaded = load_run(run)
    assert loaded.config.model == TINY.model and loaded.history == done.history and not loaded.model.training
    for a, b in zip(loaded.model.state_dict().values(), done.model.state_dict().values()):
        assert torch.equal(a, b)
    main(TINY_ARGS + ["--out", str(run), "--test-only"])
    assert f"accuracy {done.history[-1]['test_acc']:.2f}%" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(TINY_ARGS + ["--out", str(tmp_path / "none"), "--test-only"])
    assert exit_info.value.code == 2 and "no run in" in capsys.readouterr().err


def test_resume_accepts_a_moved_data_folder_and_download_flag(tmp_path):
    run = tmp_path / "run"
    train(replace(TINY, epochs=1, out=str(run)), progress=False, verbose=False)
    resumed = train(replace(TINY, epochs=2, out=str(run), resume=True, data_dir=str(tmp_path / "moved"),
                            download=False), progress=False, verbose=False)
    assert len(resumed.history) == 2


@pytest.mark.parametrize("memory", ["exact", "auto"])
def test_mixed_precision_trains_and_resumes_exactly(memory, tmp_path):
    """--amp (bfloat16 autocast on the CPU) trains a memory-free model, differs from the
    float32 run, and resumes to the uninterrupted run's weights."""
    amp = replace(TINY, epochs=2, amp=True, memory=memory)
    whole = train(amp, progress=False, verbose=False)
    plain = train(replace(amp, amp=False), progress=False, verbose=False)
    assert all(math.isfinite(row["train_loss"]) for row in whole.history)
    assert whole.history[-1]["train_loss"] != plain.history[-1]["train_loss"]
    run = tmp_path / "run"
    train(replace(amp, epochs=1, out=str(run)), progress=False, verbose=False)
    resumed = train(replace(amp, out=str(run), resume=True), progress=False, verbose=False)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)
