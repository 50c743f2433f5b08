"""Fused projections: one matmul that stands for several (q|k|v of attention, gate|up of a gated MLP).

Small-batch decoding is bound by per-op overhead, so the blocks fuse these projections; but fine-tuning
(LoRA on q and v only), BitNet (one scale per part) and exports (HF's separate q_proj/k_proj/v_proj) need
to see the parts. Every fused layer therefore carries `splits`, the output sizes of its parts in order.
"""

from __future__ import annotations

from torch import Tensor, nn


def check_splits(splits: tuple[int, ...] | None, out_features: int) -> tuple[int, ...] | None:
    """Normalised `splits`: None for one part; else positive part sizes that add up to `out_features`."""
    if splits is None or len(splits) <= 1:
        if splits and splits[0] != out_features:
            raise ValueError(f"splits {tuple(splits)} must add up to out_features={out_features}")
        return None
    if any(int(n) <= 0 for n in splits) or sum(splits) != out_features:
        raise ValueError(f"splits {tuple(splits)} must be positive and add up to out_features={out_features}")
    return tuple(int(n) for n in splits)


def split_parts(t: Tensor, splits: tuple[int, ...] | None, dim: int = 0) -> tuple[Tensor, ...]:
    """`t` cut into the parts of a fused projection along `dim` (views): rows of a weight or bias (dim 0),
    features of an output (dim -1). One part when `splits` is None."""
    return (t,) if splits is None else t.split(list(splits), dim=dim)


class FusedLinear(nn.Linear):
    """An `nn.Linear` (same parameters, same numerics) whose output rows are the concatenated parts named by
    `splits`, e.g. (q_dim, kv_dim, kv_dim) for a fused qkv projection."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, splits: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.splits = check_splits(splits, out_features)

    def weight_parts(self) -> tuple[Tensor, ...]:
        """The weight of each part, (part_out, in) views of `weight`."""
        return split_parts(self.weight, self.splits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, splits={self.splits}"
