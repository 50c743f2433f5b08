"""The OpenAI wire format: request bodies checked field by field, responses and stream chunks built.

Every bad request becomes an `APIError` with OpenAI's error shape (`{"error": {message, type, param,
code}}`) and the HTTP status OpenAI uses, naming the field (`param`) that is wrong. Nothing here touches
the model: `app.py` turns a checked request into scheduler `Request`s and these builders turn its events
into JSON.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lmstack.generate.sampling import GenerationConfig
from lmstack.tokenizer import Tokenizer

MAX_STOP = 4  # OpenAI accepts up to 4 stop sequences
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class APIError(Exception):
    """An error response: HTTP `status` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 (OpenAI's field name)
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------- field checks


def _get(body: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None, what: str = "") -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    # bool is an int subclass: a number field must not take true/false, a bool field must not take 0/1
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds) or (not is_bool and kinds == (bool,)):
        raise bad(
            key, f"'{key}' must be {what or ' or '.join(k.__name__ for k in kinds)}, got {value!r}", "invalid_type"
        )
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = float(_get(body, key, (int, float), default, "a number"))
    if not math.isfinite(value) or not low <= value <= high:
        raise bad(key, f"'{key}' must be between {low:g} and {high:g}, got {value:g}")
    return value


def _integer(body: dict[str, Any], key: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = _get(body, key, (int,), default, "an integer")
    if value is not None and (value < low or (high is not None and value > high)):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad(key, f"'{key}' must be {limit}, got {value}")
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad("stop", "'stop' must be a string or a list of strings", "invalid_type")
    if len(stop) > MAX_STOP:
        raise bad("stop", f"'stop' takes at most {MAX_STOP} sequences, got {len(stop)}")
    if any(not s for s in stop):
        raise bad("stop", "'stop' sequences must be non-empty")
    return tuple(stop)


@dataclass
class Limits:
    """What one request may ask for (the server's `--max-*` options)."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 2048  # per choice
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    max_embedding_inputs: int = 256


@dataclass
class Sampling:
    """A checked request's generation settings, shared by every choice."""

    config: GenerationConfig
    n: int
    stream: bool
    include_usage: bool
    presence_penalty: float
    frequency_penalty: float
    top_logprobs: int
    max_tokens: int | None  # None: whatever the context leaves (capped by Limits.max_tokens)


def sampling(body: dict[str, Any], limits: Limits, chat: bool) -> Sampling:
    """The settings every OpenAI generation request shares; raises APIError naming the bad field."""
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        max_tokens = _integer(body, "max_completion_tokens", None, 0, limits.max_tokens)
    else:
        max_tokens = _integer(body, "max_tokens", None if chat else 16, 0, limits.max_tokens)
    n = _integer(body, "n", 1, 1, limits.max_n)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad("top_p", "'top_p' must be greater than 0")
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    if chat:
        want_logprobs = bool(_get(body, "logprobs", (bool,), False, "a boolean"))
        top = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS) or 0
        if top and not want_logprobs:
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    else:
        top_int = _integer(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
        want_logprobs, top = top_int is not None, top_int or 0
    stream = bool(_get(body, "stream", (bool,), False, "a boolean"))
    options = _get(body, "stream_options", (dict,), {}, "an object")
    include_usage = bool(_get(options, "include_usage", (bool,), False, "a boolean"))
    if options and not stream:
        raise bad("stream_options", "'stream_options' is only allowed with 'stream': true")
    if body.get("logit_bias"):
        raise bad("logit_bias", "'logit_bias' is not supported by this server", "unsupported_parameter")
    config = GenerationConfig(
        max_new_tokens=0,  # set per prompt once its length is known
        temperature=temperature,
        top_k=_integer(body, "top_k", 0, 0) or 0,  # vLLM-style extension
        top_p=top_p,
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=_stop(body),
        seed=None if seed is None else seed % 2**63,
        logprobs=want_logprobs,
        ignore_eos=bool(_get(body, "ignore_eos", (bool,), False, "a boolean")),  # vLLM / llama.cpp extension
    )
    return Sampling(
        config,
        n,
        stream,
        include_usage,
        _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        top,
        max_tokens,
    )


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """`messages` as [{"role", "content"}] with text content (string, or a list of text parts)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects", "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with a string 'role'", "invalid_type")
        if m["role"] not in ("system", "developer", "user", "assistant", "tool"):
            raise bad(f"messages[{i}].role", f"unknown role {m['role']!r}")
        content = m.get("content")
        if content is None and m["role"] == "assistant":
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}].content[{j}]", "only text content parts are supported", "invalid_type")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string or text parts", "invalid_type")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def completion_prompts(body: dict[str, Any], tok: Tokenizer) -> list[list[int]]:
    """`prompt` as token ids per prompt: a string, a list of strings, a list of ids, or a list of id lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids", "invalid_type")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = tok.encode(p)
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            ids = list(p)
        else:
            raise bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids", "invalid_type")
        if not ids:
            start = tok.bos_id if tok.bos_id is not None else tok.eos_id
            ids = [start] if start is not None else []
        if not ids:
            raise bad("prompt", "the prompt is empty and the tokenizer has no BOS/EOS token to start from")
        out.append(ids)
    return out


def embedding_inputs(body: dict[str, Any], limits: Limits) -> tuple[list[str], str]:
    """(texts, encoding_format) of an embeddings request."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad("input", "'input' must be a string or a non-empty list of strings", "invalid_type")
    if len(texts) > limits.max_embedding_inputs:
        raise bad("input", f"'input' takes at most {limits.max_embedding_inputs} strings, got {len(texts)}")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {fmt!r}")
    if body.get("dimensions") is not None:
        raise bad("dimensions", "'dimensions' is not supported by this embedding model", "unsupported_parameter")
    return texts, fmt


# ----------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _token(tok: Tokenizer, token: int) -> tuple[str, list[int]]:
    """A token's text and bytes, as OpenAI reports them: the bytes are exact (a token can be part of a
    multi-byte character); the text is them decoded, with U+FFFD where a character is incomplete."""
    raw = tok.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tok: Tokenizer, ids: list[int], logprobs: list[float], tops: list | None) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion: one entry per token, with its alternatives."""
    content = []
    for i, (token, lp) in enumerate(zip(ids, logprobs)):
        text, raw = _token(tok, token)
        alternatives = []
        for t, v in (tops[i] if tops else None) or []:
            alt_text, alt_raw = _token(tok, t)
            alternatives.append({"token": alt_text, "logprob": v, "bytes": alt_raw})
        content.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alternatives})
    return {"content": content, "refusal": None}


def completion_logprobs(
    tok: Tokenizer, ids: list[int], logprobs: list[float], tops: list | None, offset: int = 0
) -> dict[str, Any]:
    """`choices[].logprobs` of a legacy completion: parallel lists, `text_offset` into the choice's text."""
    tokens = [_token(tok, t)[0] for t in ids]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    top = None
    if tops:
        top = [{_token(tok, t)[0]: v for t, v in (tops[i] or [])} for i in range(len(ids))]
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": top, "text_offset": offsets}


def embedding_data(vectors: list[list[float]], fmt: str) -> list[dict[str, Any]]:
    out = []
    for i, vec in enumerate(vectors):
        value: Any = vec
        if fmt == "base64":  # what the official client asks for by default: little-endian float32 bytes
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        out.append({"object": "embedding", "index": i, "embedding": value})
    return out


__all__ = [
    "APIError",
    "Limits",
    "Sampling",
    "bad",
    "chat_logprobs",
    "chat_messages",
    "completion_logprobs",
    "completion_prompts",
    "embedding_data",
    "embedding_inputs",
    "new_id",
    "now",
    "sampling",
    "usage",
]
