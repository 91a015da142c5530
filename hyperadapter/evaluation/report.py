"""Write the harness's results as JSON, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from hyperadapter.evaluation.names import RESULT_NAMES

KIND_METRIC = {"task": "score", "demonstrations": "score", "document": "SQuAD F1", "conversation": "fact recall"}


def markdown(results: dict) -> str:
    kinds = [k for k in results["config"]["kinds"] if any(k in v for v in results["systems"].values())]
    head = "| system | " + " | ".join(f"{k} ({KIND_METRIC.get(k, 'score')})" for k in kinds) + \
           " | " + " | ".join(f"{k} prompt tok/query" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(kinds))]
    for name, per_kind in results["systems"].items():
        cells = []
        for k in kinds:
            r = per_kind.get(k)
            cells.append("—" if r is None or r["score"] is None else f"{r['score']:.1f}")
        toks = []
        for k in kinds:
            r = per_kind.get(k)
            toks.append("—" if r is None or r["prompt_tokens"] is None else f"{r['prompt_tokens']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(toks) + " |")
    detail = ["", "| system | kind | contexts | queries | by metric | EM | stray Yes/No % | looped % | "
                  "latency ms/query | adapter ms/context |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_kind in results["systems"].items():
        for k, r in per_kind.items():
            by = ", ".join(f"{m} {v:.1f}" for m, v in r["by_metric"].items() if v is not None)
            em = "—" if r["em"] is None else f"{r['em']:.1f}"
            am = "—" if r["adapter_ms"] is None else f"{r['adapter_ms']:.0f}"
            yn = "—" if r.get("stray_yes_no") is None else f"{r['stray_yes_no']:.1f}"  # absent in older results
            lp = "—" if r.get("looped") is None else f"{r['looped']:.1f}"
            detail.append(f"| {name} | {k} | {r['contexts']} | {r['queries']} | {by} | {em} | {yn} | {lp} | "
                          f"{r['latency_ms']:.0f} | {am} |")
    return "\n".join(lines + comparisons(results) + detail) + "\n"


def comparisons(results: dict) -> list[str]:
    """The generator's margins per kind: over the base, the wrong context and the multi-task LoRA,
    and the share of the per-task oracle's gain over the base that it recovers."""
    systems = results["systems"]

    def score(name: str, kind: str) -> float | None:
        return ((systems.get(name) or {}).get(kind) or {}).get("score")

    out = []
    for kind in results["config"]["kinds"]:
        gen, base = score("generated", kind), score("base", kind)
        if gen is None or base is None:
            continue
        parts = [f"{gen - base:+.1f} over the base"]
        for name, label in ((RESULT_NAMES["generated-wrong"], "the wrong context"),
                            (RESULT_NAMES["multitask-lora"], "the multi-task LoRA")):
            other = score(name, kind)
            if other is not None:
                parts.append(f"{gen - other:+.1f} over {label}")
        oracle = score(RESULT_NAMES["per-task-lora"], kind)
        if oracle is not None and oracle > base:
            parts.append(f"{100 * (gen - base) / (oracle - base):.0f}% of the oracle's gain")
        out.append(f"- **{kind}**, generated adapter: " + ", ".join(parts))
    return ["", *out] if out else []


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = results["config"]["kinds"]
    systems = list(results["systems"])
    fig, ax = plt.subplots(figsize=(2.2 * len(kinds) + 3, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, name in enumerate(systems):
        values = [(results["systems"][name].get(k) or {}).get("score") or 0.0 for k in kinds]
        ax.bar([j + i * width for j in range(len(kinds))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))])
    ax.set_xticklabels([f"{k}\n({KIND_METRIC.get(k, 'score')})" for k in kinds])
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"held-out {results['config']['split']} split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SAME_RUN = ("split", "max_contexts", "limit", "max_new_tokens", "data_dir", "relabel", "relabel_symbols")
UNSET = {"relabel": False, "relabel_symbols": False}  # what a key added later meant in results written before it
KIND_ORDER = ("task", "demonstrations", "document", "conversation")


def merge(results: dict, out_dir: Path) -> dict:
    """Systems and kinds scored earlier on exactly the same contexts are kept beside the new ones, so
    the baselines and the generator (or one kind and another, in two processes) can be run at
    different times into one table. A (system, kind) scored again replaces the old score."""
    path = out_dir / "results.json"
    if not path.is_file():
        return results
    old = json.loads(path.read_text())
    if any(old["config"].get(k, UNSET.get(k)) != results["config"].get(k, UNSET.get(k)) for k in SAME_RUN):
        return results
    systems = {name: dict(per_kind) for name, per_kind in old["systems"].items()}
    for name, per_kind in results["systems"].items():
        systems[name] = {**systems.get(name, {}), **per_kind}
    kinds = set(old["config"]["kinds"]) | set(results["config"]["kinds"])
    config = {**results["config"],
              "kinds": [k for k in KIND_ORDER if k in kinds] + sorted(kinds - set(KIND_ORDER)),
              "systems": list(dict.fromkeys(old["config"]["systems"] + results["config"]["systems"]))}
    return {**results, "config": config, "systems": systems}


def write(results: dict, out_dir: Path) -> dict:
    """Write results.json / .md / .png (merged with earlier systems and kinds of the same run, under a
    lock so that two evaluations can finish into one folder); returns them."""
    from filelock import FileLock

    from hyperadapter.durable import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir / ".results.lock"):
        results = merge(results, out_dir)
        atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2).encode())
        atomic_write_bytes(out_dir / "results.md", markdown(results).encode())
        chart(results, out_dir / "results.png")
    return results
