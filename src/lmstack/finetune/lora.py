"""LoRA (Hu et al., 2021): trainable low-rank adapters beside the frozen linear layers of any lmstack model.

An adapted layer computes base(x) + Σ_active s·B·A·dropout(x) with A (r, in) drawn like peft's default
(kaiming-uniform, a = √5, i.e. U(±1/√in)), B (out, r) = 0 so that training starts at the base model, and
s = α/r (rsLoRA: α/√r, which keeps the update's scale independent of r). The adapter runs in fp32 (fp64 on
an fp64 base) whatever the base's dtype or kind, so it works beside BitNet's ternary `BitLinear` and the
int8/int4 bases of `finetune/qlora.py` too.

`apply_lora` does not wrap a layer: it swaps the layer's class for a subclass that adds the adapters (the
trick FSDP2's `fully_shard` uses). The base keeps its parameter names, so state dicts, HF export and
checkpoints of the base are unchanged, and `generate.fast.FastDecoder`, which packs plain linears only,
refuses an adapted model instead of silently dropping its adapters (the engine then runs it live).

Fused projections (q|k|v, gate|up) are one matmul here but separate layers in the papers and in HF. Each
part can get its own adapter (`qkv_proj.q`, `up_proj.gate`): that is what peft's `q_proj`/`v_proj`
targets mean on a Llama. Naming the fused layer itself (`qkv_proj`) adapts it as one matrix, like peft on
GPT-2's fused `c_attn`. Adapter parameters are named `<layer>.lora.<adapter>.<part>.A|B` (part `all` for a
whole layer), which is what `is_lora_key` (a `TrainingJob.state_filter`) keeps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.models.bitnet import BitLinear
from lmstack.models.fused import FusedLinear

ALL_LINEAR = "all-linear"
WHOLE = "all"  # the part name of an adapter over a whole layer
OUTPUT_HEADS = ("lm_head", "mlm_head.decoder")  # never adapted by "all-linear" (peft skips the output layer too)
PART_NAMES = {"qkv_proj": ("q", "k", "v"), "kv_proj": ("k", "v"), "up_proj": ("gate", "up")}


@dataclass(frozen=True)
class LoRAConfig:
    """One adapter's shape. `targets`: "all-linear" (every linear but the output head, fused layers part by
    part), a regex string that must match a whole layer name (`layers.0.attn.qkv_proj`) or a part name
    (`layers.0.attn.qkv_proj.q`), or a tuple of names matched on their last components ("q", "v",
    "o_proj", "qkv_proj", "mlp.up_proj.gate", "layers.1.mlp.down_proj"). `exclude` uses the tuple form.
    `rank_pattern`/`alpha_pattern` give some layers or parts another r or α (keys are regexes matched on
    the end of the name, as in peft)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | tuple[str, ...] = ("q", "v")
    exclude: tuple[str, ...] = ()
    rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("targets", "exclude"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.targets == (ALL_LINEAR,):
            object.__setattr__(self, "targets", ALL_LINEAR)
        ranks = [self.r, *self.rank_pattern.values()]
        if any(not isinstance(r, int) or isinstance(r, bool) or r <= 0 for r in ranks):
            raise ConfigError(f"lora.r and lora.rank_pattern values must be positive integers, got {ranks}")
        if any(a <= 0 for a in (self.alpha, *self.alpha_pattern.values())):
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha} / {self.alpha_pattern}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError('lora.targets is empty; name layers or parts (e.g. ["q", "v"]) or use "all-linear"')

    def rank(self, name: str) -> int:
        return self.rank_pattern[key] if (key := pattern_key(self.rank_pattern, name)) else self.r

    def alpha_of(self, name: str) -> float:
        return self.alpha_pattern[key] if (key := pattern_key(self.alpha_pattern, name)) else self.alpha


def pattern_key(patterns: dict, name: str) -> str | None:
    """The first key of `patterns` that matches the end of `name` at a dot (peft's rank/alpha_pattern rule)."""
    return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", name)), None)


# ----------------------------------------------------------------------------- adapter modules


