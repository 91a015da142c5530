import hashlib

import pytest

from hyperadapter.base import format_prompt
from hyperadapter.runtime import DecodeBatch, GenerationParams, Row
from tests.conftest import make_adapter

QUESTIONS = ["What is the capital of France?", "Name a fruit.", "Write a haiku about rain.", "Who wrote Hamlet?",
             "Count to five.", "What is 2+2?", "Say hello in Spanish.", "Describe the sea in one sentence."]


def _fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def prompts(base):
    return [format_prompt(base, q) for q in QUESTIONS]


def test_mixed_batch_matches_each_adapter_alone_and_leaves_weights_untouched(base, runtime, prompts):
    before = _fingerprint(base.model)
    adapters = [make_adapter(base, s, modules=("q_proj", "v_proj", "down_proj"), scale=0.08) for s in range(8)]
    params = GenerationParams(max_new_tokens=16)
    batched = runtime.generate(prompts, adapters, params)
    alone = [runtime.generate([p], [a], params)[0] for p, a in zip(prompts, adapters)]
    assert batched == alone
    plain = runtime.generate(prompts, None, params)
    assert sum(x != y for x, y in zip(batched, plain)) >= 4  # the adapters matter
    assert _fingerprint(base.model) == before


def test_rows_without_adapter_and_mixed_ranks_share_a_batch(base, runtime, prompts):
    adapters = [make_adapter(base, 10, rank=4, scale=0.1), None, make_adapter(base, 11, rank=16, scale=0.05), None]
    params = GenerationParams(max_new_tokens=12)
    batched = runtime.generate(prompts[:4], adapters, params)
    alone = [runtime.generate([p], [a], params)[0] for p, a in zip(prompts[:4], adapters)]
    assert batched == alone


def test_rows_joining_a_running_batch_get_the_same_tokens(base, runtime, prompts):
    adapters = [make_adapter(base, s, scale=0.08) for s in range(3)]
    params = GenerationParams(max_new_tokens=10)
    alone = [runtime.generate([p], [a], params)[0] for p, a in zip(prompts[:3], adapters)]
    batch = DecodeBatch(runtime)
    rows = [Row(runtime.encode(p), a, params) for p, a in zip(prompts[:3], adapters)]
    batch.add(rows[:1])
    batch.step(); batch.step()
    batch.add(rows[1:])  # joins with a different prompt length, mid-flight
    while batch.rows:
        batch.step()
    assert [r.text for r in rows] == alone
    assert all(r.finish_reason in ("stop", "length") for r in rows)


def test_stream_yields_the_same_text_and_stop_strings_cut(base, runtime, prompts):
    params = GenerationParams(max_new_tokens=20)
    full = runtime.generate([prompts[0]], None, params)[0]
    assert "".join(runtime.stream(prompts[0], None, params)) == full
    word = full.split()[2]
    cut = runtime.generate([prompts[0]], None, GenerationParams(max_new_tokens=20, stop=[word]))[0]
    assert word not in cut and full.startswith(cut)


def test_sampling_is_reproducible_with_a_seed(base, runtime, prompts):
    p = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a = runtime.generate(prompts[:2], None, [p, p])
    b = runtime.generate(prompts[:2], None, [p, p])
    assert a == b
    c = runtime.generate(prompts[:2], None, [GenerationParams(max_new_tokens=12, temperature=1.0, seed=8)] * 2)
    assert c != a


def test_invalid_adapter_is_refused_before_decoding(base, runtime, prompts):
    from hyperadapter.adapter import AdapterError
    bad = make_adapter(base, 0)
    name = next(iter(bad.weights))
    bad.weights[name][0][0, 0] = float("nan")
    with pytest.raises(AdapterError, match="NaN"):
        runtime.generate(prompts[:1], [bad])


def test_strip_leading_drops_only_the_replys_leading_whitespace(base, runtime):
    prompt = "The capital of France is"  # a raw continuation: the next token carries a space
    plain = runtime.generate([prompt], None, GenerationParams(max_new_tokens=4))[0]
    stripped = runtime.generate([prompt], None, GenerationParams(max_new_tokens=4, strip_leading=True))[0]
    assert plain.startswith(" ") and plain.strip()
    assert stripped == plain.lstrip()


def test_penalties_apply_to_generated_tokens_only_and_stop_a_loop(base, runtime):
    """OpenAI's semantics: the prompt's tokens are not penalised (the first reply token is the same),
    the reply's own repeats are; rows keep their own penalties in a shared batch."""
    prompt = "The cat. The cat. The cat. The cat."
    plain_params = GenerationParams(max_new_tokens=8)
    plain = runtime.generate([prompt], None, plain_params)[0]
    assert plain.count("The cat") >= 3  # greedy decoding loops on the prompt's words

    def reply_ids(params: GenerationParams) -> list[int]:
        row = Row(runtime.encode(prompt), None, params)
        batch = DecodeBatch(runtime)
        batch.add([row])
        while batch.rows:
            batch.step()
        return row.output_ids

    loop = reply_ids(plain_params)
    for params in (GenerationParams(max_new_tokens=8, frequency_penalty=2.0),
                   GenerationParams(max_new_tokens=8, presence_penalty=2.0)):
        ids = reply_ids(params)
        assert ids[0] == loop[0]  # the prompt's " The" was not penalised
        assert ids.count(loop[0]) < loop.count(loop[0])
    penalised = GenerationParams(max_new_tokens=8, presence_penalty=2.0)
    mixed = runtime.generate([prompt, prompt], None, [plain_params, penalised])
    assert mixed == [plain, runtime.generate([prompt], None, penalised)[0]]


def test_lead_space_opens_the_reply_with_a_space_led_token_and_only_the_first(base, runtime):
    prompt = format_prompt(base, "What is the capital of France?")
    plain, led, stripped = runtime.generate(
        [prompt] * 3, None, [GenerationParams(max_new_tokens=8), GenerationParams(max_new_tokens=8, lead_space=True),
                             GenerationParams(max_new_tokens=8, lead_space=True, strip_leading=True)])
    assert not plain.startswith(" ")  # the chat prior opens with a bare word, so the rule has work to do
    assert led.startswith(" ") and led[1:2].strip()  # one space, then a word
    assert stripped == led.lstrip()
    ids = base.tokenizer(led, add_special_tokens=False)["input_ids"]
    space_led = runtime.space_led(base.model.config.vocab_size)
    assert bool(space_led[ids[0]]) and not bool(space_led[base.tokenizer.encode("The")[0]])
    assert bool(space_led[base.tokenizer.encode(" 1887")[0]])  # a lone space leads numbers


def test_decoding_penalties_default_by_adapter_kind_and_yield_to_given_values():
    from hyperadapter.adapter import Adapter
    from hyperadapter.decoding import PENALTIES, penalties
    chat = Adapter({}, 16.0, "m", {"kind": "conversation"})
    assert penalties(chat) == PENALTIES["conversation"]
    assert penalties(chat, 0.0, None) == (0.0, PENALTIES["conversation"][1])
    assert penalties(chat, 0.0, 0.0) == (0.0, 0.0)
    assert penalties(Adapter({}, 16.0, "m", {"kind": "task"})) == PENALTIES["task"]
    assert penalties(Adapter({}, 16.0, "m")) == (0.0, 0.0)  # uploaded: no kind
    assert penalties(None, None, 1.5) == (0.0, 1.5)
    document = Adapter({}, 16.0, "m", {"kind": "document"})
    assert penalties(document) == PENALTIES["document"] != PENALTIES["conversation"]
