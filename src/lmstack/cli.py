"""The `lmstack` command line. Each subcommand is one small function that wires arguments to the library;
heavy imports happen inside the subcommand so that `lmstack --help` stays instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lmstack.align.cli import add_align_parser
from lmstack.augment.agent_cli import add_agent_parser
from lmstack.augment.rag.cli import add_rag_parser
from lmstack.demo import add_demo_parser
from lmstack.errors import ConfigError, LMStackError


def _split_nproc(nproc: int, rest: list[str]) -> tuple[int, list[str]]:
    """`--nproc N` may also come after the recipe, among the key=value overrides."""
    out, i = [], 0
    while i < len(rest):
        if rest[i] == "--nproc" and i + 1 < len(rest):
            nproc, i = rest[i + 1], i + 2
            continue
        if rest[i].startswith("--nproc="):
            nproc = rest[i].split("=", 1)[1]
        else:
            out.append(rest[i])
        i += 1
    try:
        nproc = int(nproc)
    except ValueError:
        nproc = 0
    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive number of processes, got {nproc!r}")
    return nproc, out


def _torchrun_train(nproc: int, recipe: str, overrides: list[str], command: str = "train") -> int:
    """Replace this process by torchrun starting `nproc` ranks of `lmstack train` (or `finetune`) here."""
    import os

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lmstack",
        command,
        recipe,
        *overrides,
    ]
    print("launching: " + " ".join(cmd[1:]), flush=True)
    os.execv(sys.executable, cmd)
    return 1  # not reached


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from lmstack.train.recipe import run_recipe

    nproc, overrides = _split_nproc(args.nproc, args.overrides)
    if nproc > 1:
        if "LOCAL_RANK" in os.environ:
            raise ConfigError("--nproc starts torchrun; this process already is a torchrun worker")
        return _torchrun_train(nproc, args.recipe, overrides, args.command)
    summary = run_recipe(args.recipe, overrides, default_kind="finetune" if args.command == "finetune" else "pretrain")
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(
            f"done: step {summary['step']}, val_loss {summary.get('val_loss', float('nan')):.4f}, "
            f"checkpoint {summary['checkpoint']}"
        )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML recipe",
        description="Train from a recipe. Any key can be overridden: lmstack train recipes/x.yaml train.steps=50",
    )
    p.add_argument("recipe", help="path to a recipe YAML file")
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="key=value overrides, e.g. train.lr=1e-3 model.n_layers=2 (and --nproc N)",
    )
    p.add_argument(
        "--nproc",
        default=1,
        metavar="N",
        help="start N ranks on this machine with torchrun (e.g. with train.strategy=zero3)",
    )
    p.set_defaults(func=_cmd_train)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model (full or LoRA) on instruction data from a YAML recipe",
        description="Fine-tune from a recipe (kind: finetune by default), with resume, checkpoints and "
        "metrics.jsonl like `lmstack train`: lmstack finetune recipes/finetune_pal_lora.yaml train.steps=50",
    )
    p.add_argument("recipe", help="path to a recipe YAML file")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value overrides, e.g. lora.r=16 (and --nproc N)")
    p.add_argument("--nproc", default=1, metavar="N", help="start N ranks on this machine with torchrun")
    p.set_defaults(func=_cmd_train)


def _cmd_plot(args: argparse.Namespace) -> int:
    from lmstack.train.metrics import plot_metrics

    out = plot_metrics(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot the loss curves of a run (needs matplotlib)")
    p.add_argument("run_dir", help="a run directory containing metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from lmstack.models.bitnet import PACKING, PACKING_BASE3
    from lmstack.weights.bitnet_export import export_bitnet

    info = export_bitnet(args.checkpoint, args.out, {"2bit": PACKING, "base3": PACKING_BASE3}[args.packing])
    ratio = info["linear_bytes_fp16"] / max(info["linear_bytes_packed"], 1)
    print(
        f"wrote {info['out']}: block linear weights {info['linear_bytes_packed']:,} bytes packed vs "
        f"{info['linear_bytes_fp16']:,} in fp16 ({ratio:.4f}x smaller); model.safetensors "
        f"{info['file_bytes_source']:,} -> {info['file_bytes_packed']:,} bytes"
    )
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="pack a trained checkpoint into a low-bit inference checkpoint",
        description="lmstack quantize --bitnet CKPT OUT: pack a BitNet b1.58 checkpoint (trained with "
        "model.bitnet=true) into 2-bit ternary weights (or 1.6-bit with --packing base3); "
        "generate/chat --model OUT load it directly.",
    )
    method = p.add_mutually_exclusive_group(required=True)
    method.add_argument("--bitnet", action="store_true", help="BitNet b1.58: ternary weights, 4 per byte")
    p.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    p.add_argument("out", help="the new checkpoint directory to write")
    p.add_argument(
        "--packing",
        choices=["2bit", "base3"],
        default="2bit",
        help="2bit: 4 weights per byte (default); base3: 5 per byte as base-3 digits, ~10x below fp16",
    )
    p.set_defaults(func=_cmd_quantize)


def _cmd_export(args: argparse.Namespace) -> int:
    from lmstack.weights.export import export_checkpoint

    load = None
    if args.merge_lora:
        from lmstack.finetune.load import load_finetuned

        def load(ckpt):
            return load_finetuned(ckpt, merge=True)

    done = export_checkpoint(
        args.checkpoint, args.out, fmt=args.format, force=args.force, gguf_type=args.gguf_type, load=load
    )
    target = done.path / "model.safetensors" if args.format == "safetensors" else done.path
    print(f"exported {done.checkpoint} to {target}: {done.layout}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as safetensors, an HF directory (transformers) or a GGUF file (llama.cpp)",
        description="lmstack export RUN_OR_CHECKPOINT OUT [--format safetensors|hf|gguf]: gather a checkpoint's "
        "weights (DCP shards of any world size, or a single-process checkpoint; a run directory means its newest "
        "good checkpoint). safetensors (default): OUT/model.safetensors + config.json + tokenizer, with HF key "
        "names where the model has an HF layout (Llama, GPT-2, BERT), else lmstack's own. hf: an HF directory "
        "that transformers loads (those three layouts only). gguf: a llama-architecture GGUF file for llama.cpp "
        "(Llama-style decoders; OUT ending in .gguf is the file, else a directory holding model.gguf). "
        "Finetune checkpoints that hold only adapter weights need --merge-lora.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest good checkpoint)")
    p.add_argument("out", help="the directory (or .gguf file) to write, replaced as a whole")
    p.add_argument("--format", choices=["safetensors", "hf", "gguf"], default="safetensors", help="output format")
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA fine-tuning run: load its base, merge the adapter into the weights, export the result",
    )
    p.add_argument(
        "--gguf-type",
        choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"],
        default="f32",
        type=str.lower,
        help="--format gguf: the type of the 2-D weights (norms stay f32); default f32 (lossless)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT even if it is not empty")
    p.set_defaults(func=_cmd_export)


def _cmd_data_list(args: argparse.Namespace) -> int:
    from lmstack.data.tasks import GENERATORS, describe, options_of

    for name in GENERATORS:
        opts = options_of(name)
        extra = f"  (options: {', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""
        print(f"{name:16s} {describe(name)}{extra}")
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    import yaml

    from lmstack.data.tasks import make
    from lmstack.errors import DataError

    options = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--set {item!r} must look like key=value (e.g. --set entities=40)")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise DataError(f"--set {item!r}: cannot parse the value: {exc}") from exc
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    written = make(args.name, args.out, args.n, seed=args.seed, splits=splits, **options)
    for fname, path in written.items():
        rows = "" if fname.endswith(".json") else f"  {len(path.read_text(encoding='utf-8').splitlines())} rows"
        print(f"wrote {path}{rows}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate task datasets (math word problems, knowledge base, preferences, ...)")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    ls = data_sub.add_parser("list", help="list the task generators")
    ls.set_defaults(func=_cmd_data_list)
    mk = data_sub.add_parser(
        "make",
        help="write train/validation/test JSONL for a task",
        description="Generate a task deterministically: the same arguments always give the same bytes.",
    )
    mk.add_argument("name", help="task name (see `lmstack data list`)")
    mk.add_argument("--out", required=True, help="output directory")
    mk.add_argument("--n", type=int, default=1000, help="items per split (default 1000)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--splits", default="train,validation,test", help="comma-separated subset of the splits")
    mk.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generator option, e.g. --set entities=40 for knowledge_base",
    )
    mk.set_defaults(func=_cmd_data_make)


def _engine_from_args(args: argparse.Namespace):
    """Load `--model` and wrap it in a generation Engine (shared by `generate` and `chat`)."""
    from lmstack.errors import ConfigError
    from lmstack.finetune.load import load_finetuned
    from lmstack.generate.engine import Engine
    from lmstack.models import DecoderLM

    adapters = dict(getattr(args, "adapters", None) or {})
    model, tokenizer = load_finetuned(args.model, adapters, merge=args.mode != "live")
    if not isinstance(model, DecoderLM) or tokenizer is None:
        raise ConfigError(f"{args.model} is not a decoder with a tokenizer; generation needs both")
    model.eval()  # no dropout while decoding (Engine does not switch modes itself)
    return Engine(model, tokenizer, mode=args.mode, compile=args.compile)


def _generation_config(args: argparse.Namespace):
    from lmstack.generate.sampling import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
    )


def _add_generation_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="smollm2-135m-instruct (default), a .gguf file, an HF directory or hub id, or an lmstack "
        "checkpoint/run directory",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0 if temperature == 0 else 0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0 if temperature == 0 else 1.1)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mode",
        choices=["fp32", "bf16", "int8", "int4", "live"],
        default="fp32",
        help="weights for decoding: fp32 (exact, default), bf16 / int8 / int4 weight-only (faster), or live "
        "(the model's own modules, adapters unmerged)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the single-token decode step (needs a C++ compiler; the first two "
        "generations compile for a few seconds; fastest with --mode bf16)",
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    engine = _engine_from_args(args)
    config = _generation_config(args)
    prompts = [sys.stdin.read() if p == "-" else p for p in args.prompt]
    if args.system and not args.chat:
        args.chat = True

    def as_input(p: str):
        if not args.chat:
            return p
        return ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": p}]

    # The Engine seeds every row of a batch with the same `config.seed` (a row's tokens do not depend on its
    # batch mates), so N copies of one prompt in one batch would be N identical texts: each sample is its own
    # generation, with seed SEED + i.
    for i in range(args.num_samples):
        sample_config = dataclasses.replace(config, seed=args.seed + i)
        if args.num_samples > 1:
            print(f"--- sample {i + 1} (seed {args.seed + i})", flush=True)
        if len(prompts) == 1 and not args.no_stream:
            for piece in engine.stream(as_input(prompts[0]), sample_config):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            continue
        for j, done in enumerate(engine.generate([as_input(p) for p in prompts], sample_config)):
            if len(prompts) > 1:
                print(f"--- {j + 1}")
            print(done.text)
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with a pretrained or trained decoder (streams to stdout)",
        description="Continue plain text (or, with --chat, answer through the chat template). Only the generated "
        "continuation is printed, not the prompt. For a model you trained: lmstack generate --model RUN_DIR "
        "--prompt 'def ' --temperature 0.8 --num-samples 3",
    )
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help='prompt text ("" starts from the BOS token), or - for stdin; repeat for a batch (generated together)',
    )
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    p.add_argument("--system", default=None, help="system prompt (implies --chat)")
    p.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="N independent samples of each prompt, with seeds SEED..SEED+N-1 (they differ only when "
        "--temperature > 0)",
    )
    _add_generation_args(p, temperature=0.0)
    p.set_defaults(func=_cmd_generate)


def _cmd_chat(args: argparse.Namespace) -> int:
    from lmstack.generate.chat import ChatSession, repl

    engine = _engine_from_args(args)
    return repl(ChatSession(engine, _generation_config(args), system=args.system))


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat with streaming replies (/reset, /system TEXT, /exit)")
    p.add_argument("--system", default=None, help="initial system prompt")
    _add_generation_args(p, temperature=0.2)
    p.set_defaults(func=_cmd_chat)


def _pal_adapter(args: argparse.Namespace) -> str | None:
    """The adapter `lmstack pal` puts on the model: `auto` = the shipped PAL adapter on the default model."""
    from lmstack.finetune.load import resolve_adapter

    adapter = resolve_adapter(args.adapter, args.model, "pal")
    return None if adapter is None else str(adapter)


def _cmd_pal(args: argparse.Namespace) -> int:
    from lmstack.augment.sandbox import Limits, run_program

    if args.layers:  # what the sandbox gets on this machine, and what it lacks (exit status 1 if anything)
        from lmstack.augment.sandbox import probe_layers

        probe = probe_layers()
        print("active: " + (", ".join(probe.layers) or "none"))
        print("missing: " + (", ".join(probe.missing) or "none"))
        if not probe.ok:
            print(f"error: the probe run failed ({probe.error}): {probe.message}", file=sys.stderr)
        return 0 if probe.ok and not probe.missing else 1
    limits = Limits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb)
    if args.program:  # run a given program in the sandbox, no model
        with open(args.program, encoding="utf-8") as f:
            result = run_program(f.read(), limits=limits)
        print(result.text())
        return 0 if result.ok else 1
    if not args.question and not args.questions:
        print("error: give a question, --questions FILE.jsonl, or --program FILE to run a program", file=sys.stderr)
        return 2
    if bool(args.questions) != bool(args.out):
        raise ConfigError("--questions FILE.jsonl and --out OUT.jsonl go together")
    from lmstack.augment.pal import EXAMPLES, FINETUNED_PROMPT, INSTRUCTION, engine_generate_many, solve_many
    from lmstack.data.instruct import read_questions

    questions = [r["question"] for r in read_questions(args.questions)] if args.questions else [args.question]
    adapter = _pal_adapter(args)
    args.adapters = {"pal": adapter} if adapter else {}
    style = FINETUNED_PROMPT if adapter else {"examples": EXAMPLES, "instruction": INSTRUCTION}
    generate_many = engine_generate_many(
        _engine_from_args(args), _generation_config(args), chat=args.chat or bool(adapter), batch_size=args.batch_size
    )
    temperature = args.temperature if args.temperature > 0 or args.k == 1 else 0.7
    results = solve_many(
        questions, generate_many, k=args.k, temperature=temperature, limits=limits, workers=args.workers, **style
    )
    if args.out:
        from lmstack.fileio import write_jsonl

        rows = [
            {"question": r.question, "answer": r.answer, "program": next((p for p in r.programs if p), None)}
            for r in results
        ]
        write_jsonl(args.out, rows)
        answered = sum(r.answer is not None for r in results)
        print(f"wrote {args.out}: {len(rows)} rows, {answered} answered (adapter: {adapter or 'none'})")
        return 0
    (result,) = results
    if args.show_programs:
        for i, (program, run) in enumerate(zip(result.programs, result.runs)):
            print(f"--- program {i + 1}")
            print(program.rstrip() if program else "(no program found in the completion)")
            print(f"=> {run.text() if run else 'not run'}")
    print(f"answer: {result.answer_text} ({result.votes}/{len(result.runs)} votes)")
    return 0 if result.answer is not None else 1


def _add_pal(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pal",
        help="answer a math word problem with program-aided LM (model-written code runs in a sandbox)",
        description="PAL: the model writes def solution(); the sandbox runs it; k>1 samples are majority-voted.",
    )
    p.add_argument("question", nargs="?", default=None, help="the word problem")
    p.add_argument(
        "--adapter",
        default="auto",
        help="auto (default: the shipped PAL LoRA adapter on the default SmolLM2 model, zero-shot prompt), "
        "none (the bare model with the few-shot prompt), or a peft adapter directory",
    )
    p.add_argument("--questions", default=None, help="batch mode: a JSONL file of rows with a 'question' field")
    p.add_argument("--out", default=None, help="batch mode: JSONL to write (question, answer, program per row)")
    p.add_argument("--batch-size", type=int, default=16, help="rows decoded at once")
    p.add_argument("--k", type=int, default=1, help="programs to sample and vote over (temperature 0.7 if > 1)")
    p.add_argument("--chat", action="store_true", help="send the few-shot prompt through the chat template")
    p.add_argument("--show-programs", action="store_true", help="print each program and what it returned")
    p.add_argument("--program", default=None, help="skip the model: run this PAL program file in the sandbox")
    p.add_argument("--layers", action="store_true", help="print the sandbox layers active and missing here, then exit")
    p.add_argument("--workers", type=int, default=2, help="sandbox processes running at once")
    p.add_argument("--cpu-s", type=int, default=2, help="CPU seconds per program")
    p.add_argument("--wall-s", type=float, default=5.0, help="wall-clock seconds per program")
    p.add_argument("--memory-mb", type=int, default=256, help="address-space limit per program")
    _add_generation_args(p, temperature=0.0)
    p.set_defaults(func=_cmd_pal)


def _cmd_serve(args: argparse.Namespace) -> int:
    from lmstack.serve.protocol import Limits
    from lmstack.serve.server import serve_main

    limits = Limits(args.max_prompt_tokens, args.max_tokens, args.max_n, args.max_body_bytes)
    return serve_main(
        args.model or ["smollm2-135m-instruct"], args.adapter, mode=args.mode, compile=args.compile,
        host=args.host, port=args.port, api_key=args.api_key, slots=args.slots, max_len=args.max_len,
        max_queue=args.max_queue, embeddings=args.embeddings, limits=limits,
    )  # fmt: skip


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (chat, completions, embeddings) with continuous batching",
        description="Serve local models over the OpenAI API: lmstack serve --adapter pal=PATH --port 8000; "
        "clients use base_url http://127.0.0.1:8000/v1 and model NAME or NAME:ADAPTER.",
    )
    add = p.add_argument
    add("--model", action="append", help="[NAME=]SPEC, repeatable (default smollm2-135m-instruct); any "
        "load_pretrained spec: GGUF, HF directory, run directory, packed BitNet checkpoint")  # fmt: skip
    add("--adapter", action="append", default=[], help="[NAME=]PATH of a peft LoRA adapter over the first "
        "model, or a shipped name (pal); none = no adapters (default: pal on the default model)")  # fmt: skip
    add("--mode", choices=["fp32", "bf16", "int8", "int4", "live"], default="fp32", help="decode weights")
    add("--compile", action="store_true", help="torch.compile the decode step")
    add("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    add("--port", type=int, default=8000)
    add("--api-key", default=None, help="require Authorization: Bearer KEY")
    add("--slots", type=int, default=16, help="rows decoded together (continuous batching)")
    add("--max-len", type=int, default=2048, help="tokens per slot (prompt + completion)")
    add("--max-queue", type=int, default=64, help="requests waiting for a slot before 429")
    add("--max-prompt-tokens", type=int, default=4096)
    add("--max-tokens", type=int, default=2048, help="the most max_tokens a request may ask for")
    add("--max-n", type=int, default=8, help="the most choices (n) per request")
    add("--max-body-bytes", type=int, default=1 << 20)
    add("--embeddings", default="all-minilm-l6-v2", help="embedding model for /v1/embeddings, or none")
    p.set_defaults(func=_cmd_serve)


def _with_adapter(shipped: str):
    """`rag ask`'s and `agent`'s model loader: the shipped adapter `shipped` (or `--adapter`) merged into the model
    (`lmstack.finetune.load.adapter_llm`, imported only when a command runs)."""

    def load(spec: str, choice: str | None, *args):
        from lmstack.finetune.load import adapter_llm

        return adapter_llm(shipped)(spec, choice, *args)

    return load


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_finetune,
    add_align_parser,
    _add_plot,
    _add_quantize,
    _add_export,
    _add_data,
    _add_generate,
    _add_chat,
    _add_pal,
    _add_serve,
    lambda sub: add_rag_parser(sub, load_llm=_with_adapter("rag")),
    lambda sub: add_agent_parser(sub, load_llm=_with_adapter("react")),
    add_demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmstack", description="The LLM development stack in one package.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LMStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
