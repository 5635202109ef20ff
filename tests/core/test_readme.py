"""The README's usage example runs as written."""
import re
from pathlib import Path


def test_readme_python_example_runs():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["x0"].shape == (8, 500)
    assert (namespace["x0"] - namespace["x"]).abs().max() < 1e-6
