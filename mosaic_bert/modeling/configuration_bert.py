"""MosaicBERT configuration.

A `transformers.BertConfig` with mosaic-bert-base defaults and the few fields MosaicBERT adds. The model reads every
extra field with a default, so a stock `transformers.BertConfig` (the model card's usage) works as well.
"""

from transformers import BertConfig as _HFBertConfig

ATTENTION_BACKENDS = ("auto", "triton", "flash_attn", "sdpa", "eager")


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
            dropout are the custom op `torch.ops.mosaic_bert.geglu_dropout_fwd_v1` (Triton kernels on CUDA in
            fp16/bf16, the same math in PyTorch elsewhere); in eval it is plain PyTorch, which `torch.compile(model)`
            fuses.

    Defaults are mosaic-bert-base's: vocab 30528 (30522 rounded up to a multiple of 64), no attention dropout.
    `max_position_embeddings` is kept for compatibility only; MosaicBERT has no position embeddings.
    """

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
        super().__init__(
            vocab_size=vocab_size, attention_probs_dropout_prob=attention_probs_dropout_prob, **kwargs
        )


__all__ = ["BertConfig", "ATTENTION_BACKENDS"]
