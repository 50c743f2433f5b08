"""A thin wrapper over HF `tokenizers`: byte-level BPE training, save/load, special tokens, chat templates.

Files follow the HF layout (`tokenizer.json` + `tokenizer_config.json` holding the special-token roles and
the jinja2 chat template), so tokenizers saved here load in `transformers` and vice versa.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lmstack.errors import DataError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Roles of special tokens in a tokenizer trained by lmstack. Sentinels serve T5-style span corruption.
DEFAULT_SPECIAL_TOKENS = {
    "eos_token": "<|endoftext|>",
    "bos_token": "<|endoftext|>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
    "unk_token": None,
}
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
N_SENTINELS = 32
ROLE_KEYS = ("bos_token", "eos_token", "pad_token", "mask_token", "unk_token")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's): every byte shown as one printable character; character → byte.
    Printable Latin-1 bytes stand for themselves, the other bytes for code points from 256 on, in order."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    extra = [b for b in range(256) if b not in shown]
    table = {chr(b): b for b in shown}
    table.update({chr(256 + i): b for i, b in enumerate(extra)})
    return table


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """Text ↔ ids plus the special-token roles and chat template that the rest of lmstack relies on."""

    def __init__(self, hf: HFTokenizer, special_tokens: dict[str, str | None], chat_template: str | None = None):
        self.hf = hf
        self.special_tokens = {k: special_tokens.get(k) for k in ROLE_KEYS}
        self.chat_template = chat_template
        for role, tok in self.special_tokens.items():
            if tok is not None and hf.token_to_id(tok) is None:
                raise DataError(f"special token {role}={tok!r} is not in the vocabulary")

    # ------------------------------------------------------------------ construction

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        extra_special_tokens: Iterable[str] = (),
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a GPT-2-style byte-level BPE (no unknown tokens: every byte has an id)."""
        specials = list(
            dict.fromkeys(
                [t for t in DEFAULT_SPECIAL_TOKENS.values() if t]
                + CHAT_TOKENS
                + [sentinel(i) for i in range(N_SENTINELS)]
                + list(extra_special_tokens)
            )
        )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, DEFAULT_SPECIAL_TOKENS, CHATML_TEMPLATE)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` beside it) from a file or a directory."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"no tokenizer.json at {path}")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises plain Exceptions
            raise DataError(f"{file}: not a valid tokenizer.json ({exc})") from exc
        config_file = file.parent / "tokenizer_config.json"
        special: dict[str, Any] = {}
        template = None
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{config_file}: invalid JSON ({exc})") from exc
            for key in ROLE_KEYS:
                value = config.get(key)
                if isinstance(value, dict):  # HF AddedToken serialisation
                    value = value.get("content")
                special[key] = value
            template = config.get("chat_template")
        return cls(hf, special, template)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        config = {k: v for k, v in self.special_tokens.items() if v is not None}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    # ------------------------------------------------------------------ ids

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def _role_id(self, role: str) -> int | None:
        tok = self.special_tokens.get(role)
        return None if tok is None else self.hf.token_to_id(tok)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos_token")

    @property
    def pad_id(self) -> int | None:
        pad = self._role_id("pad_token")
        return self.eos_id if pad is None else pad

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask_token")

    def sentinel_ids(self) -> list[int]:
        ids = []
        for i in range(10_000):
            tid = self.hf.token_to_id(sentinel(i))
            if tid is None:
                break
            ids.append(tid)
        return ids

    def special_ids(self) -> set[int]:
        return {self.hf.token_to_id(t.content) for t in self.hf.get_added_tokens_decoder().values() if t.special}

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, even when it is a part of a multi-byte character (which decoding
        it alone shows as U+FFFD): byte-level BPE's printable alphabet mapped back to bytes, SentencePiece's
        `▁` and `<0xNN>` byte tokens; a special token's own text."""
        piece = self.hf.id_to_token(int(token_id))
        if piece is None:
            raise DataError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        if int(token_id) in self.special_ids():
            return piece.encode()
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if isinstance(self.hf.decoder, decoders.ByteLevel):
            table = _byte_level_alphabet()
            return bytes(table[c] for c in piece)
        return piece.replace("\u2581", " ").encode()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ chat

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False, **extra: Any
    ) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the jinja2 chat template, in a sandbox."""
        if not self.chat_template:
            raise DataError("this tokenizer has no chat template; set tokenizer.chat_template")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"messages[{i}] must be a mapping with string 'role' and 'content', got {m!r}")
        try:
            return _compile_template(self.chat_template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.special_tokens.get("bos_token") or "",
                eos_token=self.special_tokens.get("eos_token") or "",
                **extra,
            )
        except TemplateError as exc:
            raise DataError(f"chat template failed: {exc}") from exc


def _raise(message: str) -> None:
    raise TemplateError(message)


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_template(source: str):
    if source not in _TEMPLATE_CACHE:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        _TEMPLATE_CACHE[source] = env.from_string(source)
    return _TEMPLATE_CACHE[source]


def iter_text_files(paths: Iterable[str | Path]) -> Iterator[str]:
    """Yield the text of each file, skipping files that are not UTF-8."""
    for p in paths:
        try:
            yield Path(p).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
