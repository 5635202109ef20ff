"""Multi-run experiments (Table 2, Figure 6, ...) as independent trainer runs.

Each run is one command line of ``python -m mresnet_core.train`` with its own output
folder and ``--resume-if-present``: it starts, continues after an interruption, or only
re-reports when finished, so a sweep is resumed run by run by running its commands again.
The fan-out is left to existing tools: the commands file is what a cluster scheduler
takes (:func:`slurm_script` writes a SLURM job array over it), and on one machine
:func:`run_local` runs one process per GPU from the list. :func:`collect` reads back the
runs that exist and says how many of how many are finished, for the notebooks.

    python -m mresnet_core.sweep table2 --list              # the commands, one per line
    python -m mresnet_core.sweep table2 --slurm sweep.sbatch # then: sbatch sweep.sbatch
    python -m mresnet_core.sweep table2 --local --gpus 0 1 2 3
    python -m mresnet_core.sweep table2 --status            # how many runs are finished
    python -m mresnet_core.sweep table2 --smoke --local --gpus cpu  # the smoke run's (seconds)

A sweep's runs are the runs its notebook trains, in the same folders (the notebook's
cache for that profile and code version): the notebook then loads the finished ones.
Registered: ``table2`` (notebook 09) and ``figure6`` (notebook 10, its trainings at each
gamma; the short refits run in the notebook).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import json
import os
import queue
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .paths import project_root
from .train import CHECKPOINT, TrainConfig

#: TrainConfig fields that a sweep's command never sets (per-run bookkeeping)
NOT_FLAGS = ("out", "resume")
#: fields whose command-line flag is not ``--<field-with-dashes>``
FLAG_NAMES = {"init_velocity": "--init-velocity", "out": "-s"}


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a name (unique in the sweep) and its training settings;
    ``out`` is its own output folder."""

    name: str
    config: TrainConfig

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def train_arguments(config: TrainConfig) -> list[str]:
    """The trainer's command-line arguments that give ``config`` (every setting that
    differs from the trainer's default; ``-s`` for the output folder)."""
    default = TrainConfig()
    argv: list[str] = []
    for field in dataclasses.fields(TrainConfig):
        name, value = field.name, getattr(config, field.name)
        if name in NOT_FLAGS or value == getattr(default, name):
            continue
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            argv += [flag, *map(str, value)]
        elif value is None:
            raise ValueError(f"{name}=None differs from the trainer's default and has no flag")
        else:
            argv += [flag, str(value)]
    if config.out is None:
        raise ValueError("a sweep's run needs its own output folder (config.out)")
    return argv + ["-s", str(config.out), "--resume-if-present"]


def command(run: Run, python: str = "python") -> str:
    """The shell command of one run."""
    return shlex.join([python, "-m", "mresnet_core.train", *train_arguments(run.config)])


def check_unique(runs: Sequence[Run]) -> None:
    """A ValueError if two runs share a name or an output folder (they would collide)."""
    for what, key in (("name", lambda r: r.name), ("output folder", lambda r: str(r.out))):
        seen: dict = {}
        for r in runs:
            if key(r) in seen:
                raise ValueError(f"runs {seen[key(r)]!r} and {r.name!r} share the {what} {key(r)!r}")
            seen[key(r)] = r.name


def write_commands(runs: Sequence[Run], path: Path, python: str = "python") -> Path:
    """``path``: one command per line, in the order of ``runs``."""
    check_unique(runs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(command(r, python) + "\n" for r in runs))
    return path


def slurm_script(commands: Path, count: int, *, job_name: str = "mresnet-sweep",
                 time: str = "24:00:00", gpus_per_run: int = 1) -> str:
    """A SLURM batch script whose job array runs line ``SLURM_ARRAY_TASK_ID + 1`` of
    ``commands``, from the repository root (submit it with ``sbatch``)."""
    logs = Path(commands).parent / "slurm-logs"
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{count - 1}",
        f"#SBATCH --gres=gpu:{gpus_per_run}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={logs}/%A_%a.out",
        "set -euo pipefail",
        f"cd {shlex.quote(str(project_root()))}",
        f"line=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {shlex.quote(str(commands))})",
        'exec bash -c "$line"',
        "",
    ])


def run_local(runs: Sequence[Run], gpus: Sequence[str], *, python: str = sys.executable,
              log: Callable[[str], None] = print) -> dict[str, int]:
    """Run the sweep on this machine, one process per GPU in ``gpus`` (each process sees
    only its GPU through CUDA_VISIBLE_DEVICES; "cpu" slots run on the CPU), a run's
    output in ``<out>/sweep.log``. Returns each run's exit status."""
    check_unique(runs)
    if not gpus:
        raise ValueError("name at least one GPU (or 'cpu') to run on")
    free: queue.Queue = queue.Queue()
    for g in gpus:
        free.put(str(g))

    def one(run: Run) -> int:
        gpu = free.get()
        try:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if gpu == "cpu" else gpu)
            run.out.mkdir(parents=True, exist_ok=True)
            log(f"[{gpu}] {run.name}: {command(run, python)}")
            with open(run.out / "sweep.log", "a") as out:
                done = subprocess.run(shlex.split(command(run, python)), env=env, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=project_root())
            log(f"[{gpu}] {run.name}: exit status {done.returncode}")
            return done.returncode
        finally:
            free.put(gpu)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        return dict(zip((r.name for r in runs), pool.map(one, runs)))


def history(run: Run) -> list:
    """The per-epoch metrics ``run``'s folder holds (empty before its first epoch)."""
    metrics = run.out / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else []


