"""Offline batch generation: a JSONL file of contexts in, one PEFT adapter folder per line out.

`hyperadapter batch INPUT.jsonl --out DIR` reads one JSON object per line, `{"id"?, "kind"?, "context"}`
or `{"id"?, "kind"?, "path"}` (a UTF-8 text file, relative to the input file's folder), and writes:

    DIR/<id>/            the PEFT adapter of that line (adapter_config.json + adapter_model.safetensors;
                         a document's also adapter_routes.safetensors, its sentence adapters)
    DIR/manifest.jsonl   one row per finished line: id, line, kind, context_hash, adapter (store id),
                         cache_hit, how, similarity, seconds (the batch's wall time / its size), rank
    DIR/errors.jsonl     one row per bad line of this run: line, reason (and id when known)

Ids: the line's "id" (a safe folder name, unique in the file; a repeated id is a bad line) or one
derived from kind + context (or path), `<kind>-<16 hex>`, with `-2`, `-3`... for repeated lines, so a
rerun of the same file agrees on every id. Blank lines are ignored.

Work goes through the adapter cache in batches (`AdapterCache.get_or_create_many`, owner "batch"):
one batched encode and one batched generation per batch; exact and near duplicates are served by the
cache (within a batch, a repeated context is generated once: its rows say how="repeat"). Batches are
formed by context length (see `_batches`), not in file order, and stop growing at `max_context_chars`
characters in total, so a batch of long documents takes no more memory than one maximal document.

Crash safety and resume. An adapter folder is linked (or, across file systems, copied) from the store
into a temp folder `DIR/.<id>.tmp-*`, fsynced (the whole batch at once), renamed into place, and only then is its
manifest row appended (flush + fsync): a manifest row implies a complete folder. A rerun skips the
lines that have a manifest row with the same kind and context hash and a complete folder, redoes the
rest (what the killed run stored is then an exact cache hit), and first deletes leftover temp folders.
A lock file (DIR/.batch.lock) keeps two independent runs from writing into one DIR at once.

Several processes (`accelerate launch --multi_gpu --num_processes N -m hyperadapter.cli batch ...`, which
is accelerate's torchrun launcher and works on a CPU-only machine; `--cpu` alone starts a single process
unless given `--mpirun_hostfile`; `torchrun --nproc_per_node N -m hyperadapter.cli batch ...` works too): process
`rank` takes the lines with `line % N == rank` and appends to DIR/manifest.<rank>.jsonl and
DIR/errors.<rank>.jsonl; after all are done, the main process merges the parts (deduplicated by id)
into manifest.jsonl and errors.jsonl. In one process the rows go straight to manifest.jsonl and
errors.jsonl. All processes share the store (SQLite + a file lock make that safe).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from hyperadapter.durable import atomic_write_bytes, fsync_path, swap_in_dir
from hyperadapter.generator.config import KIND_IDS

KINDS = tuple(KIND_IDS)
MANIFEST, ERRORS = "manifest.jsonl", "errors.jsonl"
LOCK = ".batch.lock"
OWNER = "batch"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")  # = adapter.CONFIG_NAME, WEIGHTS_NAME
CONFIG, WEIGHTS = PEFT_FILES
ROUTES = "adapter_routes"  # adapter.ROUTES_NAME and ROUTES_PARTS start so: a document's or chat's routes
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as the store's ids: no '/', no leading '.'
_PART = re.compile(r"^(manifest|errors)\.(\d+)\.jsonl$")
_LEFTOVER = re.compile(r"^\..+\.(tmp|old)-")  # our temp folders/files (and Adapter.save's)


class BatchUsageError(ValueError):
    """Bad arguments or an unusable input/output path (the CLI exits 2)."""


class LineError(ValueError):
    """This line cannot be processed; the reason goes to errors.jsonl."""


@dataclass
class Item:
    line: int
    id: str
    kind: str
    context: str | None  # inline context, or None when read from `path`
    path: Path | None
    context_hash: str = ""
    chars: int = 0


@dataclass
class Summary:
    lines: int = 0  # non-blank lines handled by this process (by all, on the main process)
    done: int = 0  # adapters written by this run
    skipped: int = 0  # already done by an earlier run
    failed: int = 0
    cache_hits: int = 0  # of `done`, served from the cache (exact, near, blend or repeat)
    seconds: float = 0.0  # time spent on the work, model loading excluded
    out_dir: Path | None = None
    is_main: bool = True

    @property
    def exit_code(self) -> int:
        return 1 if self.failed and self.is_main else 0

    def report(self) -> str:
        rate = f"; {self.done / self.seconds:.2f} adapters/s" if self.done and self.seconds > 0 else ""
        text = (f"batch: {self.lines} lines: {self.done} done ({self.cache_hits} from the cache), "
                f"{self.skipped} already done, {self.failed} failed{rate}; manifest {self.out_dir / MANIFEST}")
        if self.failed:
            text += f", errors {self.out_dir / ERRORS}"
        return text


def context_hash(kind: str, context: str) -> str:
    """The cache's exact key for a context (the same value as AdapterCache.context_hash)."""
    from hyperadapter.embedding import normalise
    return hashlib.sha256(f"{kind}\n{normalise(context)}".encode()).hexdigest()


