"""Models: the tokenizer and the model a config names, the embedded models, and attention for training.

- `modeling`: tokenizer, chat template, stop tokens, model (dtype, 4-bit, attention) and LoRA config;
- `embedded`: models that ship inside Python packages, materialized once into a normal folder;
- `attention`: attention for padding-free passes, each example attending within itself.
"""

__all__ = ["attention", "embedded", "modeling"]
