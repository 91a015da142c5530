"""What a user's update costs as their routes grow: time and bytes written per POST of one message.

    python benchmarks/user_updates.py                  # 160 updates of one user message (+ a reply) each
    python benchmarks/user_updates.py --updates 300 --max-routes 128

Each update is `api.users.Users.append`, as `POST /v1/users/{name}/messages` runs it, with the shipped
generator and the service's route settings, then the first reply's `store.load` of the new adapter. Two users
are updated in turn, side by side in one run, in two stores: one as served (the new adapter hard-links the
routes files its predecessor wrote and writes only the new message's route, merging its newest files as a
binary counter; the store keeps what it wrote in memory), and one as before: every update writes all of the
user's routes again, and the update and the first reply each read the adapter from disk. "Written" counts
the bytes of the adapter folder's files whose inode the previous adapter's folder did not hold; the user's
streaming state (`state.safetensors`, a fixed size) is written on every update either way, shown beside.
Both users' routes are checked to be the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.api.users import Users  # noqa: E402
from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.retrieval.store import AdapterStore  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "smollm2-135m-generator"
THINGS = ["dog", "cat", "sister", "brother", "home town", "employer", "car", "bicycle", "teacher", "boat"]


class RewritingUsers(Users):
    """Users as before hard links: the joined routes forget their files, so every update writes them all."""

    def _joined(self, old, new):
        routes = super()._joined(old, new)
        if routes is not None:
            routes.files = []
        return routes


class ForgetfulStore(AdapterStore):
    """A store as before `remember`: what it writes is read from disk when first used."""

    def put(self, *args, remember: bool = False, **kwargs):
        return super().put(*args, **kwargs)


def written(folder: Path, before: set[int]) -> tuple[int, set[int]]:
    """Bytes of `folder`'s files that are not links to `before`'s inodes, and its inodes."""
    inodes, total = set(), 0
    for f in folder.iterdir():
        st = f.stat()
        inodes.add(st.st_ino)
        total += 0 if st.st_ino in before else st.st_size
    return total, inodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=160)
    parser.add_argument("--max-routes", type=int, default=128, help="the service's conversation_max_routes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base("default")
    generator = Generator.from_pretrained(CHECKPOINT, base, SentenceEncoder(), int8=True)
    root = Path(tempfile.mkdtemp(prefix="user-updates-"))
    systems = {}
    for name, cls, store_cls in (("hard-linked, kept (served)", Users, AdapterStore),
                                 ("rewritten, read (before)", RewritingUsers, ForgetfulStore)):
        store = store_cls(root / name.split()[0] / "store")
        users = cls(root / name.split()[0] / "users", generator, store, threading.Lock(), max_routes=args.max_routes,
                    route_rank=1)
        systems[name] = {"users": users, "store": store, "inodes": set(), "times": [], "bytes": [], "parts": 0,
                         "loads": [], "state_bytes": []}
    for i in range(args.updates):
        messages = [{"role": "user", "content": f"My {THINGS[i % len(THINGS)]} number {i} is called Name{i}."},
                    {"role": "assistant", "content": "Noted."}]
        for s in systems.values():
            start = time.perf_counter()
            info = s["users"].append("bench", "ann", messages)
            s["times"].append(time.perf_counter() - start)
            start = time.perf_counter()
            s["store"].load(info["adapter_id"])  # what the user's first reply after it does
            s["loads"].append(time.perf_counter() - start)
            folder = s["store"].adapter_dir / info["adapter_id"]
            nbytes, s["inodes"] = written(folder, s["inodes"])
            state = s["users"].root / "bench" / "ann" / "state.safetensors"  # the user's stream, rewritten each time
            s["bytes"].append(nbytes)
            s["state_bytes"].append(state.stat().st_size)
            s["parts"] = len(list(folder.glob("adapter_routes*.safetensors")))
            s["routes"], s["id"] = info["routes"], info["adapter_id"]
    served, before = (systems[k] for k in systems)
    a, b = served["store"].load(served["id"]).routes, before["store"].load(before["id"]).routes
    assert len(a.adapters) == len(b.adapters) and torch.equal(a.vectors, b.vectors), "the two users' routes differ"
    full = [i for i in range(args.updates) if i + 1 >= args.max_routes * 3 // 4]  # updates with many routes
    print(f"{args.updates} updates of one user message each, max_routes {args.max_routes}, rank-1 routes, "
          f"{args.threads} threads; 'late' = updates {full[0] + 1}-{args.updates} (at least "
          f"{min(full[0] + 1, args.max_routes)} routes)\n")
    print("| routes files | update p50 ms, all | update p50 ms, late | first reply's load p50 ms, late | adapter MB "
          "written, all | adapter MB per update, late | + the user's state, MB per update | files at the end |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in systems.items():
        late_t, late_b = [s["times"][i] for i in full], [s["bytes"][i] for i in full]
        late_load = statistics.median([s["loads"][i] for i in full])
        print(f"| {name} | {statistics.median(s['times']) * 1e3:.0f} | {statistics.median(late_t) * 1e3:.0f} | "
              f"{late_load * 1e3:.1f} | {sum(s['bytes']) / 1e6:.0f} | {statistics.mean(late_b) / 1e6:.2f} | "
              f"{statistics.mean(s['state_bytes']) / 1e6:.2f} | {s['parts']} |")
    ratio = sum(before["bytes"]) / sum(served["bytes"])
    late = [statistics.median([s["times"][i] for i in full]) for s in (before, served)]
    print(f"\nbytes written, before / served: {ratio:.1f}x; p50 late update, before / served: {late[0] / late[1]:.2f}x")
    for s in systems.values():
        s["store"].close()


if __name__ == "__main__":
    main()
