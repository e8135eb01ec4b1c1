"""sftlib: supervised fine-tuning of causal language models, with exact loss masking."""

from sftlib.noise import filter_harmless_messages

__version__ = "0.1.0"

# The one thing done at import: a logging filter (no I/O, no imports of other libraries). It must be in
# place before bitsandbytes is imported, which any sftlib call that touches peft or a 4-bit model does,
# in the CLI, a notebook kernel or a launched worker alike: importing sftlib is what they share.
filter_harmless_messages()
