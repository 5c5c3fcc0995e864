"""Reading protein chains from structure files (biotite), one `Chain` per protein chain.

Formats: PDB (``.pdb``, ``.ent``), mmCIF (``.cif``, ``.mmcif``) and BinaryCIF (``.bcif``), each
optionally gzip-compressed (``.gz``). Only the first model is read; alternate locations keep the
first altloc (biotite's ``altloc="first"``).

Residue indexing (what ``i`` and ``j`` mean everywhere in this package): a chain's residues are
its *resolved* amino-acid residues, in file order, indexed 0..L-1. A resolved residue is an
amino-acid residue (standard or modified, e.g. MSE) with at least a C-alpha or a C-beta atom.
Missing residues (gaps in the residue numbering, unresolved loops) are simply absent: the residues
on both sides of a gap are neighbours in the index, so a gap is never a contact and the
sequence separation |i - j| counts resolved residues. Residues with insertion codes (52, 52A,
52B) are distinct residues, in file order. Water, ligands and nucleotides are ignored.

Each residue is represented by one point: its C-beta atom, or its C-alpha atom for glycine and
for residues whose C-beta is missing.

Files that cannot be read, are not structures, or hold no usable residue are reported by name on
the ``autotune.accuracy`` logger (a WARNING line) and skipped; they never stop a load.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

log = logging.getLogger("autotune.accuracy")

__all__ = ["Chain", "STRUCTURE_SUFFIXES", "read_structure_file", "read_chains", "structure_files"]

#: file suffixes read as structures (each optionally followed by ``.gz``)
STRUCTURE_SUFFIXES: tuple[str, ...] = (".pdb", ".ent", ".cif", ".mmcif", ".bcif")

_MIN_RESIDUES = 1


@dataclass(eq=False)
class Chain:
    """One protein chain: the representative point of each resolved residue.

    Attributes:
        name: file stem (``1abc_A`` for ``1abc_A.pdb.gz``), plus ``:<chain id>`` when the file
            holds more than one protein chain.
        chain_id: the chain identifier in the file.
        coords: float64 [L, 3], C-beta (C-alpha for glycine / missing C-beta), in Angstrom.
        sequence: one-letter codes of the resolved residues (``X`` when unknown).
        residue_ids: (residue number, insertion code) of each resolved residue, as in the file.
        source: the file it was read from.
    """

    name: str
    chain_id: str
    coords: np.ndarray
    sequence: str
    residue_ids: tuple[tuple[int, str], ...]
    source: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.coords = np.ascontiguousarray(self.coords, dtype=np.float64)
        if self.coords.ndim != 2 or self.coords.shape[1] != 3 or len(self.coords) == 0:
            raise ValueError(f"chain {self.name}: coords must be a non-empty [L, 3] array")
        if len(self.sequence) != len(self.coords) or len(self.residue_ids) != len(self.coords):
            raise ValueError(f"chain {self.name}: sequence, residue_ids and coords differ in length")

    @property
    def length(self) -> int:
        return len(self.coords)

    def __len__(self) -> int:
        return self.length

    @property
    def key(self) -> tuple[str, int, str]:
        """(name, length, coordinate digest): identifies the chain's content in caches."""
        if "key" not in self._cache:
            digest = hashlib.sha1(self.coords.tobytes()).hexdigest()[:16]
            self._cache["key"] = (self.name, self.length, digest)
        return self._cache["key"]

    def distances(self) -> np.ndarray:
        """float32 [L, L] distances between the residues' representative points (cached)."""
        if "dist" not in self._cache:
            diff = self.coords[:, None, :] - self.coords[None, :, :]
            self._cache["dist"] = np.sqrt((diff * diff).sum(-1)).astype(np.float32)
        return self._cache["dist"]

    def __repr__(self) -> str:
        return f"Chain({self.name!r}, chain_id={self.chain_id!r}, length={self.length})"


def _strip_gz(name: str) -> tuple[str, bool]:
    lower = name.lower()
    if lower.endswith(".gz"):
        return name[:-3], True
    return name, False


def _format_of(path: Path) -> Optional[str]:
    base, _ = _strip_gz(path.name)
    suffix = Path(base).suffix.lower()
    if suffix in (".pdb", ".ent"):
        return "pdb"
    if suffix in (".cif", ".mmcif"):
        return "cif"
    if suffix == ".bcif":
        return "bcif"
    return None


def _stem(path: Path) -> str:
    base, _ = _strip_gz(path.name)
    return Path(base).stem


