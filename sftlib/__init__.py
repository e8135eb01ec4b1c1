"""sftlib: supervised fine-tuning of causal language models, with exact loss masking."""

__version__ = "0.1.0"
