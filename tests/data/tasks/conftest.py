from collections.abc import Callable

import pytest

from lmstack.data.tasks import SPLITS, generate

# Items per split used by the tests: enough to hit every family/type, small enough to stay fast.
N = {"math_word": 240, "math_word_hard": 150, "knowledge_base": 160, "preferences": 400, "reviews": 240, "records": 150}


@pytest.fixture(scope="session")
def task_data() -> Callable[[str], dict[str, dict[str, list[dict]]]]:
    """task name -> {split: generator output}, generated once per test session (seed 0)."""
    cache: dict[str, dict[str, dict[str, list[dict]]]] = {}

    def get(name: str) -> dict[str, dict[str, list[dict]]]:
        if name not in cache:
            cache[name] = {split: generate(name, N[name], seed=0, split=split) for split in SPLITS}
        return cache[name]

    return get
