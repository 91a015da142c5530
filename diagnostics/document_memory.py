"""A document read as cloze pairs: a LoRA written from each candidate answer's pseudo-question and its first word.

Why: diagnostic 6 (pair_memory.py) found that a rank-8-per-slot down_proj LoRA carries a demonstrated mapping
when each pair is keyed by the state in which the base answers that input *asked as a query*. A document has no
pairs, but SQuAD questions mostly paraphrase one sentence with the answer taken out. So, with no training:
  - candidates: in each sentence, numbers (with a unit) and runs of capitalised words (one-word sentence openers
    such as "The" or "However" left out);
  - pseudo-question of a candidate: up to `WINDOW` words either side of it in its sentence, the candidate
    replaced by "what", ending in "?" (the unsupervised-QA cloze translation of Lewis et al., 2019, at its
    crudest);
  - key: PairMemory's key of that pseudo-question (the down_proj input at its answer position, in `--layers`,
    centred on the document's candidates and on everyday prompts);
  - value: the input embedding of the candidate's first token with a leading space (answers are led by one);
  - one rank slot per distinct first token (no compression: a document's adapter has as many slots as it has
    candidates, `--max-rank` caps it with Adapter.compressed).
  python diagnostics/document_memory.py --config configs/eval_validation_documents.toml \\
      --out results/validation-documents-document-memory [--generator DIR] [--gain 200] [--layers 18:28]
It writes "document memory" and the same with another paragraph's memory, as `hyperadapter eval` does.
`--generator DIR`: the memory's slots added to that generator's adapters (Adapter.combine).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from torch.nn.functional import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_memory import PairMemory, layer_range, memory_parser, on_generator, parsed, run_harness  # noqa: E402

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.evaluation.systems import AdapterSystem  # noqa: E402

WINDOW = 12
SENTENCE = re.compile(r"(?<=[.!?])\s+")
NUMBER = r"\$?\d[\d,.]*(?:\s?(?:%|percent|million|billion|thousand|years?|days?|months?|hours?|km|miles?))?"
CAPITALISED = r"[A-Z][\w'&-]*(?:\s+(?:of|the|and|de|for|in)\s+[A-Z][\w'&-]*|\s+[A-Z][\w'&-]*)*"
CANDIDATE = re.compile(rf"(?<![\w$])(?:{NUMBER}|{CAPITALISED})")
OPENERS = set("The A An In It This That These Those However He She They We I You His Her Their Its Our My On At "
              "By For From As After Before When While If But And Or So Also There Then During Since Although "
              "Because Some Many Most Other Each All Both Such One Two Three".split())


def cloze_pairs(document: str) -> list[tuple[str, str]]:
    """(pseudo-question, candidate answer) for each candidate of each sentence, in order."""
    out = []
    for sentence in SENTENCE.split(document.strip()):
        for m in CANDIDATE.finditer(sentence):
            span = m.group(0).rstrip(".,")
            if span in OPENERS or len(span) < 2:
                continue
            before = sentence[:m.start()].split()[-WINDOW:]
            after = sentence[m.start() + len(span):].split()[:WINDOW]
            question = " ".join(before + ["what"] + after).rstrip(" .!?,;:") + "?"
            out.append((question, span))
    return out


class DocumentMemory:
    def __init__(self, memory: PairMemory, max_rank: int):
        self.memory, self.max_rank = memory, max_rank

    def __call__(self, kind: str, context: str) -> Adapter | None:
        shown = cloze_pairs(context)
        tok = self.memory.base.tokenizer
        firsts = [tok(" " + span, add_special_tokens=False)["input_ids"][0] for _, span in shown]
        if len(set(firsts)) < 2:
            return None
        return self.memory.write(self.memory.query_keys([q for q, _ in shown]), firsts, self.max_rank)


def retrieval(memory: PairMemory, records) -> dict[str, float]:
    """Whether a real question's key picks, among its paragraph's candidates, one whose first word starts a gold
    answer (only questions for which some candidate does): the keys centred as the memory centres them, cosine
    summed over the layers. Top 1 and top 3 of the candidates, against picking one at random."""
    top1 = top3 = chance = n = 0
    for record in records:
        shown = cloze_pairs(record.context)
        firsts = [span.split()[0].lower() for _, span in shown]
        asked = [(q.input, {a.split()[0].lower() for a in q.answers if a.split()}) for q in record.queries]
        asked = [(q, gold) for q, gold in asked if any(f in gold for f in firsts)]
        if len(shown) < 2 or not asked:
            continue
        candidates, questions = memory.query_keys([q for q, _ in shown]), memory.query_keys([q for q, _ in asked])
        similarity = 0
        for layer in memory.layers:
            shift = (candidates[layer] - memory.everyday[layer]).mean(0)  # the paragraph's candidates' mean
            c, q = (normalize(memory.centred(layer, k[layer], shift), dim=1) for k in (candidates, questions))
            similarity = similarity + q @ c.T
        for (_, gold), row in zip(asked, similarity):
            order = row.argsort(descending=True).tolist()
            n += 1
            top1 += firsts[order[0]] in gold
            top3 += any(firsts[j] in gold for j in order[:3])
            chance += sum(f in gold for f in firsts) / len(firsts)
    return {"questions": n, "top1": top1 / max(n, 1), "top3": top3 / max(n, 1), "chance": chance / max(n, 1)}


def main() -> None:
    parser = memory_parser(__doc__.splitlines()[0], "document")
    parser.add_argument("--max-rank", type=int, default=64)
    parser.add_argument("--retrieval", type=int, default=0, metavar="N",
                        help="only print whether real questions' keys pick their answer's candidate, on N contexts")
    args, config, settings, base = parsed(parser)
    pair_memory = PairMemory(base, layer_range(args.layers), args.gain)
    if args.retrieval:
        data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
        records = load_split(data_dir, config.split, "document")[:args.retrieval]
        print(f"layers {args.layers}:", {k: round(v, 3) for k, v in retrieval(pair_memory, records).items()})
        return
    make, generated = on_generator(args.generator, base, DocumentMemory(pair_memory, args.max_rank))
    name = "generated + document memory" if generated else "document memory"
    systems = [AdapterSystem(base, make, name=name), AdapterSystem(base, make, name=name, wrong=True)]
    run_harness(base, config, settings, systems, args.out)


if __name__ == "__main__":
    main()
