"""The fast path of training: decisions measured on this machine, applied in one step, and a step run as passes.

- `plan`: the plan, decisions as frozen records built from measurements, and the step that applies them;
- `measure`: what the plan reads about the machine, the model and the data;
- `timing`: timing on the training device: matmuls at the model's own shapes;
- `pass_tuner`: the pass size, timed on the first optimizer steps;
- `passes`: a step's examples packed padding-free and split into passes of whole examples;
- `lm_head`: TRL's fused LM head, fed only the positions whose next token is trained.
"""

__all__ = ["lm_head", "measure", "pass_tuner", "passes", "plan", "timing"]