def is_finished(run: Run, epochs: list | None = None) -> bool:
    """Whether ``run``'s folder holds its checkpoint and every epoch of its training
    (``epochs``: its :func:`history`, when already read)."""
    epochs = history(run) if epochs is None else epochs
    return len(epochs) >= run.config.epochs and (run.out / CHECKPOINT).exists()


def collect(runs: Sequence[Run]) -> tuple[list[dict], str]:
    """The runs of the sweep that exist: for each run folder with metrics, its name,
    epochs done, whether it is finished and its last epoch's metrics; and a line saying
    how many of how many runs are finished (and how many started)."""
    rows, finished, started = [], 0, 0
    for r in runs:
        epochs = history(r)
        if not epochs:
            continue
        started += 1
        done = is_finished(r, epochs)
        finished += done
        rows.append({"run": r.name, "epochs": len(epochs), "finished": done, **epochs[-1]})
    line = f"{finished} of {len(runs)} runs finished" + (
        f" ({started - finished} more started)" if started > finished else "")
    return rows, line


#: experiment name -> "module:function", the function(profile) giving its runs: a table of
#: entry points, looked up by name when the command line asks for one (the experiment
#: modules use this module, not the other way round)
EXPERIMENTS = {
    "table2": "mresnet_core.experiments.table2:notebook_sweep",
    "figure6": "mresnet_core.experiments.gamma_robustness:notebook_sweep",
}


def experiment_runs(name: str, profile: str) -> list[Run]:
    """The runs of experiment ``name`` (:data:`EXPERIMENTS`) with ``profile``'s parameters."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(sorted(EXPERIMENTS))}")
    module, _, function = EXPERIMENTS[name].partition(":")
    return getattr(importlib.import_module(module), function)(profile)


def sweep_dir(profile: str, name: str) -> Path:
    """Where a sweep's runs go: ``<results_dir(profile)>/sweeps/<name>``."""
    from .experiments.common import results_dir

    return results_dir(profile) / "sweeps" / name


def profile_parameters(stem: str, profile: str, notebooks: Path | None = None) -> dict:
    """What ``run_all.sh --profile <profile>`` passes notebook ``<stem>`` (papermill
    parameters): ``notebooks/params/<profile>.yaml``'s ``all`` entry, then the
    notebook's own. A profile ``<name>-smoke`` is ``run_all.sh --profile <name> --smoke``'s:
    ``<name>``'s entries, then those of ``notebooks/params/smoke.yaml``, and ``profile``
    set to ``<name>-smoke`` (the folder of its cached runs). ValueError for a profile
    without a parameter file. ``notebooks``: the notebooks folder (default: this checkout's)."""
    import yaml

    notebooks = notebooks or project_root() / "notebooks"
    base, smoke = (profile[:-len(SMOKE_SUFFIX)], True) if profile.endswith(SMOKE_SUFFIX) else (profile, False)
    table_file = notebooks / "params" / f"{base}.yaml"
    if not table_file.is_file() or base == SMOKE_TABLE:
        raise ValueError(f"no parameters for profile {profile!r} ({table_file} is missing)")
    params: dict = {}
    for path in [table_file] + ([notebooks / "params" / f"{SMOKE_TABLE}.yaml"] if smoke else []):
        table = yaml.safe_load(path.read_text()) or {}
        params.update(table.get("all") or {})
        params.update(table.get(stem) or {})
    if smoke:
        params["profile"] = profile
    return params


def notebook_parameters(stem: str, profile: str) -> dict:
    """The parameters notebook ``notebooks/<stem>.ipynb`` runs with under ``profile``: the
    defaults of its ``parameters`` cell, then :func:`profile_parameters`."""
    import ast

    cells = json.loads((project_root() / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    params = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    return {**params, **profile_parameters(stem, profile)}


#: a profile named ``<name>-smoke`` is ``<name>`` shrunk by notebooks/params/smoke.yaml
SMOKE_SUFFIX = "-smoke"
#: notebooks/params/smoke.yaml: overrides for a smoke run, not a profile of its own
SMOKE_TABLE = "smoke"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mresnet_core.sweep",
                                description="A multi-run experiment as independent trainer runs.")
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--profile", default="paper", help="the notebooks' profile whose settings to use")
    p.add_argument("--smoke", action="store_true", help="the profile's smoke run (run_all.sh --smoke): "
                   "shrunk by notebooks/params/smoke.yaml, runs in the smoke run's folders")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--list", action="store_true", help="print the commands, one per line (default)")
    how.add_argument("--slurm", metavar="FILE", help="write a SLURM job-array script (and the commands file)")
    how.add_argument("--local", action="store_true", help="run here, one process per --gpus entry")
    how.add_argument("--status", action="store_true", help="how many runs are finished")
    p.add_argument("--gpus", nargs="+", default=["0"], help="--local: GPU indices (or 'cpu')")
    p.add_argument("--time", default="24:00:00", help="--slurm: time limit per run")
    args = p.parse_args(argv)
    if args.smoke:
        args.profile += SMOKE_SUFFIX
    runs = experiment_runs(args.experiment, args.profile)
    check_unique(runs)
    if args.status:
        print(collect(runs)[1])
        return 0
    if args.local:
        codes = run_local(runs, args.gpus)
        print(collect(runs)[1])
        return 0 if all(c == 0 for c in codes.values()) else 1
    if args.slurm:
        commands = write_commands(runs, sweep_dir(args.profile, args.experiment) / "commands.txt")
        Path(args.slurm).write_text(slurm_script(commands, len(runs), job_name=f"mresnet-{args.experiment}",
                                                 time=args.time))
        print(f"wrote {args.slurm} ({len(runs)} runs; commands in {commands}); submit: sbatch {args.slurm}")
        return 0
    for r in runs:
        print(command(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
