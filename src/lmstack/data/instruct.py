"""Instruction-tuning data: JSONL rows → token ids plus a mask of the tokens the loss trains on.

A row holds `prompt`/`completion` strings, or chat `messages` ([{"role", "content"}], roles system, user,
assistant), or both (the task suite writes both). Two renderings:

- `chat`: the tokenizer's own chat template (`Tokenizer.apply_chat_template`, the renderer generation uses,
  so training sees exactly the text a chat prompt produces). Every assistant turn is trained, including the
  end-of-turn token the template puts after it; system and user turns are not. A `prompt`/`completion` row
  becomes one user turn and one assistant turn.
- `plain` (base models): `prompt + separator + completion + EOS`; the completion and the EOS are trained.
  At inference give the model `prompt + separator`.

The rendered text is tokenised once, as one string, so the ids are exactly what the tokenizer gives for the
whole conversation; a token is trained when its characters overlap a trained span (a token that straddles
the prompt/completion boundary, like " 4" after "2+2=", carries completion text and is trained).

Every row is checked before anything is returned; a bad row raises a `DataError` naming `file:line`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import Tokenizer

# The label of a position the loss skips. The same value as `train.objectives.IGNORE` and PyTorch's
# cross-entropy default; defined here because the data package must not import the train package.
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, eq=False)
class Sample:
    """One tokenised example. `trained[i]` says token i is a training target (predicted from tokens < i);
    `trained[0]` is always False. `origin` is "file:line" (for messages and tracing)."""

    ids: np.ndarray  # (n,) int64
    trained: np.ndarray  # (n,) bool
    task: str = ""
    origin: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_trained(self) -> int:
        return int(self.trained.sum())


@dataclass(frozen=True)
class InstructFormat:
    """How rows become samples.

    `format`: auto = chat when the tokenizer has a chat template, else plain. `max_len`: the most tokens a
    rendered sample may have (the model's context; a sample of n tokens fills n - 1 input positions).
    `truncation`: error (the default: an over-long sample names its file:line) or left (drop the oldest
    tokens before the first trained token, keeping at least one of them as context, then, only if the
    trained part alone is still too long, cut its end). `separator` and `add_eos` apply to plain rendering.
    """

    max_len: int
    format: Literal["auto", "chat", "plain"] = "auto"
    truncation: Literal["error", "left"] = "error"
    separator: str = "\n"
    add_eos: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ConfigError(f"max_len must be an integer >= 2, got {self.max_len!r}")
        if self.format not in ("auto", "chat", "plain"):
            raise ConfigError(f"format must be one of auto, chat, plain; got {self.format!r}")
        if self.truncation not in ("error", "left"):
            raise ConfigError(f"truncation must be error or left; got {self.truncation!r}")

    def resolve(self, tokenizer: Tokenizer) -> Literal["chat", "plain"]:
        if self.format == "auto":
            return "chat" if tokenizer.chat_template else "plain"
        if self.format == "chat" and not tokenizer.chat_template:
            raise ConfigError("format=chat needs a tokenizer with a chat template; use format=plain for a base model")
        return self.format


# ----------------------------------------------------------------------------- reading and checking rows


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instruction data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 text: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise DataError(f"{path}: no rows (expected one JSON object per line with prompt/completion or messages)")
    return rows


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a batch-mode questions file (`lmstack pal|rag ask|agent --questions`): JSONL objects, each
    with a non-empty string `question`; a bad row is a DataError naming the file and line."""
    if not Path(path).is_file():
        raise DataError(f"questions file not found: {path}")
    rows = []
    for lineno, row in read_rows(path):
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}:{lineno}: each row needs a non-empty string field 'question' (got {question!r})")
        rows.append(row)
    return rows


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The `messages` list if it is well formed, else a DataError saying what is wrong (without location)."""
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise DataError(f"messages[{i}] has no '{key}'")
            if not isinstance(m[key], str):
                raise DataError(f"messages[{i}].{key} must be a string, got {type(m[key]).__name__}")
        if m["role"] not in ROLES:
            raise DataError(f"messages[{i}].role is {m['role']!r}; allowed roles: {', '.join(ROLES)}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(f"messages[{i}] is an empty assistant turn; there is nothing to train on")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("'messages' has no assistant turn; there is nothing to train on")
    return messages


def check_prompt_completion(row: dict[str, Any]) -> tuple[str, str]:
    for key in ("prompt", "completion"):
        if key not in row:
            other = "completion" if key == "prompt" else "prompt"
            raise DataError(f"has '{other}' but no '{key}'")
        if not isinstance(row[key], str):
            raise DataError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    if not row["prompt"].strip():
        raise DataError("'prompt' is empty")
    if not row["completion"].strip():
        raise DataError("'completion' is empty; there is nothing to train on")
    return row["prompt"], row["completion"]


def row_content(row: dict[str, Any], mode: Literal["chat", "plain"]) -> list[dict[str, Any]] | tuple[str, str]:
    """What a row renders from in `mode`: a message list (chat) or (prompt, completion) (plain). Every field
    the row has is checked, also the one the mode does not use."""
    has_pair = "prompt" in row or "completion" in row
    if not has_pair and "messages" not in row:
        raise DataError("needs 'prompt' and 'completion' strings or a 'messages' list")
    pair = check_prompt_completion(row) if has_pair else None
    messages = check_messages(row["messages"]) if "messages" in row else None
    if mode == "plain":
        if pair is None:
            raise DataError("has only 'messages'; plain rendering needs 'prompt' and 'completion' (or use format=chat)")
        return pair
    if messages is None:
        assert pair is not None
        messages = [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


# ----------------------------------------------------------------------------- rendering and tokenising


def _mark(tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `text` and which of them overlap a trained character span."""
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64)
    trained = np.zeros(len(ids), dtype=bool)
    if len(ids):
        starts = np.asarray([o[0] for o in enc.offsets])
        ends = np.asarray([o[1] for o in enc.offsets])
        for lo, hi in spans:
            trained |= (starts < hi) & (ends > lo)
        trained[0] = False  # nothing comes before the first token to predict it from
    return ids, trained


