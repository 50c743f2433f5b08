"""The OpenAI-compatible server on loopback (real uvicorn, a free port), driven by the official `openai`
client, langchain-openai and raw HTTP: results equal the engine's alone, errors have OpenAI's shape."""

import json
import threading

import httpx
import openai
import pytest
import torch

from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.serve.adapters import adapter_bank
from lmstack.serve.app import ServedModel, create_app
from lmstack.serve.batching import Scheduler
from lmstack.serve.protocol import Limits
from lmstack.serve.server import ServerThread
from testutil import tiny_decoder

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]


def served(tokenizer, slots=16, max_queue=32, adapters=None, seed=0) -> ServedModel:
    model = tiny_decoder("llama-tiny", tokenizer.vocab_size, seed=seed)
    names, bank = adapter_bank(model, adapters) if adapters else ({}, None)
    engine = Engine(model, tokenizer)
    engine.fast.adapters = bank
    return ServedModel(MODEL, Scheduler(engine, slots=slots, max_queue=max_queue, adapters=names), tokenizer)


def alone(tokenizer, text: str, max_tokens: int, **kw) -> str:
    engine = Engine(tiny_decoder("llama-tiny", tokenizer.vocab_size), tokenizer)
    config = GenerationConfig(max_new_tokens=max_tokens, **kw)
    return engine.generate_ids([tokenizer.encode(text)], config)[0].text


def chat_text(tokenizer, messages=MESSAGES) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


@pytest.fixture(scope="module")
def server(chat_tokenizer):
    with ServerThread(create_app([served(chat_tokenizer)], limits=Limits(max_body_bytes=20_000))) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    health = httpx.get(server.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["models"][MODEL]["slots"] == 16


def test_chat_completion_equals_the_engine_alone(client, chat_tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0)
    expected = alone(chat_tokenizer, chat_text(chat_tokenizer), 20)
    choice = reply.choices[0]
    assert choice.message.content == expected and choice.message.role == "assistant"
    assert reply.object == "chat.completion" and reply.model == MODEL
    prompt_tokens = len(chat_tokenizer.encode(chat_text(chat_tokenizer)))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")


def test_streamed_chat_adds_up_to_the_whole_reply_with_usage_last(client):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_batch_n_seeds_and_logprobs(client, chat_tokenizer):
    reply = client.completions.create(
        model=MODEL, prompt=["def add(a, b):", "héllo"], max_tokens=10, temperature=0.9, seed=5, n=2, logprobs=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(["def add(a, b):", "héllo"]):
        for j in range(2):
            c = reply.choices[2 * i + j]
            assert c.text == alone(chat_tokenizer, prompt, 10, temperature=0.9, seed=5 + j, ignore_eos=False)
            lp = c.logprobs
            assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
            assert all(
                len(top) <= 2 and max(top.values()) >= v - 1e-6 for top, v in zip(lp.top_logprobs, lp.token_logprobs)
            )
    prompt_tokens = sum(len(chat_tokenizer.encode(t)) for t in ["def add(a, b):", "héllo"])
    assert reply.usage.prompt_tokens == prompt_tokens


def test_chat_logprobs_and_stop(client, chat_tokenizer):
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    special = {chat_tokenizer.token_bytes(i) for i in chat_tokenizer.special_ids()}
    raw = b"".join(bytes(t.bytes) for t in content if bytes(t.bytes) not in special)
    assert raw.decode(errors="replace") == reply.choices[0].message.content  # bytes exact within a character
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)
    text = reply.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stop=stop)
        assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[: text.index(stop)]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(temperature="hot"), "temperature"),
        (dict(top_p=2), "top_p"),
        (dict(n=0), "n"),
        (dict(max_tokens=-1), "max_tokens"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (dict(messages=[]), "messages"),
        (dict(max_tokens=100_000), "max_tokens"),
        (dict(top_logprobs=3), "top_logprobs"),
        (dict(max_tokens=120), "max_tokens"),  # prompt + 120 > the 128-token context
    ],
)
def test_bad_parameters_are_400_in_openai_shape(client, kwargs, param):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=5)
    body.update(kwargs)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)
    error = info.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_and_oversized_bodies_unknown_models_and_long_prompts(server, client):
    url = server + "/chat/completions"
    for raw, status, code in [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (json.dumps({"model": MODEL, "messages": MESSAGES, "pad": "x" * 30_000}).encode(), 413, "request_too_large"),
    ]:
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status and r.json()["error"]["code"] == code
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="fox " * 400, max_tokens=2)
    assert info.value.body["code"] == "context_length_exceeded"
    r = httpx.get(server + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    # and it keeps serving
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3).choices


