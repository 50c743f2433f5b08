"""One small LLM interface for the augment layer (chains, tools, RAG): `complete`, `chat`, `stream`, `batch`.

Two implementations, interchangeable behind the `LLM` protocol:
- `LocalLLM`: the generation engine in-process (`local_llm` loads a model by name for it);
- `OpenAIClient`: any OpenAI-compatible HTTP server (`lmstack serve`, vLLM, llama.cpp, OpenAI itself),
  over httpx with timeouts, retries with backoff on 429 / 5xx / connection errors, and errors that name the
  URL, the HTTP status and the server's own message.

Every call returns an `LLMResult` with its token counts and latency (a `Stream` has one once exhausted), so
that a chain can record one trace event per call. Parameters are the same everywhere: max_tokens (256),
temperature (0: greedy), top_p, stop, seed; an unknown one is an error rather than silently ignored.

Adapters: this layer cannot load LoRA adapters itself (`lmstack.finetune` imports `lmstack.augment`, so the
reverse import would be a cycle); load the model with `lmstack.finetune.load.load_finetuned(spec, adapters,
merge=True)` and wrap it: `LocalLLM(Engine(model, tokenizer))`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lmstack.errors import ConfigError, LMStackError
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.decoder import DecoderLM
from lmstack.weights.load import load_pretrained

if TYPE_CHECKING:
    import httpx

Message = dict[str, str]  # {"role": ..., "content": ...}
Input = str | list[Message]  # a prompt (completion) or a chat

DEFAULTS: dict[str, Any] = {"max_tokens": 256, "temperature": 0.0, "top_p": None, "stop": None, "seed": None}
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # rate limited, or a server that may recover
MAX_WAIT_S = 30.0  # cap on one backoff wait, Retry-After included: a chain should fail, not hang


class LLMError(LMStackError):
    """A call to a model failed: the server's answer (status, message) or the transport's error.

    `url` and `status` (None when no HTTP response came back) let callers tell the cases apart."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.status = url, status


@dataclass
class LLMResult:
    """One call's output and what it cost: the fields a chain's trace event records."""

    text: str
    finish_reason: str  # "stop" or "length" (whatever the server says, for HTTP)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str


class Stream:
    """Text pieces as they are produced; once exhausted, `result` holds the whole call's `LLMResult`
    (text, finish reason, tokens, latency), so streaming loses none of what a trace needs."""

    def __init__(self, pieces: Generator[str, None, LLMResult]) -> None:
        self._pieces = pieces
        self.result: LLMResult | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            self.result = done.value
            raise

    def close(self) -> None:
        """Stop early (closes the HTTP response / ends local generation)."""
        self._pieces.close()


class LLM(Protocol):
    """What chains need from a model. `batch` takes strings (completions) and message lists (chats)."""

    def complete(self, prompt: str, **params: Any) -> LLMResult: ...

    def chat(self, messages: list[Message], **params: Any) -> LLMResult: ...

    def stream(self, prompt_or_messages: Input, **params: Any) -> Iterator[str]: ...

    def batch(self, inputs: list[Input], **params: Any) -> list[LLMResult]: ...


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """The common parameters with their defaults; a typo (`max_new_tokens=`) is an error, not a no-op."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown LLM parameter(s) {', '.join(unknown)}; the parameters are {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if isinstance(out["stop"], str):
        out["stop"] = [out["stop"]]
    return out


def check_input(item: Any) -> Input:
    if isinstance(item, str):
        return item
    if isinstance(item, list) and item and all(isinstance(m, dict) and "role" in m and "content" in m for m in item):
        return item
    raise ConfigError(f"an LLM input is a prompt string or a non-empty list of {{role, content}} messages: {item!r}")


# ---------------------------------------------------------------------------------------------- local


def generation_config(params: dict[str, Any]) -> GenerationConfig:
    """The engine's settings for the common parameters (already resolved)."""
    return GenerationConfig(
        max_new_tokens=params["max_tokens"],
        temperature=params["temperature"],
        top_p=1.0 if params["top_p"] is None else params["top_p"],
        stop=tuple(params["stop"] or ()),
        seed=params["seed"],
    )


