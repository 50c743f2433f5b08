"""Chains: a flat sequence of steps (prompt → LLM → parser, with tools and retrievers between) run with
`invoke`, `batch` or `stream`, and composed with `|`.

Nothing is hidden: a prompt is the template you wrote, filled in, and every step a chain runs (prompt,
LLM call, parser, tool, retriever, function) appends one `TraceEvent` with its inputs, output, tokens and
latency to the `Trace` passed in, so the exact text the model saw can be printed or saved as JSONL.

    qa = prompt("Q: {question}\\nA:") | llm_step(llm, max_tokens=64) | final_answer()
    trace = Trace()
    qa.invoke({"question": "What is 2 + 3?"}, trace)
    trace.print()

`batch` runs every step over all inputs before the next step, so an LLM step sends one `llm.batch` call
(the engine decodes the rows together); `stream` yields the text of the chain's last LLM step as it comes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmstack.augment.llm import LLM, LLMResult, check_input, resolve_params
from lmstack.data.tasks.answers import extract_answer
from lmstack.data.tasks.common import read_jsonl
from lmstack.errors import ConfigError, LMStackError
from lmstack.fileio import write_jsonl

KINDS = ("prompt", "llm", "parser", "retriever", "tool", "fn")


class ParseError(LMStackError, ValueError):
    """A parser found nothing to parse; `text` is the whole text it was given."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


# ---------------------------------------------------------------------------------------------- trace


@dataclass
class TraceEvent:
    """One step's run. Token counts are the LLM's own (0 for other steps); `index` is the input's position
    in a `batch` (None for invoke/stream); `details` holds an LLM call's model, finish reason and params."""

    kind: str
    name: str
    inputs: Any
    output: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    index: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trace:
    """The events of one or more chain runs, in the order the steps ran."""

    events: list[TraceEvent] = field(default_factory=list)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def totals(self) -> dict[str, Any]:
        """What the runs cost: LLM calls, tokens, and the sum of the steps' latencies."""
        llm = [e for e in self.events if e.kind == "llm"]
        return {
            "llm_calls": len(llm),
            "prompt_tokens": sum(e.prompt_tokens for e in llm),
            "completion_tokens": sum(e.completion_tokens for e in llm),
            "latency_s": sum(e.latency_s for e in self.events),
            "errors": sum(e.error is not None for e in self.events),
        }

    def format(self, width: int | None = None) -> str:
        """Human-readable, one block per event. Texts are shown whole unless `width` caps each value."""

        def show(value: Any) -> str:
            text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
            if width is not None and len(text) > width:
                text = text[:width] + f"... (+{len(text) - width} chars)"
            return text.replace("\n", "\n      ")

        blocks = []
        for i, e in enumerate(self.events, 1):
            head = f"[{i}] {e.kind} {e.name}" + (f" #{e.index}" if e.index is not None else "")
            head += f"  {e.latency_s * 1000:.1f} ms"
            if e.kind == "llm":
                head += f"  {e.prompt_tokens} prompt + {e.completion_tokens} completion tokens"
                if e.details.get("finish_reason"):
                    head += f"  ({e.details['finish_reason']})"
            lines = [head, f"  in:  {show(e.inputs)}"]
            lines.append(f"  err: {e.error}" if e.error is not None else f"  out: {show(e.output)}")
            blocks.append("\n".join(lines))
        return "\n".join(blocks)

    def print(self, width: int | None = None) -> None:
        print(self.format(width))

    def save_jsonl(self, path: str | Path) -> int:
        """One JSON object per event (values that are not JSON become their repr); returns the count."""
        return write_jsonl(path, (jsonable(e) for e in self.events))

    @staticmethod
    def load_jsonl(path: str | Path) -> Trace:
        names = {f.name for f in dataclasses.fields(TraceEvent)}
        return Trace([TraceEvent(**{k: v for k, v in row.items() if k in names}) for row in read_jsonl(path)])


