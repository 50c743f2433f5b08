"""The OpenAI-compatible HTTP API (FastAPI): models, chat completions, completions, embeddings, health.

Each served model has one continuous-batching `Scheduler`; a request's choices become scheduler requests
whose events come back into the event loop through `call_soon_threadsafe`, so no thread waits per
request. `"model": "NAME:ADAPTER"` picks one of the LoRA adapters loaded over NAME for those rows only.
Streams are server-sent events (`data: {...}` chunks, then `data: [DONE]`); a client that goes away
cancels its rows, which leave the batch at the next step. Errors have OpenAI's shape and status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lmstack.errors import ConfigError, DataError
from lmstack.serve import protocol as p
from lmstack.serve.batching import Event, Handle, QueueFull, Scheduler, SchedulerClosed
from lmstack.serve.batching import Request as GenRequest
from lmstack.tokenizer import Tokenizer


@dataclass
class ServedModel:
    """A model the server answers for: its scheduler, tokenizer and the names of its adapters."""

    name: str
    scheduler: Scheduler
    tokenizer: Tokenizer
    created: int = 0

    @property
    def adapters(self) -> list[str]:
        return sorted(self.scheduler.adapters)

    @property
    def context(self) -> int:
        return self.scheduler.max_len


@dataclass
class Choice:
    """One choice being generated: the pieces so far and the final event."""

    index: int
    prompt_tokens: int
    text: str = ""
    ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    tops: list = dataclasses.field(default_factory=list)
    last: Event | None = None


def create_app(
    models: list[ServedModel],
    embedder: Any = None,
    embedder_name: str = "all-minilm-l6-v2",
    api_key: str | None = None,
    limits: p.Limits | None = None,
) -> FastAPI:
    """The API over already loaded models (`serve.server.load_model`). Schedulers start with the app and
    stop with it: requests still running at shutdown end with an error chunk / response."""
    if not models:
        raise ConfigError("serve at least one model")
    limits = limits or p.Limits()
    by_name = {m.name: m for m in models}
    embed_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models:
            m.scheduler.start()
        yield
        for m in models:
            m.scheduler.stop(drain=False)

    app = FastAPI(title="lmstack", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(p.APIError)
    async def api_error(_: Request, exc: p.APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(p.APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(p.APIError(500, f"internal error: {exc}", "server_error").body(), status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise p.APIError(
                401, "Incorrect or missing API key (send Authorization: Bearer KEY)", code="invalid_api_key"
            )

    async def read_json(request: Request) -> dict[str, Any]:
        authorize(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise p.APIError(413, f"request body over {limits.max_body_bytes} bytes", code="request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise p.APIError(413, f"request body over {limits.max_body_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise p.APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise p.APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def resolve(body: dict[str, Any]) -> tuple[ServedModel, str | None]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise p.bad("model", "'model' must be the name of a served model (GET /v1/models)", "invalid_type")
        base, _, adapter = name.partition(":")
        model = by_name.get(base)
        if model is None or (adapter and adapter not in model.scheduler.adapters):
            known = ", ".join(model_ids())
            raise p.APIError(404, f"The model {name!r} does not exist (served: {known})", param="model",
                             code="model_not_found")  # fmt: skip
        return model, adapter or None

    def model_ids() -> list[str]:
        ids = []
        for m in models:
            ids += [m.name] + [f"{m.name}:{a}" for a in m.adapters]
        return ids + ([embedder_name] if embedder is not None else [])

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": models[0].created, "owned_by": "lmstack"}

    # ------------------------------------------------------------------ generation

    def submit(
        model: ServedModel, adapter: str | None, prompts: list[list[int]], s: p.Sampling, chat: bool
    ) -> tuple[list[Choice], list[Handle], asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        choices, handles, ctx = [], [], model.context
        plans = []
        for ids in prompts:
            if len(ids) > limits.max_prompt_tokens or len(ids) >= ctx:
                raise p.APIError(400, f"the prompt has {len(ids)} tokens; this server takes at most "
                                 f"{min(limits.max_prompt_tokens, ctx - 1)}", param="messages",
                                 code="context_length_exceeded")  # fmt: skip
            max_new = s.max_tokens if s.max_tokens is not None else min(limits.max_tokens, ctx - len(ids))
            if len(ids) + max_new > ctx:
                raise p.APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                                 f"requested {len(ids) + max_new} tokens ({len(ids)} in the prompt, {max_new} "
                                 "in the completion).", param="max_tokens",
                                 code="context_length_exceeded")  # fmt: skip
            plans.append((ids, max_new))
        try:
            for ids, max_new in plans:
                for j in range(s.n):
                    k = len(choices)
                    seed = None if s.config.seed is None else (s.config.seed + j) % 2**63
                    config = dataclasses.replace(s.config, max_new_tokens=max_new, seed=seed)
                    request = GenRequest(ids, config, adapter, s.presence_penalty, s.frequency_penalty, s.top_logprobs)

                    def deliver(event: Event, k: int = k) -> None:
                        loop.call_soon_threadsafe(events.put_nowait, (k, event))

                    choices.append(Choice(k, len(ids)))
                    handles.append(model.scheduler.submit(request, deliver))
        except QueueFull as exc:
            for h in handles:
                h.cancel()
            raise p.APIError(429, f"the server is busy ({exc}); retry later", "rate_limit_error",
                             code="rate_limit_exceeded") from exc  # fmt: skip
        except SchedulerClosed as exc:
            raise p.APIError(503, str(exc), "server_error", code="shutting_down") from exc
        except (ConfigError, DataError) as exc:
            for h in handles:
                h.cancel()
            raise p.bad("messages" if chat else "prompt", str(exc)) from exc
        return choices, handles, events

    def absorb(choice: Choice, event: Event) -> None:
        choice.text += event.text
        choice.ids += event.token_ids
        choice.logprobs += event.logprobs or []
        choice.tops += event.top_logprobs or []
        if event.finish_reason is not None:
            choice.last = event

    def failure(event: Event) -> p.APIError:
        if event.finish_reason == "cancelled":
            return p.APIError(503, "the server is shutting down", "server_error", code="shutting_down")
        return p.APIError(500, f"generation failed: {event.error}", "server_error")

    def total_usage(choices: list[Choice], n: int) -> dict[str, int]:
        """Each prompt counted once (its n choices share it), every choice's generated tokens."""
        prompt_tokens = sum(c.prompt_tokens for c in choices[::n])
        return p.usage(prompt_tokens, sum(c.last.completion_tokens if c.last else 0 for c in choices))

    async def gather(choices: list[Choice], handles: list[Handle], events: asyncio.Queue) -> None:
        remaining = len(choices)
        try:
            while remaining:
                k, event = await events.get()
                absorb(choices[k], event)
                if event.finish_reason is not None:
                    remaining -= 1
                    if event.finish_reason in ("error", "cancelled"):
                        raise failure(event)
        finally:
            for h in handles:
                h.cancel()

    def logprobs_of(model: ServedModel, chat: bool, ids, lps, tops, offset: int = 0):
        if chat:
            return p.chat_logprobs(model.tokenizer, ids, lps, tops or None)
        return p.completion_logprobs(model.tokenizer, ids, lps, tops or None, offset)

    async def stream(
        model: ServedModel, name: str, chat: bool, s: p.Sampling, choices, handles, events
    ) -> AsyncIterator[str]:
        cid, created = p.new_id("chatcmpl" if chat else "cmpl"), p.now()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice_list: list[dict], usage: dict | None = None) -> str:
            body: dict[str, Any] = {
                "id": cid,
                "object": kind,
                "created": created,
                "model": name,
                "choices": choice_list,
            }
            if s.include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        def piece(choice: Choice, event: Event) -> dict[str, Any]:
            out: dict[str, Any] = {"index": choice.index}
            if chat:
                out["delta"] = {"content": event.text} if event.text or not event.finish_reason else {}
            else:
                out["text"] = event.text
            out["logprobs"] = None
            if s.config.logprobs and event.token_ids:
                offset = len(choice.text) - len(event.text)
                out["logprobs"] = logprobs_of(model, chat, event.token_ids, event.logprobs or [],
                                              event.top_logprobs or [], offset)  # fmt: skip
            out["finish_reason"] = event.finish_reason
            return out

        try:
            if chat:
                for c in choices:
                    first = {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}  # fmt: skip
                    yield chunk([first])
            remaining = len(choices)
            while remaining:
                k, event = await events.get()
                choice = choices[k]
                absorb(choice, event)
                if event.finish_reason in ("error", "cancelled"):
                    yield f"data: {json.dumps(failure(event).body())}\n\n"
                    return
                if event.finish_reason is not None:
                    remaining -= 1
                if event.text or event.token_ids or event.finish_reason:
                    yield chunk([piece(choice, event)])
            if s.include_usage:
                yield chunk([], total_usage(choices, s.n))
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnected: its rows leave the batch at the next step
            for h in handles:
                h.cancel()

    async def generate(request: Request, chat: bool):
        body = await read_json(request)
        model, adapter = resolve(body)
        s = p.sampling(body, limits, chat)
        if chat:
            if body.get("tools") or body.get("functions"):
                raise p.bad("tools", "tool calling is not supported by this server", "unsupported_parameter")
            fmt = body.get("response_format")
            if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
                raise p.bad(
                    "response_format", "only response_format {'type': 'text'} is supported", "unsupported_parameter"
                )
            messages = p.chat_messages(body)
            if not model.tokenizer.chat_template:
                raise p.bad("messages", f"{model.name} has no chat template; use /v1/completions")
            try:
                text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            except DataError as exc:
                raise p.bad("messages", str(exc)) from exc
            prompts = [model.tokenizer.encode(text)]
        else:
            for key in ("echo", "suffix"):
                if body.get(key):
                    raise p.bad(key, f"'{key}' is not supported by this server", "unsupported_parameter")
            best_of = body.get("best_of")
            if best_of is not None and best_of != s.n:
                raise p.bad("best_of", "'best_of' other than n is not supported", "unsupported_parameter")
            prompts = p.completion_prompts(body, model.tokenizer)
        choices, handles, events = submit(model, adapter, prompts, s, chat)
        name = body["model"]
        if s.stream:
            return StreamingResponse(
                stream(model, name, chat, s, choices, handles, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        await gather(choices, handles, events)
        out = []
        for c in choices:
            logprobs = None
            if s.config.logprobs:
                logprobs = logprobs_of(model, chat, c.ids, c.logprobs, c.tops)
            entry: dict[str, Any] = {"index": c.index}
            if chat:
                entry["message"] = {"role": "assistant", "content": c.text, "refusal": None}
            else:
                entry["text"] = c.text
            entry.update(logprobs=logprobs, finish_reason=c.last.finish_reason)
            out.append(entry)
        return {
            "id": p.new_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": p.now(),
            "model": name,
            "choices": out,
            "usage": total_usage(choices, s.n),
            "system_fingerprint": None,
        }

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": {m.name: m.scheduler.load() for m in models}}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card(i) for i in model_ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if model_id not in model_ids():
            raise p.APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if embedder is None:
            raise p.APIError(404, "this server has no embedding model", param="model", code="model_not_found")
        if body.get("model") != embedder_name:
            raise p.APIError(404, f"The model {body.get('model')!r} is not an embedding model (use "
                             f"{embedder_name!r})", param="model", code="model_not_found")  # fmt: skip
        texts, fmt = p.embedding_inputs(body, limits)

        def run() -> tuple[list[list[float]], int]:
            with embed_lock:  # one batch at a time: two at once would only split the same cores
                return embedder.encode(texts).tolist(), sum(embedder.token_counts(texts))

        vectors, tokens = await asyncio.to_thread(run)
        return {
            "object": "list",
            "data": p.embedding_data(vectors, fmt),
            "model": embedder_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


__all__ = ["ServedModel", "create_app"]
