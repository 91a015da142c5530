"""Procedurally generated task descriptions: many distinct training tasks whose answers follow from
what the description says.

Why: the training split holds 161 task descriptions. With so few, the generator learns to tell them
apart instead of reading them (model card, stages 5-8: right and wrong descriptions of unseen tasks
score alike, and more steps on the same tasks make unseen ones worse). Each family here has free
parameters that are spelled out in its description and decide the answers: the two label words of
a classification, the word to return, the separator to join with. An adapter can only fit such a
task by reading its description, and the generator sees hundreds of them.

Inputs are sentences of the training split's documents, so nothing held out is used. These tasks
are for training only: they are never written to the prepared data and never evaluated.

Result (model card, stage 9): with 600 of them in half of the task contexts, the generator learned
their families but not to read a new description, and real unseen tasks did not improve. The recipe
keys (`synthetic_tasks`, `synthetic_share`) stay, off by default, for larger bases and longer runs.
"""

from __future__ import annotations

import random
from typing import Callable

from hyperadapter.data.builders import split_sentences
from hyperadapter.data.schema import ContextRecord, Query

QUERIES_PER_TASK = 40
LABEL_SHARE = 0.45  # of the tasks, label classifications; the rest short generations
LABEL_WORDS = ("yes", "no", "true", "false", "apple", "river", "stone", "tiger", "cloud", "silver", "maple",
               "rocket", "violet", "pepper", "falcon", "red", "blue", "left", "right", "high", "low", "north",
               "south", "A", "B", "1", "0", "keep", "drop", "match", "other", "positive", "negative")
WORDS = ("the", "of", "and", "in", "was", "is", "by", "for", "to", "with", "as", "on", "that", "from", "his", "it")
ORDINALS = {"first": 0, "second": 1, "third": 2, "last": -1}
SEPARATORS = {"-": "hyphens", "_": "underscores", "/": "slashes", "|": "vertical bars", "+": "plus signs",
              ", ": "commas"}

# (what the description says the sentence does, the test)
Condition = tuple[str, Callable[[str], bool]]


def _words(sentence: str) -> list[str]:
    """The sentence's words without surrounding punctuation."""
    return [w for w in (w.strip(".,;:!?\"'()") for w in sentence.split()) if w]


def _conditions(rng: random.Random) -> list[Condition]:
    k = rng.randint(9, 15)
    word = rng.choice(WORDS)
    return [
        ("contains a digit", lambda s: any(c.isdigit() for c in s)),
        (f"has more than {k} words", lambda s: len(_words(s)) > k),
        ("begins with a vowel", lambda s: s[:1].lower() in "aeiou"),
        (f"contains the word \"{word}\"", lambda s: word in [w.lower() for w in _words(s)]),
        ("contains a comma", lambda s: "," in s),
        ("names something with a capital letter after its first word",
         lambda s: any(w[:1].isupper() for w in _words(s)[1:])),
        ("contains parentheses", lambda s: "(" in s),
    ]


def _label_task(rng: random.Random, sentences: list[str]) -> tuple[str, str, list[Query]] | None:
    """Answer one label word if the sentence meets a condition, the other if not (ranked as choices)."""
    cond, test = rng.choice(_conditions(rng))
    a, b = rng.sample(LABEL_WORDS, 2)
    template = rng.choice([
        'Read the sentence. If it {c}, answer "{a}"; otherwise answer "{b}".',
        'Answer "{a}" when the sentence {c} and "{b}" when it does not.',
        'Classify each text: reply "{a}" if the text {c}, else reply "{b}".',
        'Does the sentence satisfy this: it {c}? Say "{a}" for yes and "{b}" for no.',
    ])
    picked: dict[bool, list[Query]] = {True: [], False: []}
    for s in rng.sample(sentences, min(len(sentences), 40 * QUERIES_PER_TASK)):
        label = test(s)
        if len(picked[label]) < QUERIES_PER_TASK // 2:
            picked[label].append(Query(input=s, answers=[a if label else b], choices=[a, b], label=0 if label else 1))
    if min(len(v) for v in picked.values()) < QUERIES_PER_TASK // 4:
        return None  # the condition is too rare among these sentences to make a balanced task
    return template.format(c=cond, a=a, b=b), "choice", picked[True] + picked[False]


