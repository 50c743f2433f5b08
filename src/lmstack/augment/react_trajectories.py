"""ReAct training traces for the agent's LoRA, built from the knowledge-base task and our own tools.

SmolLM2-135M given the few-shot ReAct prompt rarely searches for the right thing and never for the second hop.
These traces show it, with nothing written by hand: for each knowledge-base question the expert's steps are
written from its recorded evidence (which fact of which entity, the gold answer), and every observation is
what the agent's own tools return (`react.default_tools`, called exactly as `lmstack agent` calls them):

    Thought: I need the maker of Moudes Meridian.
    Action: search[Moudes Meridian]
    Observation: <<<passage [1] source="…" chars=0-97>>> … made by Pounev Press … <<<end passage [1]>>> …
    Thought: The maker of Moudes Meridian is Pounev Press. I need the headquarters of Pounev Press.
    Action: search[Pounev Press]                                  <- the bridge a found passage names
    Observation: …
    Thought: The headquarters of Pounev Press is Skiivar. The answer is Skiivar.
    Action: finish[Skiivar]

A difference of years or counts is computed with `python[answer = 2021 - 2009]` (the sandbox's real output
is the observation). Queries name an entity the trace already knows: one the question names, or the value
of a fact already found (`rag.trajectories.next_query`), never a name only the gold evidence knows. A
question whose facts the real retrieval does not surface within the search budget, or whose trace would not
fit the agent's step budget, is left out (counted).

One training row per step: `prompt` is `react_prompt(question, steps so far, examples=(), instruction=
INSTRUCTION)`, exactly what `run_react_many` sends with the adapter on, and `completion` is the step as the
model writes it before the stop sequence (" thought\\nAction: tool[argument]"). Observations sit in the
prompts only, so they are never trained.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmstack.augment.rag.embed import Embedder
from lmstack.augment.rag.index import RagIndex
from lmstack.augment.rag.retrieve import Hit, Mode, search
from lmstack.augment.rag.trajectories import holds, kb_indexes, next_query
from lmstack.augment.react import (
    FINISH,
    INSTRUCTION,
    ReActStep,
    Tool,
    default_tools,
    observation_text,
    react_prompt,
)
from lmstack.data.tasks.answers import format_number, normalize_text
from lmstack.errors import ConfigError
from lmstack.fileio import write_json, write_jsonl

NOUNS = {  # how a thought names a fact; others read as their name with spaces
    "birth_year": "birth year",
    "birth_city": "birth city",
    "hq": "headquarters",
    "studied_at": "school",
    "host": "host city",
    "launched": "launch year",
    "founded": "founding year",
    "employees": "number of employees",
}
LEFT_OUT = ("not_found", "steps", "python")  # why a question gets no trace


@dataclass
class ReActTraceConfig:
    k: int = 3  # passages per search (`lmstack agent --k`)
    mode: Mode = "hybrid"  # `lmstack agent --retrieval`
    searches: int = 4  # searches allowed per question
    max_steps: int = 6  # `lmstack agent --max-steps`: a longer trace is left out
    max_observation_chars: int = 1500  # run_react_many's cap on an observation


@dataclass
class ExpertTrace:
    """One question's expert steps, or why there are none (`left_out`, one of LEFT_OUT)."""

    steps: list[ReActStep] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    left_out: str | None = None


def noun(fact: str) -> str:
    return NOUNS.get(fact, fact.replace("_", " "))


def fact_sentence(ev: Mapping[str, Any]) -> str:
    return f"The {noun(ev['fact'])} of {ev['entity']} is {ev['value']}."


def step_completion(step: ReActStep) -> str:
    """The step as the model writes it after the prompt's open "Thought:" (up to the stop sequence)."""
    return f" {step.thought}\nAction: {step.action}[{step.argument}]"


