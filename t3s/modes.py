"""The training modes, named once (a leaf module: no torch, no stage imports).

A mode is what a training run of the student does with the teacher's response tokens:
- `sft`: trains on every token (`none` is its old name, still accepted: `canonical`).
- the selection modes: train on the tokens a keep-mask keeps (`t3s.select`).
- `dft`: every token, each weighted by its own detached probability (Dynamic Fine-Tuning; TRL's
  `loss_type="dft"`): the loss-side alternative users have one flag away.
"""

# The paper's modes and its matched controls, then the controls of its claims (t3s.select's docstring).
SELECTION_MODES = ("t3s", "reverse", "static-high", "static-low", "random", "t3s-final", "t3s-early", "excess-loss")
RUN_MODES = ("sft", *SELECTION_MODES, "dft")
# Which scores a mode reads besides θ_0's and θ_b's: θ_T (the probe's end point), or an evaluated checkpoint
# halfway to θ_b; and the modes whose rule is t3s's, on θ_b's scores or those standing in their place.
READS_FINAL = ("t3s-final", "excess-loss")
READS_EARLY = ("t3s-early",)
RULE_OF_T3S = ("t3s", "t3s-final", "t3s-early")
NEEDS_REFERENCE = ("excess-loss",)  # ... and the one that also reads a reference model's scores (θ_T)
# A masked-diffusion student: `sft` is the random mask alone; these modes add a forced set (always masked).
DIFFUSION_FORCED_MODES = ("t3s", "random")
DIFFUSION_MODES = ("sft", *DIFFUSION_FORCED_MODES)
ALIASES = {"none": "sft"}


def canonical(mode: str) -> str:
    """A mode's one name (`none` -> `sft`)."""
    return ALIASES.get(mode, mode)