def _generation_task(rng: random.Random) -> tuple[str, Callable[[str], str | None]]:
    """A description and the function that answers it (None: the sentence does not suit the task)."""
    family = rng.randrange(10)
    if family == 0:
        name, i = rng.choice(list(ORDINALS.items()))
        return (rng.choice([f"Return the {name} word of the sentence.", f"What is the {name} word of the text? "
                            "Answer with that word only."]), lambda s: _words(s)[i] if len(_words(s)) > 2 else None)
    if family == 1:
        k = rng.randint(2, 5)
        return f"Copy the first {k} words of the sentence.", lambda s: " ".join(s.split()[:k])
    if family == 2:
        return ("Reverse the order of the words in the sentence.",
                lambda s: " ".join(reversed(_words(s))) if len(_words(s)) <= 10 else None)
    if family == 3:
        case = rng.choice(["capital letters", "lower case"])
        return (f"Rewrite the sentence in {case}.",
                lambda s: (s.upper() if case == "capital letters" else s.lower()) if len(s.split()) <= 14 else None)
    if family == 4:
        return ("How many words does the sentence have? Answer with a number.", lambda s: str(len(_words(s))))
    if family == 5:
        word = rng.choice(LABEL_WORDS)
        return (rng.choice([f'Whatever the input, reply with the single word "{word}".',
                            f'Ignore the text and answer "{word}".']), lambda s: word)
    if family == 6:
        sep, name = rng.choice(list(SEPARATORS.items()))
        return (f"Join the words of the sentence with {name} instead of spaces.",
                lambda s: sep.join(_words(s)) if len(_words(s)) <= 12 else None)
    if family == 7:
        return ("Return the longest word in the sentence.", lambda s: max(_words(s), key=len) if _words(s) else None)
    if family == 8:
        word = rng.choice(LABEL_WORDS)
        return (f'Repeat the sentence, then add the word "{word}" at the end.',
                lambda s: f"{s} {word}" if len(s.split()) <= 14 else None)
    old, new = rng.choice(WORDS), rng.choice(LABEL_WORDS)

    def replace(s: str) -> str | None:
        if old not in s.split() or len(s.split()) > 14:
            return None
        return " ".join(new if w == old else w for w in s.split())
    return f'Replace every "{old}" in the sentence with "{new}".', replace


def synthetic_tasks(n: int, sentences: list[str], seed: int = 0) -> list[ContextRecord]:
    """`n` distinct tasks (LABEL_SHARE of them label classifications, ranked as choices; the
    rest short generations), QUERIES_PER_TASK queries each, half of them kept as support (for demonstrations)."""
    rng = random.Random(f"synthetic:{seed}")
    out: list[ContextRecord] = []
    seen: set[str] = set()
    attempts = labels = 0
    while len(out) < n and attempts < 20 * n:
        attempts += 1
        if labels < LABEL_SHARE * n and (rng.random() < LABEL_SHARE or len(out) - labels >= n - LABEL_SHARE * n):
            made = _label_task(rng, sentences)
            if made is None:
                continue
            description, metric, queries = made
        else:
            description, answer = _generation_task(rng)
            metric, queries = "generation", []
            for s in rng.sample(sentences, min(len(sentences), 50 * QUERIES_PER_TASK)):
                target = answer(s)
                if target:
                    queries.append(Query(input=s, answers=[target]))
                if len(queries) == QUERIES_PER_TASK:
                    break
        if description in seen or len(queries) < QUERIES_PER_TASK // 2:
            continue
        seen.add(description)
        labels += metric == "choice"
        rng.shuffle(queries)
        half = len(queries) // 2
        out.append(ContextRecord(id=f"syn/{len(out)}", kind="task", group=f"syn:{len(out)}", source="synthetic",
                                 context=description, metric=metric, queries=queries[:half], support=queries[half:]))
    return out


def sentences_of(documents: list[ContextRecord], min_words: int = 5, max_words: int = 20,
                 limit: int = 20000) -> list[str]:
    """Plain sentences of the given documents, for synthetic task inputs."""
    out: list[str] = []
    for record in documents:
        for s in split_sentences(record.context):
            if min_words <= len(s.split()) <= max_words and s.isascii():
                out.append(s)
                if len(out) >= limit:
                    return out
    return out
