"""What a measurement ran on: device model, driver, library versions, git revision, host.

Everything here is best effort: a missing tool gives ``None``, never an exception.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from kernels.tuned import cpu_model  # one rule for the CPU model: what the export records, the reader compares

PACKAGES = ("torch", "triton", "optuna", "ray", "sqlalchemy", "numpy", "pyyaml", "biotite")


def _nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def package_versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(path: Optional[str] = None) -> Optional[str]:
    """``git describe --always --dirty`` of the source tree, or None outside a git checkout."""
    where = path or str(Path(__file__).resolve().parent.parent)
    try:
        out = subprocess.run(
            ["git", "-C", where, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(device: str = "cpu") -> dict[str, Any]:
    """Hardware and software of this process: {device, device_name, driver, cuda, cpu, cores, host}."""
    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device_name": None,
        "driver": None,
        "cuda": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            idx = torch.cuda.current_device()
            info["device_name"] = torch.cuda.get_device_name(idx)
            info["cuda"] = torch.version.cuda
            info["driver"] = _nvidia_driver()
            cap = torch.cuda.get_device_capability(idx)
            info["capability"] = f"{cap[0]}.{cap[1]}"
            info["memory_gib"] = round(torch.cuda.get_device_properties(idx).total_memory / 2**30, 1)
        else:
            info["device_name"] = info["cpu"]
    except Exception:  # pragma: no cover - torch is a hard dependency; stay best effort anyway
        pass
    return info


def _module_of(script: str) -> Optional[str]:
    """``autotune.search`` for .../autotune/search.py, ``autotune.report`` for .../report/__main__.py
    (the module a ``python -m`` run executes), or None for a script outside the package."""
    p = Path(script).resolve()
    root = Path(__file__).resolve().parent.parent
    try:
        rel = p.relative_to(root)
    except ValueError:
        return None
    if rel.suffix != ".py":
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__main__":
        parts = parts[:-1]
    return ".".join(parts) if parts and parts[0] in ("autotune", "kernels", "patterns") else None


def command_line(argv: Optional[list[str]] = None, secrets: tuple[str, ...] = ()) -> str:
    """The command as typed: ``python -m autotune.search --space ...`` (shell-quoted), with every
    password masked (URL passwords, ``password=`` values and the given ``secrets``)."""
    import shlex

    from results.storage import mask_secrets

    argv = list(sys.argv if argv is None else argv)
    module = _module_of(argv[0]) if argv and argv[0] not in ("", "-c") else None
    head = ["python", "-m", module] if module else ["python", *argv[:1]]
    return mask_secrets(shlex.join([*head, *argv[1:]]), secrets)
