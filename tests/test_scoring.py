"""Choice scoring with a shared prompt cache (evaluation and training): the same numbers as scoring
each prompt + choice in full, per-row adapters respected, and gradients that rank the right choice up."""

import torch
import torch.nn.functional as F

from hyperadapter.base import format_prompt
from hyperadapter.scoring import choice_logprobs
from hyperadapter.training.objectives import choice_losses
from tests.conftest import make_adapter


def _full_logprob(base, runtime, prompt: list[int], choice: list[int], factors) -> float:
    """The reference: prompt + choice in one plain forward pass, no cache, no padding."""
    ids = torch.tensor([prompt + choice])
    with runtime.activate(factors=factors):
        logits = base.model(input_ids=ids).logits[0].float()
    logp = F.log_softmax(logits[len(prompt) - 1:-1], -1)
    return float(logp.gather(-1, torch.tensor(choice)[:, None]).sum())


@torch.no_grad()
def test_shared_prompt_cache_gives_the_same_scores_as_full_passes_with_per_row_adapters(base, runtime):
    tok = base.tokenizer
    prompts = [tok(format_prompt(base, q), add_special_tokens=False)["input_ids"]
               for q in ("Is the sky blue?", "Which of these animals can fly, usually, on a sunny day?")]
    choices = [[tok(c, add_special_tokens=False)["input_ids"] for c in ("Yes", "No", "It is green")],
               [tok(c, add_special_tokens=False)["input_ids"] for c in ("a penguin", "an eagle")]]
    adapters = [make_adapter(base, 1, scale=0.08), make_adapter(base, 2, scale=0.08)]
    per_prompt = [runtime.stack(a) for a in adapters]
    stacked_prompts = runtime.stack(adapters)
    stacked_choices = runtime.stack([adapters[0]] * 3 + [adapters[1]] * 2)
    got = choice_logprobs(base, runtime, prompts, choices, stacked_prompts, stacked_choices)
    want = [_full_logprob(base, runtime, p, c, per_prompt[i]) for i, (p, cs) in enumerate(zip(prompts, choices))
            for c in cs]
    assert torch.allclose(got, torch.tensor(want), atol=2e-3), (got, want)
    plain = choice_logprobs(base, runtime, prompts, choices)
    assert (plain - got).abs().max() > 0.05  # the adapters were applied


def test_choice_loss_gradients_rank_the_right_choice_up(base, runtime):
    prompts = [format_prompt(base, "Pick the colour of ripe bananas.")]
    choices = [("blue", "yellow", "purple")]
    factors = {}
    for name, (fan_in, fan_out) in base.linear_shapes().items():
        if name.endswith("layers.20.mlp.down_proj"):
            factors[name] = (torch.randn(4, fan_in) * 0.02, torch.zeros(fan_out, 4, requires_grad=True))
    params = [b for _, b in factors.values()]
    optimizer = torch.optim.Adam(params, lr=0.01)
    losses = []
    for label in (0, 0, 0, 0):  # push "blue", the wrong answer, to the top: only the adapter can do it
        loss = choice_losses(base, runtime, prompts, choices, [label], factors, factors).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert losses[-1] < losses[0] - 0.1, losses
