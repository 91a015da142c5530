"""Paired comparison of two systems on the contexts both were scored on: for each kind, the mean
per-context difference and its standard error. Two runs of the harness on the same config score the
same contexts, so a difference of two generators (or two decoding settings) is read against the
noise of those contexts, not against a headline number of another table.

Contexts of one group (paragraphs of one article, tasks of one family) are not independent: a
generator that is worse on an article tends to be worse on all its paragraphs. Where the groups are
known, the standard error is also given over groups (a cluster-robust one: the residuals are summed
within each group first), which is the one to read when a few groups hold many contexts. The mean
itself still weighs every context alike, so one family of many contexts can carry it: 19 of the 33
validation demonstration sets are MC-TACO, and stage 43's +2.8 there was MC-TACO's alone (on test,
with no MC-TACO, -0.6). So the difference with each group weighed alike is given beside it: the mean
of the groups' mean differences, with the standard error of that mean over groups."""

from __future__ import annotations

import math

from hyperadapter.evaluation.names import RESULT_NAMES


def result_name(results: dict, system: str) -> str:
    """`system` as `results` names it: as given if scored so, else its results.json name."""
    return system if system in results.get("systems", {}) else RESULT_NAMES.get(system, system)


def per_context(results: dict, system: str, kind: str) -> dict[str, float]:
    """context id -> score, for `system` on `kind` in a harness results.json (empty if not scored)."""
    block = results.get("systems", {}).get(system, {}).get(kind)
    return {} if block is None else {c["id"]: float(c["score"]) for c in block["per_context"]}


def recorded_groups(results: dict) -> dict[str, str]:
    """context id -> group, as the harness records them beside each score (older runs did not)."""
    return {c["id"]: c["group"] for kinds in results.get("systems", {}).values() for block in kinds.values()
            for c in block.get("per_context", []) if c.get("group") is not None}


def grouped_se(diffs: list[float], groups: list[str]) -> float:
    """Cluster-robust standard error of the mean of `diffs`: sqrt(G/(G-1) * sum_g (sum_{i in g}
    (d_i - mean))^2) / n. With every context its own group it is the ordinary standard error."""
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sums: dict[str, float] = {}
    for d, g in zip(diffs, groups):
        sums[g] = sums.get(g, 0.0) + d - mean
    k = len(sums)
    return math.sqrt(k / (k - 1) * sum(s * s for s in sums.values())) / n if k > 1 else float("nan")


def balanced(diffs: list[float], groups: list[str]) -> tuple[float, float]:
    """(mean of the per-group mean differences, its standard error over groups: the groups' means'
    sample standard deviation / sqrt(G)); nan for the error with one group."""
    members: dict[str, list[float]] = {}
    for d, g in zip(diffs, groups):
        members.setdefault(g, []).append(d)
    means = [sum(v) / len(v) for v in members.values()]
    k, mean = len(means), sum(means) / len(means)
    if k < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((m - mean) ** 2 for m in means) / (k - 1) / k)


def scored_ids(results: dict) -> set[str]:
    """Every context id any system of a results.json was scored on."""
    return {c["id"] for kinds in results.get("systems", {}).values() for block in kinds.values()
            for c in block.get("per_context", [])}


def paired(a: dict, b: dict, system_a: str, system_b: str, kinds: tuple[str, ...],
           groups: dict[str, str] | None = None, exclude: set[str] = frozenset()) -> dict[str, dict]:
    """{kind: {"contexts", "a", "b", "diff", "se"[, "groups", "se_groups", "balanced", "se_balanced"]}}:
    b minus a over the contexts both scored but those in `exclude` (e.g. scored_ids of an earlier run, so that
    a replication reads a fresh sample); the group entries when every shared context's group is known (from
    `groups`, or recorded in either run)."""
    groups = {**(groups or {}), **recorded_groups(a), **recorded_groups(b)}
    system_a, system_b = result_name(a, system_a), result_name(b, system_b)
    out = {}
    for kind in kinds:
        sa, sb = per_context(a, system_a, kind), per_context(b, system_b, kind)
        shared = sorted(sa.keys() & sb.keys() - exclude)
        if not shared:
            continue
        diffs = [sb[i] - sa[i] for i in shared]
        n = len(diffs)
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else float("nan")
        row = {"contexts": n, "a": sum(sa[i] for i in shared) / n, "b": sum(sb[i] for i in shared) / n,
               "diff": mean, "se": math.sqrt(var / n)}
        if all(i in groups for i in shared):
            row["groups"] = len({groups[i] for i in shared})
            row["se_groups"] = grouped_se(diffs, [groups[i] for i in shared])
            row["balanced"], row["se_balanced"] = balanced(diffs, [groups[i] for i in shared])
        out[kind] = row
    return out


def markdown(rows: dict[str, dict], label_a: str, label_b: str) -> str:
    grouped = any("balanced" in r for r in rows.values())
    head = f"| kind | contexts | {label_a} | {label_b} | difference ± SE |"
    rule = "|---|---|---|---|---|"
    lines = [head + (" each group alike ± SE |" if grouped else ""), rule + ("---|" if grouped else "")]
    for kind, r in rows.items():
        cell = f"{r['diff']:+.1f} ± {r['se']:.1f}"
        if "se_groups" in r:
            cell += f" (± {r['se_groups']:.1f} over {r['groups']} groups)"
        line = f"| {kind} | {r['contexts']} | {r['a']:.1f} | {r['b']:.1f} | {cell} |"
        if grouped:
            line += f" {r['balanced']:+.1f} ± {r['se_balanced']:.1f} |" if "balanced" in r else " |"
        lines.append(line)
    return "\n".join(lines)
