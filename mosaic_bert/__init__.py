"""mosaic-bert: MosaicBERT as a transformers remote-code model, plus tools to pretrain and evaluate it."""

from .configuration_bert import BertConfig
from .modeling_bert import BertForMaskedLM, BertForSequenceClassification, BertModel, BertPreTrainedModel

__version__ = "0.1.0"

__all__ = ["BertConfig", "BertForMaskedLM", "BertForSequenceClassification", "BertModel", "BertPreTrainedModel"]
