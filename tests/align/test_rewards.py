"""Reward functions: the built-ins score like the code they reuse (PAL's sandboxed scoring, the preference
oracle), user rewards load from "module:function", and GuardedReward turns a raising, hanging or
non-numeric reward into a counted 0.0 instead of a crashed run."""

import math
import threading

import pytest
import torch

from lmstack.align.rewards import (
    GuardedReward,
    Reward,
    as_reward,
    execution,
    execution_batch,
    load_reward,
    oracle,
    reward_model,
    score_batch,
)
from lmstack.augment.sandbox import Limits
from lmstack.data.tasks import generate
from lmstack.data.tasks.preferences import oracle_score
from lmstack.errors import ConfigError, DataError

FAST = Limits(cpu_s=1, wall_s=5.0)
ROW = {"question": "What is 6 times 7?", "answer": 42}
RIGHT = "```python\ndef solution():\n    return 6 * 7\n```"
WRONG = "def solution():\n    return 6 + 7\n"
CRASH = "def solution():\n    return 1 / 0\n"
PROSE = "I think it is forty-two."


def test_execution_runs_the_extracted_program_against_the_rows_answer():
    assert execution(RIGHT, ROW, limits=FAST) == 1.0
    assert execution(WRONG, ROW, limits=FAST) == 0.0
    assert execution(CRASH, ROW, limits=FAST) == 0.0
    assert execution(PROSE, ROW, limits=FAST) == 0.0  # no program at all
    texts = [RIGHT, WRONG, PROSE, RIGHT]
    rows = [ROW, ROW, ROW, {"answer": 13}]
    assert execution_batch(texts, rows, limits=FAST) == [1.0, 0.0, 0.0, 0.0]
    assert load_reward("execution").batch([WRONG], [{"answer": "13"}]) == [1.0]  # PAL's answer matching
    with pytest.raises(ConfigError, match="answer"):
        execution(RIGHT, {"question": "no gold"})


def test_oracle_is_the_preference_tasks_judge():
    item = generate("preferences", 3)["items"][1]
    for text in (item["chosen"], item["rejected"], ""):
        assert oracle(text, item) == oracle_score(text, item)
    assert oracle(item["chosen"], item) == item["chosen_score"] != oracle(item["rejected"], item)
    with pytest.raises(ConfigError, match="constraint"):
        oracle("1", {"answer": 1})


def test_reward_model_scores_prompt_and_completion_in_one_call():
    calls = []

    def score(texts):
        calls.append(list(texts))
        return torch.tensor([float(len(t)) for t in texts])

    rm = reward_model(score, separator="\n")
    rows = [{"prompt": "ab"}, {"prompt": "c"}]
    assert rm.batch(["xyz", ""], rows) == [6.0, 2.0]
    assert calls == [["ab\nxyz", "c\n"]]
    assert rm("q", {"prompt": "p"}) == 3.0
    assert reward_model(score, prompt_key=None)("q", {}) == 1.0
    with pytest.raises(ConfigError, match="prompt"):
        rm("q", {})
    with pytest.raises(DataError, match="2 texts but 1 rows"):
        rm.batch(["a", "b"], rows[:1])


def test_user_rewards_load_from_module_function_strings(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length(text, row):\n    return len(text) * row.get('scale', 1)\n\n"
        "class Judge:\n    @staticmethod\n    def strict(text, row):\n        return float(text == row['answer'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    length = load_reward("my_rewards_mod:length")
    assert isinstance(length, Reward) and length.name == "my_rewards_mod:length"
    assert length("abcd", {"scale": 2}) == 8.0
    assert load_reward("my_rewards_mod:Judge.strict")("7", {"answer": "7"}) == 1.0
    assert load_reward("oracle").name == "oracle"
    for bad, match in [
        ("nope", "unknown reward"),
        ("no_such_module_xyz:f", "cannot import"),
        ("my_rewards_mod:missing", "no attribute"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_reward(bad)
    with pytest.raises(ConfigError, match="callable"):
        as_reward(3)


def test_a_raising_reward_scores_zero_and_is_counted():
    def flaky(text, row):
        if "boom" in text:
            raise RuntimeError("reward exploded")
        return 1.0

    guarded = GuardedReward(flaky, timeout_s=5.0)
    assert guarded("fine", {}) == 1.0
    assert guarded("boom", {}) == 0.0
    assert guarded.stats.errors == 1 and guarded.stats.calls == 2
    assert guarded.stats.kinds == {"RuntimeError": 1} and "reward exploded" in guarded.stats.last_error
    assert guarded.stats.metrics()["reward/failed_frac"] == 0.5
    no_deadline = GuardedReward(flaky, timeout_s=None)
    assert no_deadline("boom", {}) == 0.0 and no_deadline.stats.errors == 1


def test_a_hanging_reward_times_out_to_zero_and_the_run_goes_on():
    release = threading.Event()

    def hangs(text, row):
        if text == "hang":
            release.wait(30)
        return 0.5

    guarded = GuardedReward(hangs, timeout_s=0.2, max_hung=2)
    try:
        assert guarded("hang", {}) == 0.0
        assert guarded.stats.timeouts == 1 and guarded.stats.kinds == {"timeout": 1}
        assert guarded("ok", {}) == 0.5  # the hung thread does not block the next call
        assert guarded("hang", {}) == 0.0
        with pytest.warns(RuntimeWarning, match="still running"):
            assert guarded("ok", {}) == 0.0  # two hung threads: no more are started
        assert guarded.stats.timeouts == 3 and guarded.stats.calls == 4
    finally:
        release.set()
    for thread in guarded._hung:
        thread.join(5)
    assert guarded("ok", {}) == 0.5  # once they finish, scoring resumes


def test_non_numbers_and_config_errors():
    guarded = GuardedReward(lambda text, row: {"nan": math.nan, "str": "x", "bool": True}.get(text, 2), timeout_s=5)
    assert [guarded(t, {}) for t in ("nan", "str", "bool", "ok")] == [0.0, 0.0, 0.0, 2.0]
    assert guarded.stats.invalid == 3
    with pytest.raises(ConfigError, match="answer"):  # a misconfigured run still fails loudly
        GuardedReward(execution, timeout_s=5)("x", {})
    with pytest.raises(ConfigError):
        GuardedReward(oracle, timeout_s=0)


def test_a_batch_that_raises_is_rescored_item_by_item():
    calls = []

    def batch(texts, rows):
        calls.append(len(texts))
        if "bad" in texts:
            raise ValueError("one bad sample spoils the batch")
        return [len(t) for t in texts]

    reward = Reward("lengths", lambda t, r: batch([t], [r])[0], batch)
    guarded = GuardedReward(reward, timeout_s=5)
    assert score_batch(guarded, ["ab", "bad", "abcd"], [{}] * 3) == [2.0, 0.0, 4.0]
    assert calls == [3, 1, 1, 1] and guarded.stats.errors == 1 and guarded.stats.calls == 3
    assert score_batch(guarded, ["xyz", "q"], [{}, {}]) == [3.0, 1.0] and calls[-1] == 2
    assert score_batch(lambda t, r: len(t), ["a", "bb"], [{}, {}]) == [1.0, 2.0]
