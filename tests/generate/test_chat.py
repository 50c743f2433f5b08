import pytest

from lmstack.cli import main
from lmstack.generate.chat import ChatSession, repl
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig


@pytest.fixture
def session(llama, tokenizer):
    engine = Engine(llama, tokenizer)
    return ChatSession(engine, GenerationConfig(max_new_tokens=8, ignore_eos=True))


def test_send_streams_and_keeps_history(session):
    reply = "".join(session.send("hello"))
    assert session.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply.strip()}]
    prompt = session.engine.tokenizer.apply_chat_template(session.messages(), add_generation_prompt=True)
    assert "<|im_start|>user\nhello<|im_end|>" in prompt


def test_system_prompt_and_reset(session):
    session.set_system("be brief")
    list(session.send("hi"))
    assert session.messages()[0] == {"role": "system", "content": "be brief"}
    session.reset()
    assert session.messages() == [{"role": "system", "content": "be brief"}]


def test_old_turns_are_dropped_to_fit_the_context(session):
    for i in range(12):  # each exchange is ~20 tokens; the context holds 128
        list(session.send(f"message number {i} with some words"))
    prompt_of_last_reply = session.messages()[:-1]
    assert len(session.engine.encode_prompt(prompt_of_last_reply)) <= 128 - session.config.max_new_tokens
    assert session.history[-1]["role"] == "assistant"
    assert "message number 11" in session.history[-2]["content"]
    assert all("message number 0 " not in m["content"] for m in session.history)


def test_repl_commands(session):
    lines = iter(["hello", "/system you are terse", "/reset", "/nope", "", "again", "/exit", "never read"])
    out = []
    assert repl(session, read=lambda _: next(lines), write=out.append) == 0
    text = "".join(out)
    assert "system prompt set" in text and "conversation cleared" in text and "unknown command /nope" in text
    assert session.system == "you are terse"
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["again"]
    assert next(lines) == "never read"


def test_cli_generate_and_chat_on_an_hf_directory(tmp_path, llama, tokenizer, capsys, monkeypatch):
    from lmstack.weights.hf import save_hf

    save_hf(llama, tmp_path / "m", tokenizer=tokenizer)
    args = ["--model", str(tmp_path / "m"), "--max-new-tokens", "6"]
    assert main(["generate", "--prompt", "hello", *args]) == 0
    streamed = capsys.readouterr().out
    assert main(["generate", "--prompt", "hello", "--no-stream", *args]) == 0
    assert capsys.readouterr().out == streamed
    assert main(["generate", "--prompt", "hello", "--prompt", "def add", "--mode", "int8", *args]) == 0
    assert capsys.readouterr().out.count("--- ") == 2
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("hi there\n/reset\n"))
    assert main(["chat", *args]) == 0
    assert "conversation cleared" in capsys.readouterr().out


def test_cli_reports_bad_models(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--model", str(tmp_path / "missing.gguf")]) == 2
    assert "not found" in capsys.readouterr().err
