"""Grounded-answer conversations for fine-tuning, built from the knowledge-base task and our own retrieval.

A 135M model given retrieved passages rarely answers from them and never cites them. These conversations show
it how, with nothing written by hand: each knowledge-base question is run through the real index (the same
`retrieve.search` that `lmstack rag ask` uses), and the assistant turns are written from the question's
recorded evidence (which fact of which entity, the gold answer):

    system: SEARCH_INSTRUCTION
    user:   [1] … [4] passages retrieved for the question, then "Question: …"
    assistant: Search: Latin Munezot                  <- only when the passages lack a needed fact
    user:   [5] … passages retrieved for that query (new ones only)
    assistant: Starut Academy: founder Latin Munezot [2]. Latin Munezot: born in 1938 [5].
               Answer: 1938

A follow-up query names the next entity of the evidence chain: the bridge that a passage already found
points to ("the founder of X" → the founder's name), or else an entity the question names whose fact is still
missing. A question whose facts real retrieval does not find within the search budget is left out (counted),
so no conversation cites a passage that does not hold what it claims. A share of `unanswerable` conversations
hide the question's evidence documents from both retrievals and end in "I don't know." — the answer when the
sources lack the facts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmstack.augment.llm import Message
from lmstack.augment.rag.answer import SEARCH_INSTRUCTION, follow_up_message, grounded_messages
from lmstack.augment.rag.embed import Embedder
from lmstack.augment.rag.index import RagIndex
from lmstack.augment.rag.retrieve import Hit, Mode, search
from lmstack.data.tasks.answers import format_number, normalize_text
from lmstack.errors import ConfigError
from lmstack.fileio import write_json, write_jsonl

IDK = "I don't know."
FACT_WORDS = {  # how a fact reads in a cited line; others read as their name with spaces
    "birth_year": "born in",
    "birth_city": "born in the city of",
    "hq": "headquarters in",
    "studied_at": "studied at",
    "year": "held in",
    "host": "hosted in",
    "launched": "launched in",
    "founded": "founded in",
    "maker": "made by",
    "organiser": "organised by",
}


def write_kb_folder(documents: Iterable[dict[str, Any]], root: str | Path) -> Path:
    """One `<id>.txt` per knowledge-base document, its title as the first line: a folder for `rag ingest`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for doc in documents:
        (root / f"{doc['id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
    return root


def doc_id(hit: Hit) -> str:
    """The knowledge-base document a hit comes from (its file is `<id>.txt`)."""
    return Path(hit.path).stem


def holds(hit: Hit, evidence: dict[str, Any]) -> bool:
    """Whether the hit states the fact: it is the evidence's document, or (a paraphrase elsewhere) it names
    both the entity and the value."""
    if doc_id(hit) == evidence["doc_id"]:
        return True
    text = f" {normalize_text(hit.text)} "
    return all(f" {normalize_text(s)} " in text for s in (evidence["entity"], evidence["value"]))


def _source(hits: list[Hit], evidence: dict[str, Any]) -> int | None:
    return next((n for n, h in enumerate(hits, start=1) if holds(h, evidence)), None)


def answer_turn(row: dict[str, Any], hits: list[Hit]) -> str | None:
    """Each evidence fact with the number of the first passage that holds it, then `Answer: …` (for a
    difference of years, the subtraction too); None while some fact is in no passage."""
    lines = []
    for ev in row["evidence"]:
        n = _source(hits, ev)
        if n is None:
            return None
        lines.append(f"{ev['entity']}: {FACT_WORDS.get(ev['fact'], ev['fact'].replace('_', ' '))} {ev['value']} [{n}].")
    final = row["answer"]
    if row.get("operation") == "subtract":
        a, b = row["operands"]
        final = f"{format_number(a)} - {format_number(b)} = {row['answer']}"
    return " ".join(lines) + f"\nAnswer: {final}"


def next_query(row: dict[str, Any], hits: list[Hit], asked: set[str]) -> str | None:
    """What to look up next: the value of a found fact that names the entity of a missing one (the bridge of a
    multi-hop chain), else the entity of the first missing fact; never a query already asked."""
    missing = [ev for ev in row["evidence"] if _source(hits, ev) is None]
    found = [ev for ev in row["evidence"] if _source(hits, ev) is not None]
    wanted = {normalize_text(ev["entity"]) for ev in missing}
    bridges = [ev["value"] for ev in found if normalize_text(ev["value"]) in wanted]
    for query in [*bridges, *(ev["entity"] for ev in missing)]:
        if query not in asked:
            return query
    return None


@dataclass
class TrajectoryConfig:
    k: int = 3  # passages per retrieval (as `rag ask --k`)
    mode: Mode = "hybrid"
    searches: int = 3  # follow-up searches allowed (as `rag ask --searches`)
    unanswerable: float = 0.08  # share of conversations whose evidence is hidden, ending in IDK
    instruction: str = SEARCH_INSTRUCTION
    seed: int = 0

    def __post_init__(self) -> None:  # before any document is embedded
        if self.k < 1 or self.searches < 0:
            raise ConfigError(f"need k >= 1 and searches >= 0, got k={self.k}, searches={self.searches}")
        if not 0.0 <= self.unanswerable < 1.0:
            raise ConfigError(f"unanswerable must be in [0, 1), got {self.unanswerable}")


def trajectory(
    row: dict[str, Any], index: RagIndex, embedder: Embedder | None, cfg: TrajectoryConfig, hide: bool = False
) -> list[Message] | None:
    """The conversation for one question, or None when retrieval does not find its facts within the budget.
    `hide` drops the question's evidence documents (and any passage holding one of its facts) from every
    retrieval, so the conversation searches once for the question's entity and ends in IDK."""

    def retrieve(query: str, seen: set[int]) -> list[Hit]:
        pool = search(index, query, embedder, k=cfg.k + (12 if hide else 0), mode=cfg.mode)
        if hide:
            pool = [h for h in pool if not any(holds(h, ev) for ev in row["evidence"])]
        return [h for h in pool if h.chunk_id not in seen][: cfg.k]

    hits = retrieve(row["question"], set())
    messages = grounded_messages(row["question"], hits, cfg.instruction)
    if hide:
        query = row["evidence"][0]["entity"]
        fresh = retrieve(query, {h.chunk_id for h in hits})
        turn = follow_up_message(query, fresh, len(hits) + 1)
        return [*messages, {"role": "assistant", "content": f"Search: {query}"}, turn, _say(IDK)]
    asked: set[str] = set()
    for _ in range(cfg.searches + 1):
        final = answer_turn(row, hits)
        if final is not None:
            return [*messages, _say(final)]
        query = next_query(row, hits, asked)
        if query is None or len(asked) == cfg.searches:
            return None
        asked.add(query)
        fresh = retrieve(query, {h.chunk_id for h in hits})
        messages += [_say(f"Search: {query}"), follow_up_message(query, fresh, len(hits) + 1)]
        hits += fresh
    return None


def _say(text: str) -> Message:
    return {"role": "assistant", "content": text}


@dataclass
class TrajectoryReport:
    written: int = 0
    left_out: int = 0  # retrieval did not find the facts within the search budget
    by_type: Counter = field(default_factory=Counter)
    searches: Counter = field(default_factory=Counter)  # conversations by number of follow-up searches
    unanswerable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "left_out": self.left_out,
            "unanswerable": self.unanswerable,
            "by_type": dict(sorted(self.by_type.items())),
            "searches": {str(k): v for k, v in sorted(self.searches.items())},
        }


