"""MosaicBERT configuration.

A `transformers.BertConfig` with mosaic-bert-base defaults and the few fields MosaicBERT adds, under its own
`model_type` ("mosaic_bert"): transformers then refuses a saved folder without `trust_remote_code` instead of loading it
as a stock BERT with a random encoder. Original MosaicBERT checkpoints (`model_type: "bert"` in their config.json) still
load through these classes, and a stock `transformers.BertConfig` passed as `config=` (the model card's usage) is read
as this config by the model's `from_pretrained`.
"""

from transformers import BertConfig as _HFBertConfig

ATTENTION_BACKENDS = ("auto", "triton", "flash_attn", "sdpa", "eager")
MODEL_TYPE = "mosaic_bert"
# config.json of original MosaicBERT checkpoints (and of stock BERT) carries this model_type
COMPATIBLE_MODEL_TYPES = ("bert",)
# fields that size a tensor (each must be >= 1), with mosaic-bert-base's values for the error messages
BASE_SIZES = dict(vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, type_vocab_size=2)


def check_sizes(config) -> None:
    """Sizes that cannot build a model are refused with the field and the fix (not an IndexError or an empty model)."""
    for name, base in BASE_SIZES.items():
        value = getattr(config, name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{name} must be an integer >= 1, got {value!r}; set {name} to the model's size "
                             f"(mosaic-bert-base: {name}={base}).")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"config.hidden_size ({config.hidden_size}) must be a multiple of config.num_attention_heads "
                         f"({config.num_attention_heads}); pick a head count that divides it (e.g. hidden_size // 64).")


class BertConfig(_HFBertConfig):
    """Configuration of a MosaicBERT model.

    Extra fields over `transformers.BertConfig`:
        alibi_starting_size (int): the sequence length the model was trained for. ALiBi needs no learned positions,
            so longer inputs run too (the bias extrapolates); the model warns once when an input is longer. Set it
            to e.g. 1024 to declare longer inputs intended (this also silences the warning).
        attention_backend (str): "auto" (Triton kernel on CUDA in fp16/bf16, else PyTorch SDPA), "triton" (the
            custom op `torch.ops.mosaic_bert.varlen_alibi_attn_fwd_v1`: the Triton kernel on CUDA in fp16/bf16, the
            same math in PyTorch elsewhere, so CPU runs of torch.compile/export use it too), "flash_attn" (the
            flash-attn 2 package, if installed), "sdpa" or "eager" (plain matmul-softmax). The implementations live
            in one table, `modeling_bert.ATTENTION_FUNCTIONS`.
        low_precision_layernorm (bool): under bf16/fp16 autocast, run LayerNorm in that precision instead of
            autocast's fp32 (faster, as in the paper).
        check_inputs (bool): check input values (ids within the vocab, mask and label rules, cu_seq_lens_q) with
            errors that name the fix. Free for CPU tensors (always checked); for tensors on an accelerator it costs
            one host sync per forward, which False skips (e.g. a training loop whose collator checks on the CPU).
            Never inside torch.compile/torch.export graphs.
        fused_geglu (bool): deprecated and ignored (kept so that saved configs load). In training the GeGLU and its
            dropout are the custom op `torch.ops.mosaic_bert.geglu_dropout_fwd_v2` (Triton kernels on CUDA in
            fp16/bf16, the same math in PyTorch elsewhere); in eval it is plain PyTorch, which `torch.compile(model)`
            fuses.

    Defaults are mosaic-bert-base's: vocab 30528 (30522 rounded up to a multiple of 64), no attention dropout.
    `max_position_embeddings` is kept for compatibility only; MosaicBERT has no position embeddings. Sizes are
    checked here (each >= 1, heads dividing hidden_size) with errors that name the field.
    """

    # The class keeps the name BertConfig: transformers 5.17 checks, when the model card passes a stock BertConfig as
    # config=, that the remote model's config_class has the same class name. transformers' Auto classes also look
    # configs up by class name, so modeling_bert.AUTO_MAP lists every Auto class that has a "bert" entry.
    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 30528,
        attention_probs_dropout_prob: float = 0.0,
        alibi_starting_size: int = 512,
        attention_backend: str = "auto",
        low_precision_layernorm: bool = True,
        fused_geglu: bool = True,
        check_inputs: bool = True,
        **kwargs,
    ):
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend={attention_backend!r} is not one of {ATTENTION_BACKENDS}; "
                "use 'auto' unless you need a specific implementation."
            )
        self.alibi_starting_size = int(alibi_starting_size)
        self.attention_backend = attention_backend
        self.low_precision_layernorm = bool(low_precision_layernorm)
        self.fused_geglu = bool(fused_geglu)
        self.check_inputs = bool(check_inputs)
        kwargs.pop("model_type", None)  # a class attribute; original checkpoints' config.json says "bert"
        super().__init__(
            vocab_size=vocab_size, attention_probs_dropout_prob=attention_probs_dropout_prob, **kwargs
        )
        check_sizes(self)

    @classmethod
    def from_stock(cls, config):
        """This config from a stock `transformers.BertConfig` (the model card passes one as `config=`): the same
        fields (edits such as `alibi_starting_size` included), MosaicBERT's model_type, defaults for the fields it
        lacks, sizes checked. Anything else (this class, None, a path) is returned as it is."""
        if isinstance(config, _HFBertConfig) and not isinstance(config, cls):
            return cls.from_dict(config.to_dict())
        return config

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """As transformers', but the config.json of an original MosaicBERT checkpoint (`model_type: "bert"`) is read
        as this model type without the "model of type bert" warning: the weights decide whether it is MosaicBERT."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in COMPATIBLE_MODEL_TYPES:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


__all__ = ["BertConfig", "ATTENTION_BACKENDS", "MODEL_TYPE", "check_sizes"]
