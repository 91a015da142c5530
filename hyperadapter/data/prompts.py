"""How a query is put to the model, with the context absent (adapted systems) or in the prompt
(the open-book baseline and the distillation teacher). One place, so training and evaluation agree."""

from __future__ import annotations

import re

from hyperadapter.base import Base, format_chat, format_prompt

_TURN = re.compile(r"^(user|assistant):\s?(.*)$")


def query_prompt(base: Base, query: str) -> str:
    """The query alone, in the chat template."""
    return format_prompt(base, query)


def history_messages(history: str) -> list[dict[str, str]]:
    """'user: ...' / 'assistant: ...' lines -> chat messages (other lines continue the previous turn)."""
    messages: list[dict[str, str]] = []
    for line in history.splitlines():
        m = _TURN.match(line.strip())
        if m:
            messages.append({"role": m.group(1), "content": m.group(2)})
        elif messages and line.strip():
            messages[-1]["content"] += "\n" + line.strip()
        elif line.strip():
            messages.append({"role": "user", "content": line.strip()})
    return messages


def context_prompt(base: Base, kind: str, context: str, query: str) -> str:
    """The query with its context in the prompt."""
    if kind == "conversation":
        messages = history_messages(context)
        if messages and messages[-1]["role"] == "user":  # keep roles alternating
            messages.append({"role": "assistant", "content": "OK."})
        return format_chat(base, messages + [{"role": "user", "content": query}])
    if kind == "demonstrations":
        return format_prompt(base, f"{context}\n\nInput: {query}\nOutput:")
    if kind == "document":
        return format_prompt(base, f"{context}\n\nAnswer the question using the text above.\n{query}")
    return format_prompt(base, f"{context}\n\n{query}")
