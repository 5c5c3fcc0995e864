"""CI runs the README's test command, unchanged, in a virtual environment made afresh each run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Run the tests:\s*```bash\n(.+?)\n```", text, re.S)
    assert block, "README: the 'Run the tests:' block is missing"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    command = _readme_test_command()
    assert command in script, f".ci/run does not run the README's test command {command!r} as it is"
    at = script.index(command)
    before = "\n".join(line for line in script[:at] if not line.lstrip().startswith("#"))
    # a new environment, entered before the command (its pip and python are the ones that run)
    assert re.search(r"-m venv ", before) and "--system-site-packages" not in before
    assert re.search(r"^source .*/bin/activate", before, re.M)
    assert "mktemp -d" in before and "trap 'rm -rf" in before  # made afresh each run, removed after it
