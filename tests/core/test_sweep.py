"""Sweeps as independent trainer runs: the commands give back the configs, runs do not
collide, a local sweep runs, resumes run by run and is collected."""
from dataclasses import replace

import pytest

from mresnet_core import sweep
from mresnet_core.train import TrainConfig, build_parser, config_from_args

TINY = TrainConfig(model="mresnet18", dataset="digits", width=4, image_size=8, classes=(0, 1), batch_size=32,
                   lr=0.05, lr_milestones=(1,), epochs=1, threads=1, augment=False, init_velocity="block")


def test_each_command_gives_back_its_config(tmp_path):
    config = replace(TINY, out=str(tmp_path / "run"), gamma=0.5, memory="exact", train_images=40)
    argv = sweep.train_arguments(config)
    assert argv[-1] == "--resume-if-present" and "--no-augment" in argv
    parsed = config_from_args(build_parser().parse_args(argv))
    assert parsed == replace(config, resume=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # present: the same command resumes
    assert config_from_args(build_parser().parse_args(argv)).resume


def test_runs_that_would_collide_are_refused(tmp_path):
    a = sweep.Run("a", replace(TINY, out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="share the output folder"):
        sweep.check_unique([a, sweep.Run("b", a.config)])
    with pytest.raises(ValueError, match="share the name"):
        sweep.check_unique([a, sweep.Run("a", replace(TINY, out=str(tmp_path / "y")))])
    with pytest.raises(ValueError, match="own output folder"):
        sweep.train_arguments(TINY)


def test_slurm_array_runs_one_line_per_task(tmp_path):
    runs = [sweep.Run(f"s{s}", replace(TINY, seed=s, out=str(tmp_path / f"s{s}"))) for s in range(3)]
    commands = sweep.write_commands(runs, tmp_path / "commands.txt")
    lines = commands.read_text().splitlines()
    assert len(lines) == 3 and all("mresnet_core.train" in c and f"s{i}" in c for i, c in enumerate(lines))
    script = sweep.slurm_script(commands, len(runs))
    assert "#SBATCH --array=0-2" in script and "SLURM_ARRAY_TASK_ID + 1" in script and str(commands) in script


@pytest.mark.slow
def test_local_sweep_runs_resumes_and_is_collected(tmp_path):
    runs = [sweep.Run(f"seed{s}", replace(TINY, seed=s, out=str(tmp_path / f"seed{s}"))) for s in (0, 1)]
    rows, line = sweep.collect(runs)
    assert rows == [] and line == "0 of 2 runs finished"
    codes = sweep.run_local(runs[:1], ["cpu"], log=lambda _: None)
    assert codes == {"seed0": 0}
    rows, line = sweep.collect(runs)
    assert line == "1 of 2 runs finished" and rows[0]["run"] == "seed0" and rows[0]["finished"]
    first = (tmp_path / "seed0" / "metrics.json").read_text()
    codes = sweep.run_local(runs, ["cpu", "cpu"], log=lambda _: None)  # seed0 is finished: re-reported
    assert codes == {"seed0": 0, "seed1": 0}
    assert (tmp_path / "seed0" / "metrics.json").read_text() == first
    assert sweep.collect(runs)[1] == "2 of 2 runs finished"


def test_a_smoke_profile_is_its_profile_shrunk_by_smoke_yaml(monkeypatch, tmp_path):
    """``--smoke`` (profile ``paper-smoke``): the paper profile's parameters with
    smoke.yaml's on top, as run_all.sh --profile paper --smoke gives the notebook, and the
    runs in that profile's folders, where the smoke run's notebook looks for them."""
    from mresnet_core.experiments import table2

    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    paper = sweep.notebook_parameters("09_table2_accuracy", "paper")
    smoke = sweep.notebook_parameters("09_table2_accuracy", "paper-smoke")
    assert paper["recipe_name"] == smoke["recipe_name"] == "paper" and paper["datasets"] == smoke["datasets"]
    assert len(paper["seeds"]) == 10 and smoke["seeds"] == [0] and smoke["recipe_changes"]["epochs"] == 1
    runs = table2.notebook_sweep("paper-smoke")
    assert len(runs) == 2 * 3 and all(r.out.parent == tmp_path / "paper-smoke" for r in runs)
    assert {r.config.dataset for r in runs} == {"cifar10", "cifar100"} and {r.config.epochs for r in runs} == {1}
    with pytest.raises(ValueError, match="no parameters for profile 'smoke'"):
        sweep.notebook_parameters("09_table2_accuracy", "smoke")
