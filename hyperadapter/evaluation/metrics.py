"""Answer metrics: SQuAD's normalisation, F1 and exact match; ROUGE-L (LCS F-measure on words);
fact recall (the normalised answer appears in the normalised reply); and two diagnostics, a bare
Yes/No reply where no reference is one (an adapter that turned a generation task into a yes/no one)
and a reply that loops (a run of words said three times in a row)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    p, a = normalize(prediction).split(), normalize(answer).split()
    common = Counter(p) & Counter(a)
    same = sum(common.values())
    if not p or not a:
        return float(p == a)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(a)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, answers: list[str]) -> float:
    return max(_f1(prediction, a) for a in answers)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, answers: list[str]) -> float:
    """ROUGE-L F1 on normalised words, best over the references."""
    best = 0.0
    p = normalize(prediction).split()
    for answer in answers:
        a = normalize(answer).split()
        if not p or not a:
            best = max(best, float(p == a))
            continue
        lcs = _lcs(p, a)
        if lcs:
            precision, recall = lcs / len(p), lcs / len(a)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def fact_recall(prediction: str, answers: list[str]) -> float:
    reply = f" {normalize(prediction)} "
    return float(any(f" {normalize(a)} " in reply for a in answers if normalize(a)))


def stray_yes_no(prediction: str, answers: list[str]) -> float:
    """1.0 if the reply is a bare "yes" or "no" (after normalisation) and no reference answer is."""
    yes_no = {"yes", "no"}
    return float(normalize(prediction) in yes_no and not any(normalize(a) in yes_no for a in answers))


_PIECE = re.compile(r"\w+|[^\w\s]")


def looped(prediction: str, longest: int = 4, times: int = 3) -> float:
    """1.0 if the reply runs into a loop: some run of 1..`longest` words (punctuation counts as a
    word, case ignored) said `times` times in a row ("Mott Mott Mott", "very, very, very,", "stains on
    stains on stains on"). The failure of adapters made from very short contexts; the base's greedy
    replies rarely do it, a right answer almost never needs to."""
    words = _PIECE.findall(prediction.lower())
    for n in range(1, longest + 1):
        for i in range(len(words) - times * n + 1):
            if all(words[i + k * n:i + (k + 1) * n] == words[i:i + n] for k in range(1, times)):
                return 1.0
    return 0.0
