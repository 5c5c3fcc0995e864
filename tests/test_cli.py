"""The front door (`autotune.cli`, the ``sparse-autotune`` console script) and the one exit-status
mapping every command uses (`patterns.errors.exit_status`)."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

from autotune.cli import COMMANDS, main
from patterns.errors import InputError, exit_on_input_error, exit_status, run_command

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("patterns", "kernels", "models", "search_spaces", "results", "autotune")


def test_the_console_script_is_the_front_door():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib: Python 3.11 on; the project supports 3.10)
    scripts = re.search(r"^\[project\.scripts\]\n((?:[^\[\n].*\n|\n)*)", text, re.M).group(1)
    entry = re.search(r'^sparse-autotune = "([\w.]+:\w+)"$', scripts, re.M).group(1)
    module, _, function = entry.partition(":")
    assert getattr(importlib.import_module(module), function) is main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_answers_help_through_the_front_door(name, capsys):
    """``sparse-autotune NAME --help`` prints the flags of the command's own ``python -m`` form."""
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {COMMANDS[name].python_m} "), out[:200]


def test_the_front_door_lists_its_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name} " in out and command.python_m in out


@pytest.mark.parametrize("argv, said", [(["nope"], "unknown command 'nope'"), ([], "no command given")])
def test_an_unknown_or_missing_command_is_one_line_and_status_2(argv, said, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sparse-autotune: error: {said}") and "copy-study" in err


def test_a_bad_flag_is_argparse_status_2(capsys):
    assert main(["upgrade", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_a_command_input_error_is_status_2_through_the_front_door(tmp_path, capsys):
    """The front door returns the command's own status (here: a CSV that does not exist)."""
    assert main(["ingest", "--storage", str(tmp_path / "r.db"), "--kernel-csv", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.csv" in err and not (tmp_path / "r.db").exists()


class DatabaseDown(Exception):
    pass


def failure(e: BaseException):
    return f"database: {e}" if isinstance(e, DatabaseDown) else None


@pytest.mark.parametrize("exc, status, line", [
    (InputError("space.yaml: budget.trials: must be >= 1"), 2, "prog: error: space.yaml: budget.trials: must be >= 1"),
    (DatabaseDown("connection refused"), 1, "prog: error: database: connection refused"),
    (KeyboardInterrupt(), 130, None),  # silent: the command says what it left behind
])
def test_the_exit_status_mapping(exc, status, line, capsys):
    assert exit_status(exc, "prog", failure=failure) == status
    assert capsys.readouterr().err == ("" if line is None else line + "\n")


def test_the_mapping_masks_and_rewords(capsys):
    assert exit_status(InputError("url postgresql://u:secret@h/db"), "prog", mask=lambda t: t.replace("secret", "***")) == 2
    assert exit_status(DatabaseDown("x secret"), "prog", failure=failure, mask=lambda t: t.replace("secret", "***")) == 1
    assert exit_status(KeyboardInterrupt(), "prog", message="interrupted during X") == 130
    assert capsys.readouterr().err.splitlines() == ["prog: error: url postgresql://u:***@h/db",
                                                    "prog: error: database: x ***", "prog: interrupted during X"]


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), DatabaseDown("no recogniser given"), SystemExit(3)])
def test_what_the_mapping_does_not_know_is_raised_again(exc, capsys):
    """A bug keeps its traceback; a database error is only recognised by the command's ``failure``."""
    with pytest.raises(type(exc)):
        run_command(lambda: (_ for _ in ()).throw(exc), "prog")
    assert capsys.readouterr().err == ""


def test_run_command_and_exit_on_input_error_use_the_mapping(capsys):
    assert run_command(lambda: None, "prog") == 0 and run_command(lambda: 3, "prog") == 3

    def stop():
        raise DatabaseDown("gone")

    assert run_command(stop, "prog", failure=failure) == 1
    with pytest.raises(SystemExit) as e:
        with exit_on_input_error("prog"):
            raise InputError("bad")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        with exit_on_input_error("prog"):
            raise KeyboardInterrupt
    assert e.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["prog: error: database: gone", "prog: error: bad"]


# ---- one definition of the mapping ---------------------------------------------------------------

EXIT_CALLS = ("sys.exit", "exit", "SystemExit")  # (os._exit: a worker process ending itself, no command)
STATUSES = (1, 2, 130)


def own_mappings(path: Path) -> list[str]:
    """Places in ``path`` that map an outcome to an exit status themselves: ``sys.exit(N)`` /
    ``SystemExit(N)`` with a constant N other than 0, or ``return N`` (N in 1, 2, 130) in a function
    that prints to stderr (a command's own ``print(...); return 2``)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in EXIT_CALLS and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value not in (0, None):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            prints = any(isinstance(n, ast.Call) and any(k.arg == "file" and "stderr" in ast.unparse(k.value)
                                                          for k in n.keywords) for n in ast.walk(node))
            found += [f"{path.name}:{n.lineno}: {node.name} returns {n.value.value}" for n in ast.walk(node)
                      if prints and isinstance(n, ast.Return) and isinstance(n.value, ast.Constant)
                      and n.value.value in STATUSES and not isinstance(n.value.value, bool)]
    return found


def test_the_exit_status_mapping_has_one_definition():
    """Every command maps through `patterns.errors` (exit_status, run_command, exit_on_input_error);
    no module keeps its own ``print(...); return 2`` or ``sys.exit(2)``."""
    own = [m for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))
           if path != ROOT / "patterns" / "errors.py" for m in own_mappings(path)]
    assert own == []


def test_an_own_mapping_is_found(tmp_path):
    path = tmp_path / "cmd.py"
    path.write_text("import sys\n"
                    "def main():\n    try:\n        run()\n    except ValueError as e:\n"
                    "        print(f'cmd: error: {e}', file=sys.stderr)\n        return 2\n"
                    "if __name__ == '__main__':\n    sys.exit(1)\n")
    assert own_mappings(path) == ["cmd.py:7: main returns 2", "cmd.py:9: sys.exit(1)"]


def test_the_python_m_forms_are_kept():
    """Each command's module still runs as ``python -m`` (a ``__main__`` guard or a ``__main__`` module)."""
    for command in COMMANDS.values():
        path = ROOT.joinpath(*command.module.split(".")).with_suffix(".py")
        text = path.read_text()
        assert path.name == "__main__.py" or 'if __name__ == "__main__":' in text, path
        assert callable(getattr(sys.modules.get(command.module) or importlib.import_module(command.module),
                                command.function))
