"""The slice of the OpenAI request schema the simulator reads; other fields are accepted and ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ids the simulator's tokenizer can give (tokens.py): 31 bits. vLLM refuses ids beyond its vocabulary.
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return " ".join(str(part.get("text", "")) for part in self.content)
        return ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)


class _ChatTemplate(BaseModel):
    """How a chat becomes a prompt, the same in a chat request and in /tokenize."""

    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _one_ending(self) -> Self:
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self


class ChatCompletionRequest(_ChatTemplate, _Common):
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]


# vLLM's /v1/embeddings for a pooling model (vllm/entrypoints/pooling/embed/protocol.py, EmbeddingCompletionRequest).
class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[list[TokenId]], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# vLLM's /tokenize (vllm/entrypoints/serve/tokenize/protocol.py): a prompt or a chat; the model may be left out.
class TokenizeCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # the simulator's tokenizer has no special tokens to add
    return_token_strs: bool | None = False


class TokenizeChatRequest(_ChatTemplate):
    model: str | None = None
    add_special_tokens: bool = False
    return_token_strs: bool | None = False
