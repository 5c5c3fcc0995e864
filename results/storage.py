"""One place that turns ``--storage`` into a database URL, checks it, and hides its password.

`resolve_storage(value, purpose)` is used by every command that opens the results database
(``autotune.search``, ``autotune.export``, ``autotune.report``, ``autotune.ingest``,
``autotune.copy_study``, ``autotune.upgrade``), and `DEFAULT_STORAGE` is the one default they share
(``STORAGE_HELP`` is their ``--storage`` help):

- no value: ``$AUTOTUNE_STORAGE``, else ``DEFAULT_STORAGE`` (``sqlite:///results/autotune.db``,
  whose folder is created when the command writes);
- ``""`` (an empty URL) and in-memory SQLite (``sqlite://``, ``sqlite:///:memory:``) are refused:
  results would go nowhere;
- a bare path (``results/a.db``, no ``scheme://``) means that SQLite file;
- ``sqlite:///file:PATH?mode=ro&uri=true`` (SQLite URI filenames) is understood: the file is
  ``PATH``; ``mode=ro`` is refused for commands that write;
- an existing path that is a directory, a file that is not an SQLite database, a file the command
  cannot read (or write, when it writes), a missing folder, or a missing file for a command that
  only reads: one line naming the path;
- a PostgreSQL URL whose driver is not installed: "install .[postgres]"; an unknown backend: one
  line.

Every problem raises `StorageError` (a ``ValueError``; the commands print it and exit with status
2). Passwords: `mask_url` renders a URL with ``***`` for its password and `mask_secrets` removes a
password (plain and percent-encoded) from any text: command lines, log lines and database error
messages go through it before they are written or printed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional
from urllib.parse import quote, quote_plus

from patterns.errors import InputError

__all__ = ["StorageError", "Storage", "resolve_storage", "mask_url", "mask_secrets", "DEFAULT_STORAGE",
           "ENV_STORAGE", "STORAGE_HELP", "SQLITE_MAGIC", "sqlite_file",
           "is_database_error", "database_error_line"]

DEFAULT_STORAGE = "sqlite:///results/autotune.db"  # the one default database of every command
ENV_STORAGE = "AUTOTUNE_STORAGE"
STORAGE_HELP = f"SQLAlchemy URL or SQLite file (default ${ENV_STORAGE}, else {DEFAULT_STORAGE})"  # --storage's help
SQLITE_MAGIC = b"SQLite format 3\x00"
PURPOSES = ("write", "read")

# scheme://user:password@host  (any scheme): the password part
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<at>@)")
# key=value passwords in libpq connection strings / query strings
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>[^\s&;']+)", re.IGNORECASE)


class StorageError(InputError):
    """A ``--storage`` value that cannot be used; ``str()`` is one line."""


@dataclass(frozen=True)
class Storage:
    """A checked database URL: ``url`` to connect with, ``masked`` to print, ``sqlite_path`` (the
    database file for SQLite, else None), ``backend`` (sqlite | postgresql | ...)."""

    url: str
    masked: str
    backend: str
    sqlite_path: Optional[str]
    password: Optional[str]

    def mask(self, text: str) -> str:
        return mask_secrets(text, [self.password] if self.password else [])


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (the text itself if it is not a URL)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: mask what looks like one
        return mask_secrets(url)


def mask_secrets(text: str, passwords: Iterable[str] = ()) -> str:
    """``text`` with every ``scheme://user:PASSWORD@`` and ``password=...`` value, and every given
    password (as is and percent-encoded), replaced by ``***``."""
    if not text:
        return text
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("at"), text)
    out = _KV_PASSWORD.sub(lambda m: m.group("head") + "***", out)
    for pw in passwords:
        if pw and len(pw) >= 3:
            for form in {pw, quote(pw, safe=""), quote_plus(pw)}:
                out = out.replace(form, "***")
    return out


def sqlite_file(url: str) -> Optional[str]:
    """The database file of a SQLite ``url`` (URI filenames understood), else None."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    return _sqlite_file(u.database, dict(u.query))[0]


def is_database_error(e: BaseException) -> bool:
    """SQLAlchemy, DB-API and Optuna storage errors (whose text may quote connection details)."""
    from sqlalchemy.exc import SQLAlchemyError

    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, SQLAlchemyError) or bool(names & {"StorageInternalError", "DatabaseError", "OperationalError"})


def database_error_line(e: BaseException, url: str) -> Optional[str]:
    """One line for a database error ``e`` on ``url``, without password (None: not a database
    error). Commands print it instead of a traceback."""
    if not is_database_error(e):
        return None
    from sqlalchemy.engine import make_url

    try:
        pw = make_url(url).password
    except Exception:  # noqa: BLE001
        pw = None
    text = str(getattr(e, "orig", None) or e).strip()
    first = text.splitlines()[0] if text else ""
    return mask_secrets(f"database {mask_url(url)}: {type(e).__name__}: {first}"[:600], [str(pw)] if pw else [])


