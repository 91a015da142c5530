"""Request and response bodies, validated by pydantic; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hyperadapter.decoding import PENALTY_LIMIT

Kind = Literal["task", "demonstrations", "document", "conversation"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


class AdapterCreate(Strict):
    kind: Kind
    context: str = Field(min_length=1, description="the task description, document, demonstrations or chat history")
    user: str | None = Field(default=None, pattern=NAME_PATTERN, description="make it this user's private adapter")
    reuse: bool = Field(default=True, description="false: always generate a new adapter")

    @field_validator("context")
    @classmethod
    def not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("context is blank")
        return v


class AdapterInfo(BaseModel):
    id: str
    kind: str
    cache_hit: bool | None = None
    similarity: float | None = None
    neighbour: str | None = None
    how: str | None = None
    rank: int
    target_modules: list[str]
    base_model: str
    user: str | None = None
    created: float
    last_used: float
    hits: int
    bytes: int
    routes: int = Field(default=0, description="a document's sentence adapters, one of which answers each "
                        "request (0: the one adapter answers)")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    total: int
    offset: int
    limit: int


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class InlineContext(Strict):
    kind: Kind
    text: str = Field(min_length=1)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # unset: the default of the adapter's kind (hyperadapter.decoding), else 0 as OpenAI's
    frequency_penalty: float | None = Field(default=None, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT)
    presence_penalty: float | None = Field(default=None, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request")
    ignore_eos: bool = Field(default=False, description="decode exactly max_tokens (as vLLM's extension)")
    context: InlineContext | None = Field(default=None, description="create (or reuse) an adapter from this "
                                          "context and apply it, in one call; `model` must then be 'base'")
    route: bool = Field(default=True, description="with a document's adapter that has sentence routes, answer "
                        "with the adapter of the sentence nearest to the question (the last user message, or the "
                        "prompt) by embedding and shared words; false: the document's one adapter")

    @field_validator("stop")
    @classmethod
    def stops(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > 4 or any(not s for s in v):
            raise ValueError("stop takes up to 4 non-empty strings")
        return v


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1, description="'base', an adapter id, or 'user:<name>'")
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("prompt is empty")
        return v


class Route(BaseModel):
    sentence: int = Field(description="the index of the document's sentence (or group) whose adapter answered")
    similarity: float = Field(description="its cosine to the question")
    routes: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    adapter: AdapterInfo | None = None
    route: Route | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    adapter: AdapterInfo | None = None
    route: Route | None = None


class UserMessages(Strict):
    messages: list[ChatMessage] = Field(min_length=1)


class UserInfo(BaseModel):
    user: str
    adapter_id: str
    messages: int
    tokens: int
    routes: int = Field(default=0, description="the user's messages routed among (one adapter each); 0 for users "
                        "last updated before messages were routed")


class Health(BaseModel):
    status: str
    base_model: str
    generator: str | None
    generator_precision: str | None  # bf16, int8 or float32: what the generator's matmuls run in here
    adapters: int
    queue_depth: int


class ErrorBody(BaseModel):
    type: str
    message: str


class Error(BaseModel):
    error: ErrorBody
