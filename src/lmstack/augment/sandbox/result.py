"""What comes back from the sandbox (the end of layer 5): `SandboxResult`, and the host's strict reading of
what the child left behind: its capped output and the result pipe, which only the supervisor half of the
child holds (`jail.py`). The pipe carries the supervisor's header line (the program's exit status, the layers
the program's process reported before the program existed, quota and flood flags), then the program's own
result object. Nothing here trusts the program: its object is parsed as JSON scalars only (never unpickled),
it may not claim layers or host-side error kinds, and its strings must be valid text.
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


#: Error kinds a program's own result may claim; every other kind is the host's or the supervisor's finding.
CHILD_KINDS = ("exception", "memory_limit", "bad_result")
#: The keys a program's result object may have.
RESULT_KEYS = frozenset({"ok", "value", "error", "message"})


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run. `ok` means the program finished and returned a JSON scalar (`value`); otherwise
    `error` is one of ERROR_KINDS and `message` says what happened (with the program's line when known).
    `layers` are the layers that took effect for this run; `missing` the ones it asked for but did not get
    (this machine's kernel lacks them): a degraded sandbox says so in every result."""

    ok: bool
    value: Scalar = None
    error: str | None = None
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    layers: tuple[str, ...] = field(default_factory=tuple)
    missing: tuple[str, ...] = field(default_factory=tuple)

    def text(self) -> str:
        """A one-paragraph observation for an agent: printed output, then the value or the error."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.ok:
            if self.value is not None or not parts:
                parts.append(f"result: {self.value!r}")
        else:
            parts.append(f"error ({self.error}): {self.message}")
        return "\n".join(parts)


def clean_text(text: str) -> str:
    """`text` as encodable UTF-8: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(returncode: int, bufs: dict[str, bytes], stop: str | None, limits: Limits, wall_s: float) -> SandboxResult:
    """Turn a finished child into a result: the host's reason for stopping it (timeout, output flood) first,
    then the supervisor's report (set-up failure, result flood, disk quota, the program's exit status), then
    the program's own result object. `returncode` is the supervisor's; the program's status is in the report."""
    stdout = bufs["stdout"].decode("utf-8", "replace")
    stderr = bufs["stderr"].decode("utf-8", "replace")
    header, body = read_header(bufs["result"])
    layers = ready_layers(header.get("ready")) if header else ()

    def fail(kind: str, message: str) -> SandboxResult:
        return SandboxResult(
            False, error=kind, message=clean_text(message), stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )

    if stop == "timeout":
        return fail("timeout", f"the program did not finish within {limits.wall_s:g} s and was killed")
    if stop == "output_limit":
        return fail("output_limit", f"the program wrote more than {limits.output_bytes} bytes and was killed")
    if header is not None:
        if isinstance(header.get("error"), str):
            return fail("sandbox", header["error"])
        if header.get("overflow") is True:
            return fail("output_limit", f"the program wrote more than {limits.result_bytes} bytes as its result")
        if header.get("quota") is True:
            return fail(
                "file_limit",
                f"the program stored more than {limits.disk_mb} MB or {limits.max_files} files and was killed",
            )
        status = header.get("status")
        returncode = status if type(status) is int else returncode
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return fail(
                "cpu_limit", f"the program used more than {limits.cpu_s} s of CPU and was killed ({_signal_name(sig)})"
            )
        if sig == signal.SIGXFSZ:
            return fail("file_limit", f"the program wrote a file larger than {limits.file_mb} MB")
        return fail("crash", f"the program crashed ({_signal_name(sig)})")
    parsed = parse_result(body) if header is not None else None
    if parsed is None:
        tail = stderr.strip().splitlines()[-1:] or [""]
        return fail("crash", f"the program exited with status {returncode} without a result {tail[0][:300]}".strip())
    if isinstance(parsed, str):
        return fail("protocol", parsed)
    if parsed.get("ok") is True:
        return SandboxResult(
            True, value=parsed.get("value"), stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )
    kind = parsed.get("error")
    kind = kind if kind in CHILD_KINDS else "protocol"
    message = parsed.get("message")
    return fail(kind, message if isinstance(message, str) else "")


def read_header(raw: bytes) -> tuple[dict | None, bytes]:
    """Split the supervisor's header line (a flat JSON object) from the program's result bytes after it.
    No header (the supervisor died or was killed) is None."""
    head, sep, body = raw.partition(b"\n")
    if not sep:
        return None, b""
    try:
        header = json.loads(head.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, b""
    return (header, body) if isinstance(header, dict) else (None, b"")


def ready_layers(text: object) -> tuple[str, ...]:
    """The layers the program's process reported before any program existed: a JSON list of names."""
    try:
        names = json.loads(text) if isinstance(text, str) and text else []
    except (ValueError, RecursionError):
        return ()
    if not isinstance(names, list):
        return ()
    return tuple(n for n in names if isinstance(n, str) and n.isascii() and n.isprintable() and len(n) < 40)


def parse_result(raw: bytes) -> dict | str | None:
    """Strictly decode the program's result object: a flat JSON object with only RESULT_KEYS, scalar values,
    strings that are valid Unicode text. Returns None if there is none, a description string if malformed."""
    if not raw:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError):
        return "the result channel carried something that is not a JSON object"
    if not isinstance(obj, dict):
        return "the result channel carried something that is not a JSON object"
    for key, value in obj.items():
        if key not in RESULT_KEYS:
            return f"malformed result: unexpected key {clean_text(key)[:40]!r}"
        if not (value is None or isinstance(value, bool | int | float | str)):
            return f"malformed result: {key} is not a JSON scalar"
    if isinstance(obj.get("value"), float) and not math.isfinite(obj["value"]):
        return "malformed result: a non-finite number"
    if isinstance(obj.get("value"), str) and clean_text(obj["value"]) != obj["value"]:
        return "malformed result: the value is not valid text (a lone surrogate)"
    return obj
