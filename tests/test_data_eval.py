"""Data loading and splitting on fixture files made here (a miniature BIG-bench tree), metrics on
hand-checked cases, and the evaluation harness end to end on the real base model."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from hyperadapter.data import builders, source
from hyperadapter.data.prepare import USERS_PER_DIALOGUE, is_prepared, prepare, write_all
from hyperadapter.data.schema import KINDS, SPLITS, ContextRecord, Query, load_split
from hyperadapter.data.splits import overlap, remove_leaks, split_of
from hyperadapter.evaluation import metrics
from tests.conftest import write_tiny_data


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """A miniature benchmark_tasks/ tree in BIG-bench's formats."""
    root = tmp_path_factory.mktemp("bb") / "benchmark_tasks"
    for family in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"):
        for n, what in ((1, "question"), (2, "answer")):
            _write(root / "natural_instructions" / f"subtask00{n}_{family}_{what}_generation" / "task.json", {
                "description": f"Definition: write the {what} for the {family} passage.",
                "examples": [{"input": f"{family} passage {i} ({what})", "target": [f"{family} {what} {i}"]}
                             for i in range(20)]})
        _write(root / f"bb_{family}" / "task.json", {
            "description": f"Pick the {family} option that fits.", "keywords": ["logical reasoning"],
            "examples": [{"input": f"{family} riddle {i}", "target_scores": {f"{family} yes {i}": 1, f"no {i}": 0}}
                         for i in range(16)]})
    _write(root / "bb_french" / "task.json", {"description": "Translate into French.", "keywords": ["translation"],
                                              "examples": [{"input": f"w{i}", "target": f"m{i}"} for i in range(20)]})
    paragraphs = [{"context": f"Article {a} paragraph {p}: the keeper is named K{a}{p}.",
                   "qas": [{"question": f"Who keeps lighthouse {a}-{p}?", "id": f"{a}{p}",
                            "answers": [{"text": f"K{a}{p}", "answer_start": 30}]}]} for a in range(30) for p in range(2)]
    for name in builders.SQUAD_FILES:
        _write(root / "squad_shifts" / name, {"data": [{"title": f"{name}-{a}", "paragraphs": paragraphs[2 * a:2 * a + 2]}
                                                       for a in range(30)]})
    turns = ' '.join(f'agent_{"A" if i % 2 == 0 else "B"}: "turn {i} of chat {{c}}"' for i in range(9))
    _write(root / "topical_chat" / "task.json", {"examples": [
        {"input": turns.replace("{c}", str(c)), "target": f'"last of {c}"', "comment": f"conv{c}"} for c in range(40)]})
    return root


def test_builders_read_every_kind(tasks_dir):
    ni = list(builders.natural_instructions(tasks_dir))
    bb = list(builders.bigbench_tasks(tasks_dir))
    assert len(ni) == 16 and all(r.metric == "generation" and r.context.startswith("Definition") for r in ni)
    assert {r.group for r in ni if "alpha" in r.id} == {"ni:alpha"}  # one family, one group
    assert len(bb) == 8 and all(r.metric == "choice" for r in bb)  # the translation task is skipped
    q = bb[0].queries[0]
    assert q.choices[q.label].startswith(bb[0].id.split("_")[-1])
    demos = list(builders.demonstrations(ni))
    assert demos[0].context.count("Input:") == builders.DEMOS and demos[0].group == ni[0].group
    docs = list(builders.squad_documents(tasks_dir))
    assert len(docs) == 5 * 60 and docs[0].metric == "squad"
    users = list(builders.conversations(tasks_dir, lambda g: split_of(g, "conversation"), USERS_PER_DIALOGUE))
    u = users[0]
    assert u.context.splitlines()[0].startswith(("user:", "assistant:")) and len(u.queries) == 3
    assert all(q.answers[0] in u.context for q in u.queries)  # the facts were dropped into the history


