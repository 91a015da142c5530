"""Decoding defaults for a generated adapter, by the kind of context it was made from.

Adapters made from a short chat (or document) often answer in a loop (" Mott Mott Mott ..."): the
copy head puts all its weight on the few tokens there are. OpenAI's penalties on the tokens
generated so far break the loops. Each kind's pair met a reading written before its validation runs
(configs/eval_validation_short_contexts.toml, then _short_documents_stronger.toml):
- chats, presence 1.0 + frequency 0.5: looping replies on one-message chats 4.7% -> 1.6%, fact recall
  +1.6 +- 1.6 there and +0.0 on whole chats;
- documents, presence 2.0 + frequency 1.0 (the first pair left 8.0% of 15.2%): on documents cut to
  one sentence 15.2% -> 2.9%, SQuAD F1 +3.8 +- 1.1; on whole paragraphs +0.5 +- 0.3.
- tasks and demonstrations, the chats' pair (configs/eval_validation_tasks_penalised.toml, 33 tasks):
  they hardly loop (0.2% and 1.9% of replies -> 0.0%), and the score moved +0.1 +- 0.2 and +0.4 +- 0.2
  (families alike -0.3 +- 0.3 and -0.0 +- 0.1): the reading holds, so every generated adapter has one.
Uploaded adapters (no kind) and the base keep OpenAI's 0. A request's
own penalties, when it gives them (0 included), always win: these apply only where the client left
them unset, as vLLM applies a model's generation_config.
"""

from __future__ import annotations

from hyperadapter.adapter import Adapter

# OpenAI's bound on either penalty: the API's schema and the CLI refuse values beyond +-PENALTY_LIMIT
PENALTY_LIMIT = 2.0
# kind -> (frequency_penalty, presence_penalty)
PENALTIES: dict[str, tuple[float, float]] = {"conversation": (0.5, 1.0), "document": (1.0, 2.0),
                                              "task": (0.5, 1.0), "demonstrations": (0.5, 1.0)}


def penalties(adapter: Adapter | None, frequency: float | None = None,
              presence: float | None = None) -> tuple[float, float]:
    """(frequency_penalty, presence_penalty) for a reply with `adapter`: each the one given, or else
    the default of the adapter's kind (its metadata's "kind"; the base and uploaded adapters: 0)."""
    kind = adapter.metadata.get("kind", "") if adapter is not None else ""
    default_frequency, default_presence = PENALTIES.get(kind, (0.0, 0.0))
    return (default_frequency if frequency is None else frequency,
            default_presence if presence is None else presence)