# ------------------------------------------------------------------------------- input
def parse_input(data: bytes, *, default_kind: str | None, base_dir: Path,
                max_chars: int) -> tuple[list[Item], list[dict]]:
    """Every line -> an Item or an error row. Ids are assigned over the whole file in order, so every
    process of a multi-process run agrees on them. Contexts in files are only read later (`read_context`)."""
    items: list[Item] = []
    errors: list[dict] = []
    taken: dict[str, int] = {}  # id -> line that claimed it
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            item = _parse_line(line_no, raw, default_kind, base_dir, max_chars, taken)
        except LineError as exc:
            errors.append({"line": line_no, "reason": str(exc)})
            continue
        taken[item.id] = line_no
        items.append(item)
    return items, errors


def _parse_line(line_no: int, raw: bytes, default_kind: str | None, base_dir: Path, max_chars: int,
                taken: dict[str, int]) -> Item:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LineError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LineError(f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind") if obj.get("kind") is not None else default_kind
    if kind is None:
        raise LineError('no "kind" (give one on the line or pass --kind)')
    if not isinstance(kind, str) or kind not in KIND_IDS:
        raise LineError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    has_context, has_path = "context" in obj, "path" in obj
    if has_context == has_path:
        raise LineError('give either "context" or "path"' + (", not both" if has_context else ""))
    context, path = None, None
    if has_context:
        context = obj["context"]
        if not isinstance(context, str):
            raise LineError(f'"context" must be a string, got {type(context).__name__}')
        check_context(context, max_chars)
        source = "context:" + context
    else:
        if not isinstance(obj["path"], str) or not obj["path"].strip():
            raise LineError('"path" must be a non-empty string')
        path = base_dir / Path(obj["path"]).expanduser()
        source = "path:" + obj["path"]

    if obj.get("id") is not None:
        raw_id = obj["id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise LineError(f'"id" must be a string, got {type(raw_id).__name__}')
        item_id = str(raw_id)
        if not _ID.match(item_id) or item_id.endswith(".jsonl"):
            raise LineError(f"id {item_id!r} is not a safe folder name: use 1-128 letters, digits, '.', '_' or "
                            "'-', not starting with '.' nor ending in '.jsonl'")
        if item_id in taken:
            raise LineError(f"duplicate id {item_id!r} (first used on line {taken[item_id]})")
    else:
        digest = hashlib.sha256(f"{kind}\n{source}".encode()).hexdigest()
        stem = item_id = f"{kind}-{digest[:16]}"
        n = 1
        while item_id in taken:  # the same line again: a stable suffix by occurrence
            n += 1
            item_id = f"{stem}-{n}"
    return Item(line_no, item_id, kind, context, path)


def check_context(context: str, max_chars: int) -> None:
    if not context.strip():
        raise LineError("the context is empty")
    if len(context) > max_chars:
        raise LineError(f"the context is too long: {len(context)} characters, the limit is {max_chars} "
                        "(setting max_context_chars)")


def read_context(item: Item, max_chars: int) -> str:
    """The item's context text, checked (raises LineError)."""
    if item.context is not None:
        return item.context
    try:
        size = item.path.stat().st_size
        if size > 4 * max_chars:  # UTF-8 takes at most 4 bytes a character: too long, no need to read it
            raise LineError(f"the context is too long: {item.path} holds {size} bytes, the limit is {max_chars} "
                            "characters (setting max_context_chars)")
        text = item.path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise LineError(f"path {item.path}: not UTF-8 text") from None
    except OSError as exc:
        raise LineError(f"cannot read path {item.path}: {exc.strerror or exc}") from None
    check_context(text, max_chars)
    return text


# ------------------------------------------------------------------------------- files
def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a line cut short by a kill (or otherwise unreadable) is skipped."""
    rows = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return rows
    for raw in data.split(b"\n"):
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _parts(out_dir: Path, stem: str) -> list[Path]:
    found = [(int(m[2]), p) for p in out_dir.iterdir() if (m := _PART.match(p.name)) and m[1] == stem]
    return [p for _, p in sorted(found)]


def _manifest_rows(out_dir: Path) -> dict[str, dict]:
    """id -> its newest manifest row, over manifest.jsonl and any per-process parts."""
    rows: dict[str, dict] = {}
    for path in [out_dir / MANIFEST, *_parts(out_dir, "manifest")]:
        for row in _read_jsonl(path):
            if isinstance(row.get("id"), str):
                rows[row["id"]] = row
    return rows


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in PEFT_FILES)


class _Appender:
    """Append JSON rows to a file, each call flushed and fsynced (a row, once written, survives a kill)."""

    def __init__(self, path: Path, truncate: bool = False):
        if not truncate:
            _drop_torn_tail(path)
        self.path = path
        self.file = open(path, "w" if truncate else "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.file.write("".join(json.dumps(row) + "\n" for row in rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left half-written, so that the next row starts on its own line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _write_rows_atomic(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))


def _clean_leftovers(out_dir: Path) -> None:
    """Temp folders (and files) of a killed run; never a finished adapter folder."""
    for path in out_dir.iterdir():
        if _LEFTOVER.match(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _routes_names(source: Path) -> list[str]:
    """The routes files of a stored adapter folder: none, one, or the parts a user's routes span and their list."""
    return sorted(p.name for p in source.iterdir() if p.name.startswith(ROUTES))


def _publish(pairs: list[tuple[Item, Path]], out_dir: Path) -> dict[str, str]:
    """Put each stored adapter folder at DIR/<id>/ atomically. Returns {item id: reason} for failures.

    The weights and routes files are hard links to the store's (the store never rewrites a file in place:
    a new adapter is a new folder), so publishing writes no weights; the small JSON files are copied, so
    that editing them in DIR cannot touch the store. Where links are impossible (another file system)
    the weights are copied too. Copies are fsynced before any rename, once per batch."""
    failed: dict[str, str] = {}
    staged: list[tuple[Item, Path]] = []
    copied: list[Path] = []
    for item, source in pairs:
        tmp = out_dir / f".{item.id}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name in (CONFIG, WEIGHTS, *_routes_names(source)):
                if name.endswith(".json"):  # small: copied, so that editing it in DIR cannot touch the store
                    shutil.copyfile(source / name, tmp / name)
                    copied.append(tmp / name)
                elif not _link(source / name, tmp / name):
                    copied.append(tmp / name)
        except FileNotFoundError:  # evicted from the store since it was returned (a tiny store)
            shutil.rmtree(tmp, ignore_errors=True)
            failed[item.id] = (f"adapter left the store before it was copied ({source}); "
                               "raise cache_max_adapters / cache_max_bytes and rerun")
            continue
        staged.append((item, tmp))
    for path in copied:
        fsync_path(path)
    for _, tmp in staged:
        fsync_path(tmp)  # the new names inside the folder, before the folder is renamed into place
    for item, tmp in staged:
        swap_in_dir(tmp, out_dir / item.id)  # redone (no manifest row, or a stale one): never a half folder
    fsync_path(out_dir)
    return failed


def _link(source: Path, target: Path) -> bool:
    """Hard-link `source` at `target` (True), or copy it where the file system refuses (False)."""
    try:
        os.link(source, target)
        return True
    except FileNotFoundError:
        raise
    except OSError:  # EXDEV (another file system), EPERM, EMLINK, ...
        shutil.copyfile(source, target)
        return False


# ------------------------------------------------------------------------------- the run
def run_batch(input_path: str | os.PathLike, out_dir: str | os.PathLike, *, settings,
              services_factory: Callable[[], object], batch_size: int = 8, default_kind: str | None = None,
              reuse: bool = True, progress: bool = True) -> Summary:
    """Make the adapters of every line of `input_path` that `out_dir` does not hold yet (see the module
    docstring). `services_factory` builds the Services; it is only called if there is work to do.
    Raises BatchUsageError for bad arguments; bad lines are reported, not raised."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    if batch_size < 1:
        raise BatchUsageError(f"--batch-size must be at least 1, got {batch_size}")
    if default_kind is not None and default_kind not in KIND_IDS:
        raise BatchUsageError(f"--kind {default_kind!r}: use one of {', '.join(KINDS)}")
    if not input_path.is_file():
        raise BatchUsageError(f"{input_path}: no such file")
    try:
        data = input_path.read_bytes()
    except OSError as exc:
        raise BatchUsageError(f"{input_path}: cannot read ({exc.strerror or exc})") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchUsageError(f"--out {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchUsageError(f"--out {out_dir}: cannot create ({exc.strerror or exc})") from None

    from accelerate import PartialState
    from filelock import FileLock, Timeout

    # cpu=True: the processes only coordinate (barriers, a gather), so gloo suffices wherever the models run.
    # A long timeout: a process with little left to do may wait hours at the final barrier for the others.
    state = PartialState(cpu=True, timeout=timedelta(days=7))
    rank, world, is_main = state.process_index, state.num_processes, state.is_main_process
    lock = FileLock(out_dir / LOCK)
    if is_main:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise BatchUsageError(f"--out {out_dir}: another `hyperadapter batch` is writing there") from None
    try:
        if is_main:
            _clean_leftovers(out_dir)
        state.wait_for_everyone()  # nobody writes before the leftovers are gone
        summary = _run_rank(data, input_path, out_dir, settings, services_factory, batch_size, default_kind,
                            reuse, progress, rank, world)
        state.wait_for_everyone()
        from accelerate.utils import gather_object
        summaries = gather_object([summary])
        if not is_main:
            summary.is_main = False
            return summary
        _merge(out_dir, world)
        total = Summary(out_dir=out_dir, is_main=True)
        for s in summaries:
            for name in ("lines", "done", "skipped", "failed", "cache_hits"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.seconds = max(total.seconds, s.seconds)
        return total
    finally:
        if is_main:
            lock.release()


def _run_rank(data: bytes, input_path: Path, out_dir: Path, settings, services_factory, batch_size: int,
              default_kind: str | None, reuse: bool, progress: bool, rank: int, world: int) -> Summary:
    max_chars = settings.max_context_chars
    items, bad = parse_input(data, default_kind=default_kind, base_dir=input_path.parent, max_chars=max_chars)
    items = [item for item in items if item.line % world == rank]
    bad = [row for row in bad if row["line"] % world == rank]
    summary = Summary(lines=len(items) + len(bad), out_dir=out_dir)

    single = world == 1
    manifest = _Appender(out_dir / (MANIFEST if single else f"manifest.{rank}.jsonl"))
    errors = _Appender(out_dir / (ERRORS if single else f"errors.{rank}.jsonl"), truncate=True)
    try:
        errors.write(bad)
        summary.failed += len(bad)
        done_rows = _manifest_rows(out_dir)
        todo: list[Item] = []
        for item in items:
            try:
                text = read_context(item, max_chars)
            except LineError as exc:
                errors.write([{"line": item.line, "id": item.id, "reason": str(exc)}])
                summary.failed += 1
                continue
            item.context_hash, item.chars = context_hash(item.kind, text), len(text)
            row = done_rows.get(item.id)
            if (row and row.get("kind") == item.kind and row.get("context_hash") == item.context_hash
                    and _complete(out_dir / item.id)):
                summary.skipped += 1
            else:
                todo.append(item)
        if todo:
            _process(todo, out_dir, services_factory(), manifest, errors, summary, batch_size, max_chars, reuse,
                     progress, rank, world)
    finally:
        manifest.close()
        errors.close()
    return summary


def _process(todo: list[Item], out_dir: Path, services, manifest: _Appender, errors: _Appender, summary: Summary,
             batch_size: int, max_chars: int, reuse: bool, progress: bool, rank: int, world: int) -> None:
    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="adapter", desc="batch" if world == 1 else f"batch rank {rank}",
               position=rank if world > 1 else None, disable=not progress, mininterval=0.5, dynamic_ncols=True)
    try:
        for batch in _batches(todo, batch_size, max_chars, errors, summary):
            t0 = time.perf_counter()
            outcomes = _generate(services, batch, reuse)
            ok = [(item, res) for item, res in zip((i for i, _ in batch), outcomes) if not isinstance(res, str)]
            failed = {item.id: res for (item, _), res in zip(batch, outcomes) if isinstance(res, str)}
            failed.update(_publish([(item, res.record.path) for item, res in ok], out_dir))
            seconds = (time.perf_counter() - t0) / len(batch)
            rows, generated = [], set()
            for item, res in ok:
                if item.id in failed:
                    continue
                hit, how, similarity = res.cache_hit, res.how, res.similarity
                if not hit and res.record.id in generated:  # the same context earlier in this batch
                    hit, how, similarity = True, "repeat", 1.0
                generated.add(res.record.id)
                rows.append({"id": item.id, "line": item.line, "kind": item.kind, "context_hash": item.context_hash,
                             "adapter": res.record.id, "cache_hit": hit, "how": how, "similarity": similarity,
                             "seconds": round(seconds, 4), "rank": rank})
                summary.cache_hits += hit
            manifest.write(rows)  # only after the folders are in place: a row means a complete folder
            errors.write([{"line": item.line, "id": item.id, "reason": failed[item.id]}
                          for item, _ in batch if item.id in failed])
            summary.done += len(rows)
            summary.failed += len(failed)
            bar.update(len(batch))
            bar.set_postfix(cache_hits=summary.cache_hits, failed=summary.failed, refresh=False)
    except KeyboardInterrupt:
        bar.close()
        print(f"batch: interrupted after {summary.done} new adapters; rerun the same command to finish",
              file=sys.stderr)
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        bar.close()


def _batches(todo: list[Item], batch_size: int, max_chars: int, errors: _Appender,
             summary: Summary) -> Iterator[list[tuple[Item, str]]]:
    """Groups of (item, context) of at most batch_size items and (beyond the first) max_chars characters.

    Order: longest contexts first, so that a batch's contexts have similar lengths (the generator pads
    each batch to its longest context) and memory peaks early. Each window of 4 batches' worth of
    items is dealt round-robin into its batches: near-identical contexts sort next to each other and
    so land in consecutive batches rather than one, where the later finds the earlier in the cache."""
    todo = sorted(todo, key=lambda item: -item.chars)
    window = 4 * batch_size
    for start in range(0, len(todo), window):
        group = todo[start:start + window]
        k = -(-len(group) // batch_size)
        for planned in (group[i::k] for i in range(k)):
            batch: list[tuple[Item, str]] = []
            chars = 0
            for item in planned:
                try:
                    text = read_context(item, max_chars)  # again: file contexts are not kept in memory
                except LineError as exc:  # the file changed since the first read
                    errors.write([{"line": item.line, "id": item.id, "reason": str(exc)}])
                    summary.failed += 1
                    continue
                item.context_hash = context_hash(item.kind, text)
                if batch and chars + len(text) > max_chars:
                    yield batch
                    batch, chars = [], 0
                batch.append((item, text))
                chars += len(text)
            if batch:
                yield batch


def _generate(services, batch: list[tuple[Item, str]], reuse: bool) -> list:
    """A CacheResult per item, or a reason string for an item that failed. A batch that fails as a
    whole is retried one item at a time, so that one bad context does not sink the others."""
    pairs = [(item.kind, text) for item, text in batch]
    try:
        return services.cache.get_or_create_many(pairs, owner=OWNER, reuse=reuse, base_model=services.base.model_id,
                                                 generate_many=services.generate_many)
    except (ValueError, RuntimeError) as exc:
        if len(batch) == 1:
            return [f"generation failed: {exc}"]
    return [_generate(services, [one], reuse)[0] for one in batch]


def _merge(out_dir: Path, world: int) -> None:
    """Main process, at the end: manifest.jsonl gets one row per id (newest wins; only ids whose folder is
    complete) and errors.jsonl this run's errors, both ordered by line; the per-process parts are removed."""
    rows = [row for row in _manifest_rows(out_dir).values() if _complete(out_dir / row["id"])]
    _write_rows_atomic(out_dir / MANIFEST, sorted(rows, key=lambda row: (row.get("line", 0), row["id"])))
    for part in _parts(out_dir, "manifest"):
        part.unlink()
    error_parts = _parts(out_dir, "errors")
    if world > 1:
        errors = [row for part in error_parts if int(_PART.match(part.name)[2]) < world for row in _read_jsonl(part)]
    else:  # (in one process, parts can only be stale ones of an earlier multi-process run)
        errors = _read_jsonl(out_dir / ERRORS)
    _write_rows_atomic(out_dir / ERRORS, sorted(errors, key=lambda row: row["line"]))
    for part in error_parts:
        part.unlink()
