"""`hyperadapter data prepare`: fetch, extract, build, split, check and write the datasets.

Idempotent (a complete manifest with this recipe's version means there is nothing to do) and
resumable (the download continues from its partial file; extraction is marked when complete;
record files are written atomically and the manifest last).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm import tqdm

from hyperadapter.data import builders, source
from hyperadapter.data.schema import KINDS, SPLITS, write_records
from hyperadapter.data.splits import assign, overlap, remove_leaks, split_of

RECIPE_VERSION = "1"
USERS_PER_DIALOGUE = {"train": 3, "validation": 1, "test": 1}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_prepared(out_dir: Path) -> bool:
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return m.get("recipe_version") == RECIPE_VERSION and all(
        (out_dir / split / f"{kind}.jsonl").is_file() for split in SPLITS for kind in KINDS)


def prepare(out_dir: Path, cache_dir: Path, archive: Path | None = None, force: bool = False,
            keep_extracted: bool = True) -> dict:
    """Build the prepared datasets under out_dir; returns the manifest."""
    out_dir = Path(out_dir)
    if is_prepared(out_dir) and not force:
        print(f"{out_dir} is already prepared (recipe v{RECIPE_VERSION}); nothing to do")
        return json.loads((out_dir / "manifest.json").read_text())
    archive = source.fetch(Path(cache_dir), archive)
    tasks_dir = source.extract(archive, Path(cache_dir) / "bigbench")
    records = build_all(tasks_dir)
    return write_all(records, out_dir, archive_sha256=source.SHA256)


def build_all(tasks_dir: Path, seed: int = 0) -> list:
    stages = ["natural instructions", "big-bench tasks", "demonstrations", "documents", "conversations"]
    records = []
    with tqdm(total=len(stages), desc="build", unit=" stage") as bar:
        tasks = list(builders.natural_instructions(tasks_dir, seed))
        bar.update(1)
        tasks += list(builders.bigbench_tasks(tasks_dir, seed))
        bar.update(1)
        records += tasks + list(builders.demonstrations(tasks, seed))
        bar.update(1)
        records += list(builders.squad_documents(tasks_dir))
        bar.update(1)
        records += list(builders.conversations(tasks_dir, lambda g: split_of(g, "conversation"),
                                               USERS_PER_DIALOGUE, seed))
        bar.update(1)
    return records


def write_all(records: list, out_dir: Path, archive_sha256: str = "") -> dict:
    splits = assign(records)
    dropped = remove_leaks(splits)
    leaks = {f"{a}/{b}": len(overlap(splits.get(a, []), splits.get(b, [])))
             for a, b in (("train", "test"), ("train", "validation"))}
    if any(leaks.values()):
        raise RuntimeError(f"leakage check failed after cleaning: {leaks}")
    groups = {s: sorted({r.group for r in splits.get(s, [])}) for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b and set(groups[a]) & set(groups[b]):
                raise RuntimeError(f"groups shared by {a} and {b}")
    manifest: dict = {"recipe_version": RECIPE_VERSION, "source": f"{source.FILENAME}",
                      "source_sha256": archive_sha256, "dropped_for_leakage": dropped,
                      "overlap_after_cleaning": leaks, "files": {}}
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for split in SPLITS:
        for kind in KINDS:
            rs = sorted((r for r in splits.get(split, []) if r.kind == kind), key=lambda r: r.id)
            path = staging / split / f"{kind}.jsonl"
            write_records(path, rs)
            manifest["files"][f"{split}/{kind}.jsonl"] = {
                "contexts": len(rs), "queries": sum(len(r.queries) for r in rs),
                "groups": len({r.group for r in rs}), "sha256": _file_sha256(path)}
    manifest["groups"] = {s: hashlib.sha256("\n".join(g).encode()).hexdigest() for s, g in groups.items()}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    return manifest


def summary(manifest: dict) -> str:
    lines = [f"{'file':32} {'contexts':>9} {'queries':>9} {'groups':>7}"]
    for name, info in manifest["files"].items():
        lines.append(f"{name:32} {info['contexts']:9} {info['queries']:9} {info['groups']:7}")
    lines.append(f"dropped for leakage: {manifest['dropped_for_leakage']}")
    return "\n".join(lines)
