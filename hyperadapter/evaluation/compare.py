"""Paired comparison of two systems on the contexts both were scored on: for each kind, the mean
per-context difference and its standard error. Two runs of the harness on the same config score the
same contexts, so a difference of two generators (or two decoding settings) is read against the
noise of those contexts, not against a headline number of another table."""

from __future__ import annotations

import math


def per_context(results: dict, system: str, kind: str) -> dict[str, float]:
    """context id -> score, for `system` on `kind` in a harness results.json (empty if not scored)."""
    block = results.get("systems", {}).get(system, {}).get(kind)
    return {} if block is None else {c["id"]: float(c["score"]) for c in block["per_context"]}


def paired(a: dict, b: dict, system_a: str, system_b: str, kinds: tuple[str, ...]) -> dict[str, dict]:
    """{kind: {"contexts", "a", "b", "diff", "se"}}: b minus a over the contexts both scored."""
    out = {}
    for kind in kinds:
        sa, sb = per_context(a, system_a, kind), per_context(b, system_b, kind)
        shared = sorted(sa.keys() & sb.keys())
        if not shared:
            continue
        diffs = [sb[i] - sa[i] for i in shared]
        n = len(diffs)
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else float("nan")
        out[kind] = {"contexts": n, "a": sum(sa[i] for i in shared) / n, "b": sum(sb[i] for i in shared) / n,
                     "diff": mean, "se": math.sqrt(var / n)}
    return out


def markdown(rows: dict[str, dict], label_a: str, label_b: str) -> str:
    lines = [f"| kind | contexts | {label_a} | {label_b} | difference ± SE |", "|---|---|---|---|---|"]
    for kind, r in rows.items():
        lines.append(f"| {kind} | {r['contexts']} | {r['a']:.1f} | {r['b']:.1f} | {r['diff']:+.1f} ± {r['se']:.1f} |")
    return "\n".join(lines)