def _sqlite_file(database: Optional[str], query: dict) -> tuple[Optional[str], dict]:
    """(file path or None for in-memory, URI query options) of a SQLite URL's database part."""
    if not database or database == ":memory:":
        return None, {}
    uri = str(query.get("uri", "")).lower() in ("true", "1")
    if database.startswith("file:"):
        from urllib.parse import parse_qs, unquote, urlsplit

        rest = database[len("file:"):]
        opts: dict = {}
        if "?" in rest:
            rest, qs = rest.split("?", 1)
            opts = {k: v[-1] for k, v in parse_qs(qs).items()}
        # query options of the URL itself (sqlalchemy moves them out of the database part)
        opts.update({k: v for k, v in query.items() if k in ("mode", "cache", "immutable", "vfs")})
        if rest.startswith("//"):  # file://host/path
            rest = urlsplit("file:" + rest).path
        path = unquote(rest)
        if opts.get("mode") == "memory" or path in ("", ":memory:"):
            return None, opts
        if not uri:
            return database, {}
        return path, opts
    return database, {}


def resolve_storage(value: Optional[str], purpose: str = "write", *, create_dirs: Optional[bool] = None,
                    env: Optional[dict] = None) -> Storage:
    """Check ``value`` (``--storage``; None: ``$AUTOTUNE_STORAGE`` or `DEFAULT_STORAGE`) for
    ``purpose`` "write" (search, export, ingest) or "read" (report) and return a `Storage`.

    ``create_dirs``: create a missing folder of a SQLite file (default: only for the default
    ``results/`` database and only when writing)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    env = os.environ if env is None else env
    is_default = False
    if value is None:
        value = env.get(ENV_STORAGE) or None
        if value is None:
            value, is_default = DEFAULT_STORAGE, True
    if not value.strip():
        raise StorageError(f"--storage: empty URL (give a SQLAlchemy URL such as {DEFAULT_STORAGE}, "
                           "or a path to a SQLite file)")
    value = value.strip()
    if "://" not in value:
        if ":" in value.split("/")[0] and not os.path.exists(value):
            raise StorageError(f"--storage: {value!r} is neither a database URL nor a path")
        value = "sqlite:///" + value  # a bare path: that SQLite file (absolute paths keep their '/')
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(value)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"--storage: not a database URL: {mask_url(value)!r} ({mask_secrets(str(e))})") from None
    password = None if u.password is None else str(u.password)
    masked = mask_secrets(value, [password] if password else [])
    backend = u.get_backend_name()
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"--storage: unknown database backend {u.drivername!r} in {masked}") from None
    except ImportError as e:
        raise StorageError(f"--storage: the driver of {masked} is not installed ({e.name or e})") from None
    if backend == "postgresql":
        try:
            dialect.import_dbapi()
        except ImportError:
            raise StorageError(f"--storage: {masked}: the PostgreSQL driver ({u.drivername}) is not installed: "
                               "pip install -e '.[postgres]' (and use postgresql+psycopg://)") from None
        return Storage(value, masked, backend, None, password)
    if backend != "sqlite":
        try:
            dialect.import_dbapi()
        except ImportError as e:
            raise StorageError(f"--storage: {masked}: driver not installed ({e.name or e})") from None
        return Storage(value, masked, backend, None, password)

    if u.host:  # sqlite://results/a.db: the first folder was read as a host
        raise StorageError(f"--storage: {masked} names host {u.host!r}; a SQLite file needs three slashes: "
                           + f"sqlite:///{u.host}/{u.database or ''}".rstrip("/"))
    path, opts = _sqlite_file(u.database, dict(u.query))
    if path is None:
        raise StorageError(f"--storage: {masked} is an in-memory database: every result would be lost when the "
                           f"command ends; give a file, e.g. {DEFAULT_STORAGE}")
    mode = opts.get("mode")
    if purpose == "write" and mode == "ro":
        raise StorageError(f"--storage: {masked} is opened read-only (mode=ro) but this command writes")
    _check_sqlite_file(path, purpose, masked, create_dirs if create_dirs is not None else (is_default and purpose == "write"))
    return Storage(value, masked, "sqlite", path, password)


def _check_sqlite_file(path: str, purpose: str, masked: str, create_dirs: bool) -> None:
    where = f"--storage {masked}"
    if os.path.isdir(path):
        raise StorageError(f"{where}: {path} is a directory, not a database file")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise StorageError(f"{where}: {path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise StorageError(f"{where}: {path}: permission denied (cannot read)")
        if purpose == "write" and not os.access(path, os.W_OK):
            raise StorageError(f"{where}: {path}: permission denied (cannot write)")
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise StorageError(f"{where}: {path}: cannot read ({e.strerror or e})") from None
        if head and head != SQLITE_MAGIC:
            raise StorageError(f"{where}: {path} is not an SQLite database (wrong file header)")
        if purpose == "write" and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            # SQLite writes its journal next to the file
            raise StorageError(f"{where}: folder of {path} is not writable (SQLite needs it for its journal)")
        return
    if purpose == "read":
        raise StorageError(f"{where}: no database file {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if create_dirs:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise StorageError(f"{where}: cannot create folder {parent} ({e.strerror or e})") from None
        else:
            raise StorageError(f"{where}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StorageError(f"{where}: folder {parent} is not writable")
