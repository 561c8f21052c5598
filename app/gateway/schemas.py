"""Request bodies at the edge: the fields the gateway reads are typed; everything else passes through.

Strict, as OpenAI's API is: `"stream": "yes"` or `"max_tokens": true` is a 400, not a guess.
vLLM validates the rest of the OpenAI schema itself and its 4xx answers are passed to the client.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

_INT32 = 2**31 - 1
Name = Annotated[str, Field(min_length=1, max_length=256)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str | list[dict[str, Any]] | None = None


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: Name
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1, le=_INT32)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_cap(self) -> int | None:
        """The most output tokens the request allows over all its choices; None when it sets no limit."""
        limit = getattr(self, "max_completion_tokens", None) or self.max_tokens
        return None if limit is None else limit * (self.n or 1)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1, le=_INT32)] | None = None

    def prefix(self, chars: int) -> str:
        parts: list[str] = []
        size = 0
        for msg in self.messages:
            text = msg.content if isinstance(msg.content, str) else ""
            if isinstance(msg.content, list):
                text = " ".join(str(p.get("text", "")) for p in msg.content if isinstance(p, dict))
            parts.append(msg.role)
            parts.append(text)
            size += len(msg.role) + len(text)
            if size >= chars:
                break
        return "\x1f".join(parts)[:chars]

    def prompt_chars(self) -> int:
        total = 0
        for m in self.messages:
            if isinstance(m.content, str):
                total += len(m.content)
            elif m.content:
                # Content parts: the text ones count; an image or audio part is billed by vLLM's usage.
                total += sum(len(p["text"]) for p in m.content if isinstance(p.get("text"), str))
        return total


Prompt = str | list[str] | list[int] | list[list[int]]


def _prompt_prefix(p: Prompt, chars: int) -> str:
    """The first prompt's text (or token ids) that prefix affinity routes by."""
    if isinstance(p, str):
        return p[:chars]
    if p and isinstance(p[0], str):
        return str(p[0])[:chars]
    if p and isinstance(p[0], list):
        return ",".join(map(str, p[0]))[:chars]
    return ",".join(map(str, p))[:chars]


def _prompt_chars(p: Prompt) -> int:
    if isinstance(p, str):
        return len(p)
    return sum(len(x) if isinstance(x, str | list) else 4 for x in p)


class CompletionRequest(_Generation):
    prompt: Prompt

    def prefix(self, chars: int) -> str:
        return _prompt_prefix(self.prompt, chars)

    def prompt_chars(self) -> int:
        return _prompt_chars(self.prompt)


class EmbeddingRequest(BaseModel):
    """vLLM's /v1/embeddings for a pooling model (its EmbeddingCompletionRequest): one vector
    per input. `encoding_format`, `dimensions`, `user` and vLLM's own extras pass through to
    the replica, which validates them. Never streamed, and it has no output tokens."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: Name
    # A string, several strings, one prompt's token ids or several; a list holds one input at least.
    input: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )

    # Not fields: a `stream` in the body passes through, but the answer is one JSON body.
    stream: ClassVar[None] = None

    def wants_usage(self) -> bool:
        return False

    def output_cap(self) -> int:
        return 0

    def prefix(self, chars: int) -> str:
        return _prompt_prefix(self.input, chars)

    def prompt_chars(self) -> int:
        return _prompt_chars(self.input)


GatewayRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "llm-platform"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