class LocalLLM:
    """The engine in-process: chats go through the tokenizer's chat template, `batch` decodes every input in
    one engine batch (left-padded; each row gets the tokens it would get alone). Token counts are the
    engine's: completion_tokens counts every sampled token, the eos that ended a row included (as the
    server's usage does)."""

    def __init__(self, engine: Engine, name: str = "local") -> None:
        if engine.tokenizer is None:
            raise ConfigError("LocalLLM needs an Engine with a tokenizer (text in, text out)")
        self.engine, self.name = engine, name

    def _result(self, c: Completion, latency_s: float) -> LLMResult:
        return LLMResult(c.text, c.finish_reason, c.prompt_tokens, len(c.sampled_ids), latency_s, self.name)

    def _run(self, inputs: list[Input], params: dict[str, Any]) -> list[LLMResult]:
        config = generation_config(resolve_params(params))
        start = time.perf_counter()
        ids = [self.engine.encode_prompt(check_input(x)) for x in inputs]
        completions = self.engine.generate_ids(ids, config)
        latency = time.perf_counter() - start
        return [self._result(c, latency) for c in completions]

    def complete(self, prompt: str, **params: Any) -> LLMResult:
        """Continue `prompt` as plain text (no chat template)."""
        if not isinstance(prompt, str):
            raise ConfigError(f"complete() takes a prompt string, got {type(prompt).__name__}; use chat()")
        return self._run([prompt], params)[0]

    def chat(self, messages: list[Message], **params: Any) -> LLMResult:
        """The assistant's reply to `messages` through the chat template."""
        if isinstance(messages, str):
            raise ConfigError("chat() takes a list of {role, content} messages; use complete() for a string")
        return self._run([messages], params)[0]

    def batch(self, inputs: list[Input], **params: Any) -> list[LLMResult]:
        """All inputs as one engine batch; each result's latency_s is the batch's (the rows decode together)."""
        return self._run(list(inputs), params) if inputs else []

    def stream(self, prompt_or_messages: Input, **params: Any) -> Stream:
        config = generation_config(resolve_params(params))
        prompt = check_input(prompt_or_messages)

        def pieces() -> Generator[str, None, LLMResult]:
            start = time.perf_counter()
            last = None
            for rows, texts in self.engine.steps([self.engine.encode_prompt(prompt)], config):
                last = rows[0]
                if texts[0]:
                    yield texts[0]
            return self._result(last.completion(), time.perf_counter() - start)

        return Stream(pieces())


def local_llm(model: str = "smollm2-135m-instruct", mode: str = "fp32", name: str | None = None) -> LocalLLM:
    """A `LocalLLM` over any `load_pretrained` spec (a name, GGUF, HF or lmstack directory; a merged LoRA
    export too). For adapters on top, see the module docstring."""
    decoder, tok = load_pretrained(model)
    if not isinstance(decoder, DecoderLM) or tok is None:
        raise ConfigError(f"{model} is not a decoder with a tokenizer; an LLM needs both")
    return LocalLLM(Engine(decoder.eval(), tok, mode=mode), name or str(model))


# ---------------------------------------------------------------------------------------------- HTTP


