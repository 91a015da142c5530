"""Obtain the BIG-bench source distribution (pinned version and sha256) and extract what we use.

The sdist is fetched from PyPI's file host (its URL comes from PyPI's JSON simple API), never
installed: `pip download` cannot even prepare its metadata (it declares a direct-URL dependency).
The download resumes from a `.part` file; extraction takes only the task files we read.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

PACKAGE, VERSION = "bigbench", "1.0.0"
FILENAME = f"{PACKAGE}-{VERSION}.tar.gz"
SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SIMPLE_API = f"https://pypi.org/simple/{PACKAGE}/"
TASKS_PREFIX = f"{PACKAGE}-{VERSION}/bigbench/benchmark_tasks/"
MAX_TASK_BYTES = 8_000_000  # the few larger BIG-bench tasks (images as text, huge synthetic sets) are skipped


class SourceError(RuntimeError):
    """The dataset source cannot be obtained or is not what we pinned."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**22):
            h.update(block)
    return h.hexdigest()


def _resolve_url() -> str:
    request = urllib.request.Request(SIMPLE_API, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except Exception as exc:
        raise SourceError(f"cannot reach PyPI's index for {PACKAGE} ({exc}); give a local copy with "
                          f"--source PATH/{FILENAME}") from exc
    for f in files:
        if f["filename"] == FILENAME:
            if f.get("hashes", {}).get("sha256") not in (None, SHA256):
                raise SourceError(f"PyPI lists a different sha256 for {FILENAME}; refusing it")
            return f["url"]
    listed = ", ".join(f["filename"] for f in files) or "nothing"
    raise SourceError(f"{FILENAME} is not on PyPI's index (it lists {listed}); give a local copy with "
                      f"--source PATH/{FILENAME} (sha256 {SHA256})")


def fetch(cache_dir: Path, source: Path | None = None) -> Path:
    """Return a verified local copy of the sdist, downloading (resumably) if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / FILENAME
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise SourceError(f"{source} does not exist")
        if _sha256(source) != SHA256:
            raise SourceError(f"{source}: sha256 differs from the pinned {SHA256[:12]}...")
        return source
    if target.is_file():
        if _sha256(target) == SHA256:
            return target
        target.unlink()
    url = _resolve_url()
    part = target.with_suffix(".gz.part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            if offset and response.status != 206:  # server ignored the range: start over
                offset = 0
            total = int(response.headers.get("Content-Length", 0)) + offset
            with open(part, "ab" if offset else "wb") as out, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=f"download {FILENAME}") as bar:
                while block := response.read(2**20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        raise SourceError(f"download of {url} failed ({exc}); rerun to resume") from exc
    if _sha256(part) != SHA256:
        part.unlink()
        raise SourceError(f"downloaded {FILENAME} does not match the pinned sha256; deleted, rerun to retry")
    part.replace(target)
    return target


def wanted(name: str, size: int) -> bool:
    """Which members of the sdist we extract."""
    if not name.startswith(TASKS_PREFIX):
        return False
    rel = name[len(TASKS_PREFIX):]
    if rel.startswith("squad_shifts/"):
        return rel.endswith(".json") and "_removed" not in rel
    if rel.startswith(("natural_instructions/", "topical_chat/")):
        return rel.endswith("task.json")
    return rel.endswith("task.json") and size <= MAX_TASK_BYTES


def extract(archive: Path, out_dir: Path) -> Path:
    """Extract the task files we use into out_dir (idempotent: a marker records completion)."""
    marker = out_dir / ".extracted"
    tasks_dir = out_dir / "benchmark_tasks"
    if marker.is_file() and marker.read_text() == SHA256:
        return tasks_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar, tqdm(desc="extract", unit=" files") as bar:
        for member in tar:
            if member.isfile() and wanted(member.name, member.size):
                rel = Path(member.name[len(TASKS_PREFIX):])
                dest = tmp / "benchmark_tasks" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as f:
                    f.write(src.read())
                bar.update(1)
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    (out_dir / ".extracted").write_text(SHA256)
    return tasks_dir
