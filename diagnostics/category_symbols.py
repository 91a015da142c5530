"""Synthetic two-category demonstration tasks whose classes the base surely knows ("banana": fruit or animal).

Why: stages 40-42 renamed real tasks' labels to unrelated words (symbol tuning) and the generator never told a set
from the same set with its words assigned the other way round, not even on training tasks. But those tasks sit
near chance for the 135M base: if the model cannot tell an input's class, no reader can map classes to words.
Here the classes are common words' categories, so a failure to fit is the hypernetwork's (its reader), not the base's.
Twelve categories of 15 words; a task is a pair of them (labels: the category names, which training renames to
symbol words). Train: the 36 pairs of the first nine; validation: the 30 pairs with one of the last three.
  python diagnostics/category_symbols.py runs/diagnostic-categories/data [--train-tasks N]
then `hyperadapter train --config configs/diagnostic_category_symbols.toml`. `--train-tasks N` keeps the first N
training pairs only (a fit check: can the generator learn even a few sets?).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.data.builders import DEMOS, format_demonstrations  # noqa: E402
from hyperadapter.data.relabel import SYMBOLS  # noqa: E402
from hyperadapter.data.schema import ContextRecord, Query, write_records  # noqa: E402

CATEGORIES = {
    "fruit": "banana grape cherry mango peach pear plum strawberry pineapple watermelon apricot kiwi blueberry "
             "coconut raspberry",
    "animal": "dog cat horse cow lion elephant rabbit monkey sheep wolf bear zebra giraffe fox mouse",
    "color": "red blue green yellow purple black white brown pink gray scarlet crimson indigo beige turquoise",
    "country": "France Germany Japan Brazil Canada Italy Spain Mexico India China Egypt Kenya Norway Peru Australia",
    "vehicle": "car bus truck bicycle train airplane boat motorcycle ship helicopter tram van scooter taxi tractor",
    "body part": "hand foot nose ear eye knee elbow finger shoulder neck mouth toe leg arm chin",
    "clothing": "shirt jacket hat sock shoe scarf glove dress skirt coat sweater boot belt tie jeans",
    "number": "one two three four five six seven eight nine ten eleven twelve twenty fifty hundred",
    "furniture": "chair table sofa bed desk shelf cabinet stool bench wardrobe dresser couch armchair drawer "
                 "cupboard",
    "job": "doctor teacher farmer lawyer nurse pilot chef baker dentist plumber engineer painter soldier judge waiter",
    "sport": "soccer tennis golf hockey rugby baseball basketball volleyball cricket boxing cycling swimming skiing "
             "surfing wrestling",
    "city": "Paris London Tokyo Berlin Madrid Rome Cairo Moscow Sydney Chicago Toronto Dublin Vienna Lisbon Athens",
}
TRAIN_CATEGORIES = 9


def task(a: str, b: str) -> ContextRecord:
    """Words of the two categories taken in turn (a, b, a, b, ...). The context shows the first DEMOS of them,
    half of each category, and the queries are the rest: a set and its twin (the same words, assigned the
    other way round) then ask for opposite answers to every query, and only a reader that binds each shown
    input to its output tells them apart. (Before 2026-12-05 the context showed four words of one category
    and 15 of the first 16 queries were of that category too: an adapter that raised the shown word scored
    94 without reading which input went with it.) Training draws its demonstrations from the queries."""
    labels = sorted((a, b))
    by_category = [[Query(input=word, answers=[cat], choices=labels, label=labels.index(cat))
                    for word in CATEGORIES[cat].split()] for cat in (a, b)]
    queries = [q for pair in zip(*by_category) for q in pair]
    return ContextRecord(id=f"demos/categories/{a}-{b}".replace(" ", "_"), kind="demonstrations",
                         group=f"categories:{a}-{b}", source="synthetic",
                         context=format_demonstrations(queries[:DEMOS]), metric="choice", queries=queries[DEMOS:])


def main(out: Path, train_tasks: int | None = None) -> None:
    words = {w.lower() for ws in CATEGORIES.values() for w in ws.split()} | set(CATEGORIES)
    assert not words & set(SYMBOLS), words & set(SYMBOLS)  # no input or label is a symbol word
    names = list(CATEGORIES)
    train = [task(a, b) for a, b in itertools.combinations(names[:TRAIN_CATEGORIES], 2)][:train_tasks]
    held = [task(a, b) for a, b in itertools.combinations(names, 2) if b in names[TRAIN_CATEGORIES:]]
    for split, records in (("train", train), ("validation", held), ("test", held)):
        (out / split).mkdir(parents=True, exist_ok=True)
        print(split, write_records(out / split / "demonstrations.jsonl", records), "tasks")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-tasks", type=int, default=None)
    args = parser.parse_args()
    main(args.out, args.train_tasks)
