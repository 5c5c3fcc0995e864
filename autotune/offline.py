"""The search on an offline GPU node: its packages carried as wheels.

A GPU node often has a CUDA PyTorch image (torch, triton, numpy, pyyaml, tqdm) and no internet
access. The search needs a few more packages: Optuna, SQLAlchemy, Alembic (Optuna's schema
migrations), biotite (the accuracy objective reads protein structures) and what they pull in. Ray
is not carried (its wheel is large): on one GPU the search runs with ``--executor local``.

On a machine with internet access, for the node's Python and platform::

    python -m autotune.offline prepare --dest wheels --python-version 3.12 --platform manylinux2014_x86_64

(``pip download --only-binary=:all:`` of `PACKAGES`, pinned to the versions installed here when they
are, with every dependency; the wheels of what the image already holds - `IMAGE_PACKAGES` - are left
out; ``wheels/requirements.txt`` records what to install). Copy the folder with the checkout, then on
the node::

    python -m autotune.offline install wheels        # pip install --no-index --find-links wheels
    python -m autotune.search --space search_spaces/protein-quick.yaml --executor local

``install`` installs the requirements from the folder alone (``--no-index``; a package the image
already has at a fitting version is kept), then this project without its dependencies
(``--no-deps``), and checks that the search imports. Exit status: 0 done, 2 bad input (a missing
folder, a folder without requirements.txt), 1 pip failed (its last lines are printed).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

from patterns.errors import InputError, exit_status

PACKAGES = ("optuna", "sqlalchemy", "alembic", "biotite")
# what a CUDA PyTorch image provides (never downloaded: torch and triton are the image's own builds)
IMAGE_PACKAGES = ("torch", "triton", "numpy", "pyyaml", "tqdm", "scipy", "networkx", "requests", "msgpack",
                  "packaging", "typing-extensions", "markupsafe", "certifi", "charset-normalizer", "idna", "urllib3",
                  "ray")
IMAGE_PREFIXES = ("nvidia-",)
MANYLINUX = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
REQUIREMENTS = "requirements.txt"
ROOT = Path(__file__).resolve().parent.parent


class OfflineError(InputError):
    """Bad input to prepare / install (exit status 2)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``name==version`` for each package installed here (the versions this checkout is tested
    with), the bare name otherwise."""
    out = []
    for p in packages:
        try:
            out.append(f"{p}=={md.version(p)}")
        except md.PackageNotFoundError:
            out.append(p)
    return out


def wheel_name(path: Path) -> str:
    """The canonical distribution name of a wheel file (PEP 427: ``{name}-{version}-...whl``)."""
    return _canonical(path.name.split("-", 1)[0])


def is_image_package(name: str) -> bool:
    n = _canonical(name)
    return n in {_canonical(p) for p in IMAGE_PACKAGES} or n.startswith(IMAGE_PREFIXES)


def download_command(dest: Path, requirements: list[str], python_version: Optional[str],
                     platforms: list[str]) -> list[str]:
    """The ``pip download`` command of `prepare` (binary wheels only: nothing is built on the node)."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(dest)]
    if python_version:
        cmd += ["--python-version", python_version, "--implementation", "cp"]
        for p in platforms:
            cmd += ["--platform", p]
    return cmd + requirements


def prepare(dest: Path, python_version: Optional[str] = None, platforms: Optional[list[str]] = None,
            packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Download the wheels of ``packages`` and their dependencies into ``dest`` for the node's
    Python (``python_version`` "3.12"; None: this interpreter) and platforms, drop those of the
    image's packages, write ``requirements.txt``. Returns the wheels kept."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = pinned(packages)
    plats = list(platforms or (MANYLINUX if python_version else []))
    _pip(download_command(dest, reqs, python_version, plats), "pip download")
    kept = []
    for whl in sorted(dest.glob("*.whl")):
        if is_image_package(wheel_name(whl)):
            whl.unlink()
        else:
            kept.append(whl)
    (dest / REQUIREMENTS).write_text("\n".join(reqs) + "\n")
    return kept


def _pip(cmd: list[str], what: str) -> None:
    """Run a pip command; on failure raise RuntimeError with its last lines."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{tail}")


def install(folder: Path, project: Optional[Path] = ROOT, editable: bool = True, target: Optional[Path] = None,
            check: bool = True) -> None:
    """Install ``folder``'s requirements from the folder alone (into ``target`` with ``pip
    --target`` when given: then put it on PYTHONPATH), then ``project`` with ``--no-deps`` (None:
    not at all), then (``check``) check that the search imports."""
    req = folder / REQUIREMENTS
    if not folder.is_dir():
        raise OfflineError(f"install: {folder}: no such folder (make it with: python -m autotune.offline prepare)")
    if not req.is_file():
        raise OfflineError(f"install: {folder}: no {REQUIREMENTS} (make the folder with: python -m autotune.offline prepare)")
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--no-cache-dir"]
    _pip(pip + (["--target", str(target)] if target else []) + ["-r", str(req)], "pip install (wheels)")
    if project is not None:
        spec = ["-e", str(project)] if editable else [str(project)]
        try:
            _pip(pip + ["--no-deps", "--no-build-isolation"] + spec, "pip install (project)")
        except RuntimeError as e:  # no fitting setuptools in the image: the checkout on the path instead
            print(f"autotune: {str(e).splitlines()[0]}; putting {project} on the path instead", file=sys.stderr)
            _add_to_path(project)
    if check:
        code = "import optuna, sqlalchemy, alembic, biotite, autotune.search; print('search imports:', optuna.__version__)"
        _pip([sys.executable, "-c", code], "import check")


def _add_to_path(project: Path) -> None:
    """A ``.pth`` file in this environment's site-packages naming the checkout (what an editable
    install amounts to, without the package metadata)."""
    import sysconfig

    Path(sysconfig.get_paths()["purelib"], "protein_sparse_autotune.pth").write_text(f"{project}\n")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autotune.offline", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="download the wheels for the node")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--python-version", help="the node's Python, e.g. 3.12 (default: this interpreter's)")
    p.add_argument("--platform", action="append", help=f"the node's platform tags (default: {', '.join(MANYLINUX)})")
    p.add_argument("--packages", default=",".join(PACKAGES),
                   help="comma-separated (default: %(default)s; biotite's wheel alone is about 55 MiB: prepare it "
                        "into its own folder when a transfer limits the size)")
    i = sub.add_parser("install", help="install the wheels on the node, then the project (--no-deps)")
    i.add_argument("folder", type=Path)
    i.add_argument("--no-project", action="store_true", help="install the wheels only")
    i.add_argument("--no-editable", action="store_true", help="install the project as a copy, not editable")
    i.add_argument("--target", type=Path, help="install the wheels into this folder (pip --target; add it to PYTHONPATH)")
    i.add_argument("--no-check", action="store_true", help="skip the import check (a partial set of wheels)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            kept = prepare(args.dest, args.python_version, args.platform,
                           tuple(p.strip() for p in args.packages.split(",") if p.strip()))
            size = sum(w.stat().st_size for w in kept) / 2**20
            print(f"autotune: {len(kept)} wheels ({size:.1f} MiB) in {args.dest}: {', '.join(w.name for w in kept)}")
        else:
            install(args.folder, None if args.no_project else ROOT, editable=not args.no_editable,
                    target=args.target, check=not args.no_check)
            print(f"autotune: installed the search's packages from {args.folder}")
    except (InputError, RuntimeError) as e:  # bad input: 2; a failed pip run (RuntimeError): 1
        return exit_status(e, "autotune", failure=lambda e: str(e) if isinstance(e, RuntimeError) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
