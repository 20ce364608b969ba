"""The README's set-up commands are what CI runs, and its Python examples run."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_first_section_gives_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["bash scripts/dev.sh demo", "bash scripts/dev.sh test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash scripts/dev.sh test\n" in ci


def test_python_examples_run():
    """Each example in a fresh namespace, in a subprocess: they import Keras, the main process never does."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    script = "import sys\nfor block in sys.argv[1:]:\n    exec(compile(block, 'README.md', 'exec'), {})"
    res = subprocess.run([sys.executable, "-c", script, *blocks], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
