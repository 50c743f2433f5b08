import subprocess
from pathlib import Path

import benchmarks.common as common
import pytest


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-commit repository laid out like lmstack's: code, plus docs/results where benchmarks write."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results" / "bench.md").write_text("old\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "init")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "docs" / "results")
    return tmp_path


def test_commit_is_clean_while_a_benchmark_rewrites_its_results(repo: Path) -> None:
    (repo / "docs" / "results" / "bench.md").write_text("new\n")
    (repo / "docs" / "results" / "bench.png").write_bytes(b"png")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert common.commit() == head.stdout.strip()


def test_commit_is_dirty_when_code_differs(repo: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    assert common.commit().endswith("+dirty")


def test_command_names_repository_paths_relative_and_quotes_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """A results page must not carry the path of the machine it was measured on, and must stay runnable."""
    argv = [str(common.ROOT / "benchmarks" / "x.py"), "--run", f"a={common.ROOT / 'runs' / 'a'}", "--rows", ""]
    monkeypatch.setattr(common.sys, "argv", argv)
    assert common.command("x") == "python -m benchmarks.x --run a=runs/a --rows ''"
    monkeypatch.setattr(common.sys, "argv", argv[:1])
    assert common.command("x") == "python -m benchmarks.x"
