"""Versioned dataset storage: a directory of immutable Parquet files and JSON snapshots.

This is section 1 of ``docs/datasets-design.md`` (the contract). A dataset is one directory::

    DIR/
      manifest.json                 {"format": "popql-dataset", "format_version": 1, "version": N}
      versions/00000001.json        one full snapshot per committed version (immutable)
      data/<table>/<uuid>.parquet   immutable data files
      indexes/<embedder_key>/...    files reserved with Transaction.add_file
      thumbnails/...                cache, not versioned (never touched here)
      tables/*.parquet              user tables registered as-is (see popql.engine.session)
      .lock                         writers' lock (fcntl.flock); readers never lock

>>> ds = Dataset.open("photos", create=True)                      # doctest: +SKIP
>>> with ds.transaction("ingest 2 images") as tx:                 # doctest: +SKIP
...     tx.append("samples", table)                               # commits on a clean exit
>>> ds.snapshot().table("samples")                                # doctest: +SKIP

Writers
-------
:meth:`Dataset.transaction` takes the writer lock (``fcntl.flock`` on ``DIR/.lock``; a second
writer waits up to ``lock_timeout`` seconds, then gets a D007 diagnostic naming the holder) and
stages changes against the current version. :meth:`Transaction.commit` publishes them as
version N+1 atomically:

1. every new data file was written with ``O_EXCL`` and fsynced as it was staged; the
   directories holding them are fsynced;
2. ``versions/N+1.json`` is written to a temporary file, fsynced, renamed, its folder fsynced;
3. ``manifest.json`` is replaced the same way (``os.replace``) and ``DIR`` is fsynced.

A process killed at any moment therefore leaves the last committed version intact; what it
wrote before dying (data files, a snapshot for a version the manifest never named, temporary
files) is ignored by readers, reported as a note by ``check(leftovers=True)`` and removed by
:meth:`Dataset.vacuum`. Used as a context manager a transaction commits when the block ends
normally (unless :meth:`Transaction.commit` was already called) and rolls back (deleting the
files it wrote) when the block raises.

Readers
-------
A :class:`Snapshot` is one committed version: ``manifest.json`` is read once, then the named
``versions/N.json``; data files are immutable, so a snapshot never changes under a reader.
:meth:`Snapshot.dataset` gives a lazily scanned ``pyarrow.dataset`` (nothing is read until a
query scans it). Only :meth:`Dataset.vacuum` deletes files: a reader still using a version that
vacuum removed gets D003/F001 errors, so run it when no session is pinned to old versions.

Snapshot JSON beyond the contract: ``"schemas"`` (table -> base64 Arrow IPC schema, so a table
whose rows were all deleted keeps its schema) and ``"rows"`` (data file -> row count, checked
by :meth:`Dataset.check`). Both are optional when reading.

Diagnostics: F001 (no such dataset), D001-D009 (see ``docs/errors.md``), F004 (cannot write).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint

if TYPE_CHECKING:
    import pyarrow.dataset as pads

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "FORMAT",
    "FORMAT_VERSION",
    "INGEST_ERRORS_SCHEMA",
    "MANIFEST",
    "SAMPLES_SCHEMA",
    "Dataset",
    "Snapshot",
    "Transaction",
    "VacuumReport",
    "ViewColumn",
    "conform",
    "is_dataset",
    "samples_view_columns",
]

FORMAT = "popql-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VERSIONS_DIR = "versions"
DATA_DIR = "data"
INDEXES_DIR = "indexes"
LOCK_FILE = ".lock"
#: Folders whose files belong to versions (vacuum removes the unreferenced ones).
VERSIONED_DIRS = (DATA_DIR, INDEXES_DIR)
#: Seconds a writer waits for the lock before giving up with D007.
DEFAULT_LOCK_TIMEOUT = 60.0

#: Columns of the ``samples`` table (contract section 1); used for an empty dataset.
SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("content_hash", pa.string()),
        ("size_bytes", pa.int64()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("label", pa.string()),
        ("metadata", pa.string()),
    ]
)
#: Columns of the ``ingest_errors`` table; used when a dataset has none yet.
INGEST_ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("at", pa.timestamp("us", tz="UTC")),
    ]
)

_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@=+-]{0,199}")
_VERSION_FILE = re.compile(r"(\d{8,})\.json")
#: Tables holding at most one row per sample (check() looks for duplicate sample ids).
_ONE_ROW_PER_SAMPLE = re.compile(r"samples|tags\..+|embeddings\..+")


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding a ``manifest.json`` (a versioned dataset)."""
    return (Path(path) / MANIFEST).is_file()


def _version_name(version: int) -> str:
    return f"{version:08d}.json"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _error(code: str, message: str, *hints: str, file: str | None = None) -> PopQLError:
    return PopQLError(Diagnostic(code, message, hints=tuple(h for h in hints if h), file=file))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: temp file, fsync, ``os.replace``, fsync dir."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text.encode("ascii"), validate=True)))


