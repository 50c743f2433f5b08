"""`make demo` / `lmstack demo`: the augment survey's tour, on embedded defaults only (SmolLM2-135M-Instruct,
all-MiniLM-L6-v2, the shipped knowledge-base sample and lmstack's own docs/): 23 s on 2 CPU cores with the
shipped adapters (measured; the first run also embeds the index).

1. rag: a knowledge-base question the bare model gets wrong closed-book, then the retrieval-augmented
   answer with its citations (file:start-end);
2. math: a held-out math word problem answered directly, with few-shot chain-of-thought and with PAL (the
   shipped PAL adapter writes a program, the sandbox runs it, and refuses a hostile one);
3. react: a multi-hop question solved by a ReAct agent (search, lookup, python, finish), with its trace.

A closing table lists what each step measured (method, answer, gold, right?, seconds). `--step` runs one
step alone. SmolLM2 is loaded once; each shipped adapter (pal, rag, react) is merged into its weights for
its step and taken out again, and a step whose adapter is not installed runs the bare model, with a note.
Questions are picked by type from the shipped sample (the first of its type), and answers are scored as
the benchmarks score them. The index (the sample's documents plus docs/*.md) lives in runs/demo/ under the
repository (a temporary folder elsewhere); ingest is incremental, so a second run embeds nothing.
The tiny-GPT pretraining that once opened this demo is a recipe: `lmstack train recipes/pretrain_gpt_tiny.yaml`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from lmstack.augment.llm import LocalLLM
    from lmstack.augment.rag.embed import Embedder
    from lmstack.augment.rag.index import RagIndex

STEPS = ("rag", "math", "react")
MODEL = "smollm2-135m-instruct"
HOSTILE = "import os\n\ndef solution():\n    return os.popen('cat /etc/passwd').read()\n"
DIRECT_INSTRUCTION = "Answer with the final number only."
K = 3  # passages per retrieval, as `lmstack rag ask` and `lmstack agent`
SEARCHES = 3  # follow-up searches with the grounded-answer adapter, as `lmstack rag ask`
RAG_TYPE, REACT_TYPE = "single_hop", "multi_hop"  # which kind of sample question each step asks
REPO = Path(__file__).resolve().parents[2]  # the repository, when lmstack is installed editable from it
PRETRAIN = "lmstack train recipes/pretrain_gpt_tiny.yaml"


@dataclass
class Row:
    """One line of the closing table: what a step measured."""

    step: str
    method: str
    answer: str
    gold: str
    right: bool | None
    seconds: float


# ---------------------------------------------------------------------------------------------- helpers


def one_line(text: str, limit: int = 160) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(str(text).split()) or "(empty)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mark(right: bool | None) -> str:
    """Rich markup for a right / wrong / unscored answer."""
    return {True: "[green]right[/]", False: "[red]wrong[/]", None: "[dim]-[/]"}[right]


def show(console: Console, label: str, text: str) -> None:
    """`label` in bold, then model or document text (escaped, so that `[x]` in it is not markup)."""
    from rich.markup import escape

    console.print(f"[bold]{escape(label)}[/bold] {escape(text)}", highlight=False)


def find_adapter(name: str) -> Path | None:
    """The shipped adapter `name` (pal, rag, react) when it is installed, else None."""
    from lmstack.errors import CheckpointError
    from lmstack.finetune.load import shipped_adapter

    try:
        return shipped_adapter(name)
    except CheckpointError:
        return None


def missing_note(console: Console, name: str, fallback: str) -> None:
    """The one-line note for a step whose shipped adapter is not installed."""
    from lmstack.finetune.load import ADAPTERS, SHIPPED

    where = ADAPTERS / SHIPPED.get(name, f"smollm2-{name}")
    console.print(f"[yellow]note: the shipped {name!r} adapter is not installed ({where}); {fallback}[/]")


@contextmanager
def adapter_on(llm: LocalLLM, adapter: Path | None, name: str) -> Iterator[LocalLLM]:
    """`llm` with the LoRA `adapter` merged into its weights inside the block, and its own weights back after
    (up to one float rounding per weight); with None, `llm` as it is."""
    if adapter is None:
        yield llm
        return
    from lmstack.finetune.lora import merge_lora, unload_lora
    from lmstack.finetune.lora_peft import load_adapter

    model = llm.engine.model
    load_adapter(model, adapter, name=name)
    try:
        merge_lora(model)
        llm.engine.refresh()  # the engine decodes from packed copies of the weights
        yield llm
    finally:
        unload_lora(model)  # unmerge and drop the adapter layers
        llm.engine.refresh()


def sample_questions(kind: str) -> dict[str, Any]:
    """The first question of type `kind` in the shipped knowledge-base sample."""
    from lmstack.data.tasks.knowledge_base import sample_dir

    with open(sample_dir() / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["type"] == kind:
                return row
    raise LookupError(f"the shipped knowledge-base sample has no {kind} question")


def golds(row: dict[str, Any]) -> list[str]:
    return [row["answer"], *row.get("aliases", [])]


def math_problem() -> dict[str, Any]:
    """The first held-out math word problem (`generate("math_word", 1, seed=0, split="test")`)."""
    from lmstack.data.tasks import generate

    return generate("math_word", 1, seed=0, split="test")["items"][0]


# ---------------------------------------------------------------------------------------------- the index


def repo_docs() -> Path | None:
    """lmstack's own docs/ folder (its *.md files), or None when the package does not sit in its repository."""
    docs = REPO / "docs"
    return docs if (REPO / "pyproject.toml").is_file() and any(docs.glob("*.md")) else None