def test_sixteen_concurrent_streams_get_what_they_get_alone(client, chat_tokenizer):
    prompts = [f"{w} " * (1 + i % 5) for i, w in enumerate(["fox", "dog", "def", "café", "lazy", "b"] * 3)][:16]
    out: dict[int, str] = {}

    def stream(i):
        chunks = client.completions.create(
            model=MODEL, prompt=prompts[i], max_tokens=12 + i, temperature=0, stream=True
        )
        out[i] = "".join(c.choices[0].text for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(16):
        assert out[i] == alone(chat_tokenizer, prompts[i], 12 + i), i


def test_a_client_that_disconnects_mid_stream_frees_its_slot_and_disturbs_no_one(server, client, chat_tokenizer):
    body = {"model": MODEL, "prompt": "the lazy dog", "max_tokens": 100, "temperature": 0, "stream": True}
    result = {}

    def other():
        result["text"] = (
            client.completions.create(model=MODEL, prompt="def add", max_tokens=40, temperature=0).choices[0].text
        )

    with httpx.stream("POST", server + "/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        worker = threading.Thread(target=other)
        worker.start()
        next(lines)
    worker.join(60)
    assert result["text"] == alone(chat_tokenizer, "def add", 40)
    for _ in range(500):  # the abandoned row leaves the batch within a few steps
        if httpx.get(server.removesuffix("/v1") + "/health").json()["models"][MODEL]["running"] == 0:
            break
        threading.Event().wait(0.01)
    health = httpx.get(server.removesuffix("/v1") + "/health").json()["models"][MODEL]
    assert health["running"] == 0 and health["cancelled"] >= 1  # it left unfinished, not after its 100 tokens


def test_langchain_chat_openai_invoke_and_stream(server, chat_tokenizer):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server, api_key="unused", model=MODEL, temperature=0, max_tokens=16, max_retries=0)
    expected = alone(chat_tokenizer, chat_text(chat_tokenizer), 16)
    assert llm.invoke("the quick brown fox").content == expected
    assert "".join(c.content for c in llm.stream("the quick brown fox")) == expected


def test_api_key_queue_limit_and_shutdown_with_requests_in_flight(chat_tokenizer):
    model = served(chat_tokenizer, slots=1, max_queue=0)
    thread = ServerThread(create_app([model], api_key="sekret"), graceful_s=0.5)
    url = thread.start()
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url, api_key="sekret", max_retries=0, timeout=60)
        assert [m.id for m in good.models.list()] == [MODEL]
        stream = iter(good.completions.create(model=MODEL, prompt="the", max_tokens=120, temperature=0, stream=True))
        assert next(stream).choices
        with pytest.raises(openai.RateLimitError) as info:  # the one slot is busy and no queue is allowed
            good.completions.create(model=MODEL, prompt="dog", max_tokens=3)
        assert info.value.body["code"] == "rate_limit_exceeded"
    finally:
        thread.stop(timeout=30)
    assert not thread.thread.is_alive() and not model.scheduler._thread.is_alive()
    try:  # the stream in flight ends (complete, or cut off): it does not hang
        for _ in stream:
            pass
    except (openai.APIError, httpx.HTTPError):
        pass


def test_adapters_by_name(tmp_path, chat_tokenizer):
    from lmstack.finetune.lora import LoRAConfig, apply_lora, lora_layers, unload_lora
    from lmstack.finetune.lora_peft import save_adapter

    model = tiny_decoder("llama-tiny", chat_tokenizer.vocab_size)
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets="all-linear"), name="x")
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for part in layer.lora["x"].values():
                part.B.normal_(0, 0.3)
    save_adapter(model, tmp_path / "x", adapter="x")
    merged = Engine(unload_lora(model, merge=True).eval(), chat_tokenizer)
    with ServerThread(create_app([served(chat_tokenizer, adapters={"x": tmp_path / "x"})])) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == [MODEL, f"{MODEL}:x"]
        via = client.completions.create(model=f"{MODEL}:x", prompt="the quick", max_tokens=12, temperature=0)
        plain = client.completions.create(model=MODEL, prompt="the quick", max_tokens=12, temperature=0)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=f"{MODEL}:y", prompt="the quick", max_tokens=2)
    ids = chat_tokenizer.encode("the quick")
    assert via.choices[0].text == merged.generate_ids([ids], GenerationConfig(max_new_tokens=12))[0].text
    assert plain.choices[0].text == alone(chat_tokenizer, "the quick", 12)


@pytest.mark.real_model
def test_embeddings_are_minilm_sentence_embeddings_in_both_encodings(chat_tokenizer):
    from lmstack.augment.rag.embed import SentenceEmbedder

    embedder = SentenceEmbedder.from_pretrained("all-minilm-l6-v2")
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", "naïve café"]
    expected = embedder.encode(texts)
    with ServerThread(create_app([served(chat_tokenizer)], embedder)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        packed = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the client asks for base64
        plain = client.embeddings.create(model="all-minilm-l6-v2", input=texts[0], encoding_format="float")
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model=MODEL, input="x")
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="all-minilm-l6-v2", input=[])
    assert torch.allclose(torch.tensor([d.embedding for d in packed.data]), expected, atol=1e-6)
    assert torch.allclose(torch.tensor(plain.data[0].embedding), expected[0], atol=1e-6)
    assert packed.usage.prompt_tokens == sum(embedder.token_counts(texts))
