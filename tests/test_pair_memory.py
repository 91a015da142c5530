"""diagnostics/pair_memory.py: a demonstration set written pair by pair into down_proj, on the real base."""

import importlib.util
from pathlib import Path

import pytest

from hyperadapter.data.prompts import query_prompt
from hyperadapter.evaluation.harness import choice_scores

_spec = importlib.util.spec_from_file_location(
    "pair_memory", Path(__file__).resolve().parent.parent / "diagnostics" / "pair_memory.py")
pair_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pair_memory)

SET = ("Input: banana\nOutput: zorp\n\nInput: dog\nOutput: blick\n\n"
       "Input: grape\nOutput: zorp\n\nInput: cat\nOutput: blick")


def test_pairs_and_twin():
    assert pair_memory.pairs(SET) == [("banana", "zorp"), ("dog", "blick"), ("grape", "zorp"), ("cat", "blick")]
    assert pair_memory.pairs(pair_memory.twin(SET)) == [("banana", "blick"), ("dog", "zorp"), ("grape", "blick"),
                                                        ("cat", "zorp")]
    three = SET + "\n\nInput: red\nOutput: plonk"
    assert pair_memory.twin(three) == three  # only a two-output set has a twin


@pytest.fixture(scope="module")
def memory(base):
    return pair_memory.PairMemory(base, list(range(18, 28)), gain=200.0)


def test_a_set_and_its_twin_answer_unshown_inputs_oppositely(base, runtime, memory):
    def margin(adapter, word):  # log p(zorp) - log p(blick) as the reply to the word alone
        zorp, blick = choice_scores(base, runtime, adapter, query_prompt(base, word), ["zorp", "blick"])
        return zorp - blick

    right, swapped = memory("demonstrations", SET), memory("demonstrations", pair_memory.twin(SET))
    for fruit, animal in (("cherry", "horse"), ("mango", "rabbit")):
        base_gap = margin(None, fruit) - margin(None, animal)
        assert margin(right, fruit) - margin(right, animal) > base_gap + 1.0
        assert margin(swapped, fruit) - margin(swapped, animal) < base_gap - 1.0


def test_free_text_outputs_get_no_adapter(memory):
    assert memory("demonstrations", "Input: 2 + 2\nOutput: four\n\nInput: 3 + 3\nOutput: six") is None
