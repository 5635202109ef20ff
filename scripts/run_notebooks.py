"""Execute the paper notebooks headlessly with papermill and summarise the run.

Used by ``run_all.sh``. Each notebook in notebooks/ (NN_name.ipynb) runs with notebooks/
as working directory and the parameters of notebooks/params/<profile>.yaml (a mapping
``notebook stem -> parameters``; the key ``all`` applies to every notebook). Executed
copies and logs go to results/<profile>/; status.json there records each result so that
``--skip-done`` continues a run after a failure instead of starting over.

``--smoke`` shrinks a profile to a smoke run that only shows every code path runs:
notebooks/params/smoke.yaml's overrides (one seed, one short epoch of a few batches, the
smallest sizes that still take the profile's branches) go on top of the profile's
parameters; the kernels see ``MRESNET_SMOKE=1``, so that claim checks print the measured
and reported claims without asserting them (at these sizes they mean nothing) and assert
only the identities. A smoke run's executed notebooks, logs, cached runs and figures go
to results/<profile>-smoke/ (figures in its figures/ folder), never to figures/.
``$MRESNET_RESULTS_DIR`` replaces results/ (the test suite points it at a scratch folder).

``--jobs N`` runs N notebooks at a time, each in its own kernel (the sweeps of a smoke
run first, as without it). For smoke runs and machines with cores to spare: the times a
notebook measures (the Performance notebook's) then depend on the others running beside
it, so the quick profile's references (``--update-committed``) are executed one at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _check_profile(name: str) -> None:
    """Refuse an unknown profile (one line naming the known ones) before anything runs."""
    from mresnet_core.sweep import SMOKE_TABLE

    path = NOTEBOOKS / "params" / f"{name}.yaml"
    if name == SMOKE_TABLE or not path.exists():
        known = sorted(p.stem for p in (NOTEBOOKS / "params").glob("*.yaml") if p.stem != SMOKE_TABLE)
        raise SystemExit(f"unknown profile {name!r}: no {_shown(path)} (profiles: {known}; "
                         f"--smoke shrinks one of them)")


def notebook_parameters(profile: str, stem: str, smoke: bool = False) -> dict:
    """The parameters of notebook ``stem`` under ``profile`` (its ``all`` entry, then the
    notebook's own); with ``smoke``, smoke.yaml's ``all`` and notebook entries on top, and
    ``profile`` set to ``<profile>-smoke`` (the folder of the notebook's cached runs):
    ``mresnet_core.sweep.profile_parameters``, which the sweep launcher reads too."""
    from mresnet_core.sweep import SMOKE_SUFFIX, profile_parameters

    _check_profile(profile)
    return profile_parameters(stem, profile + (SMOKE_SUFFIX if smoke else ""), NOTEBOOKS)


def results_base() -> Path:
    """``$MRESNET_RESULTS_DIR`` if set, else results/ at the root (as the notebooks' cache)."""
    base = os.environ.get("MRESNET_RESULTS_DIR")
    return Path(base) if base else ROOT / "results"


def _shown(path: Path) -> str:
    """``path`` relative to the checkout where it lies inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def select(names: list[str]) -> list[Path]:
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        hits = [p for p in every if name in p.stem]
        if not hits:
            raise SystemExit(f"no notebook matches {name!r}; notebooks: {[p.stem for p in every]}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def run_one(nb: Path, profile: str, out_dir: Path, in_place: bool = False,
            smoke: bool = False, progress: bool = True) -> tuple[str, float, str]:
    import papermill as pm

    out = nb if in_place else out_dir / nb.name
    log = out_dir / f"{nb.stem}.log"
    params = notebook_parameters(profile, nb.stem, smoke)
    start = time.monotonic()
    with open(log, "w") as log_file:
        try:
            pm.execute_notebook(
                str(nb), str(out), parameters=params, cwd=str(NOTEBOOKS), kernel_name="python3",
                progress_bar=progress, stdout_file=log_file, stderr_file=log_file,
            )
            status, detail = "ok", ""
        except Exception as err:  # papermill raises PapermillExecutionError naming the cell
            lines = str(err).strip().splitlines()
            status, detail = "failed", f"{type(err).__name__}: {lines[-1] if lines else ''}"
    return status, time.monotonic() - start, detail


#: notebooks whose runs the sweep launcher trains as jobs (python -m mresnet_core.sweep NAME)
SWEEPS = {"09_table2_accuracy": "table2", "10_figure6_gamma": "figure6"}


def run_sweep(stem: str, profile: str, out_dir: Path) -> tuple[str, float, str]:
    """A smoke run's stand-in for the jobs a profile's sweep is: where the notebook trains
    nothing itself (``train_missing: false``), its sweep runs here first, one trainer
    process at a time (``--local``, on GPU 0 where there is one, else the CPU), the way
    a cluster would run its commands; the log goes to ``<out_dir>/sweep-<name>.log``."""
    import torch

    name = SWEEPS[stem]
    cmd = [sys.executable, "-m", "mresnet_core.sweep", name, "--profile", profile, "--smoke", "--local",
           "--gpus", "0" if torch.cuda.is_available() else "cpu"]
    start = time.monotonic()
    with open(out_dir / f"sweep-{name}.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    last = (out_dir / f"sweep-{name}.log").read_text().strip().splitlines()[-1:] or [""]
    return ("ok" if done.returncode == 0 else "failed"), time.monotonic() - start, last[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only notebooks whose name contains one of these")
    ap.add_argument("--profile", default="quick", help="quick (default, CPU, minutes) or paper (GPU, data sets)")
    ap.add_argument("--skip-done", action="store_true",
                    help="skip notebooks that already succeeded in results/<profile>/ (resume a run)")
    ap.add_argument("--update-committed", action="store_true",
                    help="execute the notebooks in notebooks/ in place (quick profile only): "
                         "refreshes the committed reference copies that nbval re-executes")
    ap.add_argument("--smoke", action="store_true",
                    help="a smoke run of the profile: notebooks/params/smoke.yaml shrinks every notebook to "
                         "seconds to show its code paths run (claims printed, only identities asserted); "
                         "results and figures in results/<profile>-smoke/")
    ap.add_argument("--jobs", type=int, default=1,
                    help="notebooks run at a time, each in its own kernel (default 1; the times a notebook "
                         "measures then depend on the others: not with --update-committed)")
    args = ap.parse_args(argv)
    if args.update_committed and (args.profile != "quick" or args.smoke):
        ap.error("--update-committed is for the quick profile: the committed notebooks are its references")
    if args.jobs < 1 or (args.jobs > 1 and args.update_committed):
        ap.error("--jobs must be 1 or more, and 1 with --update-committed (the committed notebooks' "
                 "measured times must not depend on other notebooks running beside them)")

    name = args.profile + ("-smoke" if args.smoke else "")
    out_dir = results_base().absolute() / name  # absolute: the notebooks run from notebooks/ (below)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        _check_profile(args.profile)  # an unknown profile fails here, before anything runs
        os.environ["MRESNET_SMOKE"] = "1"  # the kernels inherit it (common.smoke_run)
        os.environ.setdefault("MRESNET_FIGURES_DIR", str(out_dir / "figures"))  # never figures/
    status_file = out_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    notebooks = select(args.names)
    if not notebooks:
        print("no notebooks found in notebooks/", file=sys.stderr)
        return 1
    print(f"running {len(notebooks)} notebook(s), profile {args.profile!r}"
          f"{' shrunk to a smoke run (code paths only: no result is a measurement)' if args.smoke else ''}, "
          f"results in {_shown(out_dir)}/", flush=True)
    total = time.monotonic()
    rows = []
    for nb in notebooks if args.smoke else []:
        if nb.stem in SWEEPS and notebook_parameters(args.profile, nb.stem, smoke=True).get("train_missing") is False:
            print(f"sweep {SWEEPS[nb.stem]} (the runs {nb.name} aggregates, as jobs would train them)", flush=True)
            st, seconds, detail = run_sweep(nb.stem, args.profile, out_dir)
            print(f"  {detail}", flush=True)
            rows.append((f"sweep {SWEEPS[nb.stem]}", st, seconds, detail))
    recording = threading.Lock()  # status.json and the printed lines, one notebook at a time

    def execute(i: int, nb: Path) -> tuple[str, str, float, str]:
        previous = status.get(nb.stem, {})
        if args.skip_done and previous.get("status") == "ok" and (out_dir / nb.name).exists():
            return nb.stem, "skipped (done)", previous.get("seconds", 0.0), ""
        with recording:
            print(f"[{i}/{len(notebooks)}] {nb.name}", flush=True)
        st, seconds, detail = run_one(nb, args.profile, out_dir, in_place=args.update_committed,
                                      smoke=args.smoke, progress=args.jobs == 1)
        with recording:
            if args.jobs > 1:
                print(f"  {nb.name}: {st} in {seconds:.0f} s", flush=True)
            if not args.update_committed:  # status.json describes the copies in results/ only
                status[nb.stem] = {"status": st, "seconds": round(seconds, 1), "detail": detail,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                status_file.write_text(json.dumps(status, indent=2))
        return nb.stem, st, seconds, detail

    # papermill starts each kernel in notebooks/ by changing this process's directory there
    # and back; from several threads those changes would interleave and could leave the
    # process elsewhere, so it moves there once for the whole loop (each notebook's change
    # and return are then the same folder) and comes back at the end
    home = os.getcwd()
    os.chdir(NOTEBOOKS)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # papermill's kernels are processes
            rows += list(pool.map(execute, range(1, len(notebooks) + 1), notebooks))
    finally:
        os.chdir(home)

    print(f"\nsummary (profile {name}, {time.monotonic() - total:.0f} s in all)")
    failed = []
    for stem, st, seconds, detail in rows:
        print(f"  {st:<15} {seconds:7.1f} s  {stem}")
        if st == "failed" and stem.startswith("sweep "):
            failed.append(stem)
            print(f"      {detail}\n      log: {_shown(out_dir / (stem.replace(' ', '-') + '.log'))}")
        elif st == "failed":
            failed.append(stem)
            print(f"      {detail}\n      executed notebook: {_shown(out_dir / (stem + '.ipynb'))}"
                  f"\n      log: {_shown(out_dir / (stem + '.log'))}")
    if failed:
        print(f"{len(failed)} notebook(s) failed; fix and re-run with --skip-done to continue", file=sys.stderr)
        return 1
    if args.smoke:
        print(f"all {len(rows)} notebook(s) ran (smoke run: code paths only, the numbers are not results); "
              f"figures in {_shown(Path(os.environ['MRESNET_FIGURES_DIR']))}/")
    else:
        print(f"all {len(rows)} notebook(s) passed; figures in figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
