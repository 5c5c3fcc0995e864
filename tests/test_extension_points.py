"""Adding an objective or a searchable pattern parameter is a change of at most three files.

An objective is one record of `search_spaces.objectives.OBJECTIVE_TABLE`; a pattern parameter is a
field of the pattern config (`patterns.PatternConfig`). Everything else - the space file's
vocabulary and directions, the trial summary, Optuna's metric names, the per-bucket view, the
verdict's cell values, the report's text, the parameter suggestion and the built pattern - derives
from them. The test applies a small textual patch to a copy of the packages (a toy objective
``density`` = 1 - sparsity, to be minimised; a toy pattern parameter ``toy`` with two named
values; the objective with a default target on CPU) plus the space file that uses them, counts the files touched, and checks in a fresh
interpreter that both reach every reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("patterns", "kernels", "models", "search_spaces", "results", "autotune")

TOY_OBJECTIVE = '''    Objective("density", "min", "mean", measured=lambda c: 1.0 - c("sparsity"),
              target=lambda c, floor: 1.0 - c("sparsity"), target_rank=4,
              bound=(0.0, 1.0, False, True, "a fraction of the pairs"), defaults={"cpu": {"max": 0.9}},
              against="the dense layout", source="1 - layout sparsity at the bucket length"),
'''
TOY_FIELD = '''    global_placement: Literal["first", "spread"] = "first"
    toy: Literal["a", "b"] = "a"
'''

CHECK = textwrap.dedent('''
    import optuna
    from autotune.driver.optuna_view import bucket_view
    from autotune.trial import cell_values, metric_names, suggest_params, summarize
    from patterns.guided import pattern_from_dict
    from results.report.targets import describe
    from results.verdict import cell_values as verdict_cells
    from search_spaces.space import default_targets, load_space

    space = load_space("search_spaces/cpu.yaml")
    # the objective: in the space, its direction, the trial summary, Optuna's names, the verdict
    assert space.objectives == ["speedup", "density"], space.objectives
    assert space.directions() == ["maximize", "minimize"], space.directions()
    assert metric_names(space) == ["speedup", "density"], metric_names(space)
    cells = [dict(workload=w, bucket=256, speedup=1.5, speedup_lo=1.2, peak_mib=10.0, sdpa_peak_mib=20.0,
                  naive_peak_mib=40.0, sparsity=s) for w, s in (("row", 0.75), ("tri", 0.25))]
    objs, _ = summarize(space, {"measurements": cells, "accuracy": {}})
    assert abs(objs[1] - 0.5) < 1e-12, objs
    assert verdict_cells(space.effective_targets(), cells[0])["density"] == 0.25
    assert cell_values(space, cells[1], None)["density"] == 0.75
    assert describe("density", space.effective_targets())[1] == "1 - layout sparsity at the bucket length"
    # its default target (in its record): a target the space's targets section did not name
    assert space.effective_targets().bound("density").max == 0.9, space.effective_targets()
    assert default_targets("cpu").bound("density").max == 0.9 and default_targets("cuda").bound("density") is None
    rows = [dict(c, violations={}) for c in cells]
    assert abs(bucket_view(space, rows)[1]["256"]["density"] - 0.5) < 1e-12
    # the pattern parameter: searched, suggested for its family only, and in the built config
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        params = suggest_params(study.ask(), space)
        family = params.get("pattern.family")
        assert ("pattern.toy" in params) == (family == "static"), params
        if family == "static":
            pattern, _ = space.split_params(params)
            config = pattern_from_dict(pattern)
            assert config.toy == params["pattern.toy"], (config, params)
            seen.add(config.toy)
    assert seen == {"a", "b"}, seen
    print("extension points ok")
''')


def _patch(root: Path, rel: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` in ``root/rel``; the file's name, for the count."""
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{rel}: the patch's anchor {old!r} is not unique"
    path.write_text(text.replace(old, new))
    return rel


def _add_objective(root: Path) -> set[str]:
    return {
        _patch(root, "search_spaces/objectives.py", "\n)\nOBJECTIVE_BY_NAME", "\n" + TOY_OBJECTIVE + ")\nOBJECTIVE_BY_NAME"),
        _patch(root, "search_spaces/cpu.yaml", "\nobjectives: [speedup, memory_vs_sdpa, accuracy]",
               "\nobjectives: [speedup, density]"),
    }


def _add_pattern_parameter(root: Path) -> set[str]:
    return {
        _patch(root, "patterns/config.py", '    global_placement: Literal["first", "spread"] = "first"\n', TOY_FIELD),
        _patch(root, "search_spaces/cpu.yaml", "\npattern:\n", "\npattern:\n  toy: {choices: [a, b]}\n"),
    }


def test_toy_objective_and_pattern_parameter_touch_at_most_three_files_each(tmp_path):
    from search_spaces.objectives import OBJECTIVE_BY_NAME
    from search_spaces.schema import PATTERN_PARAMS

    assert "density" not in OBJECTIVE_BY_NAME and "toy" not in PATTERN_PARAMS  # the toys are new
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    objective_files = _add_objective(tmp_path)
    parameter_files = _add_pattern_parameter(tmp_path)
    assert len(objective_files) <= 3 and len(parameter_files) <= 3, (objective_files, parameter_files)

    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "extension points ok" in run.stdout
