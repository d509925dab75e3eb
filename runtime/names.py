"""Output names shared by the model, the exporters, every backend and the decoder (one source)."""

from __future__ import annotations

# Raw head outputs of one stack, in the order the model returns them and corner_proposals takes them.
HEAD_OUTPUTS: tuple[str, ...] = ("tl_heat", "br_heat", "tl_emb", "br_emb", "tl_off", "br_off")

# Outputs of the proposal step (the exported graph's outputs), in this order.
PROPOSAL_OUTPUTS: tuple[str, ...] = (
    "tl_scores",
    "tl_inds",
    "tl_embs",
    "tl_offs",
    "br_scores",
    "br_inds",
    "br_embs",
    "br_offs",
)