class LoRAPart(nn.Module):
    """One low-rank update s·B·A of an (out, in) weight or of some of its rows."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, rslora: bool, like: Tensor) -> None:
        super().__init__()
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        self.r, self.alpha, self.rslora = r, float(alpha), rslora
        self.scaling = self.alpha / (math.sqrt(r) if rslora else r)
        self.A = nn.Parameter(torch.empty(r, in_features, device=like.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(out_features, r, device=like.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.A), self.scaled_B())

    def scaled_B(self) -> Tensor:  # noqa: N802 (the paper's B)
        """s·B: scaling the (out, r) matrix, not the (…, out) output, saves a full-width multiply."""
        return self.B * self.scaling

    def delta_weight(self) -> Tensor:
        """s·B·A, the (out, in) change that merging adds to the base weight."""
        return (self.B @ self.A) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


class LoRAUnit(nn.ModuleDict):
    """One adapter on one layer: a `LoRAPart` per adapted part (or one, `all`, for the whole layer). `order`
    and `sizes` list the layer's parts and their output sizes, so that parts left out add zeros."""

    def __init__(self, order: tuple[str, ...], sizes: tuple[int, ...], parts: dict[str, LoRAPart], p: float) -> None:
        super().__init__(parts)
        self.order, self.sizes, self.p = order, sizes, p

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.values())).A.dtype

    def forward(self, x: Tensor) -> Tensor:
        if WHOLE in self:
            return self[WHOLE](F.dropout(x, self.p, self.training) if self.p > 0 else x)
        if self.p > 0 and self.training:  # dropout per part: separate layers would draw separate masks
            lead = x.shape[:-1]
            return torch.cat(
                [
                    self[n](F.dropout(x, self.p, True)) if n in self else x.new_zeros(*lead, s)
                    for n, s in zip(self.order, self.sizes)
                ],
                -1,
            )
        # Without dropout every part reads the same x: one matmul with the stacked A's, one with the
        # block-diagonal s·B's, and no concatenation of full-width outputs.
        a, b = self.low_rank()
        return F.linear(F.linear(x, a), b)

    def low_rank(self) -> tuple[Tensor, Tensor]:
        """(A (R, in), s·B (out, R)): the unit as one adapter of rank R = Σr, the parts' A's stacked and
        their s·B's block-diagonal (a part left out is an empty block, i.e. zero rows), scales folded in."""
        if WHOLE in self:
            return self[WHOLE].A, self[WHOLE].scaled_B()
        parts = [self[n] for n in self.order if n in self]
        like = parts[0].A
        blocks = [self[n].scaled_B() if n in self else like.new_zeros(s, 0) for n, s in zip(self.order, self.sizes)]
        return torch.cat([p.A for p in parts]), torch.block_diag(*blocks)

    def deltas(self) -> Iterator[tuple[slice, Tensor]]:
        """(rows of the base weight, s·B·A) of each adapted part."""
        if WHOLE in self:
            yield slice(0, sum(self.sizes)), self[WHOLE].delta_weight()
            return
        start = 0
        for name, size in zip(self.order, self.sizes):
            if name in self:
                yield slice(start, start + size), self[name].delta_weight()
            start += size


class LoRALayer:
    """Mixed in front of an adapted layer's own class: the base forward, plus the active, unmerged adapters."""

    lora: nn.ModuleDict
    lora_base_class: type
    lora_active: tuple[str, ...]
    lora_merged: tuple[str, ...]
    lora_disabled: bool

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        y = super().forward(x, *args, **kwargs)
        if self.lora_disabled:
            return y
        for name in self.lora_active:
            if name in self.lora and name not in self.lora_merged:
                unit = self.lora[name]
                y = y + unit(x.to(unit.dtype)).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_active={self.lora_active}"


_CLASSES: dict[type, type] = {}


def lora_class(base: type) -> type:
    """The adapted subclass of `base` (one per class, made once; module-level for the common ones so that
    pickled models load)."""
    if issubclass(base, LoRALayer):
        return base
    if base not in _CLASSES:
        _CLASSES[base] = type(f"LoRA{base.__name__}", (LoRALayer, base), {"__module__": __name__})
    return _CLASSES[base]


LoRALinear = lora_class(nn.Linear)
LoRAFusedLinear = lora_class(FusedLinear)
LoRABitLinear = lora_class(BitLinear)


# ----------------------------------------------------------------------------- finding targets


