"""The shipped model: the four remote-code files that `save_pretrained` writes next to the weights. They import only
torch, transformers, an optional triton, and each other; nothing in this folder may import the tooling."""

from . import modeling_bert
from .configuration_bert import BertConfig
from .modeling_bert import *  # noqa: F401,F403 -- the model classes (modeling_bert.__all__)

__all__ = ["BertConfig", *(name for name in modeling_bert.__all__ if name.startswith("Bert"))]
