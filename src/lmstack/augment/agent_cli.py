"""`lmstack agent "QUESTION" --index PATH`: a ReAct agent (search, lookup, python, finish) over a RAG index;
batch mode `--questions FILE.jsonl --out OUT.jsonl`.

Kept here rather than in `lmstack.cli` (which only registers `add_agent_parser`); the heavy imports happen in
the handler, and everything that can be wrong with the arguments, the questions file or the index is found
before a model loads. The model is `--model` (any `load_pretrained` spec) or an OpenAI-compatible server
(`--base-url URL --api-model NAME`). This layer cannot load LoRA adapters (`lmstack.finetune` imports it), so
`lmstack.cli` registers the command with a `load_llm` hook that can: `--adapter auto` puts the shipped ReAct
adapter (trained on `lmstack rag react-trajectories` data) on the default SmolLM2. With an adapter the agent
sends the zero-shot prompt it was trained on; without one, the few-shot `react.EXAMPLES`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from lmstack.errors import ConfigError

if TYPE_CHECKING:
    from lmstack.augment.llm import LLM


def load_local_llm(spec: str, adapter: str | None = None, mode: str = "fp32") -> tuple[LLM, str | None]:
    """The agent's local model without adapters: (`llm.local_llm(spec, mode)`, None). `lmstack.cli` registers
    the command with a loader of the same shape that merges the ReAct LoRA (`finetune.load.adapter_llm`)."""
    from lmstack.augment.llm import local_llm

    if adapter not in (None, "auto", "none"):
        raise ConfigError(f"this `agent` cannot load adapters ({adapter}); run it as `lmstack agent`")
    return local_llm(spec, mode=mode), None


def _make_llm(args: argparse.Namespace) -> tuple[LLM, str | None]:
    """The model the agent talks to and the adapter on it (None: a bare model or a server, few-shot prompt)."""
    if args.base_url:
        from lmstack.augment.llm import OpenAIClient

        if not args.api_model:
            raise ConfigError("--base-url needs --api-model NAME (the model name the server knows)")
        if args.adapter not in ("auto", "none"):
            raise ConfigError("--adapter goes onto a local --model; a server serves its own adapters")
        return OpenAIClient(args.base_url, args.api_model, api_key=args.api_key), None
    return args.load_llm(args.model, args.adapter, args.mode)


def _cmd_agent(args: argparse.Namespace) -> int:
    if bool(args.question) == bool(args.questions):
        raise ConfigError("give a question, or --questions FILE.jsonl (with --out OUT.jsonl), not both")
    if bool(args.questions) != bool(args.out):
        raise ConfigError("--questions FILE.jsonl and --out OUT.jsonl go together")
    if args.max_steps < 1 or args.cot_k < 0 or args.k < 1:
        raise ConfigError("need --max-steps >= 1, --cot-k >= 0 and --k >= 1")
    from lmstack.data.instruct import read_questions

    rows = read_questions(args.questions) if args.questions else [{"question": args.question}]

    from lmstack.augment.chain import Trace
    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.react import EXAMPLES, default_tools, run_react_many

    with RagIndex.open(args.index) as index:  # a missing or foreign index fails here, before a model loads
        embedder = None
        if args.retrieval != "bm25":
            from lmstack.augment.rag.embed import SentenceEmbedder

            embedder = SentenceEmbedder.from_pretrained(args.embedder or index.settings.embedder)
            index.check_embedder(embedder)
        tools = default_tools(index, embedder, k=args.k, mode=args.retrieval)
        llm, adapter = _make_llm(args)
        trace = Trace()
        results = run_react_many(
            [r["question"] for r in rows],
            llm,
            tools,
            args.max_steps,
            max_tokens=args.max_tokens,
            seed=args.seed,
            examples=() if adapter else EXAMPLES,  # the adapter was trained on zero-shot prompts
            cot_k=args.cot_k,
            trace=trace,
        )
    if args.trace:
        trace.save_jsonl(args.trace)
    if args.out:
        from lmstack.fileio import write_jsonl

        out = [{**({"id": r["id"]} if "id" in r else {}), **res.row()} for r, res in zip(rows, results)]
        write_jsonl(args.out, out)
        counts: dict[str, int] = {}
        for res in results:
            counts[res.answer_source] = counts.get(res.answer_source, 0) + 1
        summary = ", ".join(f"{n} {source}" for source, n in sorted(counts.items()))
        print(f"{len(results)} questions ({summary}) -> {args.out} (adapter: {adapter or 'none'})")
    else:
        print(results[0].format())
    return 0


def add_agent_parser(
    sub: argparse._SubParsersAction,
    load_llm: Callable[[str, str | None, str], tuple[LLM, str | None]] = load_local_llm,
) -> None:
    """`lmstack agent ...`. `load_llm(spec, adapter choice, weight mode)` gives it its local model and the adapter
    on it (see `load_local_llm`): the hook for the ReAct LoRA."""
    p = sub.add_parser(
        "agent",
        help="answer questions with a ReAct agent (search, lookup, python, finish) over a RAG index",
        description="ReAct: the model writes Thought / Action steps, the agent runs the tools (search and lookup "
        "over the index, python in the sandbox) and writes the Observations, until finish[answer]. A run that "
        "stops without an answer (step budget, repeated or unparseable actions) backs off to chain-of-thought "
        "with self-consistency over what the tools found.",
    )
    p.add_argument("question", nargs="?", help="the question (or --questions FILE.jsonl)")
    p.add_argument("--index", required=True, metavar="PATH", help="index folder built by `lmstack rag ingest`")
    p.add_argument("--model", default="smollm2-135m-instruct", help="a load_pretrained spec (default SmolLM2)")
    p.add_argument("--mode", choices=["fp32", "bf16", "int8", "int4"], default="fp32", help="local weights")
    p.add_argument("--base-url", default=None, metavar="URL", help="an OpenAI-compatible server instead of --model")
    p.add_argument("--api-model", default=None, metavar="NAME", help="the model name at --base-url")
    p.add_argument("--api-key", default=None, help="bearer token for --base-url")
    p.add_argument(
        "--adapter",
        default="auto",
        help="auto (default: the shipped ReAct LoRA on the default SmolLM2, zero-shot prompt), none (the bare "
        "model with the few-shot prompt), or a peft adapter directory",
    )
    p.add_argument("--max-steps", type=int, default=6, help="model calls before backing off to CoT")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per step")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cot-k", type=int, default=3, help="CoT samples voted when ReAct gives up (0: no fallback)")
    p.add_argument("--k", type=int, default=3, help="passages per search")
    p.add_argument("--retrieval", choices=["hybrid", "bm25", "dense"], default="hybrid", help="bm25 needs no model")
    p.add_argument("--embedder", default=None, help="default: the model the index was built with")
    p.add_argument("--trace", default=None, metavar="FILE.jsonl", help="save every LLM and tool call")
    p.add_argument("--questions", default=None, metavar="FILE.jsonl", help="batch: one {question} per line")
    p.add_argument("--out", default=None, metavar="OUT.jsonl", help="batch: rows with question, answer, steps")
    p.set_defaults(func=_cmd_agent, load_llm=load_llm)
