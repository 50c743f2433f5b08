import argparse

import pytest
from benchmarks.bitnet import edge_note, merge_results, narrowing_tail, width_grids


def test_narrowing_tail_is_the_widest_stretch_where_the_gap_shrinks() -> None:
    assert narrowing_tail({64: 0.41, 128: 0.54, 256: 0.32, 512: 0.19, 1024: 0.07}) == [128, 256, 512, 1024]
    assert narrowing_tail({64: 0.5, 128: 0.4, 256: 0.3}) == [64, 128, 256]
    assert narrowing_tail({64: 0.3, 128: 0.4}) == [128]


def test_width_grids_parse_and_reject_malformed_items() -> None:
    args = argparse.Namespace(lr_grid_fp=["512=0.0005,0.001", "1024=0.0007"])
    assert width_grids(args, "fp") == {512: [0.0005, 0.001], 1024: [0.0007]}
    assert width_grids(argparse.Namespace(), "bitnet") == {}  # results recorded before the option existed
    with pytest.raises(SystemExit, match="WIDTH=LR"):
        width_grids(argparse.Namespace(lr_grid_fp=["wide=0.001"]), "fp")


def test_edge_note_names_rates_chosen_at_the_edge_of_their_grid() -> None:
    trials = [
        {"kind": "fp", "width": 64, "lr": 0.001, "val_ppl": 60.0},
        {"kind": "fp", "width": 64, "lr": 0.002, "val_ppl": 50.0},
        {"kind": "fp", "width": 64, "lr": 0.004, "val_ppl": 55.0},
        {"kind": "bitnet", "width": 64, "lr": 0.001, "val_ppl": 70.0},
        {"kind": "bitnet", "width": 64, "lr": 0.002, "val_ppl": 80.0},
    ]
    assert "b1.58 d=64 (0.001)" in edge_note(trials)
    assert "FP" not in edge_note(trials)
    assert "inside its grid" in edge_note(trials[:3])


def test_merge_results_keeps_earlier_widths_and_says_which_run_measured_which() -> None:
    previous = {
        "config": {"widths": [64, 128], "lr_grid_fp": ["128=0.001,0.002"], "lr_grid_bitnet": []},
        "runs": [{"width": 64, "run": "old"}, {"width": 128, "run": "old"}],
        "lr_trials": [{"width": 64}, {"width": 128}],
        "kernels": [{"width": 128}, {"width": 576}],
        "ablations": [{"variant": "cosine"}],
        "total_s": 10.0,
        "commit": "abc1234",
        "command": "first",
    }
    new = {
        "config": {"widths": [128, 256], "lr_grid_fp": ["256=0.0005"], "lr_grid_bitnet": ["256=0.001"]},
        "runs": [{"width": 128, "run": "new"}, {"width": 256, "run": "new"}],
        "lr_trials": [{"width": 128}, {"width": 256}],
        "kernels": [{"width": 256}],
        "ablations": [],
        "total_s": 5.0,
    }
    merged = merge_results(previous, new)
    assert merged["config"]["widths"] == [64, 128, 256]
    assert [(r["width"], r["run"]) for r in merged["runs"]] == [(64, "old"), (128, "new"), (256, "new")]
    assert [k["width"] for k in merged["kernels"]] == [128, 576, 256]
    assert merged["ablations"] == [{"variant": "cosine"}]
    assert merged["config"]["lr_grid_fp"] == ["128=0.001,0.002", "256=0.0005"]
    assert merged["config"]["lr_grid_bitnet"] == ["256=0.001"]
    assert [(p["widths"], p["total_s"]) for p in merged["parts"]] == [([64], 10.0), ([128, 256], 5.0)]
    assert merged["parts"][0]["commit"] == "abc1234" and merged["total_s"] == 15.0