def _known(row: Mapping[str, Any], stated: list[dict[str, Any]], entity: str) -> bool:
    """Whether the trace knows `entity`: the question names it, or a stated fact gave it as its value."""
    name = normalize_text(entity)
    return f" {name} " in f" {normalize_text(row['question'])} " or any(
        normalize_text(ev["value"]) == name for ev in stated
    )


def _newly_known(row: Mapping[str, Any], hits: list[Hit], stated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The facts the hits hold that a thought may state now, in evidence order: those of an entity the trace
    knows, taken until nothing changes (a fact's value can make the next fact's entity known)."""
    new: list[dict[str, Any]] = []
    while True:
        more = [
            ev
            for ev in row["evidence"]
            if ev not in stated + new and any(holds(h, ev) for h in hits) and _known(row, stated + new, ev["entity"])
        ]
        if not more:
            return new
        new += more


def _next_search(
    row: Mapping[str, Any], hits: list[Hit], stated: list[dict[str, Any]], asked: set[str]
) -> tuple[str, str, list[dict[str, Any]]] | None:
    """(query, entity, facts wanted) for the next search, or None: `next_query` over the entities the trace
    knows (the bridge first); when each of those was searched already, the entity with a fact noun."""
    missing = [ev for ev in row["evidence"] if ev not in stated]
    unknown = {ev["entity"] for ev in row["evidence"] if not _known(row, stated, ev["entity"])}
    entity = query = next_query(dict(row), hits, asked | unknown)
    if entity is None:
        fallbacks = [(ev["entity"], f"{ev['entity']} {noun(ev['fact'])}") for ev in missing]
        entity, query = next(((e, q) for e, q in fallbacks if e not in unknown and q not in asked), (None, None))
    if entity is None or query is None:
        return None
    return query, entity, [ev for ev in missing if ev["entity"] == entity]


def react_trace(
    row: Mapping[str, Any], tools: Mapping[str, Tool], index: RagIndex, embedder: Embedder | None, cfg: ReActTraceConfig
) -> ExpertTrace:
    """The expert's steps for one knowledge-base question, with the tools' real observations."""
    hits: list[Hit] = []
    stated: list[dict[str, Any]] = []
    asked: set[str] = set()
    out = ExpertTrace()
    while True:
        new = _newly_known(row, hits, stated)
        stated += new
        said = " ".join(fact_sentence(ev) for ev in new)
        if len(stated) == len(row["evidence"]):
            break
        found = _next_search(row, hits, stated, asked) if len(asked) < cfg.searches else None
        if found is None:
            return ExpertTrace(out.steps, out.queries, "not_found")
        query, entity, wanted = found
        nouns = " and ".join(dict.fromkeys(noun(ev["fact"]) for ev in wanted))
        thought = f"{said} I need the {nouns} of {entity}.".strip()
        observation = observation_text(tools["search"](query), cfg.max_observation_chars)
        out.steps.append(ReActStep(thought, "search", query, observation))
        out.queries.append(query)
        asked.add(query)
        hits += search(index, query, embedder, k=cfg.k, mode=cfg.mode)
    answer = str(row["answer"])
    if row.get("operation") == "subtract":
        a, b = (format_number(x) for x in row["operands"])
        code = f"answer = {a} - {b}"
        observation = observation_text(tools["python"](code), cfg.max_observation_chars)
        out.steps.append(ReActStep(f"{said} I compute {a} - {b}.".strip(), "python", code, observation))
        if observation != f"result: {answer}":
            return ExpertTrace(out.steps, out.queries, "python")
        said = ""
    out.steps.append(ReActStep(f"{said} The answer is {answer}.".strip(), FINISH, answer, None))
    for step in out.steps:
        step.raw = step_completion(step)
    if len(out.steps) > cfg.max_steps:
        return ExpertTrace(out.steps, out.queries, "steps")
    return out


def trace_rows(row: Mapping[str, Any], steps: list[ReActStep]) -> list[dict[str, Any]]:
    """One training row per step: the zero-shot prompt `run_react_many` sends with the adapter on, and the
    step's text as the completion."""
    return [
        {
            "id": row["id"],
            "type": row["type"],
            "step": i,
            "action": step.action,
            "prompt": react_prompt(row["question"], steps[:i], examples=(), instruction=INSTRUCTION),
            "completion": step_completion(step),
        }
        for i, step in enumerate(steps)
    ]


@dataclass
class ReActTraceReport:
    written: int = 0  # questions with a trace
    rows: int = 0  # training rows (one per step)
    left_out: Counter = field(default_factory=Counter)  # by reason (LEFT_OUT)
    by_type: Counter = field(default_factory=Counter)
    searches: Counter = field(default_factory=Counter)  # traces by number of searches
    actions: Counter = field(default_factory=Counter)  # rows by action
    max_chars: int = 0  # the longest prompt + completion

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "rows": self.rows,
            "left_out": sum(self.left_out.values()),
            "left_out_by_reason": dict(sorted(self.left_out.items())),
            "by_type": dict(sorted(self.by_type.items())),
            "searches": {str(k): v for k, v in sorted(self.searches.items())},
            "actions": dict(sorted(self.actions.items())),
            "max_chars": self.max_chars,
        }


