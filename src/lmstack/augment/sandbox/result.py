"""What comes back from the sandbox (the end of layer 5): `SandboxResult`, and the host's strict reading of
what the child left behind (its exit status, its capped output and the one JSON line on the result pipe).
Nothing here trusts the child: the result line is parsed as JSON scalars only, never unpickled.
"""

from __future__ import annotations

import json
import math
import signal
from dataclasses import dataclass, field

from lmstack.augment.sandbox.limits import Limits

Scalar = None | bool | int | float | str

ERROR_KINDS = (
    "policy",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "file_limit",
    "output_limit",
    "exception",
    "crash",
    "bad_result",
    "protocol",
    "sandbox",
)


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run. `ok` means the program finished and returned a JSON scalar (`value`); otherwise
    `error` is one of ERROR_KINDS and `message` says what happened (with the program's line when known)."""

    ok: bool
    value: Scalar = None
    error: str | None = None
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    layers: tuple[str, ...] = field(default_factory=tuple)

    def text(self) -> str:
        """A one-paragraph observation for an agent: printed output, then the value or the error."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.ok:
            if self.value is not None or not parts:
                parts.append(f"result: {self.value!r}")
        else:
            parts.append(f"error ({self.error}): {self.message}")
        return "\n".join(parts)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(returncode: int, bufs: dict[str, bytes], stop: str | None, limits: Limits, wall_s: float) -> SandboxResult:
    """Turn a finished child into a result: the host's reason for stopping it (timeout, output flood) first,
    then a fatal signal, then the child's own result line."""
    stdout = bufs["stdout"].decode("utf-8", "replace")
    stderr = bufs["stderr"].decode("utf-8", "replace")

    def fail(kind: str, message: str, layers: tuple[str, ...] = ()) -> SandboxResult:
        return SandboxResult(
            False, error=kind, message=message, stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )

    if stop == "timeout":
        return fail("timeout", f"the program did not finish within {limits.wall_s:g} s and was killed")
    if stop == "output_limit":
        return fail("output_limit", f"the program wrote more than {limits.output_bytes} bytes and was killed")
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return fail(
                "cpu_limit", f"the program used more than {limits.cpu_s} s of CPU and was killed ({_signal_name(sig)})"
            )
        if sig == signal.SIGXFSZ:
            return fail("file_limit", f"the program wrote a file larger than {limits.file_mb} MB")
        return fail("crash", f"the program crashed ({_signal_name(sig)})")
    parsed = parse_result(bufs["result"])
    if parsed is None:
        tail = stderr.strip().splitlines()[-1:] or [""]
        return fail("crash", f"the program exited with status {returncode} without a result {tail[0][:300]}".strip())
    if isinstance(parsed, str):
        return fail("protocol", parsed)
    layers = tuple(x for x in parsed.get("layers", ()) if isinstance(x, str))
    if parsed.get("ok") is True:
        return SandboxResult(
            True, value=parsed.get("value"), stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )
    kind = parsed.get("error")
    kind = kind if kind in ERROR_KINDS else "protocol"
    message = parsed.get("message")
    return fail(kind, message if isinstance(message, str) else "", layers)


def parse_result(raw: bytes) -> dict | str | None:
    """Strictly decode the child's result line: a flat JSON object whose values are scalars or a list of
    strings. Returns None if there is none, a description string if it is malformed."""
    if not raw:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError):
        return "the result channel carried something that is not a JSON object"
    if not isinstance(obj, dict):
        return "the result channel carried something that is not a JSON object"
    for key, value in obj.items():
        if key == "layers":
            if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                return "malformed result: layers"
        elif not (value is None or isinstance(value, bool | int | float | str)):
            return f"malformed result: {key} is not a JSON scalar"
    if isinstance(obj.get("value"), float) and not math.isfinite(obj["value"]):
        return "malformed result: a non-finite number"
    return obj
