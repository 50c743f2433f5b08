import pytest

from lmstack.errors import DataError
from lmstack.tokenizer import Tokenizer

SAMPLES = ["def f(x):\n    return x ** 2  # square", "naïve café — 東京 😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "   spaces\t\ttabs\n\n"]


@pytest.fixture(scope="module")
def tok():
    texts = ["the quick brown fox jumps over the lazy dog. " * 20, "def main():\n    print('hello')\n" * 20]
    return Tokenizer.train_bpe(texts, vocab_size=400)


def test_round_trip_any_text(tok):
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


def test_bpe_learned_merges(tok):
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox") / 2


def test_special_tokens(tok):
    assert tok.eos_id is not None and tok.pad_id is not None and tok.mask_id is not None
    assert len({tok.eos_id, tok.pad_id, tok.mask_id}) == 3
    assert len(tok.sentinel_ids()) == 32
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eos_id in ids
    assert tok.decode(ids) == "ab" and tok.decode(ids, skip_special_tokens=False) == "a<|endoftext|>b"


def test_save_load_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text)
    assert again.special_tokens == tok.special_tokens and again.chat_template == tok.chat_template


def test_chat_template(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not tok.apply_chat_template(messages).endswith("assistant\n")
    with pytest.raises(DataError, match="messages\\[0\\]"):
        tok.apply_chat_template([{"role": "user"}])


def test_template_is_sandboxed(tok):
    evil = Tokenizer(tok.hf, tok.special_tokens, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(DataError):
        evil.apply_chat_template([{"role": "user", "content": "x"}])


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(DataError, match="not a valid"):
        Tokenizer.load(tmp_path)
