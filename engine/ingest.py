"""Incremental ingest: files -> samples, tags, embeddings and a vector index in a dataset.

>>> from popql.engine.ingest import ingest
>>> summary = ingest("photos.popql", ["~/Pictures"], taggers=["image_stats"])  # doctest: +SKIP
>>> summary.new, summary.errors                                                # doctest: +SKIP
(120, {'truncated': 1})

What one run does (``docs/datasets-design.md`` section 4 is the contract):

1. **Enumerate** the sources: a folder (recursive, image suffixes, hidden entries and the
   dataset's own folder skipped), a glob, a file, a list of these, or a URL prefix that
   pyarrow.fs or fsspec understands (``s3://bucket/prefix`` with ``AWS_ENDPOINT_URL`` or
   ``storage_options={"endpoint_url": ...}``, ``file://``, ``memory://``...).
2. **Hash** every file (sha256, streamed, in threads). A file whose content is already a sample
   and that every requested model has seen is skipped without decoding. A file with new
   content at a known uri replaces the old sample (its rows in every table and its vector).
   A file that failed before with the same content is skipped (``retry_errors`` to retry).
3. **Decode** what needs work in a thread pool (PIL releases the GIL) while the main thread
   runs the models, so decoding overlaps inference; thumbnails are made in the same threads.
4. **Tag and embed** in batches: each tagger / the embedder runs only on the samples its
   table lacks, so adding a tagger (or a new version of one) to a dataset processes only
   what it has not seen, and decodes only those files.
5. **Commit** every ``commit_every`` processed images through one Dataset transaction
   (samples, ``tags.<name>@<version>``, ``embeddings.<key>``, ``ingest_errors``, the usearch
   index saved as a new file). A killed run loses at most one chunk; running it again finishes
   the job without duplicates.
6. **Labels** (``labels=``): the file is read first (a bad file fails before any work) and
   joined to the samples at the end (the dataset table ``labels``; a ``label`` column also
   fills ``samples.label``), see :mod:`popql.engine.labels`.

Bad files never stop a run: each becomes a row of ``ingest_errors`` (``uri``, ``reason``,
``error``, ``at``, ``content_hash``) with a reason from :data:`popql.engine.images.REASONS`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import glob as _glob
import json as _json
import os
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from popql.diagnostics import Diagnostic, PopQLError

from .dataset import INGEST_ERRORS_SCHEMA, SAMPLES_SCHEMA
from .images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    DecodedImage,
    FileRef,
    HashedFile,
    ImageError,
    decode_image,
    exif_json,
    filesystem_for,
    hash_file,
    is_url,
    make_thumbnail,
    sample_key_of,
)

if TYPE_CHECKING:
    from .dataset import Dataset, Snapshot, Transaction
    from .labels import LabelFile

__all__ = [
    "DEFAULT",
    "ERRORS_SCHEMA",
    "SAMPLES_SCHEMA",
    "IngestSummary",
    "enumerate_sources",
    "ingest",
]

#: ``taggers="default"`` / ``embedder="default"``: the registries' DEFAULT_TAGGERS and
#: DEFAULT_EMBEDDER. A default model that cannot load (weights unavailable offline) is
#: skipped with a one-line note; a model named explicitly is an error.
DEFAULT = "default"

SAMPLES = "samples"
ERRORS = "ingest_errors"
LABELS = "labels"

#: ``ingest_errors``: the storage contract's columns plus ``content_hash`` (null when the file
#: could not be read), so an unchanged bad file is not decoded again.
ERRORS_SCHEMA = pa.schema([*INGEST_ERRORS_SCHEMA, pa.field("content_hash", pa.string())])


def _embedding_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("sample_id", pa.string()),
            ("sample_key", pa.int64()),
            ("embedding", pa.list_(pa.float16(), dim)),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


@dataclass
class IngestSummary:
    """What one ingest run did. ``to_dict()`` / ``to_json()`` give the machine-readable form
    that ``popql ingest --json`` prints."""

    dataset: str = ""
    version: int = 0
    found: int = 0
    new: int = 0
    skipped_known: int = 0
    duplicates: int = 0
    replaced: int = 0
    known_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    decoded: int = 0
    tagged: dict[str, int] = field(default_factory=dict)
    embedded: int = 0
    embedder: str | None = None
    labels_matched: int | None = None
    labels_unmatched: int | None = None
    commits: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def images_per_s(self) -> float:
        """Images decoded and run through the models, per second of the whole run."""
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["error_count"] = self.error_count
        out["images_per_s"] = round(self.images_per_s, 2)
        out["seconds"] = round(self.seconds, 3)
        return out

    def to_json(self) -> str:
        return _json.dumps(self.to_dict(), sort_keys=False)

    def text(self) -> str:
        """A human summary (a few lines)."""
        parts = [f"{self.found} file(s) found", f"{self.new} new"]
        if self.skipped_known:
            parts.append(f"{self.skipped_known} already known")
        if self.replaced:
            parts.append(f"{self.replaced} replaced")
        if self.errors:
            listed = ", ".join(f"{r} {n}" for r, n in sorted(self.errors.items()))
            parts.append(f"{self.error_count} error(s) ({listed})")
        if self.known_errors:
            parts.append(f"{self.known_errors} known bad file(s) skipped")
        lines = [", ".join(parts)]
        models = [f"{name} {n}" for name, n in self.tagged.items()]
        if self.embedder is not None:
            models.append(f"{self.embedder} embeddings {self.embedded}")
        if models:
            lines.append("processed: " + ", ".join(models))
        if self.labels_matched is not None:
            lines.append(
                f"labels: {self.labels_matched} matched, {self.labels_unmatched} unmatched"
            )
        rate = f", {self.images_per_s:.1f} images/s" if self.decoded else ""
        lines.append(
            f"{self.seconds:.1f} s{rate}; dataset {self.dataset} at version {self.version}"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

_GLOB_CHARS = set("*?[")


def _has_glob(s: str) -> bool:
    return any(c in s for c in _GLOB_CHARS)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(root: str, exclude: set[str], out: dict[str, FileRef]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in exclude
        )
        for name in sorted(filenames):
            if name.startswith(".") or not _is_image_name(name):
                continue
            ref = FileRef.local(os.path.join(dirpath, name))
            out.setdefault(ref.uri, ref)


def _source_error(message: str, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic("F001", message, hints=tuple(hints)))


def enumerate_sources(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    storage_options: Mapping[str, Any] | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> tuple[list[FileRef], list[str]]:
    """The files of ``sources`` (sorted by uri, each once) and the roots that relative label
    paths are resolved against. Folders and URL prefixes keep image suffixes only; files and
    glob matches named explicitly are kept whatever their suffix. PopQLError F001 for a source
    that does not exist or matches nothing."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    excluded = {os.path.realpath(os.fspath(e)) for e in exclude}
    found: dict[str, FileRef] = {}
    roots: list[str] = []
    for item in sources:
        source = os.fspath(item)
        if is_url(source) and not source.startswith("file://"):
            roots.append(source.rstrip("/"))
            _enumerate_url(source, storage_options, found)
            continue
        if source.startswith("file://"):
            source = source[len("file://") :]
        source = os.path.expanduser(source)
        if os.path.isdir(source):
            roots.append(os.path.abspath(source))
            _walk(source, excluded, found)
        elif os.path.lexists(source):
            roots.append(os.path.dirname(os.path.abspath(source)))
            ref = FileRef.local(source)
            found.setdefault(ref.uri, ref)
        elif _has_glob(source):
            matches = sorted(_glob.glob(source, recursive=True))
            if not matches:
                raise _source_error(f"no files match {source}")
            base = source
            while _has_glob(base):
                base = os.path.dirname(base)
            roots.append(os.path.abspath(base or "."))
            for match in matches:
                if os.path.isdir(match):
                    _walk(match, excluded, found)
                elif os.path.basename(match).startswith(".") and not _has_glob(source):
                    continue
                else:
                    ref = FileRef.local(match)
                    found.setdefault(ref.uri, ref)
        else:
            raise _source_error(
                f"source not found: {source}",
                "give a folder, an image file, a glob (quote it) or a URL such as "
                "s3://bucket/prefix",
            )
    return [found[k] for k in sorted(found)], roots


