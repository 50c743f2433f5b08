import json
from collections import Counter

import pytest

from lmstack.data.tasks.common import (
    SPLITS,
    Templates,
    hash_split,
    number_signature,
    numbers_in,
    pool_split,
    read_jsonl,
    split_rng,
)
from lmstack.errors import DataError


def test_hash_split_is_a_stable_roughly_uniform_partition():
    keys = [f"stem{i}" for i in range(3000)]
    owners = [hash_split(k) for k in keys]
    assert owners == [hash_split(k) for k in keys]
    counts = Counter(owners)
    assert set(counts) == set(SPLITS)
    assert all(800 < c < 1200 for c in counts.values())


def test_pool_split_partitions_3_1_1():
    pool = [f"x{i}" for i in range(25)]
    parts = {s: pool_split(pool, s) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [15, 5, 5]
    assert sorted(sum(parts.values(), [])) == sorted(pool)
    with pytest.raises(DataError, match="unknown split"):
        pool_split(pool, "dev")


def test_split_rngs_are_independent_of_hash_randomisation():
    a = [split_rng(7, "t", "train").random() for _ in range(2)]
    assert a == [split_rng(7, "t", "train").random() for _ in range(2)]
    assert split_rng(7, "t", "train").random() != split_rng(7, "t", "test").random()
    assert split_rng(7, "t", "train").random() != split_rng(8, "t", "train").random()


def test_number_signature_normalises_and_sorts():
    assert numbers_in("pays $2.50 for 1,200 pens at 9:05") == ["2.5", "1200", "9", "5"]
    assert number_signature("3 apples and 12 pears, then 3 more") == "12 3 3"
    assert number_signature("$12.50") == number_signature("12.5")
    assert number_signature("no numbers") == ""


def test_templates_need_every_split_and_report_ids():
    with pytest.raises(ValueError, match="needs a non-empty list"):
        Templates("x", {"slot": (["a"], [], ["c"])})
    t = Templates("x", {"slot": (["a", "b"], ["c"], ["d"])})
    tid, text = t.pick(split_rng(0, "x", "test"), "slot", "test")
    assert (tid, text) == ("x.slot.test.0", "d")
    assert t.by_split() == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"ok": 1}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="JSON object"):
        read_jsonl(path)
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