def jsonable(value: Any) -> Any:
    """`value` as JSON types: dataclasses become dicts, tuples lists, anything else unknown its repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return repr(value)


# ---------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One step: `fn(value) -> value`, or for an LLM step the model and its call parameters."""

    name: str
    kind: str
    fn: Callable[[Any], Any] | None = None
    llm: LLM | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chain:
    """Steps run in order, each on the previous one's output. `a | b` is one flat chain of both's steps; a
    plain function on either side of `|` becomes an "fn" step."""

    steps: tuple[Step, ...]

    def __or__(self, other: Chain | Callable[[Any], Any]) -> Chain:
        return Chain(self.steps + as_chain(other).steps)

    def __ror__(self, other: Callable[[Any], Any]) -> Chain:
        return Chain(as_chain(other).steps + self.steps)

    def invoke(self, value: Any, trace: Trace | None = None) -> Any:
        """The chain's output for one input; events go to `trace` (if given)."""
        for step in self.steps:
            value = run_step(step, value, trace)
        return value

    def batch(self, values: Sequence[Any], trace: Trace | None = None) -> list[Any]:
        """Outputs for many inputs, step by step: an LLM step makes ONE `llm.batch` call for all of them,
        other steps map over them. The first error raises (after its event is recorded)."""
        values = list(values)
        for step in self.steps:
            if step.kind == "llm" and values:
                values = run_llm_batch(step, values, trace)
            else:
                values = [run_step(step, v, trace, index=i) for i, v in enumerate(values)]
        return values

    def stream(self, value: Any, trace: Trace | None = None) -> ChainStream:
        """The last LLM step's text pieces as they come (through `llm.stream`); the steps before it run as in
        `invoke` when iteration starts, the steps after it (parsers) on the whole text at the end, and
        `.value` then holds the chain's output. A chain without an LLM step cannot stream."""
        last = max((i for i, s in enumerate(self.steps) if s.kind == "llm"), default=None)
        if last is None:
            raise ConfigError("stream() yields an LLM step's text, and this chain has no llm step: use invoke()")
        return ChainStream(self._stream(value, last, trace))

    def _stream(self, value: Any, last: int, trace: Trace | None) -> Generator[str, None, Any]:
        for step in self.steps[:last]:
            value = run_step(step, value, trace)
        step = self.steps[last]
        event = TraceEvent("llm", step.name, value, details={"params": dict(step.params)})
        pieces: list[str] = []
        start = time.perf_counter()
        stream = None
        try:
            stream = step.llm.stream(check_input(value), **step.params)
            for piece in stream:
                pieces.append(piece)
                yield piece
        except GeneratorExit:
            event.error = "the stream was closed before its end"
            raise
        except Exception as exc:
            event.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if event.error is not None and hasattr(stream, "close"):
                stream.close()
            event.latency_s = time.perf_counter() - start
            result = getattr(stream, "result", None)
            if isinstance(result, LLMResult):
                record_result(event, result)
            else:  # an iterator without a result: the text is what came, the tokens are unknown
                event.output = "".join(pieces)
            add(trace, event)
        value = event.output
        for step in self.steps[last + 1 :]:
            value = run_step(step, value, trace)
        return value


class ChainStream:
    """Iterate for the text pieces; once exhausted, `value` holds the chain's output."""

    def __init__(self, pieces: Generator[str, None, Any]) -> None:
        self._pieces = pieces
        self.value: Any = None
        self.done = False

    def __iter__(self) -> ChainStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as stop:
            self.value, self.done = stop.value, True
            raise

    def close(self) -> None:
        """Stop early: ends the LLM's stream and records its event with the text so far."""
        self._pieces.close()


def as_chain(x: Chain | Callable[[Any], Any]) -> Chain:
    if isinstance(x, Chain):
        return x
    if callable(x):
        return step(x)
    raise ConfigError(f"a chain is made of steps (prompt(), llm_step(), a function, ...), not {type(x).__name__}")


def add(trace: Trace | None, event: TraceEvent) -> None:
    if trace is not None:
        trace.events.append(event)


def record_result(event: TraceEvent, result: LLMResult) -> None:
    event.output = result.text
    event.prompt_tokens, event.completion_tokens = result.prompt_tokens, result.completion_tokens
    event.latency_s = result.latency_s
    event.details.update(model=result.model, finish_reason=result.finish_reason)


