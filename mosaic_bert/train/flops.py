"""FLOP accounting: the one peak-FLOPS table and the training FLOP count per step (used by the loop's MFU and by
the benchmarks)."""

from __future__ import annotations

import torch

from ..modeling.bert_padding import unpad_mask

PEAK_FLOPS_BF16 = {  # dense bf16 tensor-core peak FLOP/s by device-name substring (first match wins)
    "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
    "A100": 312e12, "A10G": 125e12, "A10": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "A6000": 155e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for k, v in PEAK_FLOPS_BF16.items():
        if k in name:
            return v
    return None


def model_flop_params(model) -> tuple[int, int, int]:
    """(non-embedding params, hidden, vocab) -- embeddings are lookups, the tied decoder is counted apart."""
    total, emb = 0, 0
    for name, p in model.named_parameters():
        total += p.numel()
        if "embeddings" in name:
            emb += p.numel()
    cfg = model.config
    return total - emb, cfg.hidden_size, cfg.vocab_size


def step_flops(n_params: int, hidden: int, vocab: int, layers: int, tokens: int, attn_sq: int, head_tokens: int) -> float:
    """Training FLOPs (forward + backward = 3x forward): 6*N*tokens for the weight matmuls, 12*L*h*sum(n_i^2) for
    QK^T and PV over each attended sequence, 6*h*V per position the MLM decoder runs on."""
    return 6.0 * n_params * tokens + 12.0 * layers * hidden * attn_sq + 6.0 * hidden * vocab * head_tokens


def unpadded_batch_stats(batch: dict) -> tuple[int, int, int]:
    """(tokens, sum of squared attended lengths, MLM-head positions) of a batch for a model that drops padding,
    attends within each document of a packed row, and runs the MLM head on the masked positions only (MosaicBERT)."""
    am = batch["attention_mask"]
    lens = unpad_mask(am).cu_seqlens.diff().to(torch.int64)  # one length per attended sequence (row or document)
    return int((am > 0).sum()), int((lens * lens).sum()), int((batch["labels"] != -100).sum())


def padded_batch_stats(batch: dict) -> tuple[int, int, int]:
    """The same for a model that computes every padded position (transformers' BERT): it is charged for them."""
    am = batch["attention_mask"]
    b, s = am.shape
    return int((am > 0).sum()), b * s * s, b * s
