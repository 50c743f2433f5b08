"""Reading what the child left behind (result.py): the strict result-channel parser, how a finished run is
classified, and the text an agent sees."""

from __future__ import annotations

import signal

import pytest

from lmstack.augment.sandbox import Limits, SandboxResult
from lmstack.augment.sandbox.result import classify, parse_result


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", None),
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000, "not a JSON object"),
        (b'{"ok": true, "value": [1]}', "not a JSON scalar"),
        (b'{"ok": true, "value": {"a": 1}}', "not a JSON scalar"),
        (b'{"ok": true, "value": Infinity}', "non-finite"),
        (b'{"ok": true, "value": 1, "layers": [1]}', "layers"),
        (b"\xff\xfe", "not a JSON object"),
    ],
)
def test_result_channel_parsing_is_strict(raw: bytes, fragment: str | None) -> None:
    parsed = parse_result(raw)
    if fragment is None:
        assert parsed is None
    else:
        assert isinstance(parsed, str) and fragment in parsed


def test_result_channel_accepts_scalars() -> None:
    assert parse_result(b'{"ok": true, "value": 2.5, "layers": ["rlimits"]}') == {
        "ok": True,
        "value": 2.5,
        "layers": ["rlimits"],
    }


def test_result_text_for_silent_success() -> None:
    assert SandboxResult(True, value=None).text() == "result: None"


# --- classify: why a run ended, from the host's stop reason, the exit status and the result line

LIMITS = Limits(cpu_s=1, wall_s=2.0, file_mb=1, output_bytes=5000)


def channels(result: bytes = b"", stdout: bytes = b"", stderr: bytes = b"") -> dict[str, bytes]:
    return {"stdout": stdout, "stderr": stderr, "result": result}


@pytest.mark.parametrize(
    "returncode, stop, error, fragment",
    [
        (0, "timeout", "timeout", "2 s"),
        (-signal.SIGKILL, "output_limit", "output_limit", "5000 bytes"),
        (-signal.SIGXCPU, None, "cpu_limit", "SIGXCPU"),
        (-signal.SIGKILL, None, "cpu_limit", "SIGKILL"),
        (-signal.SIGXFSZ, None, "file_limit", "1 MB"),
        (-signal.SIGSEGV, None, "crash", "SIGSEGV"),
        (-200, None, "crash", "signal 200"),
    ],
)
def test_the_host_side_reason_comes_first(returncode: int, stop: str | None, error: str, fragment: str) -> None:
    line = b'{"ok": true, "value": 1}'  # ignored: the host stopped it, or a signal ended it
    result = classify(returncode, channels(line), stop, LIMITS, 0.5)
    assert not result.ok and result.error == error and fragment in result.message
    assert result.wall_s == 0.5


def test_a_clean_result_line_is_a_success_with_its_layers_and_output() -> None:
    result = classify(
        0, channels(b'{"ok": true, "value": 4, "layers": ["rlimits"]}', stdout=b"hi\xff\n"), None, LIMITS, 0.1
    )
    assert result.ok and result.value == 4 and result.layers == ("rlimits",)
    assert result.stdout == "hi\ufffd\n"  # undecodable output is replaced, never an error


def test_the_childs_error_kind_is_trusted_only_if_known() -> None:
    known = classify(0, channels(b'{"ok": false, "error": "exception", "message": "line 2: E"}'), None, LIMITS, 0.1)
    assert known.error == "exception" and known.message == "line 2: E"
    unknown = classify(0, channels(b'{"ok": false, "error": "root", "message": 3}'), None, LIMITS, 0.1)
    assert unknown.error == "protocol" and unknown.message == ""
    malformed = classify(0, channels(b'{"ok": true, "value": [1]}'), None, LIMITS, 0.1)
    assert malformed.error == "protocol" and "not a JSON scalar" in malformed.message


def test_an_exit_without_a_result_is_a_crash_naming_the_last_stderr_line() -> None:
    result = classify(1, channels(stderr=b"Traceback (most recent call last):\nMemoryError\n"), None, LIMITS, 0.1)
    assert result.error == "crash" and "status 1" in result.message and result.message.endswith("MemoryError")
