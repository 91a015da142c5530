"""OpenAI-compatible /v1/chat/completions and /v1/completions, served by the batching engine.

`model` is "base", a stored adapter id, or "user:<name>" (that user's personal adapter); a
`context` field makes (or reuses) an adapter from a context and applies it in the same call.
`stream: true` answers with server-sent events in OpenAI's chunk format, ending in `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid

from flask import Blueprint, Response, jsonify, stream_with_context

from hyperadapter.api.adapters import adapter_info, create_adapter
from hyperadapter.api.engine import EngineStopped, QueueFull
from hyperadapter.api.errors import APIError, bad_request, not_found, unprocessable
from hyperadapter.api.schemas import ChatCompletionRequest, CompletionRequest
from hyperadapter.api.state import get_visible_record, json_body, state, tenant
from hyperadapter.base import format_chat
from hyperadapter.decoding import penalties
from hyperadapter.generator.routed import route
from hyperadapter.runtime import GenerationParams

bp = Blueprint("generation", __name__)
DEFAULT_MAX_TOKENS = {"chat": 256, "text": 16}  # OpenAI's completions default is 16


def resolve_model(body) -> tuple[object | None, object | None]:
    """-> (adapter or None, the adapter's record or None)."""
    s = state()
    if body.context is not None:
        if body.model != "base":
            raise unprocessable("with an inline `context`, `model` must be 'base'")
        result = create_adapter(body.context.kind, body.context.text, tenant())
        return s.services.store.load(result.record.id), result
    if body.model == "base":
        return None, None
    if body.model.startswith("user:"):
        name = body.model[5:]
        adapter_id = s.users.adapter_id(tenant(), name)
        if adapter_id is None:
            raise not_found(f"user {name!r} has no personal adapter yet; POST /v1/users/{name}/messages first")
        return s.services.store.load(adapter_id), None
    try:
        record = get_visible_record(body.model)
    except APIError:
        raise not_found(f"unknown model {body.model!r}: use 'base', an adapter id, or 'user:<name>'") from None
    return s.services.store.load(record.id), None


def _submit(prompt: str, body, kind: str, question: str):
    """Queue a reply; `question` is what a document's sentence routes are picked by."""
    s = state()
    limit = s.settings.max_new_tokens_limit
    max_tokens = body.max_tokens or DEFAULT_MAX_TOKENS[kind]
    if max_tokens > limit:
        raise unprocessable(f"max_tokens {max_tokens} exceeds this server's limit of {limit}")
    adapter, created = resolve_model(body)
    ids = s.services.runtime.encode(prompt)
    context_window = getattr(s.services.base.config, "max_position_embeddings", 8192)
    if len(ids) + max_tokens > context_window:
        raise bad_request(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceed the model's "
                          f"context of {context_window} tokens")
    frequency, presence = penalties(adapter, body.frequency_penalty, body.presence_penalty)
    routed = None
    if body.route and adapter is not None:
        adapter, taken = route(s.services.encoder, adapter, question, s.settings.route_words)
        if taken is not None:
            routed = {**taken._asdict(), "similarity": round(taken.similarity, 4)}
            s.metrics.routed.inc()
    params = GenerationParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              frequency_penalty=frequency, presence_penalty=presence,
                              seed=body.seed, stop=list(body.stop or []), ignore_eos=body.ignore_eos,
                              strip_leading=kind == "chat")
    try:
        job = s.engine.submit(ids, adapter, params)
    except QueueFull as exc:
        raise APIError(429, "rate_limit_error", str(exc)) from None
    except EngineStopped as exc:
        raise APIError(503, "unavailable", str(exc)) from None
    s.metrics.prompt_tokens.inc(len(ids))
    return job, len(ids), created, routed


def _usage(prompt_tokens: int, job) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": prompt_tokens + job.completion_tokens}


def _collect(job) -> str:
    try:
        return "".join(job.stream(state().settings.request_timeout_s))
    except TimeoutError:
        raise APIError(504, "timeout", "generation timed out") from None
    except RuntimeError as exc:
        raise APIError(500, "api_error", f"generation failed: {exc}") from None


def _sse(job, prompt_tokens: int, make_chunk, include_usage: bool):
    def events():
        try:
            yield from make_chunk(first=True)
            for piece in job.stream(state().settings.request_timeout_s):
                yield from make_chunk(text=piece)
            yield from make_chunk(finish=job.finish_reason or "stop")
            if include_usage:
                yield from make_chunk(usage=_usage(prompt_tokens, job))
            yield "data: [DONE]\n\n"
        except (TimeoutError, RuntimeError) as exc:
            yield f"data: {json.dumps({'error': {'type': 'api_error', 'message': str(exc)}})}\n\n"
        finally:
            job.cancel()  # no-op when finished; frees the slot when the client went away
    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.post("/v1/chat/completions")
def chat():
    body = ChatCompletionRequest.model_validate(json_body())
    prompt = format_chat(state().services.base, [m.model_dump() for m in body.messages])
    last_user = next((m.content for m in reversed(body.messages) if m.role == "user"), body.messages[-1].content)
    job, prompt_tokens, created, routed = _submit(prompt, body, "chat", last_user)
    cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        def chunk(first=False, text=None, finish=None, usage=None):
            if usage is not None:
                payload = {"choices": [], "usage": usage}
            else:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                payload = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            payload.update(id=cid, object="chat.completion.chunk", created=now, model=body.model)
            if first and routed is not None:
                payload["route"] = routed
            yield f"data: {json.dumps(payload)}\n\n"
        return _sse(job, prompt_tokens, chunk, bool(body.stream_options and body.stream_options.include_usage))
    text = _collect(job)
    reply = {"id": cid, "object": "chat.completion", "created": now, "model": body.model,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": job.finish_reason, "logprobs": None}],
             "usage": _usage(prompt_tokens, job)}
    if created is not None:
        reply["adapter"] = adapter_info(created.record, created).model_dump()
    if routed is not None:
        reply["route"] = routed
    return jsonify(reply)


@bp.post("/v1/completions")
def completions():
    body = CompletionRequest.model_validate(json_body())
    job, prompt_tokens, created, routed = _submit(body.prompt, body, "text", body.prompt)
    cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        def chunk(first=False, text=None, finish=None, usage=None):
            if first:
                return
            payload = ({"choices": [], "usage": usage} if usage is not None else
                       {"choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]})
            payload.update(id=cid, object="text_completion", created=now, model=body.model)
            yield f"data: {json.dumps(payload)}\n\n"
        return _sse(job, prompt_tokens, chunk, bool(body.stream_options and body.stream_options.include_usage))
    text = _collect(job)
    reply = {"id": cid, "object": "text_completion", "created": now, "model": body.model,
             "choices": [{"index": 0, "text": text, "finish_reason": job.finish_reason, "logprobs": None}],
             "usage": _usage(prompt_tokens, job)}
    if created is not None:
        reply["adapter"] = adapter_info(created.record, created).model_dump()
    if routed is not None:
        reply["route"] = routed
    return jsonify(reply)
