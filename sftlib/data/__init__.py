"""Data: from a source's rows to the labels of each training example, every drop counted with its reason.

- `sources`: load a source (hub id, file, folder), detect its format, normalize it;
- `formats`: a source's format, detected from its columns or checked against the config;
- `loader`: the one way every stage reads a source's rows, training and scoring alike;
- `chat`: chat messages as templates read them (roles, reasoning, tool calls);
- `conversations`: checked conversations, and the ways a row is dropped;
- `rendering`: a conversation's trained turns rendered through the chat template;
- `masking`: labels of an example (`IGNORE_INDEX` where not trained), for any template;
- `completions`: labels of prompt/completion strings and plain text, as TRL builds them;
- `audit`: an independent check of where each example's trained tokens sit;
- `reports`: what happened to a split's rows, in numbers, and the drop gate;
- `label_cache`: the cache key of labels, the code on the path from a row to its labels;
- `dataset`: every configured split prepared: masked, audited, truncated, counted and checked;
- `export`: prepared examples decoded token by token, and written as JSON Lines (`sftlib masks`).
"""

# The label of a position the loss skips: PyTorch's cross-entropy ignore_index, which TRL and
# transformers use too. The one definition in sftlib.
IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "audit",
    "chat",
    "completions",
    "conversations",
    "dataset",
    "export",
    "formats",
    "label_cache",
    "loader",
    "masking",
    "reports",
    "rendering",
    "sources",
]
