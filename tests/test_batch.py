"""`hyperadapter batch`: the real CLI in subprocesses, on the real base model, a real (fresh, untrained)
generator, and a real store: good and bad lines, a run killed with SIGKILL and rerun, and two processes
under `accelerate launch` splitting one input. Plus the id and manifest-file rules, in process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperadapter.adapter import Adapter
from hyperadapter.batch import PEFT_FILES, _Appender, _read_jsonl, context_hash, parse_input
from hyperadapter.config import REPO_ROOT, default_data_root
from hyperadapter.retrieval.cache import AdapterCache
from hyperadapter.retrieval.store import AdapterStore

MAX_CHARS = 400
LEFTOVER = re.compile(r"\.(tmp|old)-")
TASKS = [  # distinct contexts, far apart for the sentence encoder (no near hits between them)
    "Translate the user's sentence into French.",
    "Classify a movie review as positive or negative.",
    "Write a haiku about the ocean at night.",
    "Convert a temperature given in Celsius to Fahrenheit.",
    "List three prime numbers larger than the given integer.",
    "Answer questions about the rules of chess openings.",
    "Summarise a legal contract in plain English for a tenant.",
    "Suggest a name for a bakery that sells sourdough bread.",
    "Explain how photosynthesis works to a ten-year-old.",
    "Find grammar mistakes in a cover letter and fix them.",
    "Plan a three-day hiking trip in the Scottish Highlands.",
    "Rewrite SQL queries so that they use explicit JOIN syntax.",
]


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, base, sentence_encoder) -> Path:
    from hyperadapter.generator import Generator
    path = tmp_path_factory.mktemp("generator")
    Generator.fresh(base, sentence_encoder).save_pretrained(path)
    return path


def _env(root: Path, generator_dir: Path) -> dict:
    root.mkdir(exist_ok=True)
    if not (root / "models").exists():
        (root / "models").symlink_to(default_data_root() / "models")  # the converted base, not converted again
    return {**os.environ, "HYPERADAPTER_DATA_ROOT": str(root), "HYPERADAPTER_GENERATOR": str(generator_dir),
            "HYPERADAPTER_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HYPERADAPTER_MAX_CONTEXT_CHARS": str(MAX_CHARS)}


def _batch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyperadapter.cli", "batch", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def _summary(stderr: str) -> dict[str, int]:
    m = re.search(r"batch: (\d+) lines: (\d+) done \((\d+) from the cache\), (\d+) already done, (\d+) failed", stderr)
    assert m, stderr[-3000:]
    return dict(zip(("lines", "done", "cache_hits", "skipped", "failed"), map(int, m.groups())))


def _write_lines(path: Path, rows: list) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _store_count(root: Path) -> int:
    store = AdapterStore(root / "store")
    try:
        return store.count()
    finally:
        store.close()


def _check_folders(out: Path, ids: set[str], root: Path, manifest: list[dict]) -> None:
    """Exactly one complete adapter folder per id, byte-identical to the stored adapter, and no temp leftovers."""
    assert {p.name for p in out.iterdir() if p.is_dir()} == ids
    assert not [p.name for p in out.iterdir() if LEFTOVER.search(p.name)]
    for row in manifest:
        folder, stored = out / row["id"], root / "store" / "adapters" / row["adapter"]
        files = [p.name for p in stored.iterdir()]  # the PEFT files and any routes files
        assert set(PEFT_FILES) <= set(files)
        for name in files:
            assert (folder / name).read_bytes() == (stored / name).read_bytes()
        assert sorted(p.name for p in folder.iterdir()) == sorted(files)
        adapter = Adapter.load(folder)
        # every document in these inputs has more than one sentence: it has its sentence routes
        assert (adapter.routes is not None) == (row["kind"] == "document")
        assert adapter.rank == 8 and adapter.target_modules == ["down_proj", "q_proj", "v_proj"]
        assert len(adapter.weights) == 90  # 30 layers x 3 modules


def test_ids_and_manifest_files_follow_the_rules(tmp_path):
    data = "\n".join([
        json.dumps({"kind": "task", "context": "Say hi."}),
        json.dumps({"kind": "task", "context": "Say hi."}),
        json.dumps({"id": 7, "context": "Say bye."}),
        json.dumps({"id": "7", "kind": "task", "context": "again"}),
        json.dumps({"kind": "document", "path": "doc.txt", "context": "both"}),
        json.dumps({"kind": ["task"], "context": "x"}),
    ]).encode()
    items, errors = parse_input(data, default_kind="task", base_dir=tmp_path, max_chars=MAX_CHARS)
    again, _ = parse_input(data, default_kind="task", base_dir=tmp_path, max_chars=MAX_CHARS)
    assert [i.id for i in items] == [i.id for i in again]  # a rerun agrees on every id
    first, repeat, explicit = items
    assert re.fullmatch(r"task-[0-9a-f]{16}", first.id) and repeat.id == first.id + "-2"
    assert explicit.id == "7" and explicit.kind == "task"  # --kind fills in
    assert [(e["line"], e["reason"].split(" ")[0]) for e in errors] == [(4, "duplicate"), (5, "give"), (6, "unknown")]
    # the manifest's hash is the cache's exact key
    cache = AdapterCache(None, None, None, {"task": 0.97})
    assert context_hash("task", " Say   hi.\n") == cache.context_hash("task", "Say hi.")

    # a row cut short by a kill does not swallow the next one
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "a", "line": 1}\n{"id": "b", "li')
    appender = _Appender(manifest)
    appender.write([{"id": "c", "line": 3}])
    appender.close()
    assert [r["id"] for r in _read_jsonl(manifest)] == ["a", "c"]


def test_usage_errors_exit_2_without_a_traceback(tmp_path, generator_dir):
    env = _env(tmp_path / "root", generator_dir)
    good = tmp_path / "in.jsonl"
    _write_lines(good, [{"kind": "task", "context": "Say hi."}])
    for args, message in [((str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")), "no such file"),
                          ((str(good), "--out", str(good)), "not a folder"),
                          ((str(good), "--out", str(tmp_path / "o"), "--batch-size", "0"), "at least 1"),
                          ((str(good), "--out", str(tmp_path / "o"), "--kind", "poem"), "invalid choice")]:
        done = _batch(env, *args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def test_good_and_bad_lines_give_adapters_manifest_and_errors(tmp_path, generator_dir):
    root, out = tmp_path / "root", tmp_path / "out"
    env = _env(root, generator_dir)
    manual = "The X200 blender has three speeds. Hold the pulse button to crush ice. Rinse the jar after use."
    (tmp_path / "manual.txt").write_text(manual)
    demo = "Input: 2+2\nOutput: 4\nInput: 3+5\nOutput: 8"
    lines = [
        {"id": "fr", "kind": "task", "context": TASKS[0]},                  # 1 good, explicit id
        '{"kind": "task", "context": oops}',                                 # 2 malformed JSON
        {"kind": "poem", "context": "Roses are red."},                       # 3 unknown kind
        {"kind": "task", "context": "   \n "},                               # 4 empty context
        {"kind": "document", "path": "missing.txt"},                         # 5 unreadable path
        {"kind": "document", "path": "manual.txt"},                          # 6 good, from a file
        {"kind": "task", "context": "word " * 100},                          # 7 too long (500 > 400)
        {"id": "fr", "kind": "task", "context": TASKS[1]},                   # 8 duplicate id
        {"context": TASKS[2]},                                               # 9 good, kind from --kind
        "",                                                                  # 10 blank: ignored
        {"kind": "task", "context": TASKS[0]},                               # 11 good, exact repeat of 1
        {"kind": "demonstrations", "context": demo},                         # 12 good
        {"kind": "demonstrations", "context": demo},                         # 13 good, exact repeat of 12
        {"id": "../evil", "kind": "task", "context": TASKS[3]},              # 14 unsafe id
        [1, 2],                                                              # 15 not an object
        {"kind": "task", "context": "  " + TASKS[0].upper().replace(" ", "  ")},  # 16 good, near repeat of 1
    ]
    _write_lines(tmp_path / "in.jsonl", lines)
    args = (str(tmp_path / "in.jsonl"), "--out", str(out), "--batch-size", "2", "--kind", "task")
    done = _batch(env, *args)

    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert _summary(done.stderr) == {"lines": 15, "done": 7, "cache_hits": 3, "skipped": 0, "failed": 8}
    errors = _read_jsonl(out / "errors.jsonl")
    reasons = {e["line"]: e["reason"] for e in errors}
    assert sorted(reasons) == [2, 3, 4, 5, 7, 8, 14, 15]
    for line, expect in {2: "malformed JSON", 3: "unknown kind 'poem'", 4: "empty", 5: "missing.txt",
                         7: "too long", 8: "duplicate id 'fr'", 14: "not a safe folder name",
                         15: "JSON object"}.items():
        assert expect in reasons[line], (line, reasons[line])

    manifest = _read_jsonl(out / "manifest.jsonl")
    rows = {row["line"]: row for row in manifest}
    assert sorted(rows) == [1, 6, 9, 11, 12, 13, 16] and len(manifest) == 7
    assert rows[1]["id"] == "fr" and rows[9]["kind"] == "task" and rows[6]["kind"] == "document"
    assert rows[6]["context_hash"] == context_hash("document", manual)
    assert rows[13]["id"] == rows[12]["id"] + "-2"
    assert not rows[6]["cache_hit"] and not rows[9]["cache_hit"]
    # repeats share one adapter: the first of them processed generates it, the others are served by the cache
    # (batches go by context length, not file order, so which one is first is not fixed)
    for group, hows in [((1, 11, 16), {"exact", "near", "repeat"}), ((12, 13), {"exact", "repeat"})]:
        assert len({rows[line]["adapter"] for line in group}) == 1
        generated = [line for line in group if not rows[line]["cache_hit"]]
        assert len(generated) == 1 and rows[generated[0]]["how"] == "generated"
        for line in set(group) - set(generated):
            assert rows[line]["how"] in hows and rows[line]["similarity"] >= 0.97
    assert all(set(row) >= {"id", "kind", "context_hash", "cache_hit", "similarity", "seconds"} for row in manifest)
    _check_folders(out, {row["id"] for row in manifest}, root, manifest)
    assert _store_count(root) == 4  # lines 1, 6, 9, 12: each context generated once

    # the same command again: nothing left to do, the same failures reported again
    again = _batch(env, *args)
    assert again.returncode == 1
    assert _summary(again.stderr) == {"lines": 15, "done": 0, "cache_hits": 0, "skipped": 7, "failed": 8}
    assert _read_jsonl(out / "manifest.jsonl") == manifest
    assert sorted(e["line"] for e in _read_jsonl(out / "errors.jsonl")) == sorted(reasons)
    assert _store_count(root) == 4


def test_repeats_in_one_batch_are_generated_once(tmp_path, generator_dir):
    root, out = tmp_path / "root", tmp_path / "out"
    env = _env(root, generator_dir)
    contexts = [TASKS[4], TASKS[5], TASKS[4], TASKS[4]]
    _write_lines(tmp_path / "in.jsonl", [{"kind": "task", "context": c} for c in contexts])
    done = _batch(env, str(tmp_path / "in.jsonl"), "--out", str(out), "--batch-size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["line"]: row for row in _read_jsonl(out / "manifest.jsonl")}
    assert len({rows[line]["id"] for line in (1, 3, 4)}) == 3  # each line its own folder...
    assert len({rows[line]["adapter"] for line in (1, 3, 4)}) == 1  # ...with one adapter, generated once
    assert sorted(rows[line]["how"] for line in (1, 3, 4)) == ["generated", "repeat", "repeat"]
    assert _store_count(root) == 2
    # the published weights are the store's file (a hard link), the config a copy of its own: editing
    # it in place cannot reach the store, and the folders outlive the store
    row = rows[1]
    folder, stored = out / row["id"], root / "store" / "adapters" / row["adapter"]
    assert (folder / "adapter_model.safetensors").stat().st_ino == (stored / "adapter_model.safetensors").stat().st_ino
    assert (folder / "adapter_config.json").stat().st_ino != (stored / "adapter_config.json").stat().st_ino
    shutil.rmtree(root / "store")
    for row in rows.values():
        assert len(Adapter.load(out / row["id"]).weights) == 90


def test_killed_midway_then_rerun_gives_one_adapter_per_line(tmp_path, generator_dir):
    root, out = tmp_path / "root", tmp_path / "out"
    env = _env(root, generator_dir)
    ids = {f"c{i:02d}" for i in range(len(TASKS))}
    _write_lines(tmp_path / "in.jsonl",
                 [{"id": f"c{i:02d}", "kind": "task", "context": c} for i, c in enumerate(TASKS)])
    args = [str(tmp_path / "in.jsonl"), "--out", str(out), "--batch-size", "2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hyperadapter.cli", "batch", *args], env=env, cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while len(_read_jsonl(out / "manifest.jsonl")) < 2:  # at least one batch finished
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "no progress"
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    before = {row["id"]: row for row in _read_jsonl(out / "manifest.jsonl")}
    assert 2 <= len(before) < len(ids)
    # what a kill at a worse moment leaves: a half-copied temp folder, and a folder without a manifest row
    (out / ".c11.tmp-99999-deadbeef").mkdir(exist_ok=True)
    (out / ".c11.tmp-99999-deadbeef" / "adapter_config.json").write_text("{")
    if "c11" not in before:
        (out / "c11").mkdir(exist_ok=True)
        (out / "c11" / "adapter_config.json").write_text("{")

    done = _batch(env, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done.stderr)
    assert summary["skipped"] == len(before) and summary["done"] == len(ids) - len(before)
    manifest = _read_jsonl(out / "manifest.jsonl")
    assert sorted(row["id"] for row in manifest) == sorted(ids)  # one row per line, no duplicates
    for row in manifest:
        if row["id"] in before:
            assert row == before[row["id"]]  # done before the kill: kept, not redone
    _check_folders(out, ids, root, manifest)
    assert _store_count(root) == len(ids)  # nothing generated twice: a stored but unlisted adapter is a cache hit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_accelerate_cover_the_input_once(tmp_path, generator_dir):
    root, out = tmp_path / "root", tmp_path / "out"
    env = _env(root, generator_dir)
    good = [{"kind": "task", "context": c} for c in TASKS[:8]]
    lines = good[:2] + [{"kind": "task", "context": ""}] + good[2:4] + ["{not json"] + good[4:]  # bad: lines 3, 6
    _write_lines(tmp_path / "in.jsonl", lines)
    # `--multi_gpu` is accelerate's torchrun launcher (gloo on a CPU-only machine); `--cpu` alone would
    # start one process here (accelerate fans out CPU processes only through mpirun)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "hyperadapter.cli", "batch",
              str(tmp_path / "in.jsonl"), "--out", str(out), "--batch-size", "2"]
    done = subprocess.run(launch, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    assert done.returncode != 0  # two lines failed
    assert _summary(done.stderr) == {"lines": 10, "done": 8, "cache_hits": 0, "skipped": 0, "failed": 2}
    manifest = _read_jsonl(out / "manifest.jsonl")
    assert len(manifest) == 8 and len({row["id"] for row in manifest}) == 8
    assert sorted(row["line"] for row in manifest) == [1, 2, 4, 5, 7, 8, 9, 10]
    assert all(row["rank"] == row["line"] % 2 for row in manifest)  # process r took the lines = r (mod 2)
    assert {row["rank"] for row in manifest} == {0, 1}
    assert [e["line"] for e in _read_jsonl(out / "errors.jsonl")] == [3, 6]
    assert not [p.name for p in out.iterdir() if re.match(r"(manifest|errors)\.\d+\.jsonl$", p.name)]
    _check_folders(out, {row["id"] for row in manifest}, root, manifest)
    assert _store_count(root) == 8  # each context generated by exactly one process