def _check_relpath(rel: str) -> str | None:
    """Why ``rel`` is not a safe dataset-relative file path, or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return "not a relative path"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "not a normalised relative path"
    return None


def _meta_files(meta: Any) -> Iterator[str]:
    """Every string inside tagger/embedder metadata that names a versioned file."""
    if isinstance(meta, str):
        if meta.startswith(tuple(d + "/" for d in VERSIONED_DIRS)) and _check_relpath(meta) is None:
            yield meta
    elif isinstance(meta, dict):
        for value in meta.values():
            yield from _meta_files(value)
    elif isinstance(meta, list | tuple):
        for value in meta:
            yield from _meta_files(value)


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _error("D008", f"{what} must be JSON data: {exc}") from exc


def _validate_table_name(name: str) -> None:
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise _error(
            "D008",
            f"invalid dataset table name {name!r}",
            "names use letters, digits and _ . @ = + - (not starting with . or -), "
            "at most 200 characters",
        )


# ---------------------------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------------------------


class Snapshot:
    """One committed version of a dataset (immutable).

    Attributes:
        root: the dataset directory.
        version: the version number (0: the empty dataset before the first commit).
        parent, created, message: from the snapshot file.
        tables: table name -> absolute paths of its data files (in order).
        taggers / embedders: the metadata set with ``Transaction.set_tagger`` /
            ``set_embedder`` (plain JSON data; do not mutate).
    """

    def __init__(
        self,
        root: Path,
        version: int,
        *,
        parent: int | None = None,
        created: str | None = None,
        message: str = "",
        files: dict[str, list[str]] | None = None,
        schemas: dict[str, pa.Schema] | None = None,
        rows: dict[str, int] | None = None,
        taggers: dict[str, Any] | None = None,
        embedders: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.version = version
        self.parent = parent
        self.created = created
        self.message = message
        self._files: dict[str, list[str]] = files or {}
        self._schemas: dict[str, pa.Schema] = schemas or {}
        self._rows: dict[str, int] = rows or {}
        self.taggers: dict[str, Any] = taggers or {}
        self.embedders: dict[str, Any] = embedders or {}
        self.tables: dict[str, list[Path]] = {
            name: [root / rel for rel in rels] for name, rels in self._files.items()
        }

    def __repr__(self) -> str:
        return f"<Snapshot {self.root} v{self.version}: {', '.join(self.tables) or 'no tables'}>"

    # -- tables ---------------------------------------------------------------------------------

    def table_names(self) -> list[str]:
        return list(self._files)

    def files(self, name: str) -> list[str]:
        """Dataset-relative paths of table ``name``'s data files."""
        self._require(name)
        return list(self._files[name])

    def schema(self, name: str) -> pa.Schema:
        """The Arrow schema of table ``name`` (read from its first file if not recorded)."""
        self._require(name)
        schema = self._schemas.get(name)
        if schema is None:
            files = self.tables[name]
            schema = _read_schema(files[0], self.root) if files else pa.schema([])
            self._schemas[name] = schema
        return schema

    def num_rows(self, name: str) -> int:
        """Rows in table ``name`` according to the snapshot (reads file footers if unrecorded)."""
        self._require(name)
        total = 0
        for rel, path in zip(self._files[name], self.tables[name], strict=True):
            n = self._rows.get(rel)
            if n is None:
                n = _read_rows(path, self.root)
            total += n
        return total

    def table(self, name: str) -> pa.Table:
        """Table ``name`` read into memory (all its files, in order; none: an empty table)."""
        schema = self.schema(name)
        parts = [_read_parquet(p, self.root, schema) for p in self.tables[name]]
        if not parts:
            return schema.empty_table()
        return pa.concat_tables(parts)

    def dataset(self, name: str) -> pads.Dataset:
        """Table ``name`` as a lazily scanned ``pyarrow.dataset`` (no file is opened now)."""
        import pyarrow.dataset as pads
        import pyarrow.fs as pafs

        schema = self.schema(name)
        return pads.FileSystemDataset.from_paths(
            [str(p) for p in self.tables[name]],
            schema=schema,
            format=pads.ParquetFileFormat(),
            filesystem=pafs.LocalFileSystem(),
        )

    def referenced_files(self) -> set[str]:
        """Dataset-relative paths of every file this version needs (data files, indexes)."""
        out: set[str] = set()
        for rels in self._files.values():
            out.update(rels)
        out.update(_meta_files(self.taggers))
        out.update(_meta_files(self.embedders))
        return out

    def _require(self, name: str) -> None:
        if name not in self._files:
            hint = did_you_mean_hint(name, list(self._files))
            known = ", ".join(self._files) or "none"
            raise _error(
                "N001",
                f"unknown table '{name}' in version {self.version} of dataset {self.root}",
                hint or f"tables in this version: {known}",
            )

    # -- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "parent": self.parent,
            "created": self.created,
            "message": self.message,
            "tables": {k: list(v) for k, v in self._files.items()},
            "taggers": self.taggers,
            "embedders": self.embedders,
            "schemas": {
                k: _schema_to_text(self._schemas[k]) for k in self._files if k in self._schemas
            },
            "rows": dict(self._rows),
        }

    @classmethod
    def from_json(cls, root: Path, doc: Any, version: int, shown: str) -> Snapshot:
        """Parse and validate a snapshot document (PopQLError D002 when malformed)."""

        def bad(why: str) -> PopQLError:
            return _error(
                "D002",
                f"invalid snapshot {shown}: {why}",
                "restore the file from a backup, or open an older version",
                file=shown,
            )

        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if doc.get("version") != version or isinstance(doc.get("version"), bool):
            raise bad(f"its version field is {doc.get('version')!r}, expected {version}")
        parent = doc.get("parent")
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)):
            raise bad("'parent' is not a version number")
        message = doc.get("message", "")
        created = doc.get("created")
        if not isinstance(message, str) or (created is not None and not isinstance(created, str)):
            raise bad("'message' and 'created' must be strings")
        tables = doc.get("tables", {})
        if not isinstance(tables, dict):
            raise bad("'tables' is not an object")
        files: dict[str, list[str]] = {}
        for name, rels in tables.items():
            if not isinstance(rels, list):
                raise bad(f"table '{name}' does not list its files")
            for rel in rels:
                why = _check_relpath(rel)
                if why is not None:
                    raise bad(f"table '{name}' names a bad file path {rel!r} ({why})")
            files[name] = list(rels)
        taggers = doc.get("taggers", {})
        embedders = doc.get("embedders", {})
        if not isinstance(taggers, dict) or not isinstance(embedders, dict):
            raise bad("'taggers' and 'embedders' must be objects")
        schemas: dict[str, pa.Schema] = {}
        raw_schemas = doc.get("schemas", {})
        if not isinstance(raw_schemas, dict):
            raise bad("'schemas' is not an object")
        for name, text in raw_schemas.items():
            try:
                schemas[name] = _schema_from_text(text)
            except Exception as exc:
                raise bad(f"the schema of table '{name}' cannot be decoded ({exc})") from exc
        rows = doc.get("rows", {})
        if not isinstance(rows, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rows.values()
        ):
            raise bad("'rows' must map files to row counts")
        return cls(
            root,
            version,
            parent=parent,
            created=created,
            message=message,
            files=files,
            schemas=schemas,
            rows=dict(rows),
            taggers=taggers,
            embedders=embedders,
        )