def call_llm(step: Step, value: Any) -> LLMResult:
    value = check_input(value)
    if isinstance(value, str):
        return step.llm.complete(value, **step.params)
    return step.llm.chat(value, **step.params)


def run_step(step: Step, value: Any, trace: Trace | None, index: int | None = None) -> Any:
    """Run one step on one value, recording its event (with the error, if it raises)."""
    event = TraceEvent(step.kind, step.name, value, index=index)
    if step.kind == "llm":
        event.details["params"] = dict(step.params)
    start = time.perf_counter()
    try:
        out = call_llm(step, value) if step.kind == "llm" else step.fn(value)
    except Exception as exc:
        event.latency_s, event.error = time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
        add(trace, event)
        raise
    event.latency_s, event.output = time.perf_counter() - start, out
    if isinstance(out, LLMResult) and step.kind == "llm":
        record_result(event, out)  # the model's own latency, and text (not the whole result) flows on
        out = out.text
    add(trace, event)
    return out


def run_llm_batch(step: Step, values: list[Any], trace: Trace | None) -> list[str]:
    """One `llm.batch` call for all values; one event per input (each with the batch's latency, as the
    rows decode together)."""
    start = time.perf_counter()
    try:
        results = step.llm.batch([check_input(v) for v in values], **step.params)
        if len(results) != len(values):
            raise ConfigError(f"{step.name}: llm.batch returned {len(results)} results for {len(values)} inputs")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        latency, details = time.perf_counter() - start, {"params": dict(step.params)}
        add(trace, TraceEvent("llm", step.name, values, latency_s=latency, error=error, details=details))
        raise
    for i, (value, result) in enumerate(zip(values, results)):
        event = TraceEvent("llm", step.name, value, index=i, details={"params": dict(step.params)})
        record_result(event, result)
        add(trace, event)
    return [r.text for r in results]


def step(fn: Callable[[Any], Any], name: str | None = None, kind: str = "fn") -> Chain:
    """A chain of one step that calls `fn(value)`; its name in the trace defaults to the function's."""
    if kind not in KINDS or kind == "llm":
        raise ConfigError(f"step kind must be one of {', '.join(k for k in KINDS if k != 'llm')}, got {kind!r}")
    if not callable(fn):
        raise ConfigError(f"a step needs a callable, got {type(fn).__name__}")
    return Chain((Step(name or getattr(fn, "__name__", kind), kind, fn),))


def tool(name: str, fn: Callable[[Any], Any]) -> Chain:
    """A tool call (calculator, search API, sandbox) as a traced step."""
    return step(fn, name, "tool")


def retriever(name: str, fn: Callable[[Any], Any]) -> Chain:
    """A retrieval call (query in, documents out) as a traced step."""
    return step(fn, name, "retriever")


def llm_step(llm: LLM, name: str | None = None, **params: Any) -> Chain:
    """Call `llm`: a string input goes to `complete`, a message list to `chat`. The parameters (max_tokens,
    temperature, top_p, stop, seed) are checked now, so a typo fails when the chain is built."""
    resolve_params(params)
    label = name or str(getattr(llm, "name", None) or getattr(llm, "model", None) or type(llm).__name__)
    return Chain((Step(label, "llm", llm=llm, params=dict(params)),))


# ---------------------------------------------------------------------------------------------- prompts

_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


def template_fields(template: str) -> list[str]:
    """The `{name}` fields of a template, in order of first appearance."""
    return list(dict.fromkeys(_FIELD.findall(template)))


def _fields_of(values: Mapping[str, Any] | str, wanted: list[str], name: str) -> Mapping[str, Any]:
    """The input as a dict of fields: a string fills a prompt's only field."""
    if isinstance(values, str):
        if len(wanted) != 1:
            raise ConfigError(
                f"{name}: a string input fills a prompt with one field; this one has "
                f"{len(wanted)} ({', '.join(wanted) or 'none'}): pass a dict"
            )
        return {wanted[0]: values}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: a prompt's input is a dict of its fields or a string, not {type(values).__name__}")
    missing = [f for f in wanted if f not in values]
    if missing:
        need, have = ", ".join("{" + m + "}" for m in missing), ", ".join(map(str, values)) or "no fields"
        raise ConfigError(f"{name}: the template needs {need}; the input has {have}")
    return values


