"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from lmstack.models import model_config

# tiny shapes shared by the unit tests (d_model ≤ 64)
TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


def tiny_config(preset: str, **overrides):
    return model_config(preset, **{**TINY, **overrides})
