"""The policy layer (policy.py): what `check_program` rejects, how a rejection reads, and that a rejected
program never reaches a process."""

from __future__ import annotations

from lmstack.augment.sandbox import DEFAULT_POLICY, Limits, Policy, check_program, run_program

FAST = Limits(cpu_s=1, wall_s=5.0)


def test_policy_errors_name_the_line_and_rule() -> None:
    errors = check_program("x = 1\nimport os\n")
    assert len(errors) == 1 and errors[0].startswith("Line 2:") and '"os"' in errors[0]
    result = run_program("x = 1\nimport os\n")
    assert result.error == "policy" and "Line 2" in result.message
    assert result.wall_s < 1.0  # rejected in the host, no process started


def test_syntax_errors_are_policy_results() -> None:
    result = run_program("def solution(:\n    return 1\n")
    assert not result.ok and result.error == "policy" and "SyntaxError" in result.message


def test_non_string_program_is_a_structured_error() -> None:
    result = run_program(b"answer = 1")  # type: ignore[arg-type]
    assert not result.ok and result.error == "policy"


def test_custom_policy_can_widen_modules_and_limit_size() -> None:
    assert check_program("import string\nanswer = string.digits\n") != []
    wide = Policy(modules=DEFAULT_POLICY.modules | {"string"})
    assert check_program("import string\nanswer = string.digits\n", wide) == []
    result = run_program("import string\nanswer = string.digits\n", policy=wide, limits=FAST)
    assert result.ok and result.value == "0123456789"
    assert "limit is 10" in check_program("answer = 12345\n", Policy(max_chars=10))[0]