def _read_rows(path: Path, root: Path) -> int:
    try:
        return _file_info(path)[0]
    except FileNotFoundError as exc:
        raise _missing(path, root) from exc
    except Exception as exc:
        raise _unreadable(path, root, exc) from exc


def _read_schema(path: Path, root: Path) -> pa.Schema:
    try:
        return _file_info(path)[1]
    except FileNotFoundError as exc:
        raise _missing(path, root) from exc
    except Exception as exc:
        raise _unreadable(path, root, exc) from exc


def _parquet_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as a Parquet file gives it back (timestamp[s] -> [ms], date64 -> date32...),
    so that the schema recorded in a snapshot is exactly its files' schema."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    return pq.read_schema(pa.BufferReader(sink.getvalue()))


def _read_file(path: Path, columns: list[str] | None = None) -> pa.Table:
    # The file is opened here so that it is closed even when pyarrow rejects it.
    with open(path, "rb") as fh, pq.ParquetFile(fh) as pf:
        return pf.read(columns=columns)


def _file_info(path: Path) -> tuple[int, pa.Schema]:
    """(rows, Arrow schema) from a Parquet file's footer."""
    with open(path, "rb") as fh, pq.ParquetFile(fh) as pf:
        return pf.metadata.num_rows, pf.schema_arrow


def _read_parquet(path: Path, root: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = _read_file(path)
    except FileNotFoundError as exc:
        raise _missing(path, root) from exc
    except Exception as exc:
        raise _unreadable(path, root, exc) from exc
    if table.schema != schema:
        try:
            table = table.select(schema.names).cast(schema)
        except Exception as exc:
            raise _unreadable(path, root, exc) from exc
    return table


def _missing(path: Path, root: Path) -> PopQLError:
    return _error(
        "D003",
        f"dataset file missing: {_rel(path, root)} (in {root})",
        "a file of this version was deleted outside PopQL, or vacuum removed this version",
        file=str(path),
    )


def _unreadable(path: Path, root: Path, exc: BaseException) -> PopQLError:
    return _error(
        "D004",
        f"invalid dataset file {_rel(path, root)}: {exc}",
        "the file is damaged; restore it from a backup or open an older version",
        file=str(path),
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Locking
# ---------------------------------------------------------------------------------------------

_held_lock = threading.Lock()
_held: set[tuple[str, int]] = set()


class _WriterLock:
    """An exclusive ``fcntl.flock`` on ``DIR/.lock`` (released on close or process death)."""

    def __init__(self, root: Path, timeout: float) -> None:
        self._key = (os.path.realpath(root), threading.get_ident())
        with _held_lock:
            if self._key in _held:
                raise _error(
                    "D007",
                    f"this thread already holds the writer lock of dataset {root}",
                    "commit or roll back the open transaction before starting another "
                    "(or running vacuum)",
                )
            _held.add(self._key)
        try:
            self._fd = self._acquire(root, timeout)
        except BaseException:
            with _held_lock:
                _held.discard(self._key)
            raise

    @staticmethod
    def _acquire(root: Path, timeout: float) -> int:
        path = root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _error(
                "F004", f"cannot write dataset lock {path}: {exc.strerror or exc}"
            ) from exc
        start = time.monotonic()
        delay = 0.002
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                waited = time.monotonic() - start
                if waited >= timeout:
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise _error(
                        "D007",
                        f"dataset {root} is locked by another writer (waited {waited:.1f} s)",
                        f"held by {holder}" if holder else "",
                        "wait for the other ingest/transaction to finish, or pass a longer "
                        "lock_timeout; readers are never blocked",
                    )
                time.sleep(min(delay, max(0.0, timeout - waited)))
                delay = min(delay * 2, 0.05)
            info = f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n"
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, info.encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
                with _held_lock:
                    _held.discard(self._key)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def __del__(self) -> None:  # a transaction dropped without commit/rollback
        with contextlib.suppress(Exception):
            self.release()


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class VacuumReport:
    """What :meth:`Dataset.vacuum` removed."""

    kept_versions: list[int] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)  # dataset-relative paths
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_versions": self.kept_versions,
            "removed_versions": self.removed_versions,
            "removed_files": self.removed_files,
            "freed_bytes": self.freed_bytes,
        }

    def __str__(self) -> str:
        kept = self.kept_versions
        where = f"kept versions {kept[0]}..{kept[-1]}" if kept else "no versions"
        return (
            f"removed {len(self.removed_versions)} version(s) and {len(self.removed_files)} "
            f"file(s), {self.freed_bytes} bytes; {where}"
        )


