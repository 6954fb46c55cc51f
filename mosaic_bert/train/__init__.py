"""Pretraining tools. ``config`` (recipes) -> ``data`` (sources, tokenized store, resumable loader) + ``tokenizer``
-> ``model`` / ``baseline`` (model adapters) -> ``trainer`` (the loop, with ``optim``, ``masking``, ``flops``,
``metrics``, ``checkpoint``, ``state``, ``runtime``) -> ``export`` (HF folder, model card, Hub); ``cli`` is the command."""