def test_splits_are_by_group_without_leakage(tasks_dir, tmp_path):
    tasks = list(builders.natural_instructions(tasks_dir)) + list(builders.bigbench_tasks(tasks_dir))
    records = tasks + list(builders.demonstrations(tasks)) + list(builders.squad_documents(tasks_dir)) + \
        list(builders.conversations(tasks_dir, lambda g: split_of(g, "conversation"), USERS_PER_DIALOGUE))
    manifest = write_all(records, tmp_path / "data")
    loaded = {s: [r for k in KINDS for r in load_split(tmp_path / "data", s, k)] for s in SPLITS}
    groups = {s: {r.group for r in rs} for s, rs in loaded.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not overlap(loaded["train"], loaded["test"])
    assert all(len(v) for v in loaded.values())
    # a task and its demonstrations always share a split
    for s, rs in loaded.items():
        task_ids = {r.id for r in rs if r.kind == "task"}
        assert all(r.id.removeprefix("demos/") in task_ids for r in rs if r.kind == "demonstrations")
    assert manifest["files"]["test/task.jsonl"]["contexts"] == sum(r.kind == "task" for r in loaded["test"])
    assert is_prepared(tmp_path / "data")
    # prepared once: a second `prepare` does nothing (and needs no download)
    assert prepare(tmp_path / "data", tmp_path / "cache")["files"] == manifest["files"]
    assert not (tmp_path / "cache").exists()


def test_leaks_are_removed():
    test = [ContextRecord("t1", "task", "g1", "s", "Do the thing.", "generation", [Query("shared input", ["x"])])]
    train = [ContextRecord("a", "task", "g2", "s", "Other thing.", "generation",
                           [Query("shared input", ["x"]), Query("fine input", ["y"])]),
             ContextRecord("b", "task", "g3", "s", "Do the thing.", "generation", [Query("z", ["z"])])]
    splits = {"train": train, "test": test}
    assert remove_leaks(splits) == 1  # b has the test context itself: dropped whole
    assert [r.id for r in splits["train"]] == ["a"] and [q.input for q in splits["train"][0].queries] == ["fine input"]


def test_source_is_checked_and_extraction_takes_only_what_is_used(tmp_path):
    fake = tmp_path / source.FILENAME
    fake.write_bytes(b"not the real archive")
    with pytest.raises(source.SourceError, match="sha256"):
        source.fetch(tmp_path / "cache", fake)
    archive = tmp_path / "mini.tar.gz"
    member = tmp_path / "task.json"
    member.write_text("{}")
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("squad_shifts/nyt_v1.0.json", "squad_shifts/task.py", "topical_chat/task.json", "x/task.json"):
            tar.add(member, arcname=source.TASKS_PREFIX + name)
        tar.add(member, arcname="bigbench-1.0.0/setup.py")
    out = source.extract(archive, tmp_path / "out")
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == ["squad_shifts/nyt_v1.0.json", "topical_chat/task.json", "x/task.json"]
    assert source.extract(archive, tmp_path / "out") == out  # marked complete: not redone


@pytest.mark.parametrize("prediction, answers, em, f1", [
    ("the Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
    ("Broncos won", ["Denver Broncos"], 0.0, 0.5),
    ("Denver Broncos!", ["Carolina Panthers", "denver broncos"], 1.0, 1.0),
    ("nothing", ["Denver Broncos"], 0.0, 0.0),
])
def test_squad_metrics(prediction, answers, em, f1):
    assert metrics.exact_match(prediction, answers) == em
    assert metrics.squad_f1(prediction, answers) == pytest.approx(f1)


def test_rouge_l_and_fact_recall():
    # LCS("w x y z", "w y z q") = 3 -> P = R = 3/4 (avoid "a": an article, normalised away)
    assert metrics.rouge_l("w x y z", ["w y z q"]) == pytest.approx(0.75)
    assert metrics.rouge_l("The cat sat", ["a cat sat down"]) == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    assert metrics.rouge_l("x", ["y", "x"]) == 1.0
    assert metrics.fact_recall("Your dog is called Biscuit.", ["Biscuit"]) == 1.0
    assert metrics.fact_recall("Biscuits are tasty", ["Biscuit"]) == 0.0


def test_stray_yes_no_counts_bare_yes_no_only_where_no_reference_is_one():
    assert metrics.stray_yes_no("Yes.", ["What is the capital of France?"]) == 1.0
    assert metrics.stray_yes_no(" no ", ["Paris"]) == 1.0
    assert metrics.stray_yes_no("Yes, it is Paris.", ["Paris"]) == 0.0
    assert metrics.stray_yes_no("No.", ["no"]) == 0.0
    assert metrics.stray_yes_no("Yes", ["Paris", "Yes"]) == 0.0


def test_looped_finds_a_run_said_three_times_and_nothing_else():
    assert metrics.looped(" Mott Mott Mott Mott") == 1.0
    assert metrics.looped("The sea is a thing that is very, very, very, very") == 1.0  # "very ," thrice
    assert metrics.looped(" staining stains on stains on stains on st") == 1.0
    assert metrics.looped("The no-no-no-no") == 1.0  # "no -" thrice
    assert metrics.looped("Mott Mott, the Mott family.") == 0.0  # said twice in a row, or apart
    assert metrics.looped("It rained on Monday, rained on Tuesday and rained on Friday.") == 0.0
    assert metrics.looped("1, 2, 3, 4, 5") == 0.0
    assert metrics.looped("") == 0.0


def test_short_document_keeps_its_first_sentences_and_the_questions_they_answer():
    from hyperadapter.data.builders import short_document
    doc = ContextRecord("d1", "document", "article", "fixture",
                        "Varnholm lies on the Esk. Its mayor is Ann Bell. In 1887 a bridge was built.", "squad",
                        [Query("Which river?", ["the Esk", "Esk"]), Query("Who is mayor?", ["Ann Bell"]),
                         Query("When was the bridge built?", ["1887"])])
    one, two = short_document(doc, 1), short_document(doc, 2)
    assert one.context == "Varnholm lies on the Esk."
    assert two.context == "Varnholm lies on the Esk. Its mayor is Ann Bell."
    assert [q.input for q in one.queries] == ["Which river?"]
    assert [q.input for q in two.queries] == ["Which river?", "Who is mayor?"]
    assert (one.id, two.id) == ("d1#first1", "d1#first2")  # cached apart from the whole paragraph
    assert short_document(doc, 9).context == doc.context and short_document(doc, 9).queries == doc.queries
    with pytest.raises(ValueError, match="document"):
        short_document(ContextRecord("t", "task", "g", "fixture", "Do it.", "generation", []), 1)


def test_eval_records_cut_documents_only_when_asked(tmp_path):
    from hyperadapter.evaluation.harness import EvalConfig, eval_records
    write_tiny_data(tmp_path)
    whole = eval_records(tmp_path, EvalConfig(), "document")
    cut = eval_records(tmp_path, EvalConfig(document_sentences=1), "document")
    assert cut and all(r.id.endswith("#first1") for r in cut)
    assert all(len(r.context) < len(w.context) for r, w in zip(cut, whole))
    assert all(any(a in r.context for a in q.answers) for r in cut for q in r.queries)
    tasks = eval_records(tmp_path, EvalConfig(document_sentences=1), "task")
    assert tasks == eval_records(tmp_path, EvalConfig(), "task")


def test_choice_scores_match_a_plain_forward(base, runtime):
    import torch.nn.functional as F
    from hyperadapter.base import format_prompt
    from hyperadapter.evaluation.harness import choice_scores
    from tests.conftest import make_adapter
    adapter = make_adapter(base, 4)
    prompt = format_prompt(base, "Is the sky blue?")
    choices = ["Yes", "No, it is green today", "maybe"]
    fast = choice_scores(base, runtime, adapter, prompt, choices)
    tok = base.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    for choice, got in zip(choices, fast):
        c = tok(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad(), runtime.activate(adapter):
            logp = F.log_softmax(base.model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
        assert got == pytest.approx(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c)), abs=1e-3)


def test_an_eval_without_prepared_data_says_so_before_anything_else(tmp_path):
    from hyperadapter.config import load_settings
    from hyperadapter.evaluation.harness import EvalConfig
    from hyperadapter.evaluation.run import run_eval
    # the multi-task LoRA is missing too, and the base is not even loaded: the data is what is named
    config = EvalConfig(out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "nothing"), kinds=["document"],
                        systems=["multitask-lora"], multitask_lora=str(tmp_path / "no-lora"))
    with pytest.raises(FileNotFoundError, match="document.jsonl is missing: run `hyperadapter data prepare`"):
        run_eval(config, load_settings())


def test_harness_end_to_end(base, runtime, sentence_encoder, tmp_path):
    from hyperadapter.config import load_settings
    from hyperadapter.evaluation.harness import EvalConfig
    from hyperadapter.data.schema import load_split
    from hyperadapter.evaluation.run import run_eval
    from hyperadapter.generator import Generator
    write_tiny_data(tmp_path / "data")
    config = EvalConfig(out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"),
                        max_contexts={k: 2 for k in KINDS}, limit=2, max_new_tokens=8, task_lora_steps=3,
                        task_lora_dir=str(tmp_path / "oracles"),
                        systems=["base", "base+context", "generated", "generated-wrong", "generated-unrelated",
                                 "per-task-lora"])
    generator = Generator.fresh(base, sentence_encoder)
    results = run_eval(config, load_settings(), base=base, runtime=runtime, generator=generator)
    systems = results["systems"]
    assert set(systems) == {"base", "base+context", "generated", "generated (wrong context)",
                            "generated (unrelated context)", "per-task LoRA (oracle)"}
    assert set(systems["per-task LoRA (oracle)"]) == {"task", "demonstrations"}
    for name, per_kind in systems.items():
        for kind, r in per_kind.items():
            assert 0.0 <= r["score"] <= 100.0 and r["contexts"] == 2
            assert r["queries"] == (4 if kind in ("task", "demonstrations") else 2)  # the fixture's query counts
    records = {r.id: r.group for kind in KINDS for r in load_split(tmp_path / "data", "test", kind)}
    for c in systems["generated"]["document"]["per_context"]:  # each score names its group, for compare
        assert c["group"] == records[c["id"]]
    for kind in KINDS:  # the context costs prompt tokens; adapters do not
        assert systems["base+context"][kind]["prompt_tokens"] > systems["generated"][kind]["prompt_tokens"]
        assert systems["generated"][kind]["prompt_tokens"] == systems["base"][kind]["prompt_tokens"]
    # a fresh generator's adapters are zero: exactly the base's answers
    assert systems["generated"]["document"]["score"] == systems["base"]["document"]["score"]
    assert systems["generated"]["task"]["adapter_ms"] > 0
    assert systems["base"]["document"]["stray_yes_no"] is None  # counted on generation tasks only
    assert 0.0 <= systems["base"]["task"]["stray_yes_no"] <= 100.0
    assert 0.0 <= systems["base"]["document"]["looped"] <= 100.0  # every decoded reply is checked
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["config"]["limit"] == 2
    assert "| base+context |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # the oracles were kept, one folder per task, and a later evaluation loads them instead of training
    from hyperadapter.evaluation.systems import PerTaskLoraSystem
    assert len(list((tmp_path / "oracles").iterdir())) == 2
    again = PerTaskLoraSystem(base, runtime, steps=3, batch_size=config.task_lora_batch, save_dir=tmp_path / "oracles")
    record = load_split(tmp_path / "data", "test", "task")[0]
    loaded = again.adapter(record)
    assert float(loaded.metadata["train_seconds"]) == again.adapter_seconds[0] > 0
    trained = PerTaskLoraSystem(base, runtime, steps=3, batch_size=config.task_lora_batch).adapter(record)
    for m in trained.weights:  # same data, budget and seed: the stored oracle is the one training gives
        torch.testing.assert_close(loaded.weights[m][1], trained.weights[m][1])


def test_report_states_the_generators_margins_and_oracle_share():
    from hyperadapter.evaluation.report import comparisons
    systems = {"base": {"task": {"score": 30.0}}, "generated": {"task": {"score": 36.0}},
               "generated (wrong context)": {"task": {"score": 31.0}}, "multi-task LoRA": {"task": {"score": 33.0}},
               "per-task LoRA (oracle)": {"task": {"score": 40.0}}}
    lines = comparisons({"config": {"kinds": ["task", "document"]}, "systems": systems})
    assert lines[1] == ("- **task**, generated adapter: +6.0 over the base, +5.0 over the wrong context, "
                        "+3.0 over the multi-task LoRA, 60% of the oracle's gain")
    assert len(lines) == 2  # no document rows: nothing to compare


def test_results_of_two_runs_split_by_kind_merge_into_one_table(tmp_path):
    from hyperadapter.evaluation.report import write
    summary = {"score": 10.0, "contexts": 2, "queries": 4, "by_metric": {"f1": 10.0}, "em": None,
               "prompt_tokens": 40.0, "latency_ms": 5.0, "adapter_ms": None, "per_context": []}
    config = {"split": "test", "max_contexts": {}, "limit": 4, "max_new_tokens": 8, "data_dir": ""}

    def run(kind, score, systems):
        return {"config": {**config, "kinds": [kind], "systems": systems},
                "systems": {s: {kind: {**summary, "score": score}} for s in systems}}

    write(run("document", 10.0, ["base", "generated"]), tmp_path)
    write(run("task", 30.0, ["base"]), tmp_path)
    merged = write(run("document", 12.0, ["generated"]), tmp_path)  # a system scored again replaces its score
    assert merged["config"]["kinds"] == ["task", "document"]
    assert merged["systems"]["base"]["task"]["score"] == 30.0 and merged["systems"]["base"]["document"]["score"] == 10.0
    assert merged["systems"]["generated"] == {"document": {**summary, "score": 12.0}}
    assert json.loads((tmp_path / "results.json").read_text()) == merged
    # other contexts (here: more queries each) are another table: it replaces the old one
    other = write({**run("task", 1.0, ["base"]), "config": {**config, "limit": 8, "kinds": ["task"], "systems": ["base"]}},
                  tmp_path)
    assert other["systems"] == {"base": {"task": {**summary, "score": 1.0}}}
    # a run from before the relabel key is a run without relabelling; relabelled demonstrations are other contexts
    eight = {**config, "limit": 8, "kinds": ["task"], "systems": ["generated"]}
    plain = write({**run("task", 2.0, ["generated"]), "config": {**eight, "relabel": False}}, tmp_path)
    assert set(plain["systems"]) == {"base", "generated"}
    swapped = write({**run("task", 3.0, ["generated"]), "config": {**eight, "relabel": True}}, tmp_path)
    assert swapped["systems"] == {"generated": {"task": {**summary, "score": 3.0}}}


def test_unrelated_context_system_takes_adapters_from_another_kind(tmp_path):
    from hyperadapter.evaluation.systems import UnrelatedContextSystem
    write_tiny_data(tmp_path / "data")
    made = []
    system = UnrelatedContextSystem(None, lambda kind, ctx: made.append((kind, ctx)) or len(made),
                                    lambda kind: load_split(tmp_path / "data", "test", kind))
    for kind, partner in UnrelatedContextSystem.PARTNER_KIND.items():
        records = load_split(tmp_path / "data", "test", kind)
        system.prepare(records)
        contexts = {r.context for r in load_split(tmp_path / "data", "test", partner)}
        for r in records:
            system.adapter(r)
            assert made[-1][0] == partner and made[-1][1] in contexts


def test_an_evaluation_cut_short_keeps_what_it_finished(base, runtime, tmp_path, monkeypatch):
    """Results are written after every (system, kind): an interrupt on documents leaves task and
    demonstrations scored in results.json."""
    from hyperadapter.config import load_settings
    from hyperadapter.evaluation.harness import EvalConfig, Harness
    from hyperadapter.evaluation.run import run_eval
    write_tiny_data(tmp_path / "data")
    config = EvalConfig(out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"),
                        max_contexts={k: 1 for k in KINDS}, limit=1, max_new_tokens=4, systems=["base"])
    real = Harness.score_context

    def interrupted_on_documents(self, system, record):
        if record.kind == "document":
            raise KeyboardInterrupt
        return real(self, system, record)

    monkeypatch.setattr(Harness, "score_context", interrupted_on_documents)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, load_settings(), base=base, runtime=runtime)
    kept = json.loads((tmp_path / "out" / "results.json").read_text())["systems"]["base"]
    assert set(kept) == {"task", "demonstrations"} and kept["task"]["contexts"] == 1