def encode_chat(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Render a conversation with the tokenizer's chat template; train every assistant turn.

    An assistant turn's span is what the template adds for it beyond the generation prompt: the text between
    `render(turns before, add_generation_prompt=True)` and `render(turns through it)`, without trailing
    whitespace (the separator before the next turn), so its end-of-turn token is trained."""
    full = tokenizer.apply_chat_template(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1])
        if not through.startswith(before) or not full.startswith(through):
            raise DataError(
                f"the chat template renders messages[{i}] differently once later turns are added, so its tokens "
                "cannot be located (start the conversation with a system or user turn)"
            )
        end = len(through.rstrip())
        if end <= len(before):
            raise DataError(f"the chat template renders the assistant turn messages[{i}] as nothing")
        spans.append((len(before), end))
    return _mark(tokenizer, full, spans)


def encode_plain(
    tokenizer: Tokenizer, prompt: str, completion: str, separator: str = "\n", add_eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`prompt + separator + completion` (+ EOS), completion and EOS trained: for base models."""
    head = prompt + separator
    ids, trained = _mark(tokenizer, head + completion, [(len(head), len(head + completion))])
    if add_eos:
        if tokenizer.eos_id is None:
            raise ConfigError("add_eos needs a tokenizer with an EOS token; set add_eos=false")
        ids = np.append(ids, np.int64(tokenizer.eos_id))
        trained = np.append(trained, True)
    return ids, trained


def fit_length(ids: np.ndarray, trained: np.ndarray, max_len: int, truncation: str) -> tuple[np.ndarray, np.ndarray]:
    """The sample cut to `max_len` tokens as `truncation` says (see `InstructFormat`); raises on error."""
    if not trained.any():
        raise DataError("no token is left to train on after tokenising")
    if len(ids) <= max_len:
        return ids, trained
    if truncation != "left":
        raise DataError(
            f"{len(ids)} tokens exceed max_len={max_len}; shorten the row, raise max_len, or set truncation=left"
        )
    first = int(np.argmax(trained))  # trained[0] is False, so first >= 1
    drop = min(len(ids) - max_len, first - 1)
    return ids[drop:][:max_len], trained[drop:][:max_len]


def encode_row(
    tokenizer: Tokenizer, row: dict[str, Any], fmt: InstructFormat, mode: Literal["chat", "plain"] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One row → (ids, trained), checked and fitted to `fmt.max_len`. Errors carry no location."""
    content = row_content(row, mode or fmt.resolve(tokenizer))
    if isinstance(content, tuple):
        ids, trained = encode_plain(tokenizer, *content, separator=fmt.separator, add_eos=fmt.add_eos)
    else:
        ids, trained = encode_chat(tokenizer, content)
    return fit_length(ids, trained, fmt.max_len, fmt.truncation)


def load_instruct_jsonl(
    path: str | Path, tokenizer: Tokenizer, fmt: InstructFormat, task: str | None = None
) -> list[Sample]:
    """Every row of a JSONL file as a `Sample` of task `task` (default: the file's stem). All rows are
    checked first; the first bad one raises a DataError naming `path:line`, and nothing is returned."""
    path = Path(path)
    mode = fmt.resolve(tokenizer)
    name = task if task is not None else path.stem
    samples = []
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        try:
            ids, trained = encode_row(tokenizer, row, fmt, mode)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        samples.append(Sample(ids, trained, name, where))
    return samples
