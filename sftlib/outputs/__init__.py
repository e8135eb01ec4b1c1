"""Outputs: what a run writes into its output_dir, written whole or not at all, and the merge.

- `layout`: what output_dir holds, and whether a new run may write into it (no ML library imported);
- `staging`: final artifacts written to a staging folder, moved in, then reloaded and compared;
- `saving`: what a finished run writes: the adapter or model, the tokenizer, run_info.json, the
  resolved config, the merge's record;
- `merge`: LoRA adapter + unquantized base -> merged model, checked against base + adapter.
"""

__all__ = ["layout", "merge", "saving", "staging"]