def server_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}} when present, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        return str(body["error"]["message"])
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return response.text[:200] or "(empty body)"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta-seconds form; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIClient:
    """An OpenAI-compatible server at `base_url` (e.g. http://127.0.0.1:8000/v1): strings go to /completions,
    message lists to /chat/completions. `timeout` applies to connecting and to each read (a stream may run
    longer as long as pieces keep coming); failed tries are retried `max_retries` times, waiting
    `backoff_s * 2**try` or the server's Retry-After (at most MAX_WAIT_S). `batch` sends up to `workers`
    requests at once and keeps the input order. `client` injects an httpx.Client (tests, proxies)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        workers: int = 4,
        client: httpx.Client | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # a dev/serve extra, not a core dependency
            raise ConfigError("OpenAIClient needs httpx: pip install httpx") from exc
        if max_retries < 0 or timeout <= 0 or backoff_s < 0 or workers < 1:
            raise ConfigError("need max_retries >= 0, timeout > 0, backoff_s >= 0 and workers >= 1")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.timeout, self.max_retries, self.backoff_s, self.workers = timeout, max_retries, backoff_s, workers
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = client or httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)
        if client is not None and api_key:
            self.http.headers.update(headers)
        self._httpx = httpx

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def _body(self, prompt: Input, params: dict[str, Any], stream: bool = False) -> tuple[str, dict[str, Any]]:
        prompt = check_input(prompt)
        p = resolve_params(params)
        body: dict[str, Any] = {"model": self.model, "max_tokens": p["max_tokens"], "temperature": p["temperature"]}
        body.update({k: p[k] for k in ("top_p", "stop", "seed") if p[k] is not None})
        if isinstance(prompt, str):
            path, body["prompt"] = "/completions", prompt
        else:
            path, body["messages"] = "/chat/completions", prompt
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return path, body

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        after = retry_after(response.headers.get("retry-after")) if response is not None else None
        return min(MAX_WAIT_S, self.backoff_s * 2**attempt if after is None else after)

    def _send(self, path: str, body: dict[str, Any], stream: bool = False) -> httpx.Response:
        """POST with retries; returns a 2xx response (open, for a stream) or raises LLMError."""
        httpx, url = self._httpx, self.base_url + path
        attempt = 0
        while True:
            response, status = None, None
            try:
                response = self.http.send(self.http.build_request("POST", url, json=body), stream=stream)
            except httpx.TimeoutException as exc:
                message = f"POST {url} timed out after {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                message = f"POST {url} failed: {type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                status = response.status_code
                message = f"POST {url} returned HTTP {status}: {server_message(response)}"
                if status not in RETRY_STATUS:
                    raise LLMError(message, url, status)
            if attempt == self.max_retries:
                tries = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                raise LLMError(message + tries, url, status)
            time.sleep(self._wait(attempt, response))
            attempt += 1

    def _call(self, prompt: Input, params: dict[str, Any]) -> LLMResult:
        path, body = self._body(prompt, params)
        start = time.perf_counter()
        response = self._send(path, body)
        latency = time.perf_counter() - start
        url = self.base_url + path
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if "messages" in body else choice["text"]
            usage = data.get("usage") or {}
            return LLMResult(
                text or "",
                choice.get("finish_reason") or "stop",
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
                latency,
                data.get("model") or self.model,
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"POST {url} returned HTTP {response.status_code} but not an OpenAI "
                f"{'chat ' if 'messages' in body else ''}completion ({type(exc).__name__}: {exc}): "
                f"{response.text[:200]!r}",
                url,
                response.status_code,
            ) from exc

    # ------------------------------------------------------------------ the protocol

    def complete(self, prompt: str, **params: Any) -> LLMResult:
        if not isinstance(prompt, str):
            raise ConfigError(f"complete() takes a prompt string, got {type(prompt).__name__}; use chat()")
        return self._call(prompt, params)

    def chat(self, messages: list[Message], **params: Any) -> LLMResult:
        if isinstance(messages, str):
            raise ConfigError("chat() takes a list of {role, content} messages; use complete() for a string")
        return self._call(messages, params)

    def batch(self, inputs: list[Input], **params: Any) -> list[LLMResult]:
        """One request per input, up to `workers` at a time, results in input order (the first error raises)."""
        inputs = [check_input(x) for x in inputs]
        if len(inputs) <= 1 or self.workers == 1:
            return [self._call(x, params) for x in inputs]
        with ThreadPoolExecutor(min(self.workers, len(inputs)), thread_name_prefix="lmstack-llm") as pool:
            return list(pool.map(lambda x: self._call(x, params), inputs))

    def stream(self, prompt_or_messages: Input, **params: Any) -> Stream:
        """Server-sent events (`data: {...}` lines until `data: [DONE]`); usage comes from the server's last
        chunk (`stream_options.include_usage`), else completion_tokens counts the pieces (prompt_tokens 0)."""
        path, body = self._body(prompt_or_messages, params, stream=True)
        return Stream(self._pieces(path, body))

    def _pieces(self, path: str, body: dict[str, Any]) -> Generator[str, None, LLMResult]:
        url, chat = self.base_url + path, "messages" in body
        start = time.perf_counter()
        response = self._send(path, body, stream=True)
        text, finish, usage, model, count, done = [], None, None, self.model, 0, False
        try:
            for line in self._lines(response, url):
                if not line.startswith("data:"):
                    continue  # blank separators, ": comments", event: / id: fields
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = self._chunk(data, url)
                model = chunk.get("model") or model
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    finish = choice.get("finish_reason") or finish
                    if piece:
                        count += 1
                        text.append(piece)
                        yield piece
        finally:
            response.close()
        if not done and finish is None:
            raise LLMError(f"POST {url}: the stream ended before its last chunk (no finish_reason, no [DONE])", url)
        prompt_tokens = int(usage.get("prompt_tokens", 0)) if usage else 0
        completion_tokens = int(usage.get("completion_tokens", count)) if usage else count
        latency = time.perf_counter() - start
        return LLMResult("".join(text), finish or "stop", prompt_tokens, completion_tokens, latency, model)

    def _lines(self, response: httpx.Response, url: str) -> Iterator[str]:
        try:
            yield from response.iter_lines()
        except self._httpx.TimeoutException as exc:
            raise LLMError(f"POST {url}: the stream timed out after {self.timeout:g} s without data", url) from exc
        except self._httpx.TransportError as exc:
            raise LLMError(f"POST {url}: the stream broke off: {type(exc).__name__}: {exc}", url) from exc

    @staticmethod
    def _chunk(data: str, url: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise LLMError(f"POST {url}: a stream chunk is not JSON: {data[:200]!r}", url) from exc
        if not isinstance(chunk, dict):
            raise LLMError(f"POST {url}: a stream chunk is not a JSON object: {data[:200]!r}", url)
        if chunk.get("error"):  # a server that fails mid-stream sends its error as a chunk
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise LLMError(f"POST {url}: the stream failed: {message}", url)
        return chunk


__all__ = [
    "DEFAULTS",
    "LLM",
    "Input",
    "LLMError",
    "LLMResult",
    "LocalLLM",
    "Message",
    "OpenAIClient",
    "Stream",
    "generation_config",
    "local_llm",
    "resolve_params",
]
