"""An interactive chat session: message history → chat template → streamed reply.

`ChatSession` is the library piece (used by `lmstack chat` and testable without a terminal); `repl`
wires it to input/output functions and handles the `/reset`, `/system` and `/exit` commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


class ChatSession:
    def __init__(self, engine: Engine, config: GenerationConfig | None = None, system: str | None = None) -> None:
        self.engine = engine
        self.config = config or GenerationConfig(max_new_tokens=256)
        self.system = system
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self.reset()

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def _fit_context(self) -> None:
        """Drop the oldest exchanges until prompt + reply fit in the model's context."""
        limit = self.engine.model.cfg.max_seq_len - self.config.max_new_tokens
        while len(self.history) > 1 and len(self.engine.encode_prompt(self.messages())) > limit:
            self.history = self.history[2:] if len(self.history) > 2 else self.history[1:]

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the assistant's reply (which then joins the history)."""
        self.history.append({"role": "user", "content": text})
        self._fit_context()
        reply = []
        for piece in self.engine.stream(self.messages(), self.config):
            reply.append(piece)
            yield piece
        self.history.append({"role": "assistant", "content": "".join(reply).strip()})


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def repl(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], object] = _stdout) -> int:
    """Read-eval-print loop until /exit or end of input; `write` gets text pieces as they stream."""
    write(HELP + "\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            return 0
        stripped = line.strip()
        if not stripped:
            continue
        if stripped in ("/exit", "/quit"):
            return 0
        if stripped == "/reset":
            session.reset()
            write("(conversation cleared)\n")
            continue
        if stripped == "/system" or stripped.startswith("/system "):
            session.set_system(stripped[len("/system") :].strip())
            write(f"(system prompt {'set' if session.system else 'cleared'}; conversation cleared)\n")
            continue
        if stripped.startswith("/"):
            write(f"unknown command {stripped.split()[0]}; {HELP}\n")
            continue
        for piece in session.send(line):
            write(piece)
        write("\n")
