"""Inference: a trained model loaded, asked the prompts it was trained to answer, and scored.

- `loading`: a base or trained model (merged, or base + adapter) ready to generate;
- `prompts`: which prompts to answer: held-out rows, your own, or a few seen in training;
- `generate`: greedy decoding through the chat template, as training rendered it;
- `scoring`: exact match and token F1, defined once;
- `tool_formats`: how each family of chat templates writes a tool call, and its parser;
- `tool_loop`: the tool loop: generate, parse the calls, run the tools, answer;
- `evaluate`: what notebook 05 measures, plain prompts or the tool loop.
"""

__all__ = ["evaluate", "generate", "loading", "prompts", "scoring", "tool_formats", "tool_loop"]
