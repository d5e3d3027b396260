"""The online token losses of `train.loss` (modes eaft, memft, asft): each reweights a response token's
cross-entropy per step from the model being trained, so none needs a probe or a selection. Pure tensor functions
of the response positions (the autoregressive trainer gathers them; tests/test_token_losses.py checks each
against a computation written another way).

- EAFT (Entropy-Adaptive Fine-Tuning, arXiv 2601.02151; LLaMA-Factory `use_eaft_loss`, axolotl `eaft_alpha`,
  `eaft_k`): weight = (H_k / ln k)^α, H_k the entropy of the top-k next-token distribution (the top k logits,
  renormalised), detached. Confident tokens (low entropy) are down-weighted, uncertain ones keep their loss.
  LLaMA-Factory divides by 3.0 (≈ ln 20) and axolotl not at all; we divide by ln k, the paper's normalisation,
  so a weight is ≤ 1 for every k.
- MemFT's hard mask (arXiv 2605.30260; axolotl's `ot` variant): train only on the tokens whose current
  probability is below `memft_threshold` (0.5: loss above ln 2), normalised by how many were kept.
- ASFT (Anchored SFT, arXiv 2509.23753): DFT's p·CE plus `asft_kl_weight` · KL(θ_0 ‖ θ) over the vocabulary
  at each response position, as the authors' code computes it (`kl_div(log p_θ, p_θ0)`); θ_0 is the model
  before training (under LoRA, the same model with its adapter disabled).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def eaft_weights(logits: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """(H_k / ln k)^α per row of `logits` (n, V), without gradient; k is capped at the vocabulary size."""
    import torch

    k = min(k, logits.shape[-1])
    with torch.no_grad():
        top = logits.detach().float().topk(k, dim=-1).values
        logq = top.log_softmax(dim=-1)
        entropy = -(logq.exp() * logq).sum(dim=-1)
        return (entropy / math.log(k)).clamp(min=0.0).pow(alpha)


def memft_kept(logp: torch.Tensor, threshold: float) -> torch.Tensor:
    """The tokens MemFT trains on: current probability below `threshold` (a boolean mask, no gradient)."""
    return logp.detach() < math.log(threshold)


def dft_weights(logp: torch.Tensor) -> torch.Tensor:
    """DFT's weight of a token: its own probability, detached."""
    return logp.detach().exp()


def kl_from_reference(logp_all: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(θ_0 ‖ θ) per row: Σ_v q_v (log q_v − log p_v), q = softmax(ref_logits) (no gradient through q),
    `logp_all` the model's log-probabilities (n, V)."""
    logq = ref_logits.detach().float().log_softmax(dim=-1)
    return (logq.exp() * (logq - logp_all)).sum(dim=-1)
