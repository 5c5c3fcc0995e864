"""The offline GPU node rehearsed on a CPU: the search's wheels prepared into a folder, installed
with ``--no-index`` into a fresh virtual environment that holds only what a CUDA PyTorch image has
(torch, numpy, pyyaml, tqdm and the like, taken from this environment), then the search run there
for one trial."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

from autotune import offline
from test_search import write_space

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_selection_leaves_the_image_packages_out():
    assert offline.is_image_package("torch") and offline.is_image_package("PyYAML")
    assert offline.is_image_package("nvidia-cublas-cu12") and offline.is_image_package("ray")
    assert not offline.is_image_package("optuna") and not offline.is_image_package("SQLAlchemy")
    assert offline.wheel_name(Path("SQLAlchemy-2.1.9-cp312-cp312-manylinux2014_x86_64.whl")) == "sqlalchemy"
    cmd = offline.download_command(Path("w"), ["optuna==5.1.0"], "3.12", ["manylinux2014_x86_64"])
    assert cmd[-1] == "optuna==5.1.0" and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux2014_x86_64" in cmd


def test_install_from_a_folder_without_requirements_is_exit_2(tmp_path, capsys):
    assert offline.main(["install", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "requirements.txt" in err[0]


def _closure(names: tuple[str, ...]) -> set[str]:
    """The installed distributions ``names`` need, recursively (no extras)."""
    todo, seen = list(names), set()
    while todo:
        n = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if n in seen:
            continue
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            continue
        seen.add(n)
        for r in dist.requires or []:
            if "extra ==" in r:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
    return seen


def _image(folder: Path) -> None:
    """A folder of links to this environment's image packages (`offline.IMAGE_PACKAGES` and what
    they need, pip and setuptools): a stand-in for a CUDA PyTorch image."""
    folder.mkdir()
    names = [p for p in offline.IMAGE_PACKAGES if p != "ray"] + ["setuptools", "wheel"]
    site = Path(sysconfig.get_paths()["purelib"])
    for n in _closure(tuple(names)):
        dist = md.distribution(n)
        for top in {Path(f).parts[0] for f in dist.files or []}:
            src = Path(dist.locate_file(top))
            if top not in ("..", "bin") and src.exists() and src.parent == site and not (folder / top).exists():
                (folder / top).symlink_to(src)


@pytest.mark.slow
def test_offline_install_rehearsal(tmp_path):
    t0 = time.monotonic()
    wheels = tmp_path / "wheels"
    kept = offline.prepare(wheels)  # for this interpreter (the node's Python and platform: --python-version)
    names = {offline.wheel_name(w) for w in kept}
    assert {"optuna", "sqlalchemy", "alembic", "biotite"} <= names and not names & {"torch", "numpy", "tqdm", "pyyaml"}
    image = tmp_path / "image"
    _image(image)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "image.pth").write_text(str(image) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links but the folder
    res = subprocess.run([py, "-m", "autotune.offline", "install", str(wheels)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    where = subprocess.run([py, "-c", "import optuna, sqlalchemy, autotune.search; print(optuna.__file__)"],
                           cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(env_dir)), where.stdout + where.stderr
    space = write_space(tmp_path, budget={"trials": 1})
    run = subprocess.run([py, "-m", "autotune.search", "--space", str(space), "--executor", "local", "--no-progress",
                          "--storage", f"sqlite:///{tmp_path / 'r.db'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "1 completed" in run.stderr, run.stderr[-2000:]
    print(f"offline install rehearsal: {time.monotonic() - t0:.0f} s")