def write_react_trajectories(
    rows: list[dict[str, Any]], index: RagIndex, embedder: Embedder | None, out: str | Path, cfg: ReActTraceConfig
) -> ReActTraceReport:
    """The step rows of every question's trace as JSONL (written atomically), through the agent's own tools."""
    if cfg.searches < 1 or cfg.max_steps < 2 or cfg.k < 1:
        raise ConfigError(f"need searches >= 1, max_steps >= 2 and k >= 1, got {cfg}")
    tools = default_tools(index, embedder, k=cfg.k, mode=cfg.mode)
    report, lines = ReActTraceReport(), []
    for row in rows:
        made = react_trace(row, tools, index, embedder, cfg)
        if made.left_out is not None:
            report.left_out[made.left_out] += 1
            continue
        step_rows = trace_rows(row, made.steps)
        report.written += 1
        report.rows += len(step_rows)
        report.by_type[row["type"]] += 1
        report.searches[len(made.queries)] += 1
        report.actions.update(r["action"] for r in step_rows)
        report.max_chars = max([report.max_chars, *(len(r["prompt"] + r["completion"]) for r in step_rows)])
        lines += step_rows
    write_jsonl(out, lines)
    return report


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread, restored after. The encodes here are one short query at a time (and
    ingest's small batches), which more threads do not speed up; on shared, busy cores every op then waits
    for a second core (measured on 2 loaded cores: 6 ms a search with one thread, 15-300 ms with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_react_data(
    out_dir: str | Path,
    embedder: Embedder,
    n: int = 2000,
    n_val: int = 60,
    seed: int = 0,
    cfg: ReActTraceConfig | None = None,
) -> dict[str, Any]:
    """The ReAct fine-tuning data: for the knowledge-base train and validation splits (each its own world), the
    documents, an index of them (`rag.trajectories.kb_indexes`) and `<split>.jsonl` step rows; `report.json`
    holds the arguments and the counts."""
    cfg = cfg or ReActTraceConfig()
    out = Path(out_dir)
    report: dict[str, Any] = {"n": n, "n_val": n_val, "seed": seed, "config": asdict(cfg), "splits": {}}
    with one_thread():
        for split, data, index in kb_indexes(out, embedder, n, n_val, seed):
            made = write_react_trajectories(data["items"], index, embedder, out / f"{split}.jsonl", cfg)
            report["splits"][split] = made.to_dict() | {"documents": len(data["documents"])}
    write_json(out / "report.json", report)
    return report


__all__ = [
    "LEFT_OUT",
    "NOUNS",
    "ReActTraceConfig",
    "ReActTraceReport",
    "ExpertTrace",
    "fact_sentence",
    "make_react_data",
    "one_thread",
    "react_trace",
    "step_completion",
    "trace_rows",
    "write_react_trajectories",
]
