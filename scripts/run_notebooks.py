"""Execute the paper notebooks headlessly with papermill and summarise the run.

Used by ``run_all.sh``. Each notebook in notebooks/ (NN_name.ipynb) runs with notebooks/
as working directory and the parameters of notebooks/params/<profile>.yaml (a mapping
``notebook stem -> parameters``; the key ``all`` applies to every notebook). Executed
copies and logs go to results/<profile>/; status.json there records each result so that
``--skip-done`` continues a run after a failure instead of starting over.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def notebook_parameters(profile: str, stem: str) -> dict:
    path = NOTEBOOKS / "params" / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (NOTEBOOKS / "params").glob("*.yaml"))
        raise SystemExit(f"unknown profile {profile!r}: no {path.relative_to(ROOT)} (profiles: {known})")
    table = yaml.safe_load(path.read_text()) or {}
    params = dict(table.get("all") or {})
    params.update(table.get(stem) or {})
    return params


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


def run_one(nb: Path, profile: str, out_dir: Path, in_place: bool = False) -> tuple[str, float, str]:
    import papermill as pm

    out = nb if in_place else out_dir / nb.name
    log = out_dir / f"{nb.stem}.log"
    params = notebook_parameters(profile, nb.stem)
    start = time.monotonic()
    with open(log, "w") as log_file:
        try:
            pm.execute_notebook(
                str(nb), str(out), parameters=params, cwd=str(NOTEBOOKS), kernel_name="python3",
                progress_bar=True, stdout_file=log_file, stderr_file=log_file,
            )
            status, detail = "ok", ""
        except Exception as err:  # papermill raises PapermillExecutionError naming the cell
            lines = str(err).strip().splitlines()
            status, detail = "failed", f"{type(err).__name__}: {lines[-1] if lines else ''}"
    return status, time.monotonic() - start, detail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only notebooks whose name contains one of these")
    ap.add_argument("--profile", default="quick", help="quick (default, CPU, minutes) or paper (GPU, data sets)")
    ap.add_argument("--skip-done", action="store_true",
                    help="skip notebooks that already succeeded in results/<profile>/ (resume a run)")
    ap.add_argument("--update-committed", action="store_true",
                    help="execute the notebooks in notebooks/ in place (quick profile only): "
                         "refreshes the committed reference copies that nbval re-executes")
    args = ap.parse_args(argv)
    if args.update_committed and args.profile != "quick":
        ap.error("--update-committed is for the quick profile: the committed notebooks are its references")

    out_dir = ROOT / "results" / args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    status_file = out_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    notebooks = select(args.names)
    if not notebooks:
        print("no notebooks found in notebooks/", file=sys.stderr)
        return 1
    print(f"running {len(notebooks)} notebook(s), profile {args.profile!r}, results in "
          f"{out_dir.relative_to(ROOT)}/", flush=True)
    total = time.monotonic()
    rows = []
    for i, nb in enumerate(notebooks, 1):
        previous = status.get(nb.stem, {})
        if args.skip_done and previous.get("status") == "ok" and (out_dir / nb.name).exists():
            rows.append((nb.stem, "skipped (done)", previous.get("seconds", 0.0), ""))
            continue
        print(f"[{i}/{len(notebooks)}] {nb.name}", flush=True)
        st, seconds, detail = run_one(nb, args.profile, out_dir, in_place=args.update_committed)
        if not args.update_committed:  # status.json describes the copies in results/ only
            status[nb.stem] = {"status": st, "seconds": round(seconds, 1), "detail": detail,
                               "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            status_file.write_text(json.dumps(status, indent=2))
        rows.append((nb.stem, st, seconds, detail))

    print(f"\nsummary (profile {args.profile}, {time.monotonic() - total:.0f} s in all)")
    failed = []
    for stem, st, seconds, detail in rows:
        print(f"  {st:<15} {seconds:7.1f} s  {stem}")
        if st == "failed":
            failed.append(stem)
            print(f"      {detail}\n      executed notebook: {(out_dir / (stem + '.ipynb')).relative_to(ROOT)}"
                  f"\n      log: {(out_dir / (stem + '.log')).relative_to(ROOT)}")
    if failed:
        print(f"{len(failed)} notebook(s) failed; fix and re-run with --skip-done to continue", file=sys.stderr)
        return 1
    print(f"all {len(rows)} notebook(s) passed; figures in figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
