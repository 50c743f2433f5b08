"""The LLM interface on loopback, all real parts: `OpenAIClient` against lmstack's own OpenAI-compatible server
(uvicorn) gives what `LocalLLM` gives on the same tiny model, and against a scripted `http.server` it retries
429 / 5xx with backoff, fails at once on other 4xx, and turns timeouts, broken JSON and SSE into clear results."""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmstack.augment.llm import LLMError, LLMResult, LocalLLM, OpenAIClient, Stream
from lmstack.errors import ConfigError, LMStackError
from lmstack.generate.engine import Engine
from lmstack.serve.app import ServedModel, create_app
from lmstack.serve.batching import Scheduler
from lmstack.serve.server import ServerThread
from lmstack.tokenizer import CHATML_TEMPLATE
from testutil import tiny_bpe, tiny_decoder

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]
PROMPT = "def add(a, b):"


# ---------------------------------------------------------------------------------------------- same model


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_bpe()
    tok.chat_template = CHATML_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def local(tokenizer) -> LocalLLM:
    return LocalLLM(Engine(tiny_decoder("llama-tiny", tokenizer.vocab_size), tokenizer))


@pytest.fixture(scope="module")
def remote(tokenizer):
    engine = Engine(tiny_decoder("llama-tiny", tokenizer.vocab_size), tokenizer)  # the same weights (seed 0)
    served = ServedModel(MODEL, Scheduler(engine, slots=8, max_queue=32), tokenizer)
    with ServerThread(create_app([served])) as url, OpenAIClient(url, MODEL, api_key="unused", timeout=30) as client:
        yield client


def same(a: LLMResult, b: LLMResult) -> None:
    assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == (
        b.text,
        b.finish_reason,
        b.prompt_tokens,
        b.completion_tokens,
    )
    assert a.latency_s > 0 and b.latency_s > 0


def test_complete_and_chat_equal_the_local_engine(local, remote):
    for call, x, n in ((LocalLLM.complete, PROMPT, 12), (LocalLLM.chat, MESSAGES, 20)):
        mine = call(local, x, max_tokens=n)
        theirs = getattr(remote, call.__name__)(x, max_tokens=n)
        same(mine, theirs)
        assert mine.text and mine.prompt_tokens > 0 and 0 < mine.completion_tokens <= n
        assert (mine.model, theirs.model) == ("local", MODEL)
    sampled = dict(max_tokens=10, temperature=0.9, top_p=0.95, seed=5)
    same(local.complete(PROMPT, **sampled), remote.complete(PROMPT, **sampled))


def test_stream_adds_up_to_the_whole_reply_with_its_usage(local, remote):
    for x in (PROMPT, MESSAGES):
        whole = local.batch([x], max_tokens=16)[0]
        for llm in (local, remote):
            stream = llm.stream(x, max_tokens=16)
            assert isinstance(stream, Stream)
            pieces = list(stream)
            assert "".join(pieces) == whole.text and len(pieces) > 1
            same(stream.result, whole)


def test_batch_keeps_order_and_equals_one_by_one(local, remote):
    inputs = [PROMPT, MESSAGES, "héllo", [{"role": "system", "content": "be brief"}, *MESSAGES]]
    mine = local.batch(inputs, max_tokens=12)
    theirs = remote.batch(inputs, max_tokens=12)
    alone = [local.complete(x, max_tokens=12) if isinstance(x, str) else local.chat(x, max_tokens=12) for x in inputs]
    for a, b, c in zip(mine, theirs, alone):
        same(a, b)
        same(a, c)
    assert local.batch([]) == [] == remote.batch([])


def test_bad_parameters_and_inputs_fail_clearly(local, remote):
    for llm in (local, remote):
        with pytest.raises(ConfigError, match="max_new_tokens"):
            llm.complete(PROMPT, max_new_tokens=4)
        with pytest.raises(ConfigError, match="chat"):
            llm.complete(MESSAGES)
        with pytest.raises(ConfigError, match="messages"):
            llm.batch([PROMPT, 3])


def test_the_servers_own_errors_come_through(remote):
    with pytest.raises(LLMError, match=r"HTTP 404.*model") as err:
        OpenAIClient(remote.base_url, "no-such-model", max_retries=0).chat(MESSAGES, max_tokens=4)
    assert err.value.status == 404 and isinstance(err.value, LMStackError)
    with pytest.raises(LLMError, match="HTTP 400"):
        remote.complete(PROMPT, max_tokens=4, top_p=1.5)


# ---------------------------------------------------------------------------------------------- scripted server

CHAT_OK = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "scripted",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


