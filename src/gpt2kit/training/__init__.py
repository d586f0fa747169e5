"""Fine-tuning and evaluation: data pipeline, the Trainer, sliding-window perplexity."""
