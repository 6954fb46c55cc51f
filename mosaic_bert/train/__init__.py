"""Pretraining tools: recipes, data, masking, optimizer, the Trainer, checkpoints, metrics, export."""