def test_compare_pairs_contexts_by_id_and_the_cli_refuses_what_it_cannot_read(tmp_path, capsys):
    from hyperadapter.cli import main
    from hyperadapter.evaluation.compare import paired

    def run(scores: dict[str, float]) -> dict:
        return {"systems": {"generated": {"document": {"per_context": [{"id": i, "score": s} for i, s in scores.items()]}}}}

    a = run({"d1": 10.0, "d2": 20.0, "d3": 30.0, "only-a": 99.0})
    b = run({"d3": 33.0, "d1": 12.0, "d2": 24.0, "only-b": 0.0})  # other order, and contexts of its own
    rows = paired(a, b, "generated", "generated", KINDS)
    assert list(rows) == ["document"]
    r = rows["document"]
    assert r["contexts"] == 3 and r["a"] == pytest.approx(20.0) and r["b"] == pytest.approx(23.0)
    assert r["diff"] == pytest.approx(3.0) and r["se"] == pytest.approx(1.0 / 3 ** 0.5)  # diffs 2, 4, 3
    for name, data in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "| document | 3 | 20.0 | 23.0 | +3.0 ± 0.6 |" in capsys.readouterr().out
    # a replication leaves out the contexts an earlier run scored (here d1): a fresh sample
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "results.json").write_text(json.dumps(run({"d1": 0.0})))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--exclude", str(tmp_path / "earlier")]) == 0
    out = capsys.readouterr().out
    assert "leaving out the 1 contexts" in out and "| document | 2 | 25.0 | 28.5 | +3.5 ± 0.5 |" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--system", "base"]) == 2
    assert "results/a holds generated" in capsys.readouterr().err.replace(str(tmp_path), "results")
    # the names `eval --systems` takes reach the rows results.json names otherwise
    unrelated = {"systems": {"generated (unrelated context)": a["systems"]["generated"]}}
    assert paired(unrelated, b, "generated-unrelated", "generated", KINDS)["document"]["diff"] == pytest.approx(3.0)


