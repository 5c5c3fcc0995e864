"""An older space's ``constraints`` section is folded into its ``targets`` once, when the space is
parsed or read back from its stored form, so that every reader sees only ``targets``; and the
schema's face (`search_spaces.space`) hands out the very objects its modules define."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

import search_spaces.targets as targets_module
from search_spaces.space import SearchSpace, default_targets, parse_space

ROOT = Path(__file__).resolve().parent.parent


def older_space() -> dict:
    """The CPU space as an older version wrote it: a constraints section and no targets section."""
    data = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    data.pop("targets", None)
    data["constraints"] = {"speedup": {"min": 1.2}, "sparsity": {"min": 0.3},
                           "accuracy": {"metric": "output_rel_error", "max": 0.3, "max_chains": 3}}
    return data


def test_constraints_are_held_as_targets_from_the_parse_on():
    space = parse_space(older_space(), "old.yaml")
    t = space.targets
    assert t is not None and t.source == "constraints"
    assert {b.name: (b.min, b.max) for b in t.bounds} == {
        "speedup": (1.2, None), "sparsity": (0.3, None), "accuracy": (None, 0.3)}
    assert t.bound("accuracy").accuracy_metric == "output_rel_error" and t.max_chains == 3
    assert space.effective_targets() is t


def test_a_stored_space_without_targets_is_folded_once_when_read_back(monkeypatch):
    """A run stored before targets existed: the constraints are folded while the record is built,
    and never again, however often the targets are read."""
    stored = parse_space(older_space(), "old.yaml").to_dict()
    expected = copy.deepcopy(stored["targets"])
    stored.pop("targets")
    calls = []
    real = targets_module.parse_targets

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    import search_spaces.search_space as record_module

    monkeypatch.setattr(record_module, "parse_targets", counting)
    space = SearchSpace.from_dict(stored)
    for _ in range(3):
        assert space.effective_targets().to_dict() == expected
        assert space.to_dict()["targets"] == expected
    assert len(calls) == 1


def test_a_stored_space_without_constraints_or_targets_takes_the_device_defaults():
    data = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    data.pop("targets", None)
    data["objectives"] = ["speedup", "memory_vs_naive"]  # no accuracy objective: no metric needed
    stored = parse_space(data, "plain.yaml").to_dict()
    stored.pop("targets")
    assert SearchSpace.from_dict(stored).targets == default_targets("cpu")


def test_the_face_re_exports_the_modules_own_objects():
    import search_spaces.checks as checks
    import search_spaces.parse as parse
    import search_spaces.search_space as record
    import search_spaces.settings as settings
    import search_spaces.space as face
    import search_spaces.workloads as workloads

    assert face.SearchSpace is record.SearchSpace and face.parse_space is parse.parse_space
    assert face.SamplerSettings is settings.SamplerSettings and face.check_overrides is checks.check_overrides
    assert face.WORKLOAD_TYPES is workloads.WORKLOAD_TYPES and face.Targets is targets_module.Targets
