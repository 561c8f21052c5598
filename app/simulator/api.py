"""HTTP surface of the simulator: vLLM's OpenAI-compatible routes, /health and /metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from pydantic import ValidationError

from .engine import Engine, Generation
from .kv_events import KvEventPublisher
from .metrics import VllmMetrics
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from .settings import SimulatorSettings
from .tokens import render_chat, token_ids, tokenize

_JSON = "application/json"


# vLLM writes `vllm-<version>-<hash>`; the simulator says what it is.
_FINGERPRINT = "vllm-simulator"


def _error(status: int, message: str, kind: str, param: str | None = None) -> Response:
    # vLLM's error body: OpenAI's shape with the exception class name as the type.
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def _chat_tokens(req: ChatCompletionRequest | TokenizeChatRequest) -> list[str]:
    return render_chat(req.messages, req.add_generation_prompt, req.continue_final_message)


def _completion_ids(req: CompletionRequest) -> list[int]:
    p = req.prompt
    if isinstance(p, str):
        return token_ids(tokenize(p))
    if p and isinstance(p[0], str):
        return token_ids(tokenize(" ".join(str(part) for part in p)))
    if p and isinstance(p[0], list):
        return [t for part in p if isinstance(part, list) for t in part]
    return [t for t in p if isinstance(t, int)]


# The simulator's pooling output: as many floats as a small embedding model's hidden size.
EMBEDDING_DIM = 64


def _embedding_inputs(p: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """Each input's token ids, as the embedding route reads `input`: one prompt or several."""
    if isinstance(p, str):
        return [token_ids(tokenize(p))]
    if isinstance(p[0], str):
        return [token_ids(tokenize(str(part))) for part in p]
    if isinstance(p[0], list):
        return [list(part) for part in p if isinstance(part, list)]
    return [[t for t in p if isinstance(t, int)]]


