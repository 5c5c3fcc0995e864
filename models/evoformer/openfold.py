"""OpenFold checkpoint compatibility: the reference key list and a tolerant state-dict loader.

``openfold_evoformer_block_keys.txt`` (package data next to this file) lists the parameter names
and shapes of one OpenFold ``EvoformerBlock`` at AlphaFold2 dims; ``EvoformerBlock()`` has exactly
those parameters, so ``block.load_state_dict(openfold_block_state, strict=True)`` works as is.

``load_openfold_state_dict`` additionally accepts:

* full-model keys: anything up to and including ``evoformer.blocks.<i>.`` is stripped (so
  ``model.evoformer.blocks.3.msa_att_row...`` works); keys outside the EvoFormer blocks are ignored;
* older OpenFold names, where the block held an ``EvoformerBlockCore`` called ``core``:
  ``core.tri_*`` and ``core.pair_transition`` -> ``pair_stack.*``, ``core.msa_transition`` ->
  ``msa_transition``, ``core.outer_product_mean`` -> ``outer_product_mean``;

and raises ``ValueError`` naming the key (as given and as mapped) on a shape mismatch.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from .modules import EvoformerBlock, EvoformerStack

__all__ = ["KEYS_FILE", "openfold_block_keys", "map_openfold_key", "load_openfold_state_dict"]

KEYS_FILE = "openfold_evoformer_block_keys.txt"

_BLOCK_PREFIX = re.compile(r"^(?:.*\.)?evoformer\.blocks\.(\d+)\.")
_OLD_NAMES = (
    (re.compile(r"^core\.(tri_mul_out|tri_mul_in|tri_att_start|tri_att_end|pair_transition)\."), r"pair_stack.\1."),
    (re.compile(r"^core\.(msa_transition|outer_product_mean)\."), r"\1."),
)


def openfold_block_keys() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of one OpenFold EvoformerBlock at AlphaFold2 dims (from the package
    data file)."""
    text = resources.files(__package__).joinpath(KEYS_FILE).read_text()
    out: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("block params"):
            continue
        name, shape = line.split(" ", 1)
        out[name] = tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())
    return out


def _rename_block_key(key: str) -> str:
    for pattern, repl in _OLD_NAMES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def map_openfold_key(key: str) -> tuple[Optional[int], str]:
    """(block index or None, block-relative key with old names updated)."""
    match = _BLOCK_PREFIX.match(key)
    if match:
        return int(match.group(1)), _rename_block_key(key[match.end():])
    return None, _rename_block_key(key)


def load_openfold_state_dict(
    module: Union[EvoformerBlock, EvoformerStack],
    state_dict: Mapping[str, torch.Tensor],
    *,
    block_index: Optional[int] = None,
    strict: bool = True,
) -> nn.modules.module._IncompatibleKeys:
    """Load OpenFold EvoFormer weights into an ``EvoformerBlock`` or ``EvoformerStack``.

    For a block: ``state_dict`` holds block-relative keys, or ``evoformer.blocks.<i>.`` keys of one
    or more blocks (then ``block_index`` picks one; it may be left out when only one is present).
    For a stack: ``evoformer.blocks.<i>.`` (or ``blocks.<i>.``) keys map to ``blocks.<i>.``.
    Old ``core.*`` names are translated (see module docstring). Raises ValueError naming the key on a
    shape mismatch, and (``strict``) on missing or unexpected keys.
    """
    by_block: dict[Optional[int], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        idx, rel = map_openfold_key(key)
        if idx is None and isinstance(module, EvoformerStack):
            m = re.match(r"^blocks\.(\d+)\.", key)
            if m:
                idx, rel = int(m.group(1)), _rename_block_key(key[m.end():])
        by_block.setdefault(idx, {})[rel] = (key, value)

    if isinstance(module, EvoformerStack):
        prefixed = {i: d for i, d in by_block.items() if i is not None}
        if not prefixed:
            raise ValueError("load_openfold_state_dict: no 'evoformer.blocks.<i>.' or 'blocks.<i>.' keys for a stack")
        mapped = {f"blocks.{i}.{rel}": kv for i, d in prefixed.items() for rel, kv in d.items()}
    else:
        indices = sorted(i for i in by_block if i is not None)
        if not indices:  # block-relative keys
            if block_index is not None:
                raise ValueError(f"load_openfold_state_dict: block_index={block_index} given but no 'evoformer.blocks.<i>.' keys")
        elif block_index is None:  # full-model keys: other parameters beside the blocks are ignored
            if len(indices) > 1:
                raise ValueError(
                    f"load_openfold_state_dict: state dict holds blocks {indices}; pass block_index= to pick one"
                )
            block_index = indices[0]
        elif block_index not in by_block:
            raise ValueError(f"load_openfold_state_dict: no keys for evoformer.blocks.{block_index}. (found {indices})")
        mapped = by_block.get(block_index, {})

    own = module.state_dict()
    for name, (given, value) in mapped.items():
        if name in own and tuple(own[name].shape) != tuple(value.shape):
            where = name if given == name else f"{given!r} (-> {name})"
            raise ValueError(
                f"load_openfold_state_dict: shape mismatch for {where}: checkpoint has {tuple(value.shape)}, "
                f"the model expects {tuple(own[name].shape)} (check c_m, c_z, heads and hidden sizes)"
            )
    if strict:
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        if missing or unexpected:
            raise ValueError(
                "load_openfold_state_dict: keys do not match the model: "
                f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
                f"unexpected {[mapped[k][0] for k in unexpected[:10]]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
            )
    return module.load_state_dict({name: value for name, (_, value) in mapped.items()}, strict=strict)