def is_adaptable(module: nn.Module) -> bool:
    """Linear layers (incl. fused and BitNet ones) and frozen bases that declare `lora_compatible`."""
    return isinstance(module, nn.Linear) or bool(getattr(module, "lora_compatible", False))


def part_names(layer_name: str, layer: nn.Module) -> tuple[str, ...] | None:
    """Names of a fused layer's parts (q, k, v / gate, up / k, v), None for an unfused one."""
    splits = getattr(layer, "splits", None)
    if not splits:
        return None
    names = PART_NAMES.get(layer_name.rsplit(".", 1)[-1])
    return names if names and len(names) == len(splits) else tuple(f"part{i}" for i in range(len(splits)))


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and is_adaptable(m)}


def _matcher(spec: str | Sequence[str]):
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise ConfigError(f"lora target {spec!r} is not a valid regular expression ({exc})") from exc
        return lambda name: pattern.fullmatch(name) is not None
    return lambda name: any(name == s or name.endswith("." + s) for s in spec)


def _available(layers: dict[str, nn.Module]) -> str:
    """Some target names a user could write, layer suffixes and part suffixes alike."""
    names = {}
    for n, m in layers.items():
        short = ".".join(n.split(".")[-2:])
        names[short] = None
        for p in part_names(n, m) or ():
            names[f"{n.rsplit('.', 1)[-1]}.{p}"] = None
    shown = list(names)[:16]
    return ", ".join(shown) + (", ..." if len(names) > len(shown) else "") + f" (full names: {next(iter(layers), '')})"


def resolve_targets(model: nn.Module, targets: str | Sequence[str], exclude: Sequence[str] = ()) -> dict:
    """{layer name: adapted part names, or None for the whole layer}. Every target must match something:
    a typo fails with the names that exist instead of silently adapting less."""
    layers = adaptable_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no linear layers to adapt")
    plan: dict[str, tuple[str, ...] | None] = {}
    if targets == ALL_LINEAR:
        heads = _matcher(OUTPUT_HEADS)
        plan = {n: part_names(n, m) for n, m in layers.items() if not heads(n)}
    else:
        specs = [targets] if isinstance(targets, str) else list(targets)
        for spec in specs:
            match, hit = _matcher(spec if isinstance(targets, str) else [spec]), False
            for n, m in layers.items():
                names = part_names(n, m) or ()
                parts = [p for p in names if match(f"{n}.{p}")]
                if match(n):  # the whole layer wins over any of its parts
                    plan[n], hit = None, True
                elif parts:
                    hit = True
                    if plan.get(n, ()) is not None:
                        plan[n] = tuple(p for p in names if p in parts or p in (plan.get(n) or ()))
            if not hit:
                raise ConfigError(
                    f"lora target {spec!r} matches no linear layer or fused part of {type(model).__name__}; "
                    f"available: {_available(layers)}"
                )
    if exclude:
        drop = _matcher(list(exclude))
        for n in list(plan):
            names = part_names(n, layers[n])
            if drop(n):
                del plan[n]
            elif names and any(drop(f"{n}.{p}") for p in names):
                kept = tuple(p for p in (plan[n] or names) if not drop(f"{n}.{p}"))
                if kept:
                    plan[n] = kept
                else:
                    del plan[n]
        if not plan:
            raise ConfigError(f"lora.exclude {list(exclude)} removes every target of {targets!r}")
    return plan


# ----------------------------------------------------------------------------- adding and removing


def _adapted(layer: nn.Module) -> LoRALayer:
    """`layer` with its class swapped for the adapted subclass (once)."""
    if not isinstance(layer, LoRALayer):
        base = type(layer)
        layer.__class__ = lora_class(base)
        layer.lora = nn.ModuleDict()
        layer.lora_base_class, layer.lora_active, layer.lora_merged, layer.lora_disabled = base, (), (), False
    return layer


def _restore(layer: LoRALayer) -> None:
    """The layer as it was before its first adapter."""
    base = layer.lora_base_class
    del layer.lora
    for attr in ("lora_base_class", "lora_active", "lora_merged", "lora_disabled"):
        delattr(layer, attr)
    layer.__class__ = base


def _any_tensor(layer: nn.Module) -> Tensor:
    """A tensor of the layer's own, for the device (and dtype) of its adapters."""
    tensor = next(layer.parameters(recurse=False), None)
    return tensor if tensor is not None else next(layer.buffers(recurse=False))


