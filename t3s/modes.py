"""The training modes, named once (a leaf module: no torch, no stage imports).

A mode is what a training run of the student does with the teacher's response tokens:
- `sft`: trains on every token (`none` is its old name in `t3s select`).
- the selection modes: train on the tokens a keep-mask keeps (`t3s.select`).
- `dft`: every token, each weighted by its own detached probability (Dynamic Fine-Tuning; TRL's
  `loss_type="dft"`): the loss-side alternative users have one flag away.
"""

# The paper's modes and its matched controls, then the controls of its claims (t3s.select's docstring).
SELECTION_MODES = ("t3s", "reverse", "static-high", "static-low", "random", "t3s-final", "t3s-early", "excess-loss")
RUN_MODES = ("sft", *SELECTION_MODES, "dft")
