"""`lmstack rag ingest DIR --index PATH`, `lmstack rag search QUERY --index PATH`,
`lmstack rag ask QUESTION --index PATH` (or `--questions FILE.jsonl --out OUT.jsonl`), and the fine-tuning data
`lmstack rag trajectories --out DIR` (for `rag ask`) and `lmstack rag react-trajectories --out DIR` (for the
ReAct agent, `lmstack agent`: its own parser takes a question, not subcommands).

Kept here rather than in `lmstack.cli` (which only registers `add_rag_parser`); the heavy imports (torch,
faiss, the model) happen in the handlers, so that `lmstack --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from lmstack.errors import ConfigError

if TYPE_CHECKING:
    from lmstack.augment.llm import LLM
    from lmstack.augment.rag.answer import Answer

DEFAULT_MODEL = "smollm2-135m-instruct"


def load_local_llm(spec: str, adapter: str | None = None) -> tuple[LLM, str | None]:
    """`rag ask`'s local model without adapters: (`llm.local_llm(spec)`, None). This layer cannot load LoRA
    adapters (`lmstack.finetune` imports `lmstack.augment`), so `lmstack.cli` registers this command with
    `load_llm=lmstack.finetune.load.adapter_llm("rag")`, which puts the grounded-answer adapter on SmolLM2."""
    from lmstack.augment.llm import local_llm

    if adapter not in (None, "auto", "none"):
        raise ConfigError(f"this `rag ask` cannot load adapters ({adapter}); run it as `lmstack rag ask`")
    return local_llm(spec), None


def _cmd_ingest(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.embed import SentenceEmbedder
    from lmstack.augment.rag.ingest import ingest

    embedder = SentenceEmbedder.from_pretrained(args.embedder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ingest(args.folder, args.index, embedder, args.chunk_tokens, args.overlap, batch_size=args.batch_size)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"{args.index}: {report.summary()}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.context import format_context
    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.rag.retrieve import search

    with RagIndex.open(args.index) as index:  # a missing or foreign index fails here, before a model loads
        embedder = None
        if args.mode != "bm25":
            from lmstack.augment.rag.embed import SentenceEmbedder

            embedder = SentenceEmbedder.from_pretrained(args.embedder or index.settings.embedder)
        hits = search(index, args.query, embedder, k=args.k, mode=args.mode)
    if args.format == "context":
        print(format_context(hits))
    elif args.format == "json":
        for hit in hits:
            row = {"path": hit.path, "start": hit.start, "end": hit.end, "score": hit.score, "text": hit.text}
            print(json.dumps(row, ensure_ascii=False))
    else:
        for n, hit in enumerate(hits, start=1):
            snippet = " ".join(hit.text.split())
            print(f"[{n}] {hit.path}:{hit.start}-{hit.end}  score {hit.score:.4f}")
            print(f"    {snippet[:300]}{'...' if len(snippet) > 300 else ''}")
    if not hits:
        print("no matches", file=sys.stderr)
    return 0


def _check_ask_args(args: argparse.Namespace) -> None:
    """Every mistake in the arguments, before the index is opened or a model loaded."""
    if (args.question is None) == (args.questions is None):
        raise ConfigError("rag ask takes a QUESTION or --questions FILE.jsonl (with --out OUT.jsonl): one of them")
    if args.question is not None and not args.question.strip():
        raise ConfigError("the question is empty")
    if (args.questions is None) != (args.out is None):
        raise ConfigError("--questions FILE.jsonl and --out OUT.jsonl go together")
    if args.searches is not None and args.searches < 0:
        raise ConfigError(f"--searches must be 0 or more, got {args.searches}")
    for name in ("k", "max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.base_url is not None:
        if args.model is not None:
            raise ConfigError("give --model (a local model) or --base-url (an endpoint), not both")
        if not args.api_model:
            raise ConfigError("--base-url needs --api-model NAME (the model name the endpoint serves)")
    elif args.api_model is not None or args.api_key is not None:
        raise ConfigError("--api-model and --api-key go with --base-url URL")


def _make_llm(args: argparse.Namespace) -> tuple[LLM, str | None]:
    """The model and the adapter on it (None: a bare model or an endpoint, which gets the plain prompt)."""
    if args.base_url is not None:
        from lmstack.augment.llm import OpenAIClient

        return OpenAIClient(args.base_url, args.api_model, api_key=args.api_key), None
    return args.load_llm(args.model or DEFAULT_MODEL, args.adapter)


def _print_answer(answer: Answer) -> None:
    for query in answer.searches:
        print(f"(searched: {query})")
    print(answer.answer.strip())
    print()
    if answer.citations:
        print("Sources:")
        for c in answer.citations:
            print(c.location())
    elif answer.hits:
        print("Sources: none cited. Retrieved:")
        for n, hit in enumerate(answer.hits, start=1):
            print(f"[{n}] {hit.path}:{hit.start}-{hit.end}")
    else:
        print("Sources: none (nothing was retrieved)")


def _cmd_ask(args: argparse.Namespace) -> int:
    from lmstack.augment.chain import Trace
    from lmstack.augment.rag.answer import GROUNDED_INSTRUCTION, SEARCH_INSTRUCTION, ask_many
    from lmstack.augment.rag.index import RagIndex
    from lmstack.data.instruct import read_questions
    from lmstack.fileio import write_jsonl

    _check_ask_args(args)
    with RagIndex.open(args.index) as index:  # a missing or foreign index fails here, before a model loads
        rows = read_questions(args.questions) if args.questions else [{"question": args.question}]
        embedder = None
        if args.mode != "bm25":
            from lmstack.augment.rag.embed import SentenceEmbedder

            embedder = SentenceEmbedder.from_pretrained(args.embedder or index.settings.embedder)
        llm, adapter = _make_llm(args)
        # the grounded-answer adapter was trained on SEARCH_INSTRUCTION conversations with follow-up searches
        instruction = SEARCH_INSTRUCTION if adapter else GROUNDED_INSTRUCTION
        searches = args.searches if args.searches is not None else (3 if adapter else 0)
        trace = Trace() if args.trace else None
        answers, params = [], {"max_tokens": args.max_tokens}
        try:
            for start in range(0, len(rows), args.batch_size):  # one llm.batch call per batch of questions
                questions = [row["question"] for row in rows[start : start + args.batch_size]]
                answers += ask_many(
                    questions, index, embedder, llm, args.k, args.mode, trace, instruction, searches,
                    not args.no_calculator, **params,
                )  # fmt: skip
        finally:
            if trace is not None:
                trace.save_jsonl(args.trace)
            if hasattr(llm, "close"):
                llm.close()
    if args.questions is None:
        _print_answer(answers[0])
        return 0
    out = [{**({"id": row["id"]} if "id" in row else {}), **a.to_row()} for row, a in zip(rows, answers)]
    write_jsonl(args.out, out)
    cited = sum(bool(a.citations) for a in answers)
    print(f"{args.out}: {len(answers)} answers, {cited} with at least one citation")
    return 0


def _cmd_trajectories(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.embed import SentenceEmbedder
    from lmstack.augment.rag.trajectories import TrajectoryConfig, make_grounded_data

    cfg = TrajectoryConfig(k=args.k, searches=args.searches, unanswerable=args.unanswerable, seed=args.seed)
    report = make_grounded_data(args.out, SentenceEmbedder.from_pretrained(), args.n, args.n_val, args.seed, cfg)
    for split, counts in report["splits"].items():
        print(f"{args.out}/{split}.jsonl: {counts['written']} conversations ({counts['left_out']} questions left out)")
    return 0


def _cmd_react_trajectories(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.embed import SentenceEmbedder
    from lmstack.augment.react_trajectories import ReActTraceConfig, make_react_data

    cfg = ReActTraceConfig(k=args.k, searches=args.searches, max_steps=args.max_steps)
    report = make_react_data(args.out, SentenceEmbedder.from_pretrained(), args.n, args.n_val, args.seed, cfg)
    for split, counts in report["splits"].items():
        print(
            f"{args.out}/{split}.jsonl: {counts['rows']} steps of {counts['written']} traces "
            f"({counts['left_out']} questions left out)"
        )
    return 0


def add_rag_parser(
    sub: argparse._SubParsersAction, load_llm: Callable[[str, str | None], tuple[LLM, str | None]] = load_local_llm
) -> None:
    """`lmstack rag ...`. `load_llm(spec, adapter choice)` gives `rag ask` its local model and the adapter on it
    (see `load_local_llm`): the hook for the grounded-answer LoRA."""
    p = sub.add_parser("rag", help="retrieval over a folder of documents: ingest, search, ask with citations")
    rag_sub = p.add_subparsers(dest="rag_command", metavar="ACTION")
    rag_sub.required = True
    ing = rag_sub.add_parser(
        "ingest",
        help="chunk, embed and index a folder (txt, md, html, source code, pdf); re-run to update it",
        description="Make the index mirror DIR: changed files are re-embedded, removed files deleted, "
        "unchanged files cost nothing. Unreadable or binary files are skipped with a warning.",
    )
    ing.add_argument("folder", metavar="DIR", help="folder of documents")
    ing.add_argument("--index", required=True, metavar="PATH", help="index folder (created if missing)")
    ing.add_argument("--embedder", default="all-minilm-l6-v2", help="sentence embedding model (default MiniLM)")
    ing.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk (a new index: 192)")
    ing.add_argument("--overlap", type=int, default=None, help="tokens shared by neighbouring chunks (new: 32)")
    ing.add_argument("--batch-size", type=int, default=64, help="chunks embedded per batch")
    ing.set_defaults(func=_cmd_ingest)
    se = rag_sub.add_parser(
        "search",
        help="the chunks of an index that best match a query (hybrid BM25 + dense by default)",
        description="Hybrid retrieval: BM25 (SQLite FTS5) and dense (FAISS) fused by reciprocal rank fusion.",
    )
    se.add_argument("query")
    se.add_argument("--index", required=True, metavar="PATH", help="index folder built by `lmstack rag ingest`")
    se.add_argument("--k", type=int, default=5, help="chunks to return")
    se.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    se.add_argument("--embedder", default=None, help="default: the model the index was built with")
    se.add_argument(
        "--format",
        choices=["text", "json", "context"],
        default="text",
        help="text (a list), json (a line per hit) or context (numbered, fenced passages for a prompt)",
    )
    se.set_defaults(func=_cmd_search)
    ask = rag_sub.add_parser(
        "ask",
        help="answer from an index, citing passages as [n] (file:start-end)",
        description="Retrieve the k best passages, give them to the model as numbered untrusted data, and print "
        "the answer with the passages it cites. Batch mode: --questions FILE.jsonl (rows with `question`) "
        "--out OUT.jsonl (rows with question, answer, citations). The model is local (--model) or any "
        "OpenAI-compatible endpoint (--base-url, --api-model, --api-key).",
    )
    ask.add_argument("question", nargs="?", default=None, metavar="QUESTION")
    ask.add_argument("--index", required=True, metavar="PATH", help="index folder built by `lmstack rag ingest`")
    ask.add_argument("--k", type=int, default=3, help="passages per retrieval")
    ask.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    ask.add_argument("--embedder", default=None, help="default: the model the index was built with")
    ask.add_argument("--model", default=None, metavar="SPEC", help=f"local model (default {DEFAULT_MODEL})")
    ask.add_argument("--base-url", default=None, metavar="URL", help="an OpenAI-compatible endpoint instead")
    ask.add_argument("--api-model", default=None, metavar="NAME", help="the model name at --base-url")
    ask.add_argument("--api-key", default=None, metavar="KEY", help="bearer token for --base-url")
    ask.add_argument(
        "--adapter",
        default="auto",
        help="auto (default: the shipped grounded-answer LoRA on the default SmolLM2), none, or a peft adapter dir",
    )
    ask.add_argument(
        "--searches", type=int, default=None, help="follow-up searches the model may ask for (default 3 with the "
        "adapter, 0 without)",
    )  # fmt: skip
    ask.add_argument("--max-tokens", type=int, default=128, help="answer length limit in tokens")
    ask.add_argument(
        "--no-calculator", action="store_true", help="keep an arithmetic final answer ('Answer: a - b = c') as the "
        "model computed it instead of computing it",
    )  # fmt: skip
    ask.add_argument("--trace", default=None, metavar="FILE.jsonl", help="save every step (prompts included)")
    ask.add_argument("--questions", default=None, metavar="FILE.jsonl", help="batch mode: rows with `question`")
    ask.add_argument("--out", default=None, metavar="OUT.jsonl", help="batch mode: where the answers go")
    ask.add_argument("--batch-size", type=int, default=16, help="batch mode: questions per model batch")
    ask.set_defaults(func=_cmd_ask, load_llm=load_llm)
    tr = rag_sub.add_parser(
        "trajectories",
        help="grounded-answer fine-tuning conversations from the knowledge-base task and real retrieval",
        description="For the knowledge-base task's train and validation splits: the documents as a folder, an "
        "index of them, and <split>.jsonl chat conversations (passages, follow-up searches, cited facts, "
        "'Answer: ...') written from each question's recorded evidence. See lmstack.augment.rag.trajectories.",
    )
    tr.add_argument("--out", required=True, metavar="DIR", help="output folder")
    tr.add_argument("--n", type=int, default=2500, help="training questions")
    tr.add_argument("--n-val", type=int, default=100, help="validation questions")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--k", type=int, default=3, help="passages per retrieval")
    tr.add_argument("--searches", type=int, default=3, help="follow-up searches allowed")
    tr.add_argument("--unanswerable", type=float, default=0.08, help="share of conversations ending in IDK")
    tr.set_defaults(func=_cmd_trajectories)
    rt = rag_sub.add_parser(
        "react-trajectories",
        help="ReAct fine-tuning steps (for `lmstack agent`) from the knowledge-base task and the agent's tools",
        description="For the knowledge-base task's train and validation splits: the documents as a folder, an "
        "index of them, and <split>.jsonl rows, one per ReAct step (the zero-shot prompt `lmstack agent` sends "
        "with its adapter, and the step's Thought / Action as the completion), written from each question's "
        "recorded evidence with the real tools' observations. See lmstack.augment.react_trajectories.",
    )
    rt.add_argument("--out", required=True, metavar="DIR", help="output folder")
    rt.add_argument("--n", type=int, default=2000, help="training questions")
    rt.add_argument("--n-val", type=int, default=60, help="validation questions")
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--k", type=int, default=3, help="passages per search (as `lmstack agent --k`)")
    rt.add_argument("--searches", type=int, default=4, help="searches allowed per question")
    rt.add_argument("--max-steps", type=int, default=6, help="the agent's step budget: longer traces are left out")
    rt.set_defaults(func=_cmd_react_trajectories)