def add_unit(
    layer: nn.Module, layer_name: str, adapter: str, parts: dict[str, tuple[int, float]], rslora: bool, dropout: float
) -> LoRAUnit:
    """Add adapter `adapter` to one layer: `parts` maps part names (or `all`) to (r, α). Also the building
    block of `load_adapter`."""
    names = part_names(layer_name, layer)
    splits = tuple(layer.splits) if names else (layer.out_features,)
    order = names or (WHOLE,)
    unknown = [p for p in parts if p != WHOLE and p not in order]
    if unknown or not parts or (WHOLE in parts and len(parts) > 1):
        raise ConfigError(f"{layer_name}: cannot adapt parts {sorted(parts)}; its parts are {list(order)} (or 'all')")
    like = _any_tensor(layer)
    modules = {}
    for p, (r, alpha) in parts.items():
        rows = sum(splits) if p == WHOLE else splits[order.index(p)]
        modules[p] = LoRAPart(layer.in_features, rows, r, alpha, rslora, like)
    unit = LoRAUnit(order, splits, modules, dropout)
    layer = _adapted(layer)
    if adapter in layer.lora:
        raise ConfigError(f"{layer_name} already has an adapter named {adapter!r}")
    layer.lora[adapter] = unit
    return unit


def check_adapter_name(model: nn.Module, name: str) -> None:
    if not name or "." in name or hasattr(nn.ModuleDict(), name):
        raise ConfigError(f"adapter name {name!r} must be non-empty, without dots, and not a torch method name")
    if name in adapter_names(model):
        raise ConfigError(f"the model already has an adapter named {name!r}; pick another name or delete_adapter it")


def apply_lora(model: nn.Module, cfg: LoRAConfig, name: str = "default") -> list[str]:
    """Add adapter `name` to the layers and parts that `cfg.targets` selects, freeze every other parameter
    (base weights, embeddings, norms, other adapters) and make `name` the active, trainable adapter. Returns
    the adapted names (`layers.0.attn.qkv_proj.q`, `layers.0.attn.o_proj`). Apply before FSDP wrapping."""
    check_adapter_name(model, name)
    plan = resolve_targets(model, cfg.targets, cfg.exclude)
    adapted = []
    for layer_name, parts in plan.items():
        layer = model.get_submodule(layer_name)
        full = {p: f"{layer_name}.{p}" for p in parts} if parts else {WHOLE: layer_name}
        add_unit(
            layer,
            layer_name,
            name,
            {p: (cfg.rank(f), cfg.alpha_of(f)) for p, f in full.items()},
            cfg.rslora,
            cfg.dropout,
        )
        adapted += full.values()
    model.requires_grad_(False)
    set_adapter(model, name)
    return adapted


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}


def adapter_names(model: nn.Module) -> list[str]:
    return sorted({a for layer in lora_layers(model).values() for a in layer.lora})


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    return next((layer.lora_active for layer in lora_layers(model).values()), ())


def _no_merged(model: nn.Module, doing: str) -> None:
    merged = sorted({a for layer in lora_layers(model).values() for a in layer.lora_merged})
    if merged:
        raise ConfigError(
            f"cannot {doing} while adapters {merged} are merged into the base weights; unmerge_lora first"
        )


