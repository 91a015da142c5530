"""The command line: `hyperadapter serve | adapter | generate | batch | train | average | graft | eval | data`.

argparse from the standard library: the commands are few and flat, so a CLI framework would add a
dependency without removing code. Errors the user can fix print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hyperadapter.config import load_settings

KINDS = ("task", "demonstrations", "document", "conversation")


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _read_text(args) -> str:
    if getattr(args, "file", None):
        path = Path(args.file)
        if not path.is_file():
            raise CLIError(f"--file {path}: no such file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CLIError(f"--file {path}: not UTF-8 text") from exc
    return args.text


def _services(args, need_generator: bool = True):
    from hyperadapter.service import Services
    settings = load_settings(getattr(args, "config", None))
    return Services.create(settings, load_generator=need_generator)


def cmd_generate(args) -> int:
    from hyperadapter.adapter import Adapter, AdapterError
    from hyperadapter.base import format_prompt
    from hyperadapter.decoding import PENALTY_LIMIT, penalties
    from hyperadapter.runtime import GenerationParams

    if args.adapter and args.kind:
        raise CLIError("give either --adapter or --kind/--text, not both")
    if bool(args.kind) != bool(args.text or args.file):
        raise CLIError("--kind needs --text or --file (and the other way round)")
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens must be at least 1")
    for name in ("frequency", "presence"):
        value = getattr(args, f"{name}_penalty")
        if value is not None and not -PENALTY_LIMIT <= value <= PENALTY_LIMIT:
            raise CLIError(f"--{name}-penalty must be between -{PENALTY_LIMIT:g} and {PENALTY_LIMIT:g}, as OpenAI's")
    services = _services(args, need_generator=bool(args.kind))
    adapter = None
    if args.adapter:
        path = Path(args.adapter)
        try:
            adapter = Adapter.load(path) if path.is_dir() else services.store.load(args.adapter)
        except (AdapterError, KeyError) as exc:
            raise CLIError(f"--adapter {args.adapter}: {exc}") from exc
    elif args.kind:
        context = _read_text(args)
        result = services.adapter_for(args.kind, context, owner="local", reuse=not args.no_reuse)
        adapter = services.store.load(result.record.id)
    prompt = format_prompt(services.base, args.prompt, raw=args.raw)
    frequency, presence = penalties(adapter, args.frequency_penalty, args.presence_penalty)
    if adapter is not None and not args.no_route:
        from hyperadapter.generator.routed import route
        try:
            adapter, taken = route(services.encoder, adapter, args.prompt, services.settings.route_words)
        except AdapterError as exc:
            raise CLIError(str(exc)) from exc
        if taken is not None:
            print(f"routed to sentence {taken.sentence + 1} of {taken.routes} (cosine {taken.similarity:.2f})",
                  file=sys.stderr)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed, strip_leading=not args.raw,
                              frequency_penalty=frequency, presence_penalty=presence)
    try:
        for piece in services.runtime.stream(prompt, adapter, params):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except AdapterError as exc:
        raise CLIError(str(exc)) from exc
    sys.stdout.write("\n")
    return 0


def cmd_adapter_create(args) -> int:
    from hyperadapter.adapter import Routes

    context = _read_text(args)
    if not context or not context.strip():
        raise CLIError("the context is empty")
    services = _services(args)
    result = services.adapter_for(args.kind, context, owner="local", reuse=not args.no_reuse)
    record = result.record
    out = None
    if args.out:
        out = str(services.store.load(record.id).save(Path(args.out)))
    print(json.dumps({"id": record.id, "cache_hit": result.cache_hit, "similarity": result.similarity,
                      "kind": record.kind, "rank": record.rank, "routes": Routes.count(record.path),
                      "target_modules": services.store.load(record.id).target_modules,
                      "path": out or str(record.path)}))
    return 0


def cmd_adapter_inspect(args) -> int:
    from hyperadapter.generator.inspect import copy_attention

    context = _read_text(args)
    if not context or not context.strip():
        raise CLIError("the context is empty")
    if args.top < 1:
        raise CLIError("--top must be at least 1")
    services = _services(args)
    report = copy_attention(services.generator, context, args.kind)
    print(json.dumps({"kind": args.kind, "slot_agreement": round(report.agreement, 4),
                      "top_copied_tokens": report.top_tokens(args.top)}))
    return 0


def cmd_batch(args) -> int:
    from hyperadapter.batch import run_batch

    settings = load_settings(args.config)
    summary = run_batch(args.input, args.out, settings=settings, batch_size=args.batch_size, default_kind=args.kind,
                        reuse=args.reuse, services_factory=lambda: _services(args), progress=not args.no_progress)
    if summary.is_main:
        print(summary.report(), file=sys.stderr)
    return summary.exit_code


def cmd_data_prepare(args) -> int:
    from hyperadapter.data.prepare import prepare, summary
    from hyperadapter.data.source import SourceError

    settings = load_settings(args.config)
    out = Path(args.out) if args.out else settings.prepared_data_dir
    try:
        manifest = prepare(out, settings.data_root / "downloads", Path(args.source) if args.source else None,
                           force=args.force)
    except SourceError as exc:
        raise CLIError(str(exc)) from exc
    print(summary(manifest))
    print(f"prepared data in {out}")
    return 0


def cmd_serve(args) -> int:
    from hyperadapter.api.server import serve
    settings = load_settings(args.config, host=args.host, port=args.port)
    serve(settings)
    return 0


def cmd_train(args) -> int:
    import tomllib
    config = Path(args.config)
    if not config.is_file():
        raise CLIError(f"--config {config}: no such file")
    kind = tomllib.loads(config.read_text()).get("trainer", "generator")
    if kind == "multitask-lora":
        from hyperadapter.training.multitask import load_multitask_recipe, train_multitask
        out = train_multitask(load_multitask_recipe(config, steps=args.steps))
    else:
        from hyperadapter.training.loop import train
        from hyperadapter.training.recipe import load_recipe
        out = train(load_recipe(config, steps=args.steps, out_dir=args.out))
    print(f"saved {out}")
    return 0


def cmd_validate(args) -> int:
    """Validation answer loss of a generator checkpoint on a recipe's validation contexts (right
    context, a wrong one of the same kind, the base alone): how to choose between checkpoints
    without looking at the test split. More batches than a run logs: a steadier comparison."""
    import json
    import tempfile

    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import load_recipe

    if not Path(args.config).is_file():
        raise CLIError(f"--config {args.config}: no such file")
    if not (Path(args.generator) / "generator_config.json").is_file():
        raise CLIError(f"--generator {args.generator}: not a generator folder (no generator_config.json)")
    if args.batches < 1:
        raise CLIError("--batches must be at least 1")
    with tempfile.TemporaryDirectory() as scratch:  # the trainer never writes here: validate() only
        recipe = load_recipe(args.config, init_from=args.generator, out_dir=scratch, eval_batches=args.batches)
        metrics = Trainer(recipe).validate()
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


def cmd_eval(args) -> int:
    from hyperadapter.evaluation.harness import load_eval_config
    from hyperadapter.evaluation.run import run_eval
    from hyperadapter.evaluation import report

    settings = load_settings(args.settings)
    if not Path(args.config).is_file():
        raise CLIError(f"--config {args.config}: no such file")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be at least 1")
    if args.history_lines is not None and args.history_lines < 0:
        raise CLIError("--history-lines must be 0 (whole chats) or more")
    if args.history_replies and not args.history_lines:
        raise CLIError("--history-replies needs --history-lines (whole chats keep every reply)")
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        raise CLIError(f"--kinds: unknown {', '.join(sorted(unknown))}; use some of {', '.join(KINDS)}")
    config = load_eval_config(args.config, limit=args.limit, out_dir=args.out, generator=args.generator,
                              systems=args.systems.split(",") if args.systems else None, kinds=kinds,
                              history_lines=args.history_lines, history_replies=args.history_replies or None,
                              unrelated_kind=args.unrelated_kind)
    if settings.torch_threads:
        import torch
        torch.set_num_threads(settings.torch_threads)
    results = run_eval(config, settings)
    print(report.markdown(results))
    print(f"wrote {config.out_dir}/results.json, results.md, results.png")
    return 0


def _data_groups(results: dict) -> dict[str, str]:
    """context id -> group from the prepared split a results.json was scored on, for runs made
    before the harness recorded groups (empty if that data is not here); only the kinds it scored."""
    from hyperadapter.data.schema import load_split

    split = results.get("config", {}).get("split")
    kinds = {kind for per_kind in results.get("systems", {}).values() for kind in per_kind}
    data_dir = load_settings(None).prepared_data_dir
    groups: dict[str, str] = {}
    for kind in sorted(kinds) if split else ():
        try:
            groups.update({r.id: r.group for r in load_split(data_dir, split, kind)})
        except (OSError, ValueError):
            continue
    return groups


def cmd_compare(args) -> int:
    """Paired per-context differences between two harness runs (or two systems of one run)."""
    import json

    from hyperadapter.evaluation import compare

    runs = []
    for path in (args.a, args.b, *(args.exclude or [])):
        file = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
        try:
            runs.append(json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(f"{path}: not a readable results.json ({exc})") from None
    system_b = args.system_b or args.system
    recorded = compare.recorded_groups(runs[0]) or compare.recorded_groups(runs[1])
    excluded = set().union(*(compare.scored_ids(run) for run in runs[2:]))
    rows = compare.paired(runs[0], runs[1], args.system, system_b, KINDS,
                          groups=None if recorded else _data_groups(runs[0]), exclude=excluded)
    if excluded:
        print(f"leaving out the {len(excluded)} contexts scored in {', '.join(args.exclude)}")
    if not rows:
        held = "; ".join(f"{path} holds {', '.join(sorted(run.get('systems', {}))) or 'no systems'}"
                         for path, run in ((args.a, runs[0]), (args.b, runs[1])))
        raise CLIError(f"no kind has contexts scored for both {args.system!r} in {args.a} and {system_b!r} in "
                       f"{args.b} ({held})")
    print(compare.markdown(rows, f"{args.system} ({args.a})", f"{system_b} ({args.b})"))
    return 0


def cmd_average(args) -> int:
    from hyperadapter.training.average import average_checkpoints
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise CLIError(f"--weights {args.weights!r}: give numbers separated by commas, e.g. 0.5,0.5") from None
    keep = [k for k in (args.keep or "").split(",") if k]
    out = average_checkpoints(args.checkpoints, weights, args.out, keep=keep)
    print(f"saved {out}")
    return 0


def cmd_graft(args) -> int:
    from hyperadapter.training.graft import graft_kind
    kind, sep, donor = args.kind.partition("=")
    if not sep or not donor:
        raise CLIError(f"--kind {args.kind!r}: give KIND=CHECKPOINT, e.g. document=runs/generator-smollm2-stage30/generator")
    out = graft_kind(args.checkpoint, kind, donor, args.out, compact=args.compact)
    print(f"saved {out}")
    return 0


BENCHMARKS = ("mixed_batch", "generate_latency", "latency_ablation", "cache", "serve", "batch")


def cmd_bench(args) -> int:
    import runpy
    from hyperadapter.config import REPO_ROOT
    script = REPO_ROOT / "benchmarks" / f"{args.name}.py"
    if not script.is_file():
        raise CLIError(f"{script} not found (benchmarks live in the source checkout)")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperadapter", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sv = sub.add_parser("serve", help="run the HTTP API (OpenAI-compatible) with the model loaded once")
    sv.add_argument("--host", help="default 127.0.0.1")
    sv.add_argument("--port", type=int, help="default 8000")
    sv.add_argument("--config", help="a settings TOML file")
    sv.set_defaults(func=cmd_serve)

    g = sub.add_parser("generate", help="generate text with the base model, an adapter, or a context's adapter")
    g.add_argument("--adapter", help="a PEFT adapter folder or a stored adapter id")
    g.add_argument("--kind", choices=KINDS, help="make (or reuse) an adapter from a context of this kind")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--text", help="the context text")
    src.add_argument("--file", help="a file holding the context text")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int)
    for name in ("frequency", "presence"):
        g.add_argument(f"--{name}-penalty", type=float,
                       help="OpenAI's penalty (default: the adapter kind's, hyperadapter.decoding; else 0)")
    g.add_argument("--raw", action="store_true", help="plain completion: no chat template")
    g.add_argument("--no-reuse", action="store_true")
    g.add_argument("--no-route", action="store_true",
                   help="with a document's adapter: answer with the document's one adapter, not the adapter of "
                        "the sentence nearest to the prompt (model card: test F1 8.9 against 11.3)")
    g.add_argument("--config")
    g.set_defaults(func=cmd_generate)

    a = sub.add_parser("adapter", help="create adapters")
    asub = a.add_subparsers(dest="adapter_command", required=True)
    c = asub.add_parser("create", help="make (or reuse) an adapter from a context; prints one JSON line")
    c.add_argument("--kind", choices=KINDS, required=True)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    c.add_argument("--out", help="also write the PEFT adapter folder here")
    c.add_argument("--no-reuse", action="store_true", help="always generate a new adapter")
    c.add_argument("--config")
    c.set_defaults(func=cmd_adapter_create)
    ins = asub.add_parser("inspect", help="what the generator's copy head takes from a context, and how far its "
                                          "slots agree (1.0: every slot copies one blend); prints one JSON line")
    ins.add_argument("--kind", choices=KINDS, required=True)
    src = ins.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    ins.add_argument("--top", type=int, default=10, help="how many tokens to list (default 10)")
    ins.add_argument("--config")
    ins.set_defaults(func=cmd_adapter_inspect)

    b = sub.add_parser("batch", help="make adapters for every line of a JSONL file; resumable; "
                                      "runs split across processes under `accelerate launch`")
    b.add_argument("input", help='JSONL, one {"id"?, "kind"?, "context" | "path"} per line')
    b.add_argument("--out", required=True, help="folder for <id>/ adapters, manifest.jsonl and errors.jsonl")
    b.add_argument("--batch-size", type=int, default=8, help="contexts per batched generation (default 8)")
    b.add_argument("--kind", choices=KINDS, help="the kind of lines that do not give one")
    b.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                   help="serve repeated and near-duplicate contexts from the cache (default: yes)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--config")
    b.set_defaults(func=cmd_batch)

    t = sub.add_parser("train", help="train the generator (or, with trainer = \"multitask-lora\", the baseline LoRA)")
    t.add_argument("--config", required=True, help="a recipe TOML file (see configs/)")
    t.add_argument("--steps", type=int, help="override the recipe's step count")
    t.add_argument("--out", help="override the recipe's out_dir")
    t.set_defaults(func=cmd_train)

    av = sub.add_parser("average", help="average generator checkpoints of one architecture, tensor by tensor "
                                        "(a model soup)")
    av.add_argument("checkpoints", nargs="+", help="two or more generator checkpoint folders")
    av.add_argument("--weights", help="comma-separated, one per checkpoint (default: equal; scaled to sum to 1)")
    av.add_argument("--keep", help="comma-separated tensor names to take unaveraged from the last checkpoint "
                                   "(e.g. copy keys the others hold only at zero)")
    av.add_argument("--out", required=True, help="a new folder for the averaged checkpoint")
    av.set_defaults(func=cmd_average)

    gr = sub.add_parser("graft", help="give one kind its own weights: another checkpoint's, the other kinds' "
                                      "adapters unchanged")
    gr.add_argument("checkpoint", help="the generator checkpoint whose other kinds stay as they are")
    gr.add_argument("--kind", required=True, help="KIND=CHECKPOINT: this kind's adapters come from that checkpoint's weights")
    gr.add_argument("--out", required=True, help="a new folder for the grafted checkpoint")
    gr.add_argument("--compact", action="store_true",
                    help="store every kind's own weights as float16 differences from the shared ones: about half the "
                         "room, the other kinds' adapters close to (not bit for bit) what they were")
    gr.set_defaults(func=cmd_graft)

    v = sub.add_parser("validate", help="validation loss of a generator checkpoint (right / wrong context / "
                                        "base), for choosing checkpoints; prints one JSON line")
    v.add_argument("--config", required=True, help="the recipe whose validation data and settings to use")
    v.add_argument("--generator", required=True, help="generator checkpoint folder")
    v.add_argument("--batches", type=int, default=12, help="validation batches per kind (contexts_per_batch each)")
    v.set_defaults(func=cmd_validate)

    e = sub.add_parser("eval", help="score base / context-in-prompt / generated / LoRA baselines on held-out data")
    e.add_argument("--config", required=True, help="an evaluation TOML file (see configs/)")
    e.add_argument("--limit", type=int, help="queries per context")
    e.add_argument("--out", help="output folder (default: the config's out_dir)")
    e.add_argument("--generator", help="generator checkpoint folder (default: the shipped one)")
    e.add_argument("--systems", help="comma-separated subset of the config's systems (results merge into "
                                     "an existing results.json of the same contexts)")
    e.add_argument("--kinds", help="comma-separated subset of the kinds (as --systems, results merge: two "
                                   "processes can split one evaluation by kind)")
    e.add_argument("--history-lines", type=int, help="cut chats to this many of the user's fact-stating "
                                                      "messages (0: whole chats; the config's default)")
    e.add_argument("--history-replies", action="store_true", help="with --history-lines: keep the assistant's "
                                                                   "reply after each kept message")
    e.add_argument("--unrelated-kind", help="generated-unrelated puts adapters of this kind on every context "
                                            "(default: a chat's, or a document's for chats)")
    e.add_argument("--settings", help="a settings TOML file")
    e.set_defaults(func=cmd_eval)

    cp = sub.add_parser("compare", help="paired per-context differences between two evaluation runs")
    cp.add_argument("a", help="a results.json (or its folder): the reference")
    cp.add_argument("b", help="another results.json (or folder) of the same contexts")
    cp.add_argument("--system", default="generated", help="the system compared (default: generated)")
    cp.add_argument("--system-b", help="the system in b, if not the same")
    cp.add_argument("--exclude", action="append", metavar="RUN",
                    help="leave out the contexts this run scored (a replication on a fresh sample); repeatable")
    cp.set_defaults(func=cmd_compare)

    bn = sub.add_parser("bench", help="run a benchmark from benchmarks/ (prints ratios measured side by side)")
    bn.add_argument("name", choices=BENCHMARKS)
    bn.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bn.set_defaults(func=cmd_bench)

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="download (pinned, checksummed), extract, build and split the datasets")
    dp.add_argument("--out", help="output folder (default: <data_root>/data)")
    dp.add_argument("--source", help="a local copy of bigbench-1.0.0.tar.gz instead of downloading")
    dp.add_argument("--force", action="store_true", help="rebuild even if prepared")
    dp.add_argument("--config")
    dp.set_defaults(func=cmd_data_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"hyperadapter: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"hyperadapter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperadapter: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
