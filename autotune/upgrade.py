"""Upgrade a results database to this code's schema: ``python -m autotune.upgrade [--storage URL]``.

Options: ``--storage URL`` (default ``$AUTOTUNE_STORAGE``, else the default database; a plain file
path is read as a SQLite file). Every command refuses a database written with an older schema
(`results.db.check_schema`) and names this command. It runs the upgrade steps from the database's
version to the code's (`results.db.upgrade_schema`) in one transaction and writes the version row:
for a database written before schema versions (our tables, no ``at_schema``) that is creating the
tables and nullable columns added since, and the row. Measurements and studies are kept as they
are. A database already at the code's version is left alone (exit status 0); one without our
tables or newer than the code is refused with one line, exit status 2, nothing written. Back up a
database you care about before upgrading it (for SQLite: copy the file).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from patterns.errors import exit_status
from results.storage import STORAGE_HELP


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.upgrade", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    args = p.parse_args(argv)
    from results.db import upgrade_schema
    from results.storage import StorageError, database_error_line, resolve_storage

    try:
        storage = resolve_storage(args.storage, "write", create_dirs=False)
        if storage.sqlite_path is not None:
            import os

            if not os.path.isfile(storage.sqlite_path):
                raise StorageError(f"--storage {storage.masked}: no database file {storage.sqlite_path}")
        found, now = upgrade_schema(storage.url)
    except BaseException as e:  # noqa: BLE001 - StorageError (a newer schema, no database file): 2; a database error: 1
        return exit_status(e, "autotune.upgrade", failure=lambda e: database_error_line(e, args.storage or ""))
    if found == now:
        print(f"autotune.upgrade: {storage.masked} is at schema version {now} already; nothing to do", file=sys.stderr)
    else:
        print(f"autotune.upgrade: upgraded {storage.masked} from schema version {found} to {now}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
