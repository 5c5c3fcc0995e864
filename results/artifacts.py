"""The tuned file and the report in Optuna's artifact store, linked to their study.

``optuna.artifacts.upload_artifact(study_or_trial=study, ...)`` copies a file into an artifact
store and records it (id, file name, MIME type) in the study's system attributes, so
``optuna-dashboard URL --artifact-dir DIR`` lists the study's artifacts and downloads them, and
``optuna.artifacts.get_all_artifact_meta(study)`` finds them. The store is a
``FileSystemArtifactStore`` in the folder ``artifacts`` next to the output (``results/artifacts``
for the default outputs) unless ``--artifacts DIR`` names another folder (``--artifacts none``: no
upload). Every upload is a new artifact (the store keeps each
export and report); the study's user attribute ``artifact:<file name>`` names the latest one.
"""

from __future__ import annotations

import mimetypes
import os
from typing import Optional

from patterns.errors import InputError

ARTIFACTS_HELP = ("Optuna artifact store (a folder) the output is also uploaded to, linked to the study "
                  "(default: artifacts/ next to --out, results/artifacts for the default outputs; none: no upload); "
                  "optuna-dashboard --artifact-dir DIR shows it")


class ArtifactError(InputError):
    """An artifact store that cannot be used (one line)."""


def artifact_dir(option: Optional[str], out: str) -> Optional[str]:
    """The folder of the artifact store ``--artifacts`` names (None: ``none``, no upload); by
    default ``artifacts`` in the folder of the output ``out`` (``results/artifacts``)."""
    if option is not None and option.strip().lower() == "none":
        return None
    path = option or os.path.join(os.path.dirname(out) or ".", "artifacts")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ArtifactError(f"--artifacts {path}: not a folder")
    return path


def upload(storage_url: str, study_name: str, paths: list[str], folder: str) -> list[str]:
    """Upload ``paths`` to the file-system artifact store in ``folder`` (created if missing),
    each linked to study ``study_name``; returns the artifact ids. The study's user attribute
    ``artifact:<file name>`` is set to the new id."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from .db import create_optuna_storage

    os.makedirs(folder, exist_ok=True)
    store = FileSystemArtifactStore(base_path=folder)
    ostorage = create_optuna_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=ostorage)
        ids = []
        for path in paths:
            mime = "text/yaml" if path.endswith((".yaml", ".yml")) else mimetypes.guess_type(path)[0]
            aid = upload_artifact(artifact_store=store, file_path=path, study_or_trial=study,
                                  mimetype=mime or "application/octet-stream")
            study.set_user_attr(f"artifact:{os.path.basename(path)}", aid)
            ids.append(aid)
        return ids
    finally:
        ostorage.remove_session()
        ostorage.engine.dispose()


def upload_and_say(prog: str, storage_url: str, study_name: str, paths: list[str], folder: Optional[str]) -> None:
    """`upload`, and one line on stderr saying where to (or, when it fails, why: the files on
    disk are written all the same)."""
    import sys

    if folder is None:
        return
    try:
        upload(storage_url, study_name, paths, folder)
    except Exception as e:  # noqa: BLE001 - a store or database error: the outputs exist, say why not uploaded
        from .storage import mask_url

        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{prog}: warning: not uploaded to the artifact store {folder}: {type(e).__name__}: "
              f"{msg.replace(storage_url, mask_url(storage_url))[:300]}", file=sys.stderr)
        return
    names = ", ".join(os.path.basename(p) for p in paths)
    print(f"{prog}: {names} also in Optuna's artifact store {folder} (study {study_name!r}; "
          f"optuna-dashboard --artifact-dir {folder})", file=sys.stderr)
