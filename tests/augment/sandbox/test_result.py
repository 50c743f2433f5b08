"""Reading what the child left behind (result.py): the supervisor's header, the strict parser of the
program's result object, how a finished run is classified, and the text an agent sees."""

from __future__ import annotations

import json
import signal

import pytest

from lmstack.augment.sandbox import Limits, SandboxResult
from lmstack.augment.sandbox.result import classify, parse_result, read_header, ready_layers


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
        (b'{"ok": true, "value": 1, "layers": ["gvisor"]}', "unexpected key 'layers'"),
        (b'{"ok": true, "value": "\\ud800"}', "lone surrogate"),
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
    assert parse_result(b'{"ok": true, "value": 2.5}') == {"ok": True, "value": 2.5}
    assert parse_result('{"ok": true, "value": "caf\u00e9 \U0001f600"}'.encode()) == {
        "ok": True,
        "value": "caf\u00e9 \U0001f600",
    }


def test_result_text_for_silent_success() -> None:
    assert SandboxResult(True, value=None).text() == "result: None"


# --- the supervisor's header


def test_the_header_is_the_first_line_and_the_rest_is_the_programs() -> None:
    header, body = read_header(b'{"status": 0, "ready": "[]"}\n{"ok": true}\n{"x": 1}')
    assert header == {"status": 0, "ready": "[]"} and body == b'{"ok": true}\n{"x": 1}'
    assert read_header(b'{"status": 0}') == (None, b"")  # no newline: the supervisor did not finish
    assert read_header(b"[1]\n{}") == (None, b"")
    assert read_header(b"\xff\n{}") == (None, b"")


def test_ready_layers_are_short_printable_names_only() -> None:
    assert ready_layers('["rlimits", "seccomp"]') == ("rlimits", "seccomp")
    assert ready_layers('["ok", 3, "a\\u0000b", "' + "x" * 50 + '"]') == ("ok",)
    assert ready_layers("{") == () and ready_layers("") == () and ready_layers(None) == ()


# --- classify: why a run ended, from the host's stop reason, the supervisor's report and the result object

LIMITS = Limits(cpu_s=1, wall_s=2.0, file_mb=1, output_bytes=5000, disk_mb=4, max_files=10)


def report(body: bytes = b"", status: int = 0, ready: str = '["rlimits"]', **flags: object) -> bytes:
    return json.dumps({"status": status, "ready": ready, "quota": False, "overflow": False, **flags}).encode() + (
        b"\n" + body
    )


def channels(result: bytes = b"", stdout: bytes = b"", stderr: bytes = b"") -> dict[str, bytes]:
    return {"stdout": stdout, "stderr": stderr, "result": result}


@pytest.mark.parametrize(
    "status, stop, error, fragment",
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
def test_the_host_side_reason_comes_first(status: int, stop: str | None, error: str, fragment: str) -> None:
    line = b'{"ok": true, "value": 1}'  # ignored: the host stopped it, or a signal ended it
    result = classify(0, channels(report(line, status)), stop, LIMITS, 0.5)
    assert not result.ok and result.error == error and fragment in result.message
    assert result.wall_s == 0.5 and result.layers == ("rlimits",)


@pytest.mark.parametrize(
    "flags, error, fragment",
    [
        ({"error": "could not start the program's process: EAGAIN"}, "sandbox", "EAGAIN"),
        ({"overflow": True}, "output_limit", "as its result"),
        ({"quota": True}, "file_limit", "4 MB or 10 files"),
    ],
)
def test_the_supervisors_findings_override_the_programs_claims(flags: dict, error: str, fragment: str) -> None:
    result = classify(0, channels(report(b'{"ok": true, "value": 1}', **flags)), None, LIMITS, 0.1)
    assert not result.ok and result.error == error and fragment in result.message


def test_a_clean_result_is_a_success_with_the_pre_program_layers_and_output() -> None:
    result = classify(0, channels(report(b'{"ok": true, "value": 4}'), stdout=b"hi\xff\n"), None, LIMITS, 0.1)
    assert result.ok and result.value == 4 and result.layers == ("rlimits",)
    assert result.stdout == "hi\ufffd\n"  # undecodable output is replaced, never an error


def test_the_programs_error_kind_is_trusted_only_for_program_side_kinds() -> None:
    known = classify(
        0, channels(report(b'{"ok": false, "error": "exception", "message": "line 2: E"}')), None, LIMITS, 0.1
    )
    assert known.error == "exception" and known.message == "line 2: E"
    for forged in ("root", "timeout", "sandbox", "cpu_limit"):
        body = b'{"ok": false, "error": "%s", "message": 3}' % forged.encode()
        assert classify(0, channels(report(body)), None, LIMITS, 0.1).error == "protocol"
    malformed = classify(0, channels(report(b'{"ok": true, "value": [1]}')), None, LIMITS, 0.1)
    assert malformed.error == "protocol" and "not a JSON scalar" in malformed.message


def test_messages_with_lone_surrogates_come_back_encodable() -> None:
    body = b'{"ok": false, "error": "exception", "message": "bad \\ud800 text"}'
    result = classify(0, channels(report(body)), None, LIMITS, 0.1)
    assert result.error == "exception" and result.message == "bad \\ud800 text"
    result.text().encode("utf-8")  # what `lmstack pal` prints


def test_an_exit_without_a_result_is_a_crash_naming_the_last_stderr_line() -> None:
    stderr = b"Traceback (most recent call last):\nMemoryError\n"
    result = classify(0, channels(report(status=1), stderr=stderr), None, LIMITS, 0.1)
    assert result.error == "crash" and "status 1" in result.message and result.message.endswith("MemoryError")


def test_no_header_means_the_supervisor_died_and_nothing_the_program_wrote_counts() -> None:
    result = classify(-signal.SIGSEGV, channels(b'{"ok": true, "value": 1}'), None, LIMITS, 0.1)
    assert result.error == "crash" and result.layers == ()
    assert classify(0, channels(), None, LIMITS, 0.1).error == "crash"