def _enumerate_url(
    source: str, storage_options: Mapping[str, Any] | None, out: dict[str, FileRef]
) -> None:
    import pyarrow.fs as pafs

    scheme = source.partition("://")[0]
    pattern = None
    base = source
    if _has_glob(source.partition("://")[2]):
        pattern = source.partition("://")[2]
        while _has_glob(base.partition("://")[2]):
            base = base.rsplit("/", 1)[0]
    try:
        fs, path = filesystem_for(base, storage_options)
        info = fs.get_file_info(path)
        prefix_filter: str | None = None
        if info.type == pafs.FileType.NotFound and pattern is None:
            # s3://bucket/images/2024- : a key prefix, not a folder
            parent, _, prefix_filter = path.rstrip("/").rpartition("/")
            path = parent
            info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        else:
            raise _source_error(f"source not found: {source}")
    except PopQLError:
        raise
    except Exception as exc:
        raise _source_error(
            f"cannot list {source}: {type(exc).__name__}: {exc}",
            "for S3-compatible storage set AWS_ENDPOINT_URL (or storage_options="
            "{'endpoint_url': ...}) and the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        ) from exc
    kept = 0
    for entry in infos:
        if entry.type != pafs.FileType.File:
            continue
        name = entry.path.rsplit("/", 1)[-1]
        rel = entry.path
        if prefix_filter is not None and not rel.startswith(f"{path}/{prefix_filter}"):
            continue
        uri = f"{scheme}://{rel}"
        if pattern is not None:
            if not fnmatch.fnmatchcase(rel.lstrip("/"), pattern.lstrip("/")):
                continue
        elif info.type == pafs.FileType.Directory and (
            name.startswith(".") or not _is_image_name(name)
        ):
            continue
        out.setdefault(uri, FileRef(uri=uri, path=entry.path, fs=fs, size=entry.size))
        kept += 1
    if not kept and pattern is not None:
        raise _source_error(f"no files match {source}")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass
class _Model:
    """A tagger or the embedder, with the sample ids its table already holds."""

    name: str
    kind: str  # "tagger" | "embedder"
    obj: Any
    table: str
    done: set[str]
    batch_size: int
    optional: bool
    count: int = 0


def _resolve_taggers(
    taggers: Sequence[Any] | str | None, notes: list[str]
) -> list[tuple[Any, bool]]:
    """[(tagger, optional)] from names and Tagger objects; ``"default"`` is the registry's
    DEFAULT_TAGGERS, each optional (skipped with a note when it cannot load)."""
    if taggers is None:
        return []
    optional = taggers == DEFAULT
    items: Sequence[Any] = [taggers] if isinstance(taggers, str) else taggers
    if any(isinstance(t, str) for t in items):
        from . import taggers as registry

        if optional:
            items = registry.DEFAULT_TAGGERS
    out: list[tuple[Any, bool]] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            if item.lower() == "none" or item in seen:
                continue
            try:
                tagger = registry.get_tagger(item)
            except PopQLError as err:
                if not optional:
                    raise
                notes.append(f"tagger {item} unavailable ({_first_message(err)}); skipped")
                continue
        else:
            tagger = item
        if tagger.name in seen:
            continue
        seen.add(tagger.name)
        out.append((tagger, optional))
    return out


def _first_message(err: PopQLError) -> str:
    return err.diagnostics[0].message if err.diagnostics else str(err)


def _resolve_embedder(embedder: Any, notes: list[str]) -> Any | None:
    if embedder is None:
        return None
    if not isinstance(embedder, str):
        return embedder
    from . import embedders as registry

    optional = embedder == DEFAULT
    spec = registry.DEFAULT_EMBEDDER if optional else embedder
    if spec.lower() == "none":
        return None
    try:
        return registry.load_embedder(spec)
    except PopQLError as err:
        if not optional:
            raise
        message = _first_message(err)
        if "CLIP weights unavailable" not in message:
            message = f"CLIP weights unavailable: {spec!r}: {message}; text search is off"
        notes.append(f"{message} (continuing with tags only)")
        return None


# ---------------------------------------------------------------------------------------------
# Work items
# ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One file after the worker threads: hashed, perhaps decoded."""

    ref: FileRef
    hashed: HashedFile | None = None
    decoded: DecodedImage | None = None
    error: ImageError | None = None
    needs: tuple[str, ...] = ()
    new_sample: bool = False
    skipped: str = ""  # "known" | "duplicate" | "known_error"

    @property
    def sample_id(self) -> str:
        assert self.hashed is not None
        return self.hashed.sample_id


class _State:
    """What the dataset holds, as far as this run needs to know (main thread writes, worker
    threads only read)."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.ids: set[str] = set()
        self.uri_ids: dict[str, set[str]] = {}
        self.id_uri: dict[str, str] = {}
        self.errors: dict[str, tuple[str, str | None]] = {}  # uri -> (reason, content hash)
        self.tables: set[str] = set()
        if snapshot is None:
            return
        self.tables = set(snapshot.tables)
        samples = _read_columns(snapshot, SAMPLES, ["sample_id", "uri"])
        if samples is not None:
            for sid, uri in zip(
                samples.column("sample_id").to_pylist(),
                samples.column("uri").to_pylist(),
                strict=True,
            ):
                self.ids.add(sid)
                self.uri_ids.setdefault(uri, set()).add(sid)
                self.id_uri[sid] = uri
        errors = _read_columns(snapshot, ERRORS, None)
        if errors is not None:
            hashes = (
                errors.column("content_hash").to_pylist()
                if "content_hash" in errors.column_names
                else [None] * errors.num_rows
            )
            for uri, reason, h in zip(
                errors.column("uri").to_pylist(),
                errors.column("reason").to_pylist(),
                hashes,
                strict=True,
            ):
                self.errors[uri] = (reason, h)


def _read_columns(snapshot: Snapshot, table: str, columns: list[str] | None) -> pa.Table | None:
    if table not in snapshot.tables or not snapshot.tables[table]:
        return None
    try:
        return snapshot.dataset(table).to_table(columns=columns)
    except Exception:
        data = snapshot.table(table)
        return data.select(columns) if columns else data


def _table_ids(snapshot: Snapshot | None, table: str) -> set[str]:
    if snapshot is None:
        return set()
    data = _read_columns(snapshot, table, ["sample_id"])
    return set(data.column("sample_id").to_pylist()) if data is not None else set()


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class _Progress:
    """One status line on a terminal (stderr): files done of found, images/s, ETA."""

    def __init__(self, total: int, enabled: bool, stream: IO[str]) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.width = 0

    def update(self, done: int, summary: IngestSummary, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        frac = done / self.total
        bar_len = 24
        filled = int(bar_len * frac)
        bar = "#" * filled + "-" * (bar_len - filled)
        rate = summary.decoded / elapsed
        files_rate = done / elapsed
        eta = (self.total - done) / files_rate if done and files_rate > 0 else None
        eta_text = "--:--" if eta is None else _clock(eta)
        errors = summary.error_count
        line = (
            f"ingest [{bar}] {done}/{self.total} {frac:4.0%}  new {summary.new}  "
            f"known {summary.skipped_known}  errors {errors}  {rate:.1f} img/s  ETA {eta_text}"
        )
        pad = max(0, self.width - len(line))
        self.width = len(line)
        with contextlib.suppress(Exception):
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.width:
            with contextlib.suppress(Exception):
                self.stream.write("\r" + " " * self.width + "\r")
                self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class _Run:
    def __init__(
        self,
        dataset: Dataset,
        *,
        models: list[_Model],
        embedder: Any | None,
        batch_size: int,
        commit_every: int,
        workers: int,
        max_pixels: int | None,
        max_side: int | None,
        max_bytes: int,
        thumbnails: bool,
        retry_errors: bool,
        summary: IngestSummary,
        progress: _Progress,
        snapshot: Snapshot | None,
    ) -> None:
        self.dataset = dataset
        self.models = models
        self.embedder = embedder
        self.batch_size = batch_size
        self.commit_every = commit_every
        self.workers = workers
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.thumbnails = thumbnails
        self.retry_errors = retry_errors
        self.summary = summary
        self.progress = progress
        self.state = _State(snapshot)
        self.snapshot = snapshot
        from .taggers import ImageInput

        self.image_input = ImageInput
        # pending rows, written by the next commit
        self.samples: list[dict[str, Any]] = []
        self.tag_rows: dict[str, list[pa.Table]] = {m.name: [] for m in models}
        self.vectors: list[tuple[str, Any]] = []
        self.error_rows: list[dict[str, Any]] = []
        self.cleared_error_uris: set[str] = set()
        self.deleted: set[str] = set()
        self.all_deleted: set[str] = set()
        self.pending_images = 0
        self.seen_uri: dict[str, str] = {}  # uri -> sample id, every file hashed in this run
        self.index: Any = None
        self.index_loaded = False
        self.index_rel: str | None = None
        if snapshot is not None and embedder is not None:
            meta = snapshot.embedders.get(str(embedder.key)) or {}
            if meta.get("index") and meta.get("identity") in (None, embedder.identity):
                self.index_rel = str(meta["index"])
        self.version = dataset.version()
        self.lock = threading.Lock()

    # -- worker threads ---------------------------------------------------------------------

    def needs_of(self, sid: str) -> tuple[str, ...]:
        return tuple(m.name for m in self.models if sid not in m.done)

    def work(self, ref: FileRef) -> _Item:
        item = _Item(ref)
        try:
            hashed = hash_file(ref, keep=True, max_bytes=self.max_bytes)
        except ImageError as exc:
            item.error = exc
            return item
        data = hashed.data
        item.hashed = HashedFile(hashed.ref, hashed.content_hash, hashed.size, None)
        sid = hashed.sample_id
        state = self.state
        previous_error = state.errors.get(ref.uri)
        if (
            not self.retry_errors
            and sid not in state.ids
            and previous_error is not None
            and previous_error[1] == hashed.content_hash
        ):
            item.skipped = "known_error"
            return item
        item.new_sample = sid not in state.ids
        item.needs = tuple(m.name for m in self.models) if item.new_sample else self.needs_of(sid)
        if not item.new_sample and not item.needs:
            item.skipped = "known" if sid in state.uri_ids.get(ref.uri, ()) else "duplicate"
            return item
        assert data is not None
        try:
            item.decoded = decode_image(
                data, uri=ref.uri, max_pixels=self.max_pixels, max_side=self.max_side
            )
        except ImageError as exc:
            item.error = exc
            return item
        del data
        if self.thumbnails and item.new_sample:
            with contextlib.suppress(OSError):
                make_thumbnail(self.dataset.path, hashed.content_hash, item.decoded.image)
        return item

    # -- main thread --------------------------------------------------------------------------

    def run(self, refs: list[FileRef]) -> None:
        self.run_pass(refs, 0)
        # Content that moved within this run (files swapped or renamed over each other) may
        # have been deleted as "replaced" after its new path was seen: ingest those again.
        lost = sorted(u for u, sid in self.seen_uri.items() if sid in self.all_deleted)
        if lost:
            by_uri = {r.uri: r for r in refs}
            for sid in {self.seen_uri[u] for u in lost}:
                self.all_deleted.discard(sid)
            self.run_pass([by_uri[u] for u in lost], len(refs) - len(lost))

    def run_pass(self, refs: list[FileRef], done: int) -> None:
        window = max(2 * self.batch_size + 2 * self.workers, 4)
        batch: list[_Item] = []
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="popql-ingest")
        with pool:
            queue: deque[Future[_Item]] = deque()
            it = iter(refs)
            try:
                for ref in it:
                    queue.append(pool.submit(self.work, ref))
                    if len(queue) >= window:
                        break
                while queue:
                    item = queue.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append(pool.submit(self.work, nxt))
                    done += 1
                    if self.accept(item):
                        batch.append(item)
                    if len(batch) >= self.batch_size:
                        self.process(batch)
                        batch = []
                    if self.pending_images >= self.commit_every:
                        self.commit()
                    self.progress.update(done, self.summary)
                if batch:
                    self.process(batch)
                    batch = []
                self.commit()
                self.progress.update(done, self.summary, force=True)
            except BaseException:
                for f in queue:
                    f.cancel()
                raise

    def accept(self, item: _Item) -> bool:
        """Book-keeping for one finished item; True when it goes to the models."""
        s = self.summary
        uri = item.ref.uri
        previous = self.state.uri_ids.get(uri, set())
        if item.hashed is not None:
            sid = item.sample_id
            self.seen_uri[uri] = sid
            # this uri held other content before: those samples are replaced
            for old in sorted(previous - {sid}):
                self.replace(old, uri)
        if item.skipped == "known_error":
            s.known_errors += 1
            return False
        if item.error is not None:
            h = item.hashed.content_hash if item.hashed else None
            if self.state.errors.get(uri) == (item.error.reason, h):
                s.known_errors += 1  # the same failure as last time: nothing to record
                return False
            s.errors[item.error.reason] = s.errors.get(item.error.reason, 0) + 1
            self.error_rows.append(
                {
                    "uri": uri,
                    "reason": item.error.reason,
                    "error": item.error.message,
                    "at": _now(),
                    "content_hash": h,
                }
            )
            self.cleared_error_uris.add(uri)
            return False
        if uri in self.state.errors:
            self.cleared_error_uris.add(uri)
        if item.skipped:
            s.skipped_known += 1
            if item.skipped == "duplicate":
                s.duplicates += 1
            return False
        sid = item.sample_id
        if item.new_sample and sid in self.state.ids:
            # the same bytes twice in this run (or new since the worker looked)
            item.new_sample = False
            item.needs = self.needs_of(sid)
            if not item.needs:
                s.skipped_known += 1
                s.duplicates += 1
                return False
        if item.new_sample:
            self.state.ids.add(sid)
            self.state.uri_ids.setdefault(uri, set()).add(sid)
            self.state.id_uri[sid] = uri
        else:
            # a known sample that some model has not seen: run only those
            item.needs = self.needs_of(sid)
            if not item.needs:
                s.skipped_known += 1
                return False
            s.skipped_known += 1
        # claim it now, so the same content later in the run is not processed twice
        for m in self.models:
            if m.name in item.needs:
                m.done.add(sid)
        return True

    def replace(self, old: str, uri: str) -> None:
        """The file at ``uri`` no longer holds sample ``old``."""
        state = self.state
        state.uri_ids.get(uri, set()).discard(old)
        if old not in state.ids or old in self.deleted:
            return
        self.summary.replaced += 1
        self.deleted.add(old)
        self.all_deleted.add(old)
        state.ids.discard(old)
        state.id_uri.pop(old, None)
        for m in self.models:
            m.done.discard(old)

    def process(self, batch: list[_Item]) -> None:
        """Run the models on a batch of decoded items; queue their rows."""
        inputs = []
        for item in batch:
            d = item.decoded
            assert d is not None and item.hashed is not None
            inputs.append(
                self.image_input(
                    sample_id=item.sample_id,
                    uri=item.ref.uri,
                    image=d.image,
                    exif=d.exif,
                    width=d.width,
                    height=d.height,
                )
            )
        for model in list(self.models):
            chosen = [inputs[i] for i, item in enumerate(batch) if model.name in item.needs]
            if chosen:
                self.run_model(model, chosen)
        now = _now()
        for item in batch:
            d = item.decoded
            assert d is not None and item.hashed is not None
            if item.new_sample:
                meta: dict[str, Any] = {"mode": d.mode}
                if d.frames > 1:
                    meta["frames"] = d.frames
                if d.exif:
                    meta["exif"] = d.exif
                self.samples.append(
                    {
                        "sample_id": item.sample_id,
                        "uri": item.ref.uri,
                        "width": d.width,
                        "height": d.height,
                        "format": d.format or None,
                        "content_hash": item.hashed.content_hash,
                        "size_bytes": item.hashed.size,
                        "ingested_at": now,
                        "label": None,
                        "metadata": _json.dumps(meta, sort_keys=True, ensure_ascii=False)
                        if meta
                        else exif_json(d.exif),
                    }
                )
                self.summary.new += 1
            item.decoded = None  # free the pixels
        self.summary.decoded += len(batch)
        self.pending_images += len(batch)

    def run_model(self, model: _Model, inputs: list[Any]) -> None:
        """Run one model on ``inputs`` (it batches them by its own ``batch_size``)."""
        from .taggers import run_tagger

        try:
            if model.kind == "tagger":
                self.tag_rows[model.name].append(run_tagger(model.obj, inputs))
            else:
                vectors = model.obj.embed_images([x.image for x in inputs])
                if len(vectors) != len(inputs):
                    raise ValueError(f"returned {len(vectors)} vectors for {len(inputs)} images")
                self.vectors.extend(
                    (x.sample_id, v) for x, v in zip(inputs, vectors, strict=True)
                )
        except PopQLError as err:
            if model.optional and model.count == 0 and _unavailable(err):
                # a default tagger whose weights or packages are missing: go on without it
                self.summary.notes.append(
                    f"tagger {model.name} unavailable ({_first_message(err)}); skipped"
                )
                self.models.remove(model)
                self.tag_rows.pop(model.name, None)
                self.summary.tagged.pop(model.name, None)
                return
            raise
        except Exception as exc:
            raise PopQLError(
                Diagnostic(
                    "E003",
                    f"embedder '{model.obj.key}' failed on a batch of {len(inputs)} image(s) "
                    f"('{inputs[0].uri}'...): {type(exc).__name__}: {exc}",
                    hints=("images processed before this batch were committed",),
                )
            ) from exc
        model.count += len(inputs)
        if model.kind == "tagger":
            self.summary.tagged[model.name] = model.count
        else:
            self.summary.embedded = model.count

    # -- commits ------------------------------------------------------------------------------

    def has_pending(self) -> bool:
        return bool(
            self.samples
            or any(self.tag_rows.values())
            or self.vectors
            or self.error_rows
            or self.cleared_error_uris
            or self.deleted
        )

    def commit(self) -> None:
        if not self.has_pending():
            self.pending_images = 0
            return
        message = f"ingest {len(self.samples)} new image(s)"
        with self.dataset.transaction(message) as txn:
            self.write(txn)
            self.version = txn.commit()
        self.summary.commits += 1
        self.summary.version = self.version
        self.samples = []
        self.tag_rows = {m.name: [] for m in self.models}
        self.vectors = []
        self.error_rows = []
        self.cleared_error_uris = set()
        self.deleted = set()
        self.pending_images = 0

    def write(self, txn: Transaction) -> None:
        from .taggers import tagger_meta

        base = txn.base
        if base.version != self.version:
            self.rebase(base)
        existing = set(txn.table_names())
        if self.deleted:
            for name in sorted(existing):
                if name in (SAMPLES, LABELS) or name.startswith(("tags.", "embeddings.")):
                    txn.delete_where(name, set(self.deleted))
        if self.samples:
            txn.append(SAMPLES, pa.Table.from_pylist(self.samples, schema=SAMPLES_SCHEMA))
        for model in self.models:
            if model.kind != "tagger":
                continue
            parts = [t for t in self.tag_rows[model.name] if t.num_rows]
            if parts:
                txn.append(model.table, pa.concat_tables(parts))
            if parts or model.table in existing:
                txn.set_tagger(model.obj.name, tagger_meta(model.obj))
        embedder_model = next((m for m in self.models if m.kind == "embedder"), None)
        if embedder_model is not None and (self.vectors or embedder_model.table in existing):
            self.write_embeddings(txn, embedder_model)
        if self.error_rows or self.cleared_error_uris:
            self.write_errors(txn, base)
        self.state.tables = set(txn.table_names())

    def rebase(self, base: Snapshot) -> None:
        """Another writer committed since this run looked: drop pending rows for samples that
        are now stored, and continue from that version's vector index."""
        present = _table_ids(base, SAMPLES)
        self.samples = [r for r in self.samples if r["sample_id"] not in present]
        for m in self.models:
            if m.kind == "tagger" and (present := _table_ids(base, m.table)):
                known = pa.array(sorted(present), pa.string())
                self.tag_rows[m.name] = [
                    t.filter(pc.invert(pc.is_in(t.column("sample_id"), known)))
                    for t in self.tag_rows[m.name]
                ]
        embedder_model = next((m for m in self.models if m.kind == "embedder"), None)
        if embedder_model is not None:
            present = _table_ids(base, embedder_model.table)
            self.vectors = [(sid, v) for sid, v in self.vectors if sid not in present]
            meta = base.embedders.get(str(embedder_model.obj.key)) or {}
            self.index_rel = str(meta["index"]) if meta.get("index") else None
            self.index_loaded = False
            self.index = None
        self.snapshot = base
        for uri, outcome in _State(base).errors.items():
            self.state.errors.setdefault(uri, outcome)

    def write_embeddings(self, txn: Transaction, model: _Model) -> None:
        import numpy as np

        emb = model.obj
        dim = int(emb.dim)
        key = str(emb.key)
        index_rel = self.index_rel
        if self.vectors or self.deleted:
            ids = [sid for sid, _ in self.vectors]
            matrix = (
                np.asarray(np.stack([np.asarray(v, dtype=np.float32) for _, v in self.vectors]))
                if self.vectors
                else np.zeros((0, dim), dtype=np.float32)
            )
            if matrix.ndim != 2 or (len(ids) and matrix.shape[1] != dim):
                raise PopQLError(
                    Diagnostic(
                        "E003",
                        f"embedder '{key}' returned vectors of shape {matrix.shape}, "
                        f"expected (n, {dim})",
                    )
                )
            keys = np.array([sample_key_of(s) for s in ids], dtype=np.int64)
            if ids:
                flat = pa.array(matrix.astype(np.float16).reshape(-1), pa.float16())
                table = pa.table(
                    {
                        "sample_id": pa.array(ids, pa.string()),
                        "sample_key": pa.array(keys, pa.int64()),
                        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                    },
                    schema=_embedding_schema(dim),
                )
                txn.append(model.table, table)
            index = self.load_index(dim, key)
            if index is not None:
                if self.deleted:
                    gone = np.array([sample_key_of(s) for s in self.deleted], dtype=np.uint64)
                    with contextlib.suppress(Exception):
                        index.remove(gone)
                if ids:
                    fresh = [i for i, k in enumerate(keys) if not index.contains(int(k))]
                    if fresh:
                        index.add(keys[fresh].astype(np.uint64), matrix[fresh])
                rel = f"indexes/{key}/{uuid.uuid4().hex}.usearch"
                path = txn.add_file(rel)
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                index.save(os.fspath(path))
                index_rel = self.index_rel = rel
        txn.set_embedder(
            key,
            {
                "spec": str(getattr(emb, "spec", key)),
                "identity": str(getattr(emb, "identity", key)),
                "dim": dim,
                "table": model.table,
                "index": index_rel,
            },
        )
        self.vectors = []

    def load_index(self, dim: int, key: str) -> Any:
        """The usearch index: restored from the previous version's file (once per run), kept
        in memory across this run's commits."""
        if self.index_loaded:
            return self.index
        self.index_loaded = True
        try:
            from usearch.index import Index
        except ImportError:
            self.summary.notes.append("usearch is not installed: no vector index was written")
            self.index = None
            return None
        index = None
        previous = self.index_rel
        if previous:
            path = Path(self.dataset.path) / previous
            if path.is_file():
                with contextlib.suppress(Exception):
                    index = Index.restore(os.fspath(path), view=False)
            if index is None:
                self.summary.notes.append(
                    f"vector index {previous} could not be restored; rebuilt from the stored "
                    "embeddings"
                )
                index = self.rebuild_index(dim, key)
        if index is None:
            index = Index(ndim=dim, metric="cos", dtype="f16")
        self.index = index
        return index

    def rebuild_index(self, dim: int, key: str) -> Any:
        import numpy as np
        from usearch.index import Index

        index = Index(ndim=dim, metric="cos", dtype="f16")
        if self.snapshot is None:
            return index
        table = _read_columns(self.snapshot, f"embeddings.{key}", None)
        if table is None or not table.num_rows:
            return index
        ids = table.column("sample_id").to_pylist()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)
        index.add(np.array([sample_key_of(s) for s in ids], dtype=np.uint64), matrix)
        return index

    def write_errors(self, txn: Transaction, base: Snapshot) -> None:
        """``ingest_errors`` keeps the latest outcome per uri: this run's errors are added, and
        the rows of every uri this run read again (fixed, or failing anew) are dropped."""
        new = pa.Table.from_pylist(self.error_rows, schema=ERRORS_SCHEMA)
        if ERRORS not in base.tables:
            txn.append(ERRORS, new)
        else:
            same_columns = base.schema(ERRORS).names == ERRORS_SCHEMA.names
            if same_columns and not (self.cleared_error_uris & set(self.state.errors)):
                txn.append(ERRORS, new)
            else:
                old = base.table(ERRORS)
                keep = pc.invert(
                    pc.is_in(
                        old.column("uri"), pa.array(sorted(self.cleared_error_uris), pa.string())
                    )
                )
                kept = _conform(old.filter(keep), ERRORS_SCHEMA)
                txn.replace(ERRORS, pa.concat_tables([kept, new]))
        for uri in self.cleared_error_uris:
            self.state.errors.pop(uri, None)
        for row in self.error_rows:
            self.state.errors[row["uri"]] = (row["reason"], row["content_hash"])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _unavailable(err: PopQLError) -> bool:
    """A model that cannot load (weights or packages missing), not a bug."""
    return any(
        d.code.startswith("M") or "unavailable" in d.message or "not installed" in d.message
        for d in err.diagnostics
    )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _default_workers() -> int:
    """Decoding threads: enough to keep up with a model, few enough not to starve it (the
    models run on the caller's thread and use the cores too). Measured on 16 cores with a
    CPU-heavy tagger: 4-8 threads kept 86-91 % of the bare model's rate, 16 threads 74 %."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def _open_dataset(dataset: Any) -> Dataset:
    if isinstance(dataset, str | os.PathLike):
        from .dataset import Dataset

        return Dataset.open(dataset, create=True)
    return dataset


def ingest(
    dataset: Dataset | str | os.PathLike[str],
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    taggers: Sequence[Any] | str | None = DEFAULT,
    embedder: Any | None = DEFAULT,
    labels: str | os.PathLike[str] | None = None,
    labels_key: str | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
    commit_every: int = 256,
    json: bool = False,
    workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = 1024,
    max_bytes: int = DEFAULT_MAX_BYTES,
    thumbnails: bool = True,
    retry_errors: bool = False,
    stream: IO[str] | None = None,
) -> IngestSummary:
    """Ingest ``sources`` into ``dataset`` (a :class:`~popql.engine.dataset.Dataset` or a
    directory, created when missing) and return an :class:`IngestSummary`.

    ``taggers``: tagger names or Tagger objects (``"default"``: the registry's
    DEFAULT_TAGGERS, skipping any that cannot load; ``[]``/None: none). ``embedder``: a spec
    for ``load_embedder``, an Embedder object, None, or ``"default"`` (DEFAULT_EMBEDDER; when
    its weights are unavailable offline a one-line note says so and the run goes on with tags
    only). ``labels``: a label file (``labels_key`` names its key column). ``batch_size``:
    decoded images handed to the models at once (each model is called on at most its own
    ``batch_size``). ``commit_every``: processed images per transaction. ``progress``: a status
    line on ``stream`` (stderr); None = only when it is a terminal. ``json``: machine mode, no
    progress and no notes on ``stream`` (they are in ``summary.notes``). ``max_side``: the
    longest side of the images given to the models (full size is recorded in ``samples``);
    None keeps full resolution. ``workers``: hashing/decoding threads (default: half the CPUs,
    2 to 8).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if commit_every < 1:
        raise ValueError("commit_every must be at least 1")
    started = time.perf_counter()
    stream = sys.stderr if stream is None else stream
    root = (
        os.path.abspath(os.fspath(dataset))
        if isinstance(dataset, str | os.PathLike)
        else os.fspath(dataset.path)
    )
    summary = IngestSummary(dataset=root)
    notes = summary.notes

    def note(text: str) -> None:
        if not json:
            with contextlib.suppress(Exception):
                print(f"popql ingest: {text}", file=stream, flush=True)

    label_file: LabelFile | None = None
    if labels is not None:
        from .labels import read_labels

        label_file = read_labels(labels, key=labels_key, storage_options=storage_options)

    refs, roots = enumerate_sources(sources, storage_options=storage_options, exclude=[root])
    summary.found = len(refs)

    resolved_taggers = _resolve_taggers(taggers, notes)
    emb = _resolve_embedder(embedder, notes)
    for text in notes:
        note(text)
    shown_notes = len(notes)

    ds = _open_dataset(dataset)  # created only now: bad sources or models leave no folder
    snapshot = ds.snapshot()
    models: list[_Model] = []
    from .taggers import tag_table_name

    for tagger, optional in resolved_taggers:
        table = tag_table_name(tagger)
        models.append(
            _Model(
                name=str(tagger.name),
                kind="tagger",
                obj=tagger,
                table=table,
                done=_table_ids(snapshot, table),
                batch_size=int(getattr(tagger, "batch_size", batch_size) or batch_size),
                optional=optional,
            )
        )
        summary.tagged[str(tagger.name)] = 0
    if emb is not None:
        key = str(emb.key)
        table = f"embeddings.{key}"
        done = _table_ids(snapshot, table)
        meta = snapshot.embedders.get(key) if snapshot is not None else None
        if meta and meta.get("identity") not in (None, getattr(emb, "identity", None)):
            notes.append(
                f"embedder {key} has new weights ({emb.identity}); embeddings are recomputed"
            )
            done = set()
        models.append(
            _Model(
                name=f"embeddings:{key}",
                kind="embedder",
                obj=emb,
                table=table,
                done=done,
                batch_size=int(getattr(emb, "batch_size", batch_size) or batch_size),
                optional=False,
            )
        )
        summary.embedder = key

    use_progress = (not json) and (_isatty(stream) if progress is None else progress)
    bar = _Progress(len(refs), use_progress, stream)
    run = _Run(
        ds,
        models=models,
        embedder=emb,
        batch_size=min(batch_size, commit_every),
        commit_every=commit_every,
        workers=workers or _default_workers(),
        max_pixels=max_pixels,
        max_side=max_side,
        max_bytes=max_bytes,
        thumbnails=thumbnails,
        retry_errors=retry_errors,
        summary=summary,
        progress=bar,
        snapshot=snapshot,
    )
    if emb is not None and snapshot is not None:
        meta = snapshot.embedders.get(str(emb.key)) or {}
        if meta.get("identity") not in (None, getattr(emb, "identity", None)):
            # new weights: the old table and index are replaced, not extended
            run.snapshot = None
            with ds.transaction(f"reset embeddings.{emb.key}") as txn:
                txn.replace(f"embeddings.{emb.key}", _embedding_schema(int(emb.dim)).empty_table())
                run.version = txn.commit()

    summary.version = run.version
    try:
        with _quiet_pil_warnings():
            run.run(refs)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started

    if label_file is not None:
        _apply_labels(ds, label_file, run, roots, summary)
    _apply_holdouts(ds, summary)
    summary.version = ds.version()
    summary.seconds = time.perf_counter() - started
    for text in notes[shown_notes:]:
        note(text)
    return summary