def build_corpus(folder: Path, docs: Path | None) -> tuple[int, int]:
    """The folder to ingest: the sample's documents as kb/<id>.txt and docs/*.md as docs/<name>.md (none when
    `docs` is None). Returns (KB documents, markdown files)."""
    from lmstack.augment.rag.trajectories import write_kb_folder
    from lmstack.data.tasks.knowledge_base import sample_dir

    with open(sample_dir() / "test_documents.jsonl", encoding="utf-8") as f:
        documents = [json.loads(line) for line in f if line.strip()]
    write_kb_folder(documents, folder / "kb")
    shutil.rmtree(folder / "docs", ignore_errors=True)  # the index mirrors the folder: stale copies go
    pages = sorted(docs.glob("*.md")) if docs is not None else []
    if pages:
        (folder / "docs").mkdir(parents=True)
        for page in pages:
            shutil.copyfile(page, folder / "docs" / page.name)
    return len(documents), len(pages)


def build_index(console: Console, workdir: Path, embedder: Embedder, docs: Path | None) -> RagIndex:
    """Ingest the corpus into workdir/index (incremental: unchanged files cost nothing) and open it."""
    import warnings

    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.rag.ingest import ingest

    start = time.perf_counter()
    n_docs, n_pages = build_corpus(workdir / "corpus", docs)
    if docs is None:
        console.print("[yellow]note: lmstack's docs/ folder was not found; indexing the knowledge-base sample only[/]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty page is not worth a warning here
        report = ingest(workdir / "corpus", workdir / "index", embedder)
    console.print(
        f"index {workdir / 'index'}: {n_docs} knowledge-base documents + {n_pages} docs pages; {report.summary()} "
        f"({time.perf_counter() - start:.1f} s)",
        highlight=False,
    )
    return RagIndex.open(workdir / "index", embedder)


# ---------------------------------------------------------------------------------------------- rag


def rag_step(
    console: Console,
    llm: LocalLLM,
    index: RagIndex,
    embedder: Embedder | None,
    adapter: Path | None,
    question: dict[str, Any] | None = None,
) -> list[Row]:
    """A knowledge-base question closed-book (bare model), then with retrieval and citations (the grounded-answer
    adapter with follow-up searches when installed, else the bare model with the grounded prompt)."""
    from lmstack.augment.rag.answer import GROUNDED_INSTRUCTION, SEARCH_INSTRUCTION, ask_many, closed_book_many
    from lmstack.data.tasks.answers import contains_answer

    row = question or sample_questions(RAG_TYPE)
    gold = golds(row)
    show(console, "Q:", f"{row['question']}  ({row['type']}; gold: {row['answer']})")
    start = time.perf_counter()
    (closed,) = closed_book_many([row["question"]], llm, max_tokens=48)
    closed_s = time.perf_counter() - start
    closed_ok = contains_answer(closed.final, gold)
    show(console, "closed book (bare SmolLM2):", one_line(closed.answer, 200))
    why = "" if closed_ok else " (the knowledge base is fictional: only retrieval can know this)"
    console.print(f"  → {mark(closed_ok)}{why}")
    if adapter is None:
        missing_note(console, "rag", "RAG runs the bare model with the plain grounded prompt, no follow-up search")
    instruction, searches = (SEARCH_INSTRUCTION, SEARCHES) if adapter else (GROUNDED_INSTRUCTION, 0)
    start = time.perf_counter()
    with adapter_on(llm, adapter, "rag"):
        (answer,) = ask_many(
            [row["question"]], index, embedder, llm, K, "hybrid", None, instruction, searches, max_tokens=96
        )
    rag_s = time.perf_counter() - start
    rag_ok = contains_answer(answer.final, gold)
    method = f"RAG hybrid top-{K}" + (f" + rag adapter (≤ {SEARCHES} searches)" if adapter else ", bare")
    for query in answer.searches:
        show(console, "  searched:", query)
    show(console, f"{method}:", answer.answer.strip() or "(empty)")
    if answer.citations:
        for c in answer.citations:
            show(console, f"  [{c.n}]", f"{c.file}:{c.start}-{c.end}  “{c.text_preview}”")
    else:
        retrieved = ", ".join(f"[{n}] {h.path}:{h.start}-{h.end}" for n, h in enumerate(answer.hits, start=1))
        show(console, "  cited nothing; retrieved:", retrieved or "(nothing)")
    console.print(f"  → {mark(rag_ok)} (final answer: {one_line(answer.final, 80)!r})", highlight=False)
    return [
        Row("rag", "closed book, bare", one_line(closed.final, 28), row["answer"], closed_ok, closed_s),
        Row("rag", method, one_line(answer.final, 28), row["answer"], rag_ok, rag_s),
    ]


# ---------------------------------------------------------------------------------------------- math


def math_step(
    console: Console,
    llm: LocalLLM,
    adapter: Path | None,
    problem: dict[str, Any] | None = None,
    max_tokens: int = 192,
) -> list[Row]:
    """One held-out math word problem three ways: directly, with few-shot CoT (both the bare model), and with PAL
    (the shipped PAL adapter when installed, else the 4-shot PAL prompt); then the sandbox meets a hostile program."""
    from lmstack.augment.cot import solve_cot_many
    from lmstack.augment.pal import (
        EXAMPLES,
        FINETUNED_PROMPT,
        INSTRUCTION,
        answers_match,
        engine_generate_many,
        solve_many,
    )
    from lmstack.augment.rag.answer import closed_book_many
    from lmstack.augment.sandbox import run_program
    from lmstack.data.tasks.answers import extract_answer, format_number
    from lmstack.generate.sampling import GenerationConfig

    item = problem or math_problem()
    gold = item["answer"]
    show(console, "Problem:", f"{item['question']}  (gold: {format_number(gold)})")
    rows = []
    start = time.perf_counter()
    (direct,) = closed_book_many([item["question"]], llm, instruction=DIRECT_INSTRUCTION, max_tokens=24)
    seconds, value = time.perf_counter() - start, extract_answer(direct.answer)
    direct_text = "no answer" if value is None else format_number(value)
    rows.append(Row("math", "direct, bare", direct_text, format_number(gold), answers_match(value, gold), seconds))
    show(console, "direct (bare SmolLM2):", one_line(direct.answer, 120))
    console.print(f"  → {direct_text}: {mark(rows[-1].right)}", highlight=False)

    start = time.perf_counter()
    (cot,) = solve_cot_many([item["question"]], llm, max_tokens=max_tokens)
    seconds = time.perf_counter() - start
    rows.append(Row("math", "CoT 4-shot, bare", cot.answer_text, format_number(gold), cot.is_correct(gold), seconds))
    show(console, "chain of thought (4-shot, bare):", "")
    for line in cot.texts[0].strip().splitlines()[:10]:
        show(console, "   ", line)
    console.print(f"  → {cot.answer_text}: {mark(rows[-1].right)}", highlight=False)

    if adapter is None:
        missing_note(console, "pal", "PAL runs the bare model with the 4-shot PAL prompt")
    start = time.perf_counter()
    with adapter_on(llm, adapter, "pal"):
        if adapter is not None:  # the adapter was trained on the bare question as one chat turn
            generate = engine_generate_many(llm.engine, GenerationConfig(max_new_tokens=max_tokens), chat=True)
            (pal,) = solve_many([item["question"]], generate, **FINETUNED_PROMPT)
        else:
            generate = engine_generate_many(llm.engine, GenerationConfig(max_new_tokens=max_tokens))
            (pal,) = solve_many([item["question"]], generate, examples=EXAMPLES, instruction=INSTRUCTION)
    seconds, method = time.perf_counter() - start, "PAL + pal adapter" if adapter else "PAL 4-shot, bare"
    rows.append(Row("math", method, pal.answer_text, format_number(gold), pal.is_correct(gold), seconds))
    show(console, f"{method} (the program, run in the sandbox):", "")
    lines = (pal.programs[0] or "(no program found)").splitlines()
    for line in lines[:14]:
        show(console, "   ", line)
    if len(lines) > 14:
        console.print(f"    ... ({len(lines) - 14} more lines)")
    run = pal.runs[0]
    outcome = "" if run is None or run.ok else f" ({run.error}: {one_line(run.message, 80)})"
    console.print(f"  → {pal.answer_text}{outcome}: {mark(rows[-1].right)}", highlight=False)

    start = time.perf_counter()
    blocked = run_program(HOSTILE)
    seconds, verdict = time.perf_counter() - start, "ran!" if blocked.ok else f"refused ({blocked.error})"
    show(console, "a hostile program, os.popen('cat /etc/passwd'):", f"{verdict}: {one_line(blocked.message, 100)}")
    rows.append(Row("math", "sandbox: a hostile program", verdict, "refused", not blocked.ok, seconds))
    return rows


# ---------------------------------------------------------------------------------------------- react

_PASSAGE = re.compile(r'<<<passage \[(\d+)\] source="([^"]*)" chars=(\d+-\d+)>>>\s*(.*?)\s*<<<end passage \[\d+\]>>>')


def short_observation(text: str, limit: int = 220) -> str:
    """An observation for the screen: each fenced passage as `[n] file:start-end “first words…”`, cut to `limit`."""
    text = _PASSAGE.sub(lambda m: f"[{m[1]}] {m[2]}:{m[3]} “{one_line(m[4], 70)}”", text)
    return one_line(text, limit)


def react_step(
    console: Console,
    llm: LocalLLM,
    index: RagIndex,
    embedder: Embedder | None,
    adapter: Path | None,
    question: dict[str, Any] | None = None,
    max_steps: int = 6,
    max_tokens: int = 128,
) -> list[Row]:
    """A multi-hop knowledge-base question by ReAct over the index (search, lookup, python, finish), with the
    shipped ReAct adapter and the zero-shot prompt it was trained on (as `lmstack agent`) when installed, else the
    bare model with the few-shot ReAct prompt; the trace shown."""
    from lmstack.augment import react
    from lmstack.data.tasks.answers import contains_answer

    row = question or sample_questions(REACT_TYPE)
    show(console, "Q:", f"{row['question']}  ({row['type']}, {row.get('hops', '?')} hops; gold: {row['answer']})")
    if adapter is None:
        missing_note(console, "react", "ReAct runs the bare model with the few-shot ReAct prompt")
    start = time.perf_counter()
    with adapter_on(llm, adapter, "react"):
        tools = react.default_tools(index, embedder, k=K)
        examples = () if adapter else react.EXAMPLES  # the adapter was trained on the zero-shot prompt
        (result,) = react.run_react_many(
            [row["question"]], llm, tools, max_steps, max_tokens=max_tokens, examples=examples
        )
    seconds = time.perf_counter() - start
    for s in result.steps:
        show(console, "  Thought:", one_line(s.thought, 200))
        action = f"{s.action}[{one_line(s.argument, 120)}]" if s.action else f"(unparseable) {s.argument or '-'}"
        show(console, "  Action:", one_line(action, 140))
        if s.observation is not None:
            show(console, "  Observation:", short_observation(s.observation))
    right = contains_answer(result.answer or "", golds(row))
    how = f"stopped: {result.stopped}" + (f" ({result.detail})" if result.detail else "")
    show(console, "  " + how + "; answer:", f"{result.answer or '(none)'} [{result.answer_source}]")
    console.print(f"  → {mark(right)}")
    method = "ReAct + react adapter" if adapter else "ReAct few-shot, bare"
    if result.answer_source == "cot_fallback":
        method += " (→ CoT fallback)"
    answer = one_line(result.answer or "(none)", 28)
    return [Row("react", method, answer, row["answer"], right, seconds)]


# ---------------------------------------------------------------------------------------------- the tour


def steps_for(choice: str) -> list[str]:
    """The steps `--step` selects, in tour order."""
    if choice == "all":
        return list(STEPS)
    if choice not in STEPS:
        raise ValueError(f"unknown step {choice!r}; choose one of {', '.join(STEPS)}, all")
    return [choice]


def summary_table(rows: list[Row], total_s: float):
    """The closing table: one line per measurement."""
    from rich.table import Table

    table = Table(title=f"lmstack demo: what each step measured ({total_s:.0f} s in all)")
    for name in ("step", "method", "answer", "gold", "right?", "seconds"):
        table.add_column(name, justify="right" if name == "seconds" else "left")
    for r in rows:
        table.add_row(r.step, r.method, r.answer, r.gold, mark(r.right), f"{r.seconds:.1f}")
    return table


def run_tour(
    console: Console,
    steps: list[str],
    llm: LocalLLM,
    embedder: Embedder | None,
    index: RagIndex | None,
    adapters: dict[str, Path | None],
) -> list[Row]:
    """Run `steps` in order on the given model, embedder and index; print each step's wall time."""
    rows: list[Row] = []
    titles = {
        "rag": "closed book vs retrieval with citations",
        "math": "a math word problem: direct, chain of thought, PAL",
        "react": "a multi-hop question by a ReAct agent",
    }
    for n, name in enumerate(steps, start=1):
        console.rule(f"[bold]{n}/{len(steps)} {name}: {titles[name]}")
        start = time.perf_counter()
        if name == "rag":
            rows += rag_step(console, llm, index, embedder, adapters.get("rag"))
        elif name == "math":
            rows += math_step(console, llm, adapters.get("pal"))
        else:
            rows += react_step(console, llm, index, embedder, adapters.get("react"))
        console.print(f"[dim]step {name}: {time.perf_counter() - start:.1f} s[/]")
    return rows


def default_workdir() -> Path | None:
    """runs/demo/ in the repository, or None (a temporary folder) when lmstack is not run from its repository."""
    return REPO / "runs" / "demo" if (REPO / "pyproject.toml").is_file() else None


def run_demo(step: str = "all", workdir: str | Path | None = None, console: Console | None = None) -> int:
    """The whole tour (or one step) on the embedded defaults: load SmolLM2 once (and MiniLM and the index when a
    step retrieves), run the steps, print the closing table and the total wall time."""
    from rich.console import Console

    from lmstack.augment.llm import local_llm

    console = console or Console()
    steps = steps_for(step)
    total = time.perf_counter()
    console.rule("[bold]lmstack demo: SmolLM2-135M, augmented (about 5 min on 2 CPU cores)")
    start = time.perf_counter()
    llm = local_llm(MODEL)
    adapters = {name: find_adapter(name) for name in ("rag", "pal", "react")}
    found = ", ".join(f"{k}: {'installed' if v else 'not installed'}" for k, v in adapters.items())
    console.print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - start:.1f} s; shipped adapters: {found}")
    embedder, index = None, None
    with tempfile.TemporaryDirectory(prefix="lmstack-demo-") as tmp:
        if "rag" in steps or "react" in steps:
            from lmstack.augment.rag.embed import SentenceEmbedder

            folder = Path(workdir) if workdir else (default_workdir() or Path(tmp))
            folder.mkdir(parents=True, exist_ok=True)
            embedder = SentenceEmbedder.from_pretrained()
            index = build_index(console, folder, embedder, repo_docs())
        try:
            rows = run_tour(console, steps, llm, embedder, index, adapters)
        finally:
            if index is not None:
                index.close()
    total_s = time.perf_counter() - total
    console.print(summary_table(rows, total_s))
    console.print(f"total wall time: {total_s:.0f} s. Each step runs alone: lmstack demo --step rag|math|react.")
    console.print(f"Pretraining a tiny GPT from scratch is a recipe now: {PRETRAIN} (about 1–2 min).")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step", choices=[*STEPS, "all"], default="all", help="one step of the tour (default: all)")
    where = "where the index goes (default: runs/demo/ in the repository, else a temporary folder)"
    p.add_argument("--workdir", default=None, metavar="DIR", help=where)


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.step, args.workdir)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """`lmstack demo [--step rag|math|react|all]`."""
    p = sub.add_parser(
        "demo",
        help="the augment tour: closed book vs RAG with citations, direct/CoT/PAL math, a ReAct agent",
        description=__doc__.split("\n\n")[0],
    )
    _add_arguments(p)
    p.set_defaults(func=_cmd_demo)


def main(argv: list[str] | None = None) -> int:
    """`python -m lmstack.demo [--step ...]` (what `make demo` runs)."""
    p = argparse.ArgumentParser(prog="python -m lmstack.demo", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return _cmd_demo(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
