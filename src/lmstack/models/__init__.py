"""The three transformer families, assembled from one set of blocks (`blocks.py`)."""

from torch import nn

from lmstack.models.config import PRESETS, ModelConfig, model_config, model_config_from_dict
from lmstack.models.decoder import DecoderLM
from lmstack.models.encoder import EncoderModel, pool
from lmstack.models.seq2seq import Seq2SeqLM


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model class that `cfg.family` names, randomly initialised."""
    return {"decoder": DecoderLM, "encoder": EncoderModel, "seq2seq": Seq2SeqLM}[cfg.family](cfg)


__all__ = [
    "PRESETS",
    "DecoderLM",
    "EncoderModel",
    "ModelConfig",
    "Seq2SeqLM",
    "build_model",
    "model_config",
    "model_config_from_dict",
    "pool",
]