def test_compare_gives_the_standard_error_over_groups_where_contexts_share_one(tmp_path, capsys):
    from hyperadapter.cli import main
    from hyperadapter.evaluation.compare import grouped_se, paired

    def run(scores: dict[str, float], groups: dict[str, str] | None) -> dict:
        rows = [{"id": i, "score": s, **({"group": groups[i]} if groups else {})} for i, s in scores.items()]
        return {"systems": {"generated": {"document": {"per_context": rows}}}}

    groups = {"d1": "article-1", "d2": "article-1", "d3": "article-2"}
    a = run({"d1": 10.0, "d2": 20.0, "d3": 30.0}, groups)
    b = run({"d1": 12.0, "d2": 23.0, "d3": 34.0}, None)  # groups recorded in one run are enough
    r = paired(a, b, "generated", "generated", KINDS)["document"]
    # diffs 2, 3, 4 around 3: residuals summed by article are -1 and +1, so sqrt(2/1 * 2) / 3
    assert r["groups"] == 2 and r["se_groups"] == pytest.approx(2 / 3)
    assert r["se"] == pytest.approx(1 / 3 ** 0.5)
    # every context its own group: the ordinary standard error
    assert grouped_se([2.0, 3.0, 4.0], ["x", "y", "z"]) == pytest.approx(r["se"])
    # a group not known for every shared context: no figure over groups rather than a wrong one
    assert "groups" not in paired(run({"d1": 1.0, "d9": 2.0}, {"d1": "g", "d9": None}),
                                  run({"d1": 2.0, "d9": 4.0}, None), "generated", "generated", KINDS)["document"]
    for name, data in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    # each article alike: its mean differences 2.5 and 4, so +3.25, and their spread sqrt(1.125) / sqrt(2)
    assert r["balanced"] == pytest.approx(3.25) and r["se_balanced"] == pytest.approx(0.75)
    assert "| document | 3 | 20.0 | 23.0 | +3.0 ± 0.6 (± 0.7 over 2 groups) | +3.2 ± 0.8 |" in capsys.readouterr().out


