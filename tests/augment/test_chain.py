"""Chains on a tiny random-init `LocalLLM`: `|` makes one flat chain; invoke, batch (one `llm.batch` call) and
stream agree; the trace holds the rendered prompt, the model's text, its token counts and latency, and
survives JSONL; errors are recorded and raised; the parsers on hand-made texts."""

from __future__ import annotations

import pytest

from lmstack.augment.chain import (
    Chain,
    ParseError,
    Trace,
    chat_prompt,
    final_answer,
    json_output,
    llm_step,
    parse_json,
    prompt,
    regex,
    render,
    retriever,
    step,
    template_fields,
    tool,
)
from lmstack.augment.llm import LLMError, LocalLLM
from lmstack.errors import ConfigError
from lmstack.generate.engine import Engine
from lmstack.tokenizer import CHATML_TEMPLATE
from testutil import tiny_bpe, tiny_decoder

QA = "Q: {question}\nA:"


class Recording:
    """An LLM in front of another: forwards every call unchanged and records (method, input, params)."""

    def __init__(self, llm) -> None:
        self.llm, self.name, self.calls = llm, "recording", []

    def complete(self, prompt, **params):
        self.calls.append(("complete", prompt, params))
        return self.llm.complete(prompt, **params)

    def chat(self, messages, **params):
        self.calls.append(("chat", messages, params))
        return self.llm.chat(messages, **params)

    def stream(self, prompt_or_messages, **params):
        self.calls.append(("stream", prompt_or_messages, params))
        return self.llm.stream(prompt_or_messages, **params)

    def batch(self, inputs, **params):
        self.calls.append(("batch", list(inputs), params))
        return self.llm.batch(inputs, **params)


@pytest.fixture(scope="module")
def local() -> LocalLLM:
    tok = tiny_bpe()
    tok.chat_template = CHATML_TEMPLATE
    return LocalLLM(Engine(tiny_decoder("llama-tiny", tok.vocab_size), tok), name="tiny")


@pytest.fixture
def llm(local) -> Recording:
    return Recording(local)


# ---------------------------------------------------------------------------------------------- composition


def test_pipe_makes_one_flat_chain_and_wraps_plain_functions(local):
    a, b, c = prompt(QA), llm_step(local, max_tokens=4), final_answer()
    left, right = (a | b) | c, a | (b | c)
    assert isinstance(left, Chain) and left == right
    assert [s.kind for s in left.steps] == ["prompt", "llm", "parser"]
    assert all(not isinstance(s, Chain) for s in left.steps)
    mixed = str.strip | a | str.upper
    assert [(s.kind, s.name) for s in mixed.steps] == [("fn", "strip"), ("prompt", "prompt"), ("fn", "upper")]
    assert mixed.invoke("  fox ") == "Q: FOX\nA:"
    with pytest.raises(ConfigError, match="not int"):
        _ = a | 3
    with pytest.raises(ConfigError, match="kind"):
        step(str.upper, kind="agent")
    with pytest.raises(ConfigError, match="max_new_tokens"):  # a typo fails when the chain is built
        llm_step(local, max_new_tokens=4)


# ---------------------------------------------------------------------------------------------- invoke / batch / stream


def test_invoke_traces_the_rendered_prompt_and_the_llms_own_result(llm, local):
    chain = prompt(QA, name="qa") | llm_step(llm, max_tokens=6) | step(str.upper)
    trace = Trace()
    out = chain.invoke({"question": "the quick brown fox", "unused": 1}, trace)
    rendered = "Q: the quick brown fox\nA:"
    direct = local.complete(rendered, max_tokens=6)
    assert out == direct.text.upper()
    assert llm.calls == [("complete", rendered, {"max_tokens": 6})]
    p, call, fn = trace.events
    assert (p.kind, p.name, p.output) == ("prompt", "qa", rendered)
    assert (call.kind, call.name, call.inputs, call.output) == ("llm", "recording", rendered, direct.text)
    assert (call.prompt_tokens, call.completion_tokens) == (direct.prompt_tokens, direct.completion_tokens) != (0, 0)
    assert call.details == {"params": {"max_tokens": 6}, "model": "tiny", "finish_reason": direct.finish_reason}
    assert (fn.inputs, fn.output) == (direct.text, out)
    assert all(e.latency_s >= 0 and e.error is None and e.index is None for e in trace)
    assert trace.totals()["llm_calls"] == 1 and trace.totals()["completion_tokens"] == direct.completion_tokens
    shown = trace.format()
    assert rendered.replace("\n", "\n      ") in shown and f"{direct.prompt_tokens} prompt + " in shown


def test_batch_sends_one_llm_batch_call_and_equals_invoke(llm, local):
    chain = prompt(QA) | llm_step(llm, max_tokens=5) | step(len, name="length")
    questions = ["the quick", "brown fox jumps", "over the lazy dog"]
    trace = Trace()
    out = chain.batch(questions, trace)
    assert llm.calls == [("batch", [f"Q: {q}\nA:" for q in questions], {"max_tokens": 5})]
    alone = [local.complete(f"Q: {q}\nA:", max_tokens=5).text for q in questions]  # rows decode as if alone
    assert out == [len(t) for t in alone]
    assert [(e.kind, e.index) for e in trace] == [(k, i) for k in ("prompt", "llm", "fn") for i in range(3)]
    llm_events = [e for e in trace if e.kind == "llm"]
    assert [e.output for e in llm_events] == alone and all(e.completion_tokens > 0 for e in llm_events)
    assert chain.batch([], trace) == [] and len(llm.calls) == 1  # nothing to decode: no call