def render(template: str, values: Mapping[str, Any] | str, name: str = "prompt") -> str:
    """Fill the template's `{name}` fields; any other brace (JSON in an example) is literal text, and there
    are no escapes (`{{x}}` is the field x in braces: pass literal text as a value). A string fills a
    template's only field; a missing field is an error naming it and what the input has."""
    values = _fields_of(values, template_fields(template), name)
    return _FIELD.sub(lambda m: str(values[m.group(1)]), template)


def prompt(template: str, name: str = "prompt") -> Chain:
    """A completion prompt: the template filled from a dict input; the trace records the final text."""
    if not isinstance(template, str):
        raise ConfigError(f"{name}: a template is a string, got {type(template).__name__}")
    return Chain((Step(name, "prompt", lambda values: render(template, values, name)),))


def chat_prompt(user: str, system: str | None = None, name: str = "chat_prompt") -> Chain:
    """A chat prompt: [system,] user messages, both templates filled from the same input."""
    wanted = list(dict.fromkeys(template_fields(system or "") + template_fields(user)))

    def messages(values: Mapping[str, Any] | str) -> list[dict[str, str]]:
        values = _fields_of(values, wanted, name)
        out = [{"role": "system", "content": render(system, values, name)}] if system else []
        return out + [{"role": "user", "content": render(user, values, name)}]

    return Chain((Step(name, "prompt", messages),))


# ---------------------------------------------------------------------------------------------- parsers


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ParseError(f"{name}: parsers take text, got {type(value).__name__}", repr(value))
    return value


def regex(pattern: str, group: int | str = 1, flags: int = 0, name: str = "regex") -> Chain:
    """The given group of the first match of `pattern` (group 0: the whole match); no match is an error
    that shows the text."""
    compiled = re.compile(pattern, flags)
    if isinstance(group, int) and group > compiled.groups:
        raise ConfigError(f"{name}: pattern {pattern!r} has {compiled.groups} group(s), asked for group {group}")
    if isinstance(group, str) and group not in compiled.groupindex:
        raise ConfigError(f"{name}: pattern {pattern!r} has no group named {group!r}")

    def parse(value: Any) -> str:
        text = _text(value, name)
        match = compiled.search(text)
        if match is None:
            raise ParseError(f"{name}: no match for {pattern!r} in {text!r}", text)
        return match.group(group)

    return Chain((Step(name, "parser", parse),))


def parse_json(text: str) -> Any:
    """The first JSON object or array in `text` (prose and code fences around it are skipped)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    raise ParseError(f"no JSON object or array in {text!r}", text)


def json_output(name: str = "json") -> Chain:
    """Parse the first JSON object or array in the text."""

    def parse(value: Any) -> Any:
        text = _text(value, name)
        try:
            return parse_json(text)
        except ParseError as exc:
            raise ParseError(f"{name}: {exc}", text) from None

    return Chain((Step(name, "parser", parse),))


def final_answer(name: str = "final_answer") -> Chain:
    """The number after the last "The answer is" (else the last number), as `answers.extract_answer` reads
    it; text without a number is an error."""

    def parse(value: Any) -> float:
        text = _text(value, name)
        answer = extract_answer(text)
        if answer is None:
            raise ParseError(f"{name}: no number in {text!r}", text)
        return answer

    return Chain((Step(name, "parser", parse),))


__all__ = [
    "KINDS",
    "Chain",
    "ChainStream",
    "ParseError",
    "Step",
    "Trace",
    "TraceEvent",
    "chat_prompt",
    "final_answer",
    "json_output",
    "jsonable",
    "llm_step",
    "parse_json",
    "prompt",
    "regex",
    "render",
    "retriever",
    "step",
    "template_fields",
    "tool",
]
