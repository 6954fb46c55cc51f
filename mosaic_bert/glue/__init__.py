"""GLUE fine-tuning and evaluation: the task table and a transformers-Trainer fine-tuning loop."""