def test_unrelated_kind_chooses_whose_adapters_go_on_other_contexts(base, tmp_path):
    from hyperadapter.data.schema import load_split
    from hyperadapter.evaluation.harness import load_eval_config
    from hyperadapter.evaluation.systems import UnrelatedContextSystem
    write_tiny_data(tmp_path / "data")
    tasks = load_split(tmp_path / "data", "test", "task")

    def others(kind):
        return load_split(tmp_path / "data", "test", kind)
    default = UnrelatedContextSystem(base, lambda kind, ctx: None, others)
    documents = UnrelatedContextSystem(base, lambda kind, ctx: None, others, partner_kind="document")
    default.prepare(tasks)
    documents.prepare(tasks)
    assert {default.partner[r.id].kind for r in tasks} == {"conversation"}
    assert {documents.partner[r.id].kind for r in tasks} == {"document"}

    config = tmp_path / "eval.toml"
    config.write_text('kinds = ["task"]\n')
    assert load_eval_config(config, unrelated_kind="document").unrelated_kind == "document"
    with pytest.raises(ValueError, match="is not a kind"):
        load_eval_config(config, unrelated_kind="poem")
    with pytest.raises(ValueError, match="generated-wrong"):
        load_eval_config(config, unrelated_kind="task")


def test_generated_plus_multitask_adds_both_updates_and_its_control_swaps_only_the_context(
        base, runtime, sentence_encoder, tmp_path):
    from hyperadapter.config import load_settings
    from hyperadapter.evaluation.harness import EvalConfig
    from hyperadapter.evaluation.run import build_systems
    from hyperadapter.generator import Generator
    from tests.conftest import make_adapter, perturb_generator, relative_difference
    write_tiny_data(tmp_path / "data")
    shared = make_adapter(base, seed=3)  # q_proj and v_proj; the generator also writes down_proj
    shared.save(tmp_path / "multitask")
    config = EvalConfig(out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"),
                        multitask_lora=str(tmp_path / "multitask"),
                        systems=["generated+multitask", "generated+multitask-wrong"])
    generator = perturb_generator(Generator.fresh(base, sentence_encoder))
    right, wrong = build_systems(config, load_settings(), base, runtime, generator=generator)
    assert (right.name, wrong.name) == ("generated + multi-task LoRA", "generated + multi-task LoRA (wrong context)")
    records = load_split(tmp_path / "data", "test", "task")
    right.prepare(records)
    wrong.prepare(records)
    own, other = (generator.generate_adapter(r.context, "task") for r in (records[0], wrong.partner[records[0].id]))
    for system, generated in ((right, own), (wrong, other)):
        adapter = system.adapter(records[0])
        for module in generated.weights:
            expected = generated.delta_weight(module).float()
            if module in shared.weights:
                expected = expected + shared.delta_weight(module).float()
            assert relative_difference(adapter.delta_weight(module), expected) < 1e-2, module
    assert relative_difference(own.delta_weight(next(iter(own.weights))),
                               other.delta_weight(next(iter(own.weights)))) > 0.05
    missing = EvalConfig(out_dir=str(tmp_path / "out"), multitask_lora=str(tmp_path / "none"),
                         systems=["generated+multitask"])
    with pytest.raises(FileNotFoundError, match="multitask_lora.toml"):
        build_systems(missing, load_settings(), base, runtime, generator=generator)