class Scripted:
    """A real HTTP server whose `respond(handler, n)` answers request number n (0-based) and records what
    came in: paths, JSON bodies, Authorization headers."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler, int], None]) -> None:
        self.requests: list[dict] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(script.requests)
                script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                try:
                    respond(self, n)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(respond):
        servers.append(Scripted(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def reply(handler: BaseHTTPRequestHandler, status: int, body, headers: dict | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def test_429_with_retry_after_is_retried(scripted):
    def respond(h, n):
        if n == 0:
            reply(h, 429, error_body("slow down"), {"Retry-After": "0"})
        else:
            reply(h, 200, CHAT_OK)

    server = scripted(respond)
    client = OpenAIClient(server.url, "scripted", api_key="sk-test", backoff_s=5.0)  # Retry-After wins
    start = time.perf_counter()
    result = client.chat(MESSAGES, max_tokens=8, stop="\n")
    assert time.perf_counter() - start < 2.0
    assert result == LLMResult("hi there", "stop", 7, 3, result.latency_s, "scripted") and result.latency_s > 0
    assert len(server.requests) == 2 and all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert server.requests[0]["auth"] == "Bearer sk-test"
    assert server.requests[0]["body"] == {
        "model": "scripted",
        "max_tokens": 8,
        "temperature": 0.0,
        "stop": ["\n"],
        "messages": MESSAGES,
    }


def test_5xx_is_retried_then_fails_with_the_servers_message(scripted):
    server = scripted(lambda h, n: reply(h, 503, error_body("overloaded, come back later")))
    client = OpenAIClient(server.url, "scripted", max_retries=2, backoff_s=0.01)
    with pytest.raises(LLMError) as err:
        client.complete(PROMPT)
    message = str(err.value)
    assert "503" in message and "overloaded, come back later" in message and server.url + "/completions" in message
    assert "3 attempts" in message and err.value.status == 503
    assert len(server.requests) == 3


def test_other_4xx_fails_at_once(scripted):
    server = scripted(lambda h, n: reply(h, 400, error_body("'max_tokens' must be at most 2048")))
    with pytest.raises(LLMError, match=r"HTTP 400: 'max_tokens' must be at most 2048") as err:
        OpenAIClient(server.url, "scripted", max_retries=3, backoff_s=0.01).chat(MESSAGES)
    assert err.value.status == 400 and len(server.requests) == 1


def test_a_slow_server_times_out(scripted):
    server = scripted(lambda h, n: (time.sleep(1.0), reply(h, 200, CHAT_OK)))
    start = time.perf_counter()
    with pytest.raises(LLMError, match=r"timed out after 0.3 s") as err:
        OpenAIClient(server.url, "scripted", timeout=0.3, max_retries=0).chat(MESSAGES)
    assert time.perf_counter() - start < 0.9 and err.value.status is None and len(server.requests) == 1


def test_a_timeout_is_retried_like_a_5xx(scripted):
    server = scripted(lambda h, n: (time.sleep(1.0 if n == 0 else 0), reply(h, 200, CHAT_OK)))
    result = OpenAIClient(server.url, "scripted", timeout=0.3, max_retries=1, backoff_s=0.01).chat(MESSAGES)
    assert result.text == "hi there" and 0.3 <= result.latency_s < 1.0 and len(server.requests) == 2


def test_a_body_that_is_not_json_is_an_error(scripted):
    server = scripted(lambda h, n: reply(h, 200, b"<html>gateway says hello</html>"))
    with pytest.raises(LLMError, match=r"HTTP 200 but not an OpenAI chat completion.*gateway says hello"):
        OpenAIClient(server.url, "scripted", backoff_s=0.01).chat(MESSAGES)
    assert len(server.requests) == 1


def test_nobody_listening_is_a_connection_error(scripted):
    server = scripted(lambda h, n: None)
    url = server.url
    server.close()
    with pytest.raises(LLMError, match=r"failed: ConnectError.*2 attempts"):
        OpenAIClient(url, "scripted", max_retries=1, backoff_s=0.01).complete(PROMPT)


def test_sse_stream_yields_pieces_as_they_come(scripted):
    pieces = ["Hel", "lo", ", wor", "ld"]
    first_seen = threading.Event()

    def respond(h, n):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        for i, piece in enumerate(pieces):
            chunk = {"object": "text_completion", "model": "scripted", "choices": [{"index": 0, "text": piece}]}
            h.wfile.write(f": keep-alive\n\ndata: {json.dumps(chunk)}\n\n".encode())
            h.wfile.flush()
            if i == 0:
                assert first_seen.wait(5)  # the client has the first piece before the rest is even written
        end = {"model": "scripted", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        h.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        h.wfile.flush()

    server = scripted(respond)
    stream = OpenAIClient(server.url, "scripted", timeout=10).stream(PROMPT, max_tokens=4)
    got = []
    for piece in stream:
        got.append(piece)
        first_seen.set()
    assert got == pieces
    result = stream.result
    assert (result.text, result.finish_reason, result.completion_tokens, result.prompt_tokens) == (
        "Hello, world",
        "length",
        4,  # no usage chunk: the pieces are counted
        0,
    )
    body = server.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_an_error_chunk_mid_stream_raises(scripted):
    def respond(h, n):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        delta = {"choices": [{"index": 0, "delta": {"content": "par"}}]}
        h.wfile.write(f"data: {json.dumps(delta)}\n\ndata: {json.dumps(error_body('generation failed'))}\n\n".encode())

    server = scripted(respond)
    stream = OpenAIClient(server.url, "scripted").stream(MESSAGES)
    assert next(stream) == "par"
    with pytest.raises(LLMError, match="generation failed"):
        next(stream)