def structure_files(folder: Union[str, Path]) -> list[Path]:
    """Structure files directly in ``folder`` (by suffix, see STRUCTURE_SUFFIXES), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and _format_of(p) is not None)


def _read_atoms(path: Path):
    """The first model of ``path`` as a biotite AtomArray (raises on unreadable input)."""
    import biotite.structure.io.pdb as pdb
    import biotite.structure.io.pdbx as pdbx

    fmt = _format_of(path)
    if fmt is None:
        raise ValueError("not a structure file name (expected .pdb/.ent/.cif/.mmcif/.bcif[.gz])")
    _, gz = _strip_gz(path.name)
    raw = path.read_bytes()
    if gz:
        raw = gzip.decompress(raw)
    if fmt == "pdb":
        f = pdb.PDBFile.read(io.StringIO(raw.decode("utf-8", errors="replace")))
        return f.get_structure(model=1, altloc="first")
    if fmt == "cif":
        f = pdbx.CIFFile.read(io.StringIO(raw.decode("utf-8", errors="replace")))
    else:
        f = pdbx.BinaryCIFFile.read(io.BytesIO(raw))
    return pdbx.get_structure(f, model=1, altloc="first")


def _chains_from_atoms(atoms, stem: str, source: str) -> list[Chain]:
    import biotite.structure as struc
    from biotite.sequence import ProteinSequence

    if atoms.array_length() == 0:
        return []
    atoms = atoms[struc.filter_amino_acids(atoms)]
    if atoms.array_length() == 0:
        return []
    chain_ids: list[str] = []
    for cid in atoms.chain_id:
        if cid not in chain_ids:
            chain_ids.append(str(cid))
    out: list[Chain] = []
    for cid in chain_ids:
        chain_atoms = atoms[atoms.chain_id == cid]
        starts = struc.get_residue_starts(chain_atoms)
        n_res = len(starts)
        res_of_atom = np.searchsorted(starts, np.arange(chain_atoms.array_length()), side="right") - 1
        names = chain_atoms.atom_name
        res_names = chain_atoms.res_name[starts]
        ca = np.full((n_res, 3), np.nan)
        cb = np.full((n_res, 3), np.nan)
        # reversed assignment so that the first CA / CB of a residue wins
        for target, atom in ((ca, "CA"), (cb, "CB")):
            idx = np.nonzero(names == atom)[0][::-1]
            target[res_of_atom[idx]] = chain_atoms.coord[idx]
        use_cb = (res_names != "GLY") & ~np.isnan(cb).any(1)
        point = np.where(use_cb[:, None], cb, ca)
        keep = ~np.isnan(point).any(1)  # neither CA nor usable CB: not a resolved residue here
        coords = point[keep]
        seq = []
        for rn in res_names[keep]:
            try:
                seq.append(ProteinSequence.convert_letter_3to1(str(rn)))
            except KeyError:
                seq.append("X")
        ids = [(int(r), str(c)) for r, c in zip(chain_atoms.res_id[starts][keep], chain_atoms.ins_code[starts][keep])]
        if len(coords) >= _MIN_RESIDUES:
            out.append(Chain("", cid, np.asarray(coords, dtype=np.float64), "".join(seq), tuple(ids), source))
    for c in out:
        c.name = stem if len(out) == 1 else f"{stem}:{c.chain_id}"
    return out


def read_structure_file(path: Union[str, Path]) -> list[Chain]:
    """All protein chains of one structure file (first model). Raises on unreadable input;
    returns [] when the file holds no usable residue."""
    path = Path(path)
    atoms = _read_atoms(path)
    return _chains_from_atoms(atoms, _stem(path), str(path))


def read_chains(paths: Iterable[Union[str, Path]]) -> tuple[list[Chain], list[tuple[str, str]]]:
    """Read every file; returns (chains, skipped) where skipped lists (file name, reason).
    Each skipped file is also logged as a WARNING naming it."""
    chains: list[Chain] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        p = Path(p)
        try:
            got = read_structure_file(p)
        except Exception as exc:  # any parser failure: report and go on
            reason = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            log.warning("skipping %s: %s", p.name, reason)
            skipped.append((p.name, reason))
            continue
        if not got:
            reason = "no usable protein residue (no C-alpha / C-beta atoms)"
            log.warning("skipping %s: %s", p.name, reason)
            skipped.append((p.name, reason))
            continue
        chains.extend(got)
    return chains, skipped