def _apply_holdouts(ds: Dataset, summary: IngestSummary) -> None:
    """Assign the new members of held-out populations (``HOLD OUT``) to their splits; earlier
    assignments never change (see popql.engine.populations). A population that cannot run
    now is reported in the notes and left for the next ``HOLD OUT`` or ingest."""
    from .dataset import is_dataset

    if not is_dataset(ds.path) or "popql.holdouts" not in ds.snapshot().table_names():
        return
    from .populations import reapply_holdouts
    from .session import Session

    try:
        counts = reapply_holdouts(Session(ds.path))
    except PopQLError as err:
        summary.notes.append(
            "hold-outs not extended to the new samples: "
            + "; ".join(d.message for d in err.diagnostics)
        )
        return
    for name, c in counts.items():
        if c.get("assigned_now"):
            summary.notes.append(
                f"hold-out of population {name}: {c['assigned_now']} new member(s) assigned"
            )


@contextlib.contextmanager
def _quiet_pil_warnings() -> Iterator[None]:
    """PIL warns about odd EXIF, palette transparency, large images...: per-file details that
    must not stop or clutter a run (decoding checks the pixel limit itself). Entered once on
    the main thread, around the worker pool."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        yield


def _apply_labels(
    ds: Dataset, label_file: LabelFile, run: _Run, roots: list[str], summary: IngestSummary
) -> None:
    from .labels import match_labels

    snapshot = ds.snapshot()
    samples = _read_columns(snapshot, SAMPLES, None)
    if samples is None:
        samples = SAMPLES_SCHEMA.empty_table()
    ids = samples.column("sample_id").to_pylist()
    uris = samples.column("uri").to_pylist()
    paths = dict(zip(uris, ids, strict=True))
    stored = set(ids)
    for uri, sid in run.seen_uri.items():  # other paths of identical files
        if sid in stored:
            paths.setdefault(uri, sid)
    id_uri = dict(zip(ids, uris, strict=True))
    match = match_labels(label_file, paths, sample_ids=ids, uris=id_uri, roots=roots)
    summary.labels_matched = match.matched
    summary.labels_unmatched = len(match.unmatched) + len(match.ambiguous)
    if match.unmatched or match.ambiguous:
        examples = (match.unmatched + match.ambiguous)[:3]
        summary.notes.append(
            f"{summary.labels_unmatched} label row(s) match no sample"
            + (f" ({len(match.ambiguous)} ambiguous)" if match.ambiguous else "")
            + ": "
            + ", ".join(examples)
            + (" ..." if summary.labels_unmatched > 3 else "")
        )
    new = match.table
    with ds.transaction(f"labels from {label_file.source}") as txn:
        old = _read_columns(snapshot, LABELS, None)
        if old is not None and old.num_rows:
            keep = pc.invert(
                pc.is_in(old.column("sample_id"), pa.array(sorted(match.sample_ids)))
            )
            try:
                combined = pa.concat_tables(
                    [old.filter(keep), new], promote_options="permissive"
                )
            except (pa.ArrowException, TypeError):
                combined = new
                summary.notes.append("the labels table was replaced (columns changed type)")
            txn.replace(LABELS, combined)
        else:
            txn.replace(LABELS, new)
        if "label" in new.column_names and new.num_rows:
            _update_sample_labels(txn, samples, new)
        txn.commit()
    summary.commits += 1


def _update_sample_labels(txn: Transaction, samples: pa.Table, labels: pa.Table) -> None:
    """``samples.label`` from the label file's ``label`` column (the last row per sample)."""
    wanted: dict[str, str | None] = {}
    for sid, value in zip(
        labels.column("sample_id").to_pylist(), labels.column("label").to_pylist(), strict=True
    ):
        wanted[sid] = None if value is None else str(value)
    rows = []
    for row in samples.filter(
        pc.is_in(samples.column("sample_id"), pa.array(sorted(wanted)))
    ).to_pylist():
        if row.get("label") != wanted[row["sample_id"]]:
            row["label"] = wanted[row["sample_id"]]
            rows.append(row)
    if rows:
        changed = {r["sample_id"] for r in rows}
        txn.delete_where(SAMPLES, changed)
        txn.append(SAMPLES, pa.Table.from_pylist(rows, schema=samples.schema))


_Callback = Callable[[IngestSummary], None]
