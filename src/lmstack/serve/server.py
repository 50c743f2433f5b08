"""Loading what `lmstack serve` serves, and running the app under uvicorn (in the foreground, or in a
thread for tests, benchmarks and notebooks)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from lmstack.errors import ConfigError
from lmstack.finetune.load import SHIPPED, load_finetuned, shipped_adapter
from lmstack.generate.engine import Engine
from lmstack.models.decoder import DecoderLM
from lmstack.serve.adapters import adapter_bank
from lmstack.serve.app import ServedModel
from lmstack.serve.batching import Scheduler

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_name(spec: str) -> str:
    """The id a model is served under: the spec itself for a name, the file or directory stem for a path."""
    path = Path(spec)
    if os.sep in spec or path.exists():
        return (path.stem if path.is_file() else path.resolve().name).lower()
    return spec.lower()


def adapter_path(spec: str | os.PathLike) -> Path:
    """A peft adapter directory, or the name of one that ships with lmstack (`pal`)."""
    if str(spec) in SHIPPED:
        return shipped_adapter(str(spec))
    path = Path(spec)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{spec} is not a LoRA adapter directory (no adapter_config.json) nor a shipped adapter")
    return path


def load_model(
    spec: str,
    adapters: dict[str, str | os.PathLike] | None = None,
    *,
    name: str | None = None,
    mode: str = "fp32",
    compile: bool = False,
    slots: int = 16,
    max_len: int | None = 2048,
    max_queue: int = 64,
) -> ServedModel:
    """A decoder (any `load_finetuned` spec: a name, GGUF, HF directory, run directory, packed BitNet
    checkpoint) behind a scheduler, with `adapters` (name → peft directory or shipped name) by name."""
    model, tok = load_finetuned(spec, merge=True)
    if not isinstance(model, DecoderLM) or tok is None:
        raise ConfigError(f"{spec} is not a decoder with a tokenizer; the server needs both")
    engine = Engine(model.eval(), tok, mode=mode, compile=compile)
    names, bank = {}, None
    if adapters:
        if not engine.fast.packs_weights:  # before loading them: a BitNet model has no nn.Linear to put them on
            raise ConfigError(f"{spec} runs its own modules (e.g. BitNet); adapters by name need a packed model")
        names, bank = adapter_bank(model, {k: adapter_path(v) for k, v in adapters.items()})
        engine.fast.adapters = bank
    scheduler = Scheduler(engine, slots=slots, max_len=max_len, max_queue=max_queue, adapters=names)
    return ServedModel(name or model_name(spec), scheduler, tok, created=int(time.time()))


def check_exposure(host: str, api_key: str | None) -> None:
    if host not in LOOPBACK and not api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the models "
            "(pass --api-key or bind 127.0.0.1)",
            host,
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn running an app in a background thread: `with ServerThread(app) as url: ...` (the base URL,
    e.g. http://127.0.0.1:PORT/v1); leaving the block shuts the server down (lifespan included)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, graceful_s: float = 5.0) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", timeout_graceful_shutdown=graceful_s
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="lmstack-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(app, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> None:
    """Serve in the foreground until Ctrl-C / SIGTERM (uvicorn's graceful shutdown, then the lifespan's)."""
    import uvicorn

    check_exposure(host, api_key)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    """NAME=VALUE options (a bare VALUE names itself: `--adapter pal`)."""
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        name, rest = (name, rest) if sep else (model_name(value), value)
        if not name or not rest:
            raise ConfigError(f"{what} takes NAME=VALUE or VALUE, got {value!r}")
        if name in out:
            raise ConfigError(f"{what} {name!r} given twice")
        out[name] = rest
    return out


def serve_main(
    models: list[str],
    adapters: list[str],
    *,
    mode: str = "fp32",
    compile: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    slots: int = 16,
    max_len: int = 2048,
    max_queue: int = 64,
    embeddings: str = "all-minilm-l6-v2",
    limits=None,
) -> int:
    """`lmstack serve`: load the models (the first one carries the adapters), then serve until stopped.
    With no --adapter, the default SmolLM2 model gets the shipped PAL adapter (`NAME:pal`); `--adapter
    none` serves no adapters."""
    from lmstack.serve.app import create_app

    specs = parse_pairs(models, "--model")
    chosen = parse_pairs([a for a in adapters if a != "none"], "--adapter")
    first = next(iter(specs))
    if not adapters and specs[first] in ("smollm2", "smollm2-135m-instruct"):
        chosen = {"pal": "pal"}
    served = []
    for i, (name, spec) in enumerate(specs.items()):
        print(
            f"loading {name} ({spec}){' with adapters ' + ', '.join(chosen) if chosen and i == 0 else ''}", flush=True
        )
        served.append(
            load_model(
                spec,
                chosen if i == 0 else None,
                name=name,
                mode=mode,
                compile=compile,
                slots=slots,
                max_len=max_len,
                max_queue=max_queue,
            )  # fmt: skip
        )
    embedder = None
    if embeddings != "none":
        from lmstack.augment.rag.embed import SentenceEmbedder

        embedder = SentenceEmbedder.from_pretrained(embeddings)
    app = create_app(served, embedder, embeddings, api_key=api_key, limits=limits)
    ids = [m.name for m in served] + [f"{served[0].name}:{a}" for a in served[0].adapters]
    print(f"serving {', '.join(ids)} on http://{host}:{port}/v1", flush=True)
    run(app, host, port, api_key)
    return 0


__all__ = [
    "ServerThread",
    "adapter_path",
    "check_exposure",
    "free_port",
    "load_model",
    "model_name",
    "parse_pairs",
    "run",
    "serve_main",
]
