"""The simulator's tokenizer: whitespace words and chat role markers, each with a stable id.

A token id must be the same in every simulator process and in every test or gateway that
reads one back (from /tokenize or from a KV event), so it comes from blake2b of the token's
text, not from Python's hash(), which is salted per process. 31 bits, as a vocabulary id fits
vLLM's int32 token tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

from .protocol import ChatMessage

VOCAB_BITS = 31


def tokenize(text: str) -> list[str]:
    """Whitespace words stand in for tokens: cheap, deterministic and prefix-stable."""
    return text.split()


@lru_cache(maxsize=1 << 17)  # prompts repeat their words: a long system prompt is hashed once
def token_id(token: str) -> int:
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> (32 - VOCAB_BITS)


def token_ids(tokens: Sequence[str]) -> list[int]:
    return [token_id(t) for t in tokens]


GENERATION_PROMPT = "<|assistant|>"


def render_chat(
    messages: Sequence[ChatMessage], add_generation_prompt: bool, continue_final_message: bool
) -> list[str]:
    """The prompt a chat template would make: a role marker before each message and an end
    marker after it; with add_generation_prompt the assistant's marker opens its answer, and
    with continue_final_message the last message stays open, as vLLM's templates do."""
    tokens: list[str] = []
    for i, msg in enumerate(messages):
        tokens.append(f"<|{msg.role}|>")
        tokens.extend(tokenize(msg.text()))
        if not (continue_final_message and i == len(messages) - 1):
            tokens.append("<|end|>")
    if add_generation_prompt:
        tokens.append(GENERATION_PROMPT)
    return tokens