def test_the_harness_answers_each_query_with_its_nearest_sentences_adapter_as_the_service_does(
        base, runtime, sentence_encoder, tmp_path):
    from hyperadapter.config import DEFAULT_GENERATOR, load_settings
    from hyperadapter.data.prompts import query_prompt
    from hyperadapter.data.schema import ContextRecord, Query
    from hyperadapter.evaluation.harness import EvalConfig, Harness
    from hyperadapter.evaluation.run import served
    from hyperadapter.evaluation.systems import AdapterSystem
    from hyperadapter.generator import Generator
    from hyperadapter.runtime import GenerationParams
    generator = Generator.from_pretrained(DEFAULT_GENERATOR, base, sentence_encoder)
    make = served(generator, load_settings())
    text = ("The Kessel mill at Drau was rebuilt in 1923 by the carpenter Ida Wren. "
            "The town's football club plays in green shirts. Its bakery sells rye bread every morning.")
    questions = ["What does the bakery sell?", "Who rebuilt the mill?", "What colour are the club's shirts?"]
    record = ContextRecord("kessel", "document", "kessel", "test", text, "squad",
                           [Query(q, ["x"]) for q in questions])
    adapter = make("document", text)
    assert len(adapter.routes.adapters) == 3 and make("task", "Say hi.").routes is None
    harness = Harness(base, runtime, EvalConfig(max_new_tokens=8), tmp_path, encoder=sentence_encoder)
    picked = harness.per_query(adapter, record)
    assert [[r is a for r in adapter.routes.adapters].index(True) for a in picked] == [2, 0, 1]
    assert harness.per_query(generator.generate_adapter("Say hi.", "task"), record)[0].routes is None
    system = AdapterSystem(base, make)
    system.prepare([record])
    row = harness.score_context(system, record)
    prompts = [query_prompt(base, q) for q in questions]
    params = GenerationParams(max_new_tokens=8)
    routed = runtime.generate(prompts, picked, params)
    whole = runtime.generate(prompts, adapter, params)
    assert row["samples"] == routed != whole  # the replies are the routed adapters', not the document's one