def set_adapter(model: nn.Module, names: str | Sequence[str], trainable: bool = True) -> None:
    """Make `names` the active adapters (their outputs add up); only they require grad (if `trainable`)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    known = adapter_names(model)
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"no adapter named {missing}; the model has {known}")
    _no_merged(model, "switch adapters")
    for layer in lora_layers(model).values():
        layer.lora_active = names
        for adapter, unit in layer.lora.items():
            unit.requires_grad_(trainable and adapter in names)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the block (the frozen reference of DPO/PPO, a before/after check)."""
    _no_merged(model, "disable adapters")
    layers = list(lora_layers(model).values())
    before = [layer.lora_disabled for layer in layers]
    for layer in layers:
        layer.lora_disabled = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, before):
            layer.lora_disabled = flag


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name`; layers left without adapters get their own class back."""
    if name not in adapter_names(model):
        raise ConfigError(f"no adapter named {name!r}; the model has {adapter_names(model)}")
    _no_merged(model, "delete an adapter")
    for layer in lora_layers(model).values():
        if name in layer.lora:
            del layer.lora[name]
        layer.lora_active = tuple(a for a in layer.lora_active if a != name)
        if not len(layer.lora):
            _restore(layer)


# ----------------------------------------------------------------------------- parameters and state


def is_lora_key(name: str) -> bool:
    """True for adapter tensors: a `TrainingJob.state_filter` that makes checkpoints hold adapters only."""
    return ".lora." in f".{name}"


def lora_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    """The parameters to give the optimizer: the active adapters' (or adapter `adapter`'s), nothing else."""
    names = active_adapters(model) if adapter is None else (adapter,)
    if adapter is not None and adapter not in adapter_names(model):
        raise ConfigError(f"no adapter named {adapter!r}; the model has {adapter_names(model)}")
    return [
        p for layer in lora_layers(model).values() for a in names if a in layer.lora for p in layer.lora[a].parameters()
    ]


def lora_state_dict(model: nn.Module, adapter: str | None = None) -> dict[str, Tensor]:
    """Adapter tensors only, under their names in `model.state_dict()` (all adapters, or one)."""
    keep = (lambda k: is_lora_key(k)) if adapter is None else (lambda k: f".lora.{adapter}." in f".{k}")
    return {k: v.detach() for k, v in model.state_dict().items() if keep(k)}


def lora_summary(model: nn.Module) -> dict:
    """Trainable vs total parameter counts (what peft's print_trainable_parameters shows), for logs."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = lora_layers(model)
    return {
        "trainable": trainable,
        "total": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "adapters": adapter_names(model),
        "active": list(active_adapters(model)),
        "layers": len(layers),
    }


# ----------------------------------------------------------------------------- merging


def _check_mergeable(model: nn.Module, name: str, layer: LoRALayer) -> None:
    base = layer.lora_base_class
    if issubclass(base, BitLinear):
        raise ConfigError(
            f"{name} is a BitNet BitLinear: its forward rounds the latent weights to ternary codes, so B·A added "
            "to them is rounded away (or flips other weights), and the merged model is not the adapted one. "
            "Keep the adapter unmerged: it runs in full precision beside the ternary base"
        )
    if not issubclass(base, nn.Linear):
        raise ConfigError(
            f"{name} is a frozen {base.__name__} (a quantised base): merging into int8/int4 weights is not exact. "
            "Save the adapter (save_adapter), load it onto the full-precision base, and merge there"
        )
    sharing = [n for n, p in model.named_parameters(remove_duplicate=False) if p is layer.weight]
    if len(sharing) > 1:
        raise ConfigError(f"{name}.weight is tied to {sharing}; merging would change all of them. Keep it unmerged")


def merge_lora(model: nn.Module) -> int:
    """Add the active adapters into the base weights (in place; the adapters stay, and stop adding their
    output). Faster inference, the same function up to float rounding; `unmerge_lora` undoes it. Returns
    the number of merged (layer, adapter) pairs."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        if any(a in layer.lora and a not in layer.lora_merged for a in layer.lora_active):
            _check_mergeable(model, name, layer)
    count = 0
    with torch.no_grad():
        for layer in layers.values():
            for a in layer.lora_active:
                if a in layer.lora and a not in layer.lora_merged:
                    for rows, delta in layer.lora[a].deltas():
                        layer.weight[rows] += delta.to(layer.weight.dtype)
                    layer.lora_merged += (a,)
                    count += 1
    return count


def unmerge_lora(model: nn.Module) -> int:
    """Subtract merged adapters from the base weights again (exact up to one float rounding per weight)."""
    count = 0
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for a in reversed(layer.lora_merged):
                for rows, delta in layer.lora[a].deltas():
                    layer.weight[rows] -= delta.to(layer.weight.dtype)
                count += 1
            layer.lora_merged = ()
    return count


def unload_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Remove every adapter and give each layer its own class back: with `merge`, the active adapters are
    first merged (a plain model that `save_hf` and `FastDecoder` take) and inactive ones are dropped;
    without it, the base model is restored. Base parameters stay frozen."""
    if merge:
        merge_lora(model)
    else:
        unmerge_lora(model)
    for layer in lora_layers(model).values():
        _restore(layer)
    return model