def write_trajectories(
    rows: list[dict[str, Any]], index: RagIndex, embedder: Embedder | None, out: str | Path, cfg: TrajectoryConfig
) -> TrajectoryReport:
    """Conversations for `rows` as JSONL (`messages` plus the question's id, type and gold answer), written
    atomically; which rows become unanswerable is drawn from `cfg.seed`."""
    rng = random.Random(f"trajectories:{cfg.seed}")
    report = TrajectoryReport()
    lines = []
    for row in rows:
        hide = rng.random() < cfg.unanswerable
        messages = trajectory(row, index, embedder, cfg, hide=hide)
        if messages is None:
            report.left_out += 1
            continue
        report.written += 1
        report.unanswerable += hide
        report.by_type["unanswerable" if hide else row["type"]] += 1
        report.searches[sum(m["content"].startswith("Search:") for m in messages if m["role"] == "assistant")] += 1
        answer = IDK if hide else row["answer"]
        lines.append({"id": row["id"], "type": row["type"], "answer": answer, "messages": messages})
    write_jsonl(out, lines)
    return report


def kb_indexes(
    out_dir: str | Path, embedder: Embedder, n: int, n_val: int, seed: int
) -> Iterator[tuple[str, dict[str, Any], RagIndex]]:
    """(split, task data, open index) for the knowledge-base train and validation splits (each its own world;
    a split of count 0 is skipped): the documents written as `<split>/documents` and ingested into
    `<split>/index`. Shared by the grounded-answer and the ReAct training data."""
    from lmstack.augment.rag.ingest import ingest
    from lmstack.data.tasks import generate

    out = Path(out_dir)
    for split, count in (("train", n), ("validation", n_val)):
        if count <= 0:
            continue
        data = generate("knowledge_base", count, seed=seed, split=split)
        folder = write_kb_folder(data["documents"], out / split / "documents")
        ingest(folder, out / split / "index", embedder)
        with RagIndex.open(out / split / "index", embedder) as index:
            yield split, data, index


def make_grounded_data(
    out_dir: str | Path,
    embedder: Embedder,
    n: int = 2000,
    n_val: int = 100,
    seed: int = 0,
    cfg: TrajectoryConfig | None = None,
) -> dict[str, Any]:
    """The grounded-answer fine-tuning data: for the knowledge-base train and validation splits (each its own
    world), the documents as a folder, an index of them, and `<split>.jsonl` conversations; `report.json`
    holds the arguments and the counts."""
    cfg = cfg or TrajectoryConfig(seed=seed)
    out = Path(out_dir)
    report: dict[str, Any] = {"n": n, "n_val": n_val, "seed": seed, "config": cfg.__dict__ | {}, "splits": {}}
    for split, data, index in kb_indexes(out, embedder, n, n_val, seed):
        made = write_trajectories(data["items"], index, embedder, out / f"{split}.jsonl", cfg)
        report["splits"][split] = made.to_dict() | {"documents": len(data["documents"])}
    write_json(out / "report.json", report)
    return report


__all__ = [
    "FACT_WORDS",
    "IDK",
    "TrajectoryConfig",
    "TrajectoryReport",
    "answer_turn",
    "doc_id",
    "holds",
    "kb_indexes",
    "make_grounded_data",
    "next_query",
    "trajectory",
    "write_kb_folder",
    "write_trajectories",
]