class Dataset:
    """A versioned dataset directory (see the module docstring).

    ``Dataset`` objects hold no open files and no cached version: :meth:`version` and
    :meth:`snapshot` read ``manifest.json`` on each call, so one object sees commits made by
    other processes.
    """

    def __init__(self, path: Path, *, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"<popql Dataset {self.path}>"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> Dataset:
        """Open the dataset at ``path``; with ``create`` make it (and its folder) if missing.

        F001 when ``path`` is missing or has no ``manifest.json`` and ``create`` is false;
        D001 when the manifest is unreadable. Creating a dataset in a folder that already holds
        ``tables/`` keeps those tables. ``lock_timeout`` (seconds, None: wait forever) is how
        long writers wait for the lock.
        """
        root = Path(os.path.abspath(os.fspath(path)))
        shown = os.fspath(path)
        if root.exists() and not root.is_dir():
            raise _error("F001", f"not a dataset directory: {shown} is a file")
        ds = cls(root, lock_timeout=lock_timeout)
        if not (root / MANIFEST).is_file():
            if not create:
                if not root.exists():
                    raise _error(
                        "F001",
                        f"dataset not found: {shown}",
                        "create it with Dataset.open(path, create=True) or `popql ingest`",
                    )
                raise _error(
                    "F001",
                    f"not a PopQL dataset: {shown} has no {MANIFEST}",
                    "create it with Dataset.open(path, create=True) or `popql ingest`",
                )
            ds._create()
        ds._read_manifest()
        return ds

    def _create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _error(
                "F004", f"cannot create dataset directory {self.path}: {exc.strerror or exc}"
            ) from exc
        lock = _WriterLock(self.path, self._wait(None))
        try:
            if (self.path / MANIFEST).is_file():  # another process created it meanwhile
                return
            try:
                (self.path / VERSIONS_DIR).mkdir(exist_ok=True)
                (self.path / DATA_DIR).mkdir(exist_ok=True)
                _fsync_dir(self.path)
                _atomic_write(self.path / MANIFEST, _dump_json(_manifest_doc(0)))
            except OSError as exc:
                raise _error(
                    "F004", f"cannot create dataset {self.path}: {exc.strerror or exc}"
                ) from exc
        finally:
            lock.release()

    # -- reading ----------------------------------------------------------------------------

    def _read_manifest(self) -> int:
        path = self.path / MANIFEST
        shown = str(path)
        hint = "restore manifest.json from a backup; versions/ holds every committed snapshot"
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise _error("D001", f"dataset manifest missing: {shown}", hint, file=shown) from exc
        except OSError as exc:
            raise _error(
                "D001", f"cannot read dataset manifest {shown}: {exc.strerror}", file=shown
            ) from exc
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _error(
                "D001", f"invalid dataset manifest {shown}: not JSON ({exc})", hint, file=shown
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise _error(
                "D001",
                f"invalid dataset manifest {shown}: not a {FORMAT} manifest",
                hint,
                file=shown,
            )
        fv = doc.get("format_version")
        if fv != FORMAT_VERSION:
            newer = isinstance(fv, int) and fv > FORMAT_VERSION
            raise _error(
                "D001",
                f"unsupported dataset format_version {fv!r} in {shown}",
                "written by a newer PopQL: upgrade PopQL" if newer else hint,
                file=shown,
            )
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise _error(
                "D001",
                f"invalid dataset manifest {shown}: bad version {version!r}",
                hint,
                file=shown,
            )
        return version

    def version(self) -> int:
        """The current committed version (0: nothing committed yet). Reads the manifest."""
        return self._read_manifest()

    def versions(self) -> list[int]:
        """Committed versions still on disk (not removed by vacuum), oldest first."""
        current = self.version()
        return [v for v in self._version_files() if 1 <= v <= current]

    def _version_files(self) -> list[int]:
        folder = self.path / VERSIONS_DIR
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                m = _VERSION_FILE.fullmatch(entry.name)
                if m:
                    found.append(int(m.group(1)))
        return sorted(found)

    def snapshot(self, version: int | None = None) -> Snapshot:
        """Version ``version`` (None: the current one). D006 when it does not exist."""
        current = self.version()
        if version is None:
            version = current
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"a dataset version is an int, not {type(version).__name__}")
        if version == 0:
            return Snapshot(self.path, 0, message="empty dataset")
        if version < 0 or version > current:
            raise _error(
                "D006",
                f"dataset {self.path} has no version {version} (current version: {current})",
                self._available_hint(current),
            )
        return self._load_snapshot(version, current)

    def _available_hint(self, current: int) -> str:
        kept = [v for v in self._version_files() if 1 <= v <= current]
        if not kept:
            return "the dataset has no committed versions yet"
        if kept == list(range(kept[0], kept[-1] + 1)):
            return f"available versions: {kept[0]}..{kept[-1]}"
        return "available versions: " + ", ".join(map(str, kept))

    def _load_snapshot(self, version: int, current: int) -> Snapshot:
        path = self.path / VERSIONS_DIR / _version_name(version)
        shown = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            if version == current:
                raise _error(
                    "D001",
                    f"dataset manifest names version {version} but {shown} is missing",
                    "restore the snapshot from a backup, or point manifest.json at an older "
                    "version",
                    file=shown,
                ) from exc
            raise _error(
                "D006",
                f"version {version} of dataset {self.path} was removed by vacuum",
                self._available_hint(current),
            ) from exc
        except OSError as exc:
            raise _error("D002", f"cannot read snapshot {shown}: {exc.strerror}") from exc
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _error("D002", f"invalid snapshot {shown}: not JSON ({exc})", file=shown) from exc
        return Snapshot.from_json(self.path, doc, version, shown)

    # -- writing ----------------------------------------------------------------------------

    def transaction(self, message: str = "", *, timeout: float | None = None) -> Transaction:
        """Start a transaction: takes the writer lock (waits up to ``timeout`` seconds;
        None: the dataset's ``lock_timeout``; ``math.inf``: forever), then stages changes
        against the current version. Use it as a context manager or call
        ``commit()``/``rollback()``.
        """
        return Transaction(self, message, _WriterLock(self.path, self._wait(timeout)))

    def _wait(self, timeout: float | None) -> float:
        wait = self.lock_timeout if timeout is None else timeout
        return float("inf") if wait is None else float(wait)

    def vacuum(self, keep_versions: int = 1, *, timeout: float | None = None) -> VacuumReport:
        """Delete snapshots older than the newest ``keep_versions`` and every file under
        ``data/``/``indexes/`` that no kept version references (with leftovers of interrupted
        commits). Takes the writer lock. Killed midway, it leaves a valid dataset: snapshots
        are deleted (and the deletion fsynced) before any data file.
        """
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int):
            raise TypeError("keep_versions must be an int")
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (the current version)")
        lock = _WriterLock(self.path, self._wait(timeout))
        try:
            return self._vacuum(keep_versions)
        finally:
            lock.release()

    def _vacuum(self, keep_versions: int) -> VacuumReport:
        current = self.version()
        report = VacuumReport()
        first_kept = max(1, current - keep_versions + 1)
        on_disk = self._version_files()
        referenced: set[str] = set()
        for v in on_disk:
            if first_kept <= v <= current:
                snap = self._load_snapshot(v, current)  # raises: never delete when in doubt
                referenced |= snap.referenced_files()
                report.kept_versions.append(v)
        versions_dir = self.path / VERSIONS_DIR
        removed_any = False
        for v in on_disk:
            if first_kept <= v <= current:
                continue
            path = versions_dir / _version_name(v)
            report.freed_bytes += _size(path)
            path.unlink(missing_ok=True)
            removed_any = True
            if v <= current:
                report.removed_versions.append(v)
            else:
                report.removed_files.append(_rel(path, self.path))
        for folder in (versions_dir, self.path):
            with contextlib.suppress(FileNotFoundError):
                for entry in folder.iterdir():
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        report.freed_bytes += _size(entry)
                        report.removed_files.append(_rel(entry, self.path))
                        entry.unlink(missing_ok=True)
                        removed_any = True
        if removed_any:  # snapshots are gone for good before any data file goes
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(versions_dir)
            _fsync_dir(self.path)
        for top in VERSIONED_DIRS:
            base = self.path / top
            if not base.is_dir():
                continue
            for dirpath, _dirnames, filenames in os.walk(base, topdown=False):
                folder = Path(dirpath)
                for name in filenames:
                    path = folder / name
                    rel = _rel(path, self.path)
                    if rel not in referenced:
                        report.freed_bytes += _size(path)
                        path.unlink(missing_ok=True)
                        report.removed_files.append(rel)
                if folder != base and not any(folder.iterdir()):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        report.removed_files.sort()
        return report

    # -- integrity ----------------------------------------------------------------------------

    def check(self, *, leftovers: bool = False, deep: bool = False) -> list[Diagnostic]:
        """Integrity problems, as diagnostics (an empty list: all is well).

        Checks the manifest, every snapshot still on disk, that every file they reference
        exists and is readable Parquet with the recorded row count and schema, and that the
        current version has no duplicate ``sample_id`` in ``samples``, tag and embedding
        tables. ``deep`` reads every data file in full (not just its footer). ``leftovers``
        adds notes (D009) for files that no version references: what an interrupted writer
        left behind, which vacuum removes.
        """
        out: list[Diagnostic] = []
        try:
            current = self._read_manifest()
        except PopQLError as err:
            return list(err.diagnostics)
        snapshots: dict[int, Snapshot] = {}
        for v in self._version_files():
            if v > current:
                continue
            try:
                snapshots[v] = self._load_snapshot(v, current)
            except PopQLError as err:
                out.extend(err.diagnostics)
        current_path = self.path / VERSIONS_DIR / _version_name(current)
        if current > 0 and not current_path.exists():
            out.append(
                Diagnostic(
                    "D001",
                    f"dataset manifest names version {current} but {current_path} is missing",
                    hints=("restore the snapshot from a backup",),
                    file=str(current_path),
                )
            )
        out.extend(self._check_files(snapshots, deep))
        if current in snapshots:
            out.extend(_check_duplicates(snapshots[current]))
        if leftovers:
            out.extend(self._leftovers(snapshots, current))
        return out

    def _check_files(self, snapshots: dict[int, Snapshot], deep: bool) -> list[Diagnostic]:
        """Each file named by any snapshot, inspected once."""
        # rel -> [(version, table or None, recorded rows, recorded schema)]
        uses: dict[str, list[tuple[int, str | None, int | None, pa.Schema | None]]] = {}
        for v, snap in sorted(snapshots.items()):
            table_files: set[str] = set()
            for name in snap.table_names():
                schema = snap._schemas.get(name)
                for rel in snap.files(name):
                    table_files.add(rel)
                    uses.setdefault(rel, []).append((v, name, snap._rows.get(rel), schema))
            for rel in snap.referenced_files() - table_files:
                uses.setdefault(rel, []).append((v, None, None, None))
        out: list[Diagnostic] = []
        for rel, used in uses.items():
            path = self.path / rel
            tables = sorted({t for _, t, _, _ in used if t is not None})
            where = _versions_text(sorted({v for v, _, _, _ in used}))
            what = f"table '{tables[0]}'" if tables else "named by tagger/embedder metadata"
            if not path.is_file():
                out.append(
                    Diagnostic(
                        "D003",
                        f"dataset file missing: {rel} ({what}, {where})",
                        hints=("restore it from a backup, or open a version that does not use it",),
                        file=str(path),
                    )
                )
                continue
            if not tables:
                continue
            rows, schema, error = _inspect_file(path, deep)
            if error is not None or rows is None or schema is None:
                out.append(_unreadable(path, self.path, error or ValueError("?")).diagnostic)
                continue
            expected = sorted({n for _, _, n, _ in used if n is not None})
            if any(n != rows for n in expected):
                out.append(
                    Diagnostic(
                        "D004",
                        f"dataset file {rel} has {rows} rows; {where} recorded "
                        f"{', '.join(map(str, expected))}",
                        hints=("the file was changed after it was committed",),
                        file=str(path),
                    )
                )
            for recorded in {id(s): s for _, _, _, s in used if s is not None}.values():
                if not _compatible(schema, recorded):
                    out.append(
                        Diagnostic(
                            "D004",
                            f"dataset file {rel} does not have the schema of {what} ({where})",
                            hints=(
                                f"file: {_short_schema(schema)}",
                                f"table: {_short_schema(recorded)}",
                            ),
                            file=str(path),
                        )
                    )
                    break
        return out

    def _leftovers(self, snapshots: dict[int, Snapshot], current: int) -> list[Diagnostic]:
        out: list[Diagnostic] = []
        referenced: set[str] = set()
        for snap in snapshots.values():
            referenced |= snap.referenced_files()
        note = "run `popql vacuum` (Dataset.vacuum) to remove it"
        for v in self._version_files():
            if v > current:
                rel = f"{VERSIONS_DIR}/{_version_name(v)}"
                out.append(
                    Diagnostic(
                        "D009",
                        f"leftover snapshot {rel}: version {v} was never committed "
                        "(an interrupted commit)",
                        hints=(note,),
                        severity="note",
                        file=str(self.path / rel),
                    )
                )
        for folder in (self.path / VERSIONS_DIR, self.path):
            with contextlib.suppress(FileNotFoundError):
                for entry in sorted(folder.iterdir()):
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        out.append(
                            Diagnostic(
                                "D009",
                                f"leftover temporary file {_rel(entry, self.path)}",
                                hints=(note,),
                                severity="note",
                                file=str(entry),
                            )
                        )
        for top in VERSIONED_DIRS:
            base = self.path / top
            if not base.is_dir():
                continue
            for dirpath, _dirs, filenames in os.walk(base):
                for name in sorted(filenames):
                    rel = _rel(Path(dirpath) / name, self.path)
                    if rel not in referenced:
                        out.append(
                            Diagnostic(
                                "D009",
                                f"leftover file {rel}: no version references it",
                                hints=(note,),
                                severity="note",
                                file=str(self.path / rel),
                            )
                        )
        return out