def embed(ids: list[int], dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of the input's token ids: the same input, the same vector,
    in every process. Cut to `dimensions` and scaled back to length 1, as vLLM does for a
    matryoshka model."""
    seed = hashlib.blake2b(struct.pack(f"<{len(ids)}I", *ids), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "big"))
    full = [rng.gauss(0.0, 1.0) for _ in range(EMBEDDING_DIM)][:dimensions]
    norm = math.sqrt(sum(x * x for x in full)) or 1.0
    return [x / norm for x in full]


def encode_base64(vector: list[float]) -> str:
    """float32 little-endian, base64: what vLLM sends and the OpenAI client decodes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def create_app(settings: SimulatorSettings | None = None) -> FastAPI:
    settings = settings or SimulatorSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # vLLM turns off the `_created` series; doing the same keeps /metrics the same shape.
        # prometheus_client leaves it unannotated.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        metrics = VllmMetrics(settings.model)
        app.state.metrics = metrics
        publisher = None
        if settings.kv_events_port is not None:
            publisher = KvEventPublisher(
                f"tcp://{settings.host}:{settings.kv_events_port}",
                f"tcp://{settings.host}:{settings.kv_replay_port}" if settings.kv_replay_port else None,
                settings.kv_events_topic,
            )
        app.state.engine = Engine(settings, metrics, publisher.publish if publisher else None)
        app.state.rng = random.Random(0)
        try:
            yield
        finally:
            if publisher is not None:
                await publisher.close()

    app = FastAPI(title="vLLM simulator", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return _error(400, f"{param or 'body'}: {first.get('msg', 'invalid request')}", "BadRequestError", param)

    def _admit(request: Request, model: str | None) -> Response | None:
        if settings.api_key is not None:
            auth = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key.get_secret_value()}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                return _error(401, "Unauthorized", "AuthenticationError")
        if model is not None and model != settings.model:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return None

    def _check(request: Request, model: str) -> Response | None:
        if (refused := _admit(request, model)) is not None:
            return refused
        if settings.fail_rate and app.state.rng.random() < settings.fail_rate:
            return _error(500, "simulated engine failure", "InternalServerError")
        return None

    def _plan(prompt: list[int], max_tokens: int | None) -> Generation | Response:
        n_prompt = len(prompt)
        room = settings.max_model_len - n_prompt
        if max_tokens is not None and max_tokens > room:
            return _error(
                400,
                f"This model's maximum context length is {settings.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion).",
                "BadRequestError",
                "max_tokens",
            )
        if room < 1:
            return _error(400, f"The prompt ({n_prompt} tokens) is too long.", "BadRequestError", "messages")
        if max_tokens is None:
            return Generation(n_prompt, min(settings.default_max_tokens, room), natural_stop=True)
        return Generation(n_prompt, max_tokens)

    async def _collect(request: Request, engine: Engine, prompt: list[int], gen: Generation) -> str | None:
        """Runs a whole generation, abandoning it if the client disconnects first."""

        async def run() -> str:
            return "".join([t async for t in engine.generate(prompt, gen)])

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work = asyncio.ensure_future(run())
        watch = asyncio.ensure_future(disconnected())
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            watch.cancel()
            return work.result()
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        return None

    def _usage(gen: Generation) -> dict[str, int]:
        return {
            "prompt_tokens": gen.prompt_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            "completion_tokens": gen.completion_tokens,
        }

    async def _stream(
        engine: Engine, prompt: list[int], gen: Generation, chat: bool, model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
        # The chunks as vLLM 0.32 writes them (tests/app/test_simulator_contract.py compares):
        # token chunks carry no `usage` key even with include_usage; chat opens with a role chunk.
        # Token events differ only in their text: encode the rest once, so a simulator serving
        # many streams spends its CPU like vLLM's frontend would, not on JSON encoding.
        tokens = engine.generate(prompt, gen)
        first: str | None = None
        if chat:
            # vLLM writes the role chunk with the engine's first output, after the prefill
            # (chat_completion/serving.py), so the first body byte comes at the first token.
            first = await anext(tokens, None)
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        **head,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                        "prompt_token_ids": None,
                        "prompt_text": None,
                    }
                )
                + b"\n\n"
            )
            marker = {
                "index": 0,
                "delta": {"content": "\x00"},
                "logprobs": None,
                "finish_reason": None,
                "token_ids": None,
            }
        else:
            marker = {
                "index": 0,
                "text": "\x00",
                "logprobs": None,
                "finish_reason": None,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        template = b"data: " + orjson.dumps({**head, "choices": [marker]}) + b"\n\n"
        before, after = template.split(b'"\\u0000"')
        if first is not None:
            yield before + orjson.dumps(first) + after
        async for text in tokens:
            yield before + orjson.dumps(text) + after
        if chat:
            choice = {
                "index": 0,
                "delta": {"content": ""},
                "logprobs": None,
                "finish_reason": gen.finish_reason,
                "stop_reason": None,
                "token_ids": None,
            }
        else:
            choice = {
                "index": 0,
                "text": "",
                "logprobs": None,
                "finish_reason": gen.finish_reason,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        yield b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
        if include_usage:
            yield (
                b"data: "
                + orjson.dumps({**head, "choices": [], "usage": _usage(gen), "system_fingerprint": _FINGERPRINT})
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"

    async def _serve(
        request: Request,
        prompt: list[int],
        max_tokens: int | None,
        req: ChatCompletionRequest | CompletionRequest,
        chat: bool,
    ) -> Response:
        if (failure := _check(request, req.model)) is not None:
            return failure
        plan = _plan(prompt, max_tokens)
        if isinstance(plan, Response):
            return plan
        engine: Engine = request.app.state.engine
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _stream(engine, prompt, plan, chat, req.model, include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        text = await _collect(request, engine, prompt, plan)
        if text is None:
            return Response(status_code=499)
        created = int(time.time())
        if chat:
            body = {
                "id": "chatcmpl-" + uuid.uuid4().hex,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": None,
                            "audio": None,
                            "function_call": None,
                            "reasoning": None,
                        },
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                        "token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": _FINGERPRINT,
                "usage": {**_usage(plan), "prompt_tokens_details": None, "completion_tokens_details": None},
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        else:
            body = {
                "id": "cmpl-" + uuid.uuid4().hex,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": _FINGERPRINT,
                "usage": {**_usage(plan), "prompt_tokens_details": None, "completion_tokens_details": None},
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return Response(orjson.dumps(body), media_type=_JSON)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        prompt = token_ids(_chat_tokens(req))
        return await _serve(request, prompt, req.max_completion_tokens or req.max_tokens, req, True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await _serve(request, _completion_ids(req), req.max_tokens, req, False)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        """vLLM's pooling route: one vector per input, with no engine time (the simulator's
        engine only decodes); usage counts the inputs' tokens."""
        if (refused := _check(request, req.model)) is not None:
            return refused
        dims = EMBEDDING_DIM if req.dimensions is None else req.dimensions
        if not 1 <= dims <= EMBEDDING_DIM:
            return _error(
                400, f"dimensions must be between 1 and {EMBEDDING_DIM}, not {dims}.", "BadRequestError", "dimensions"
            )
        inputs = _embedding_inputs(req.input)
        for ids in inputs:
            if len(ids) > settings.max_model_len:
                return _error(
                    400,
                    f"This model's maximum context length is {settings.max_model_len} tokens. However, you "
                    f"requested {len(ids)} tokens in the input for embedding generation.",
                    "BadRequestError",
                    "input",
                )
        data = []
        for i, ids in enumerate(inputs):
            vector = embed(ids, dims)
            value: list[float] | str = encode_base64(vector) if req.encoding_format == "base64" else vector
            data.append({"index": i, "object": "embedding", "embedding": value})
        n = sum(len(ids) for ids in inputs)
        body = {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": settings.model,
            "data": data,
            "usage": {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0, "prompt_tokens_details": None},
        }
        return Response(orjson.dumps(body), media_type=_JSON)

    @app.post("/tokenize")
    async def tokenize_route(request: Request) -> Response:
        """vLLM's /tokenize: the token ids the chat or completion route would use for the same
        messages or prompt, which the prefix cache and the KV events hold. An engine failure
        (SIM_FAIL_RATE) is the engine's: tokenizing is the API server's work, so it does not fail."""
        try:
            raw = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "body: not JSON", "BadRequestError")
        # A body with messages is a chat; validating it against one model, not the union,
        # names what is wrong with it rather than what a prompt would lack.
        kind = TokenizeChatRequest if isinstance(raw, dict) and "messages" in raw else TokenizeCompletionRequest
        try:
            req = kind.model_validate(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        if (refused := _admit(request, req.model)) is not None:
            return refused
        tokens = _chat_tokens(req) if isinstance(req, TokenizeChatRequest) else tokenize(req.prompt)
        ids = token_ids(tokens)
        body = {
            "count": len(ids),
            "max_model_len": settings.max_model_len,
            "tokens": ids,
            "token_strs": tokens if req.return_token_strs else None,
        }
        return Response(orjson.dumps(body), media_type=_JSON)

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> Response:
        """vLLM's (in its dev mode): empties the prefix cache, which its events report as AllBlocksCleared."""
        if (refused := _admit(request, None)) is not None:
            return refused
        request.app.state.engine.prefix_cache.clear()
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> Response:
        card = {
            "id": settings.model,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": settings.model,
            "max_model_len": settings.max_model_len,
        }
        return Response(orjson.dumps({"object": "list", "data": [card]}), media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
