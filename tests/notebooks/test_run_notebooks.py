"""The notebook runner behind run_all.sh: summary, exit status, resuming with --skip-done,
notebooks side by side with --jobs."""
import json
import os

import nbformat
import pytest


@pytest.fixture
def runner(tmp_path, monkeypatch, load_script):
    module = load_script("scripts/run_notebooks.py")
    nbdir = tmp_path / "notebooks"
    (nbdir / "params").mkdir(parents=True)
    (nbdir / "params" / "quick.yaml").write_text("01_fails:\n  value: 2\n")
    for stem, source in [("00_works", "print(value + 1)"), ("01_fails", "assert value == 1, 'bad value'")]:
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
        nb.cells = [nbformat.v4.new_code_cell("value = 1", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, nbdir / f"{stem}.ipynb")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "NOTEBOOKS", nbdir)
    monkeypatch.delenv("MRESNET_RESULTS_DIR", raising=False)  # results/ under the fake root
    return module, tmp_path


@pytest.mark.slow
def test_failure_is_summarised_and_resume_skips_what_passed(runner, capsys):
    module, root = runner
    assert module.main([]) == 1
    out = capsys.readouterr().out
    assert "ok" in out and "00_works" in out
    assert "failed" in out and "results/quick/01_fails.ipynb" in out and "bad value" in out
    status = json.loads((root / "results" / "quick" / "status.json").read_text())
    assert status["00_works"]["status"] == "ok" and status["01_fails"]["status"] == "failed"
    executed = nbformat.read(root / "results" / "quick" / "00_works.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "2"

    (root / "notebooks" / "params" / "quick.yaml").write_text("01_fails:\n  value: 1\n")
    assert module.main(["--skip-done"]) == 0
    out = capsys.readouterr().out
    assert "skipped (done)" in out and "all 2 notebook(s) passed" in out


def test_unknown_profile_and_selection_are_clear_errors(runner):
    module, _ = runner
    with pytest.raises(SystemExit, match="unknown profile 'nope'"):
        module.main(["--profile", "nope"])
    with pytest.raises(SystemExit, match="no notebook matches 'zzz'"):
        module.main(["zzz"])


def test_jobs_run_notebooks_side_by_side_with_the_same_summary(runner, capsys):
    """--jobs 2: both notebooks run (each in its own kernel), status.json and the summary
    say what they say one at a time, a failure still fails the run; the committed
    references are executed one at a time only."""
    module, root = runner
    here = os.getcwd()
    assert module.main(["--jobs", "2"]) == 1
    # papermill moves the process to a notebook's folder and back: the runner's threads must
    # not leave it there. A race (it depends on which notebook ends first): before the fix,
    # one run of the suite was left in this test's scratch folder and nbval lost its files
    assert os.getcwd() == here
    out = capsys.readouterr().out
    assert "00_works.ipynb: ok" in out and "01_fails.ipynb: failed" in out and "bad value" in out
    status = json.loads((root / "results" / "quick" / "status.json").read_text())
    assert status["00_works"]["status"] == "ok" and status["01_fails"]["status"] == "failed"
    executed = nbformat.read(root / "results" / "quick" / "00_works.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "2"
    with pytest.raises(SystemExit):
        module.main(["--jobs", "2", "--update-committed"])
    with pytest.raises(SystemExit):
        module.main(["--jobs", "0"])
