"""Deployment needs only the core install (torch, numpy, pyyaml): reading a tuned file and running a
sparse forward - the kernel entry point and a whole EvoFormer block with `EvoformerAttention.sparse`
- import none of the extras. Checked in fresh interpreters: once with everything installed (no
extra may appear in ``sys.modules`` beyond what ``import torch`` itself loads), once with the extras
made unimportable, as on a core-only install (the path must still work, and no project file may
even try to import one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from test_search import ROOT

EXTRAS = ("optuna", "ray", "sqlalchemy", "biotite", "matplotlib", "tqdm", "triton")

DEPLOY = r"""
import json, sys
EXTRAS = {extras!r}
BLOCK = {block!r}
attempts = []
if BLOCK:
    import importlib.abc

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in EXTRAS:
                return None
            f = sys._getframe(1)
            while f is not None and (f.f_code.co_filename.startswith("<frozen") or "importlib" in f.f_code.co_filename):
                f = f.f_back
            attempts.append([name, f.f_code.co_filename if f is not None else "?"])
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, NotInstalled())
import torch
before = sorted(m for m in EXTRAS if m in sys.modules)

import kernels, patterns
from kernels import load_tuned
from patterns import build_layout
from models.evoformer import EvoformerBlock
from models.evoformer.attention import EvoformerAttention

tuned = load_tuned({path!r}, strict=True, device="cpu", dtype=torch.float32)
L = 96
cfg = tuned.config_for(L, device="cpu", dtype=torch.float32, heads=2, head_dim=16)
q, k, v = (torch.randn(1, 2, L, 16) for _ in range(3))
out = kernels.sparse_attention(q, k, v, build_layout(cfg, L), torch.randn(1, 2, L, L), backend="cpu")
block = EvoformerBlock(c_m=16, c_z=8, c_hidden_msa_att=16, no_heads_msa=2, c_hidden_pair_att=16, no_heads_pair=2,
                       c_hidden_opm=4, c_hidden_mul=8)
block.set_attention(EvoformerAttention.sparse(tuned, backend="cpu"))
m, z = block(torch.randn(1, 3, L, 16), torch.randn(1, L, L, 8))
assert torch.isfinite(out).all() and torch.isfinite(m).all() and torch.isfinite(z).all()
after = sorted(m for m in EXTRAS if m in sys.modules)
print(json.dumps({{"before": before, "after": after, "attempts": attempts}}))
"""


def _tuned(tmp_path):
    from kernels.tuned import device_name

    p = tmp_path / "tuned.yaml"
    p.write_text(yaml.safe_dump({"format": 2, "device": "cpu", "device_name": device_name("cpu"), "dtype": "float32",
                                 "buckets": [{"seq_len": 128, "heads": [2], "head_dims": [16],
                                              "pattern": {"block_size": 32, "window": 32, "num_global": 16,
                                                          "stride": 0}}]}))
    return p


def _run(tmp_path, block: bool) -> dict:
    code = DEPLOY.format(extras=EXTRAS, block=block, path=str(_tuned(tmp_path)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)  # a CPU deployment, not the test suite's interpreter mode
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deployment_imports_no_extra(tmp_path):
    r = _run(tmp_path, block=False)
    assert r["after"] == r["before"], r  # only what torch loads by itself (torch.hub takes tqdm if installed)
    assert not set(r["after"]) & {"optuna", "ray", "sqlalchemy", "biotite", "matplotlib", "triton"}, r


def test_deployment_works_without_the_extras(tmp_path):
    r = _run(tmp_path, block=True)
    assert r["after"] == [], r
    ours = [a for a in r["attempts"] if a[1].startswith(str(ROOT))]
    assert ours == [], ours  # no project module even tries


def test_extras_split_by_use():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert core == {"torch", "pyyaml", "numpy"}
    extras = project["optional-dependencies"]
    names = {k: {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].split(";")[0].strip() for d in v}
             for k, v in extras.items()}
    assert names["search"] == {"optuna", "ray", "sqlalchemy", "tqdm"}
    assert names["accuracy"] == {"biotite"} and names["plots"] == {"matplotlib", "plotly"} and names["triton"] == {"triton"}
    # the README's two commands still do the full set-up
    assert "protein-sparse-autotune[search,accuracy,plots]" in extras["cpu"]
    assert "protein-sparse-autotune[cpu,postgres]" in extras["test"] and "triton" in names["test"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[cpu]' && python -m autotune.search --space search_spaces/cpu.yaml" in readme
    assert "pip install -e '.[test]' && python -m pytest" in readme


SEARCH_WITHOUT_EXTRAS = r"""
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("optuna", "ray", "sqlalchemy", "tqdm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (None if name.partition(".")[0] in
    ("optuna", "ray", "sqlalchemy", "tqdm") else _find(name, package))
sys.argv = ["autotune.search", "--space", "search_spaces/cpu.yaml", "--storage", "sqlite:///never.db"]
runpy.run_module("autotune.search", run_name="__main__")
"""


def test_search_on_a_core_install_says_which_extra(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SEARCH_WITHOUT_EXTRAS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("autotune: error: the search needs the 'search' extra (missing: optuna, sqlalchemy, "
                                  "ray, tqdm): pip install 'protein-sparse-autotune[search]'"), out.stderr
    assert not (ROOT / "never.db").exists()
