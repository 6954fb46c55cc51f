"""mosaic-bert: MosaicBERT as a transformers remote-code model (`mosaic_bert.modeling`), plus the tools to pretrain
(`mosaic_bert.train`) and evaluate it on GLUE (`mosaic_bert.glue`)."""

from . import modeling
from .modeling import *  # noqa: F401,F403 -- BertConfig and every model class (modeling.__all__)

__version__ = "0.1.0"

__all__ = list(modeling.__all__)