def _manifest_doc(version: int) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _table_files(snap: Snapshot) -> set[str]:
    out: set[str] = set()
    for name in snap.table_names():
        out.update(snap.files(name))
    return out


def _inspect_file(
    path: Path, deep: bool
) -> tuple[int | None, pa.Schema | None, BaseException | None]:
    """(rows, schema, None) of a readable Parquet file, else (None, None, the error)."""
    try:
        if deep:
            table = _read_file(path)
            return table.num_rows, table.schema, None
        rows, schema = _file_info(path)
        return rows, schema, None
    except Exception as exc:
        return None, None, exc


def _versions_text(versions: list[int]) -> str:
    if len(versions) == 1:
        return f"version {versions[0]}"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]}..{versions[-1]}"
    return "versions " + ", ".join(map(str, versions))


def _compatible(file_schema: pa.Schema, table_schema: pa.Schema) -> bool:
    found = {f.name: f.type for f in file_schema}
    return all(f.name in found and found[f.name] == f.type for f in table_schema) and len(
        file_schema
    ) == len(table_schema)


def _short_schema(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _check_duplicates(snap: Snapshot) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for name in snap.table_names():
        if not _ONE_ROW_PER_SAMPLE.fullmatch(name):
            continue
        try:
            if "sample_id" not in snap.schema(name).names:
                continue
            ids = pa.chunked_array(
                [
                    _read_file(p, ["sample_id"]).column(0).combine_chunks()
                    for p in snap.tables[name]
                ],
                type=snap.schema(name).field("sample_id").type,
            )
        except Exception:
            continue  # unreadable files are reported already
        counts = pc.value_counts(ids)
        dupes = [
            v
            for v, c in zip(counts.field(0).to_pylist(), counts.field(1).to_pylist(), strict=True)
            if c > 1
        ]
        if dupes:
            shown = ", ".join(repr(d) for d in dupes[:5]) + (" ..." if len(dupes) > 5 else "")
            out.append(
                Diagnostic(
                    "D005",
                    f"table '{name}' (version {snap.version}) has {len(dupes)} duplicate "
                    f"sample_id value(s): {shown}",
                    hints=(
                        "a writer appended rows for samples that already existed; "
                        "delete_where() the old rows before appending new ones",
                    ),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


class Transaction:
    """Changes staged against ``base`` (the version current when the lock was taken).

    Created by :meth:`Dataset.transaction`, which holds the writer lock until
    :meth:`commit` or :meth:`rollback`. Data files are written (and fsynced) as soon as they
    are staged; nothing is visible to readers before :meth:`commit` swaps the manifest.
    """

    def __init__(self, dataset: Dataset, message: str, lock: _WriterLock) -> None:
        self.dataset = dataset
        self.message = message
        self._lock = lock
        try:
            self.base: Snapshot = dataset.snapshot()
        except BaseException:
            lock.release()
            raise
        base = self.base
        self._files: dict[str, list[str]] = {n: base.files(n) for n in base.table_names()}
        self._schemas: dict[str, pa.Schema] = {n: base.schema(n) for n in base.table_names()}
        self._rows: dict[str, int] = dict(base._rows)
        self._taggers: dict[str, Any] = copy.deepcopy(base.taggers)
        self._embedders: dict[str, Any] = copy.deepcopy(base.embedders)
        self._written: list[str] = []
        self._added: list[str] = []
        self._new_dirs: list[Path] = []
        self._dirty = False
        self.state = "open"  # open, committed, rolled back, failed
        self.committed_version: int | None = None

    def __repr__(self) -> str:
        return f"<popql Transaction on {self.dataset.path} v{self.base.version}+1: {self.state}>"

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.state != "open":
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    @property
    def root(self) -> Path:
        return self.dataset.path

    # -- reading the staged state -------------------------------------------------------------

    def table_names(self) -> list[str]:
        return list(self._files)

    def table(self, name: str) -> pa.Table:
        """Table ``name`` as it would be committed now (the staged changes included)."""
        return self._staged().table(name)

    def _staged(self) -> Snapshot:
        return Snapshot(
            self.root,
            self.base.version + 1,
            files={k: list(v) for k, v in self._files.items()},
            schemas=dict(self._schemas),
            rows=dict(self._rows),
            taggers=self._taggers,
            embedders=self._embedders,
        )

    # -- staging ----------------------------------------------------------------------------

    def append(self, table: str, data: pa.Table | pa.RecordBatch) -> None:
        """Add ``data``'s rows to ``table`` (created when new) as one new data file.

        Columns are matched by name to the table's schema and cast when needed; a missing
        nullable column is filled with nulls; an extra column or a failing cast is D008.
        """
        self._require_open()
        _validate_table_name(table)
        data = _as_table(data)
        if table in self._schemas:
            data = conform(data, self._schemas[table], table)
        else:
            data = _normalise(data)
            self._schemas[table] = data.schema
            self._files[table] = []
        self._dirty = True
        if data.num_rows:
            self._files[table].append(self._write(table, data))

    def replace(self, table: str, data: pa.Table | pa.RecordBatch) -> None:
        """Make ``table`` exactly ``data`` (its schema included)."""
        self._require_open()
        _validate_table_name(table)
        data = _normalise(_as_table(data))
        self._schemas[table] = data.schema
        self._files[table] = [self._write(table, data)] if data.num_rows else []
        self._dirty = True

    def delete_where(self, table: str, sample_ids: Iterable[str]) -> int:
        """Delete the rows of ``table`` whose ``sample_id`` is in ``sample_ids``; returns how
        many. Data files holding such rows are rewritten without them (copy on write)."""
        self._require_open()
        self._require_table(table)
        schema = self._schemas[table]
        if "sample_id" not in schema.names:
            raise _error("D008", f"table '{table}' has no sample_id column to delete by")
        wanted = pa.array(sorted(set(sample_ids)), type=schema.field("sample_id").type)
        if not len(wanted):
            return 0
        deleted = 0
        kept: list[str] = []
        for rel in self._files[table]:
            path = self.root / rel
            try:
                ids = _read_file(path, ["sample_id"]).column(0)
            except FileNotFoundError as exc:
                raise _missing(path, self.root) from exc
            except Exception as exc:
                raise _unreadable(path, self.root, exc) from exc
            hit = pc.is_in(ids, value_set=wanted)
            n = pc.sum(hit).as_py() or 0
            if not n:
                kept.append(rel)
                continue
            deleted += n
            keep = pc.invert(pc.fill_null(hit, False))
            rest = _read_parquet(path, self.root, schema).filter(keep)
            if rest.num_rows:
                kept.append(self._write(table, rest))
        if deleted:
            self._files[table] = kept
            self._dirty = True
        return deleted

    def drop_table(self, table: str) -> None:
        """Remove ``table`` from the next version (its files stay for older versions)."""
        self._require_open()
        self._require_table(table)
        del self._files[table]
        self._schemas.pop(table, None)
        self._dirty = True

    def set_tagger(self, name: str, meta: dict[str, Any]) -> None:
        """Record tagger ``name``'s metadata (``version``, ``table``, ``columns``...)."""
        self._require_open()
        _validate_table_name(name)
        if not isinstance(meta, dict):
            raise _error("D008", f"tagger metadata for '{name}' must be a dict")
        self._taggers[name] = _json_copy(meta, f"tagger metadata for '{name}'")
        self._dirty = True

    def remove_tagger(self, name: str) -> None:
        self._require_open()
        if self._taggers.pop(name, None) is not None:
            self._dirty = True

    def set_embedder(self, key: str, meta: dict[str, Any]) -> None:
        """Record embedder ``key``'s metadata (``spec``, ``identity``, ``dim``, ``table``,
        ``index``...). File paths in the metadata (``data/...``, ``indexes/...``) are kept by
        vacuum as long as a kept version names them."""
        self._require_open()
        _validate_table_name(key)
        if not isinstance(meta, dict):
            raise _error("D008", f"embedder metadata for '{key}' must be a dict")
        self._embedders[key] = _json_copy(meta, f"embedder metadata for '{key}'")
        self._dirty = True

    def remove_embedder(self, key: str) -> None:
        self._require_open()
        if self._embedders.pop(key, None) is not None:
            self._dirty = True

    def add_file(self, relpath: str) -> Path:
        """Reserve a new file ``relpath`` (under ``data/`` or ``indexes/``) and return its
        absolute path (its folder exists). Write it before :meth:`commit`, which fsyncs it,
        and name it in tagger/embedder metadata (e.g. ``"index": relpath``): a reserved file
        that the committed version does not name is deleted by the commit.
        """
        self._require_open()
        why = _check_relpath(relpath)
        if why is None and relpath.split("/")[0] not in VERSIONED_DIRS:
            why = f"not under {' or '.join(d + '/' for d in VERSIONED_DIRS)}"
        if why is None and len(relpath.split("/")) < 2:
            why = "no file name"
        if why is not None:
            raise _error("D008", f"cannot reserve file {relpath!r}: {why}")
        path = self.root / relpath
        if path.exists() or relpath in self._written:
            raise _error(
                "D008", f"cannot reserve file {relpath!r}: it exists (dataset files are immutable)"
            )
        self._mkdirs(path.parent)
        self._written.append(relpath)
        self._added.append(relpath)
        self._dirty = True
        return path

    # -- commit / rollback ------------------------------------------------------------------

    def commit(self) -> int:
        """Publish the staged changes as the next version and release the lock; returns the
        new version (the base version when nothing was staged: no version is written)."""
        self._require_open()
        try:
            if not self._dirty:
                self.committed_version = self.base.version
                self._close("committed")
                return self.base.version
            version = self.base.version + 1
            snap = Snapshot(
                self.root,
                version,
                parent=self.base.version,
                created=_now(),
                message=self.message,
                files=self._files,
                schemas=self._schemas,
                rows={
                    rel: self._rows[rel]
                    for rels in self._files.values()
                    for rel in rels
                    if rel in self._rows
                },
                taggers=self._taggers,
                embedders=self._embedders,
            )
            referenced = snap.referenced_files()
            missing = sorted(rel for rel in referenced if not (self.root / rel).is_file())
            if missing:
                raise _error(
                    "D008",
                    f"cannot commit: {len(missing)} file(s) named by this version do not exist: "
                    + ", ".join(missing[:5]),
                    "write every file reserved with add_file() before committing",
                )
            for rel in self._added:
                if rel in referenced:
                    _fsync_file(self.root / rel)
            dirs = {(self.root / rel).parent for rel in self._written if rel in referenced}
            dirs.update(d.parent for d in self._new_dirs)
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                if d.is_dir() and d != self.root:
                    _fsync_dir(d)
            versions = self.root / VERSIONS_DIR
            versions.mkdir(exist_ok=True)
            _atomic_write(versions / _version_name(version), _dump_json(snap.to_json()))
            _atomic_write(self.root / MANIFEST, _dump_json(_manifest_doc(version)))
        except OSError as exc:
            self._close("failed")
            raise _error(
                "F004", f"cannot commit to dataset {self.root}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            self._close("failed")
            raise
        # Files written and dropped again within this transaction were never visible.
        for rel in self._written:
            if rel not in referenced:
                with contextlib.suppress(OSError):
                    (self.root / rel).unlink()
        self.committed_version = version
        self._close("committed")
        return version

    def rollback(self) -> None:
        """Abandon the staged changes: delete the files this transaction wrote, release the
        lock. (Killed before this, the files stay as leftovers until vacuum.)"""
        if self.state != "open":
            return
        for rel in self._written:
            with contextlib.suppress(OSError):
                (self.root / rel).unlink()
        self._close("rolled back")

    # -- internals ----------------------------------------------------------------------------

    def _close(self, state: str) -> None:
        self.state = state
        self._lock.release()

    def _require_open(self) -> None:
        if self.state != "open":
            raise _error(
                "D008",
                f"this transaction is {self.state}; start a new one with Dataset.transaction()",
            )
        if not self._lock.held:  # pragma: no cover - defensive
            raise _error("D008", "this transaction no longer holds the writer lock")

    def _require_table(self, table: str) -> None:
        if table not in self._files:
            hint = did_you_mean_hint(table, list(self._files))
            raise _error(
                "D008",
                f"unknown table '{table}' in dataset {self.root}",
                hint or f"tables: {', '.join(self._files) or 'none'}",
            )

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists() and p != self.root:
            missing.append(p)
            p = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _error("F004", f"cannot create {folder}: {exc.strerror or exc}") from exc
        self._new_dirs.extend(missing)

    def _write(self, table: str, data: pa.Table) -> str:
        rel = f"{DATA_DIR}/{table}/{uuid.uuid4().hex}.parquet"
        path = self.root / rel
        self._mkdirs(path.parent)
        self._written.append(rel)
        try:
            with open(path, "xb") as fh:
                pq.write_table(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _error("F004", f"cannot write {path}: {exc.strerror or exc}") from exc
        self._rows[rel] = data.num_rows
        return rel


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    raise TypeError(f"expected a pyarrow Table or RecordBatch, not {type(data).__name__}")


def _normalise(data: pa.Table) -> pa.Table:
    """``data`` without schema metadata, cast to the types Parquet gives back."""
    data = data.replace_schema_metadata(None)
    schema = _parquet_schema(data.schema)
    return data if schema == data.schema else data.cast(schema, safe=False)


def conform(data: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    """``data`` with exactly ``schema`` (columns by name, cast; missing nullable -> nulls);
    D008 names ``table`` when it cannot. What :meth:`Transaction.append` applies; also for a
    new table that must have a known schema (``SAMPLES_SCHEMA``)."""
    extra = [n for n in data.schema.names if n not in schema.names]
    if extra:
        raise _error(
            "D008",
            f"cannot append to '{table}': unknown column(s) {', '.join(extra)}",
            f"the table's columns: {_short_schema(schema)}",
            "use replace() to change a table's schema",
        )
    columns = []
    for f in schema:
        if f.name in data.schema.names:
            col = data.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise _error(
                        "D008",
                        f"cannot append to '{table}': column '{f.name}' is {col.type}, "
                        f"the table has {f.type} ({exc})",
                    ) from exc
        elif f.nullable:
            col = pa.chunked_array([pa.nulls(data.num_rows, f.type)], type=f.type)
        else:
            raise _error("D008", f"cannot append to '{table}': column '{f.name}' is missing")
        if not f.nullable and col.null_count:
            raise _error("D008", f"cannot append to '{table}': nulls in column '{f.name}'")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


# ---------------------------------------------------------------------------------------------
# The samples view (section 5)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewColumn:
    """One column of the ``samples`` view: ``table.column AS name``."""

    name: str
    type: pa.DataType
    table: str  # the snapshot table it comes from ("samples", "tags.x@1", "embeddings.k")
    column: str
    tagger: str | None = None
    tagger_version: str | None = None
    embedder: str | None = None


def samples_view_columns(snapshot: Snapshot) -> list[ViewColumn]:
    """The columns of the ``samples`` view of ``snapshot``.

    The samples table's columns, then each tagger's columns (in the snapshot's tagger order;
    ``sample_id`` is the join key and not repeated; a name already taken, compared
    case-insensitively, is prefixed ``<tagger>_``). Taggers whose table is not in the snapshot
    are skipped. Embeddings are not part of the view (a 512-d vector is 1 KB a row, and joining
    it into every query cost more than the rest of the view): they are the tables
    ``embeddings.<key>`` (``sample_id``, ``sample_key``, ``embedding``), searched with
    ``SIMILAR TO`` / ``NEAR``.
    """
    base = snapshot.schema("samples") if "samples" in snapshot.tables else SAMPLES_SCHEMA
    cols = [ViewColumn(f.name, f.type, "samples", f.name) for f in base]
    taken = {c.name.lower() for c in cols}

    def free(name: str, prefix: str) -> str:
        if name.lower() not in taken:
            return name
        candidate = f"{prefix}_{name}"
        n = 2
        while candidate.lower() in taken:
            candidate = f"{prefix}_{name}_{n}"
            n += 1
        return candidate

    for tagger, meta in snapshot.taggers.items():
        meta = meta if isinstance(meta, dict) else {}
        version = meta.get("version")
        table = meta.get("table") or f"tags.{tagger}@{version}"
        if not isinstance(table, str) or table not in snapshot.tables:
            continue
        schema = snapshot.schema(table)
        if "sample_id" not in schema.names:
            continue
        for f in schema:
            if f.name == "sample_id":
                continue
            name = free(f.name, tagger)
            taken.add(name.lower())
            cols.append(
                ViewColumn(
                    name,
                    f.type,
                    table,
                    f.name,
                    tagger=tagger,
                    tagger_version=None if version is None else str(version),
                )
            )
    return cols