def test_chat_prompt_goes_to_chat_and_stream_adds_up_to_invoke(llm, local):
    chain = chat_prompt("Say {word}.", system="You repeat words.") | llm_step(llm, max_tokens=8) | regex(r"(?s)(.*)")
    messages = [{"role": "system", "content": "You repeat words."}, {"role": "user", "content": "Say fox."}]
    whole = chain.invoke("fox")
    trace = Trace()
    stream = chain.stream({"word": "fox"}, trace)
    pieces = list(stream)
    assert [c[0] for c in llm.calls] == ["chat", "stream"] and llm.calls[1][1] == messages
    assert "".join(pieces) == whole and stream.done and stream.value == whole and len(pieces) > 1
    result = local.chat(messages, max_tokens=8)
    p, call, parser = trace.events
    assert p.output == messages and (call.inputs, call.output, parser.output) == (messages, result.text, whole)
    assert (call.prompt_tokens, call.completion_tokens) == (result.prompt_tokens, result.completion_tokens)


def test_a_stream_closed_early_records_what_came(local):
    trace = Trace()
    stream = (prompt(QA) | llm_step(local, max_tokens=12)).stream("the quick", trace)
    first = next(stream)
    stream.close()
    event = trace.events[-1]
    assert (event.kind, event.output, event.error) == ("llm", first, "the stream was closed before its end")
    assert not stream.done
    with pytest.raises(ConfigError, match="no llm step"):
        prompt(QA).stream("x")


# ---------------------------------------------------------------------------------------------- trace, errors


def test_trace_saves_and_loads_as_jsonl(tmp_path, local):
    class Doc:
        def __repr__(self) -> str:
            return "Doc(7)"

    chain = retriever("docs", lambda q: {"question": q, "docs": Doc()}) | prompt(QA) | llm_step(local, max_tokens=4)
    trace = Trace()
    chain.invoke("fox", trace)
    path = tmp_path / "trace.jsonl"
    assert trace.save_jsonl(path) == 3 == len(path.read_text().splitlines())
    loaded = Trace.load_jsonl(path)
    assert [e.kind for e in loaded] == ["retriever", "prompt", "llm"]
    assert loaded.events[0].output == {"question": "fox", "docs": "Doc(7)"}  # not JSON: its repr
    assert loaded.events[1].output == trace.events[1].output == "Q: fox\nA:"
    assert loaded.events[2] == trace.events[2]


def test_a_missing_template_field_is_named():
    chain = prompt("Context: {context}\nQ: {question}\nA:", name="rag")
    with pytest.raises(ConfigError, match=r"rag: the template needs \{context\}; the input has question"):
        chain.invoke({"question": "why?"})
    with pytest.raises(ConfigError, match=r"one field; this one has 2 \(context, question\)"):
        chain.invoke("why?")
    assert template_fields('{a} {b} {a} {"d": 1} {b c}') == ["a", "b"]
    assert render('Reply as {"answer": N}. {x}', {"x": 2}) == 'Reply as {"answer": N}. 2'  # JSON braces stay


def test_a_failing_step_records_its_error_and_raises():
    def divide(x: int) -> float:
        return 1 / x

    class Down:
        name = "down"

        def batch(self, inputs, **params):
            raise LLMError("POST http://x/v1/completions returned HTTP 400: bad", "http://x", 400)

    trace = Trace()
    with pytest.raises(ZeroDivisionError):
        (step(int) | tool("divide", divide)).invoke("0", trace)
    event = trace.events[-1]
    assert (event.kind, event.name, event.inputs, event.output) == ("tool", "divide", 0, None)
    assert event.error == "ZeroDivisionError: division by zero" and trace.totals()["errors"] == 1
    with pytest.raises(LLMError):
        (prompt(QA) | llm_step(Down())).batch(["a", "b"], trace)
    event = trace.events[-1]
    assert (event.kind, event.inputs) == ("llm", ["Q: a\nA:", "Q: b\nA:"]) and "HTTP 400" in event.error


# ---------------------------------------------------------------------------------------------- parsers


def test_regex_parser():
    assert regex(r"Name: (\w+)").invoke("Name: Ada\nAge: 36") == "Ada"
    assert regex(r"\d+", group=0).invoke("it is 42 or 43") == "42"
    assert regex(r"(?P<age>\d+) years").invoke("she is 36 years old") == "36"
    with pytest.raises(ParseError, match="no match") as info:
        regex(r"Name: (\w+)").invoke("nobody here")
    assert info.value.text == "nobody here"
    with pytest.raises(ConfigError, match="0 group"):
        regex(r"\d+")
    with pytest.raises(ParseError, match="take text"):
        regex(r"(\d)").invoke(5)


def test_json_parser_finds_the_first_object_or_array():
    assert json_output().invoke('Sure! Here it is: {"a": {"b": [1, 2]}} and {"c": 3}') == {"a": {"b": [1, 2]}}
    assert json_output().invoke('```json\n[{"x": 1}, 2]\n```') == [{"x": 1}, 2]
    assert parse_json('{not json} but this is: {"ok": true}') == {"ok": True}
    with pytest.raises(ParseError, match="json: no JSON object or array in 'the answer is 4'") as info:
        json_output().invoke("the answer is 4")
    assert info.value.text == "the answer is 4"
    with pytest.raises(ParseError):
        json_output().invoke('{"cut": [1, 2')  # truncated by max_tokens


def test_final_answer_parser():
    parse = final_answer()
    assert parse.invoke("2 * 600 = 1200.\nThe answer is $1,200.") == 1200.0
    assert parse.invoke("The answer is 3. No wait. The answer is: -4.5") == -4.5
    assert parse.invoke("so 7 apples remain") == 7.0  # no "The answer is": the last number
    with pytest.raises(ParseError, match="no number"):
        parse.invoke("I do not know.")
