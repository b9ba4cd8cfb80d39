"""What each fine-tuning method needs from the pipeline: one table, read by both sides.

`dowser.spec` reads it to build the grid (which methods get a mask, scores, probes, a
parent run, random seeds) and `dowser.methods.register` copies each row onto the method
class (`Method.dense`, `.needs_scores`, ...), so the two can never disagree. Standard
library only: Snakemake imports the spec module (and so this one) on every call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    dense: bool = False  # no mask artifact: whole weights (or an adapter over them) train
    needs_scores: bool = False  # mask built from the merged score file (score + probe stages)
    needs_probes: bool = False  # mask stage runs the synthetic probes through the model
    needs_model: bool = False  # mask built from the base model's weights
    post_hoc: bool = False  # no training: edits the Full-FT run of the same task and depth (parent)
    seeded: bool = False  # one mask per finetune.random_seeds entry
    selection: str = "bottom"  # score masks: train the bottom-rho (Dowser) or top-rho (control) entries
    score_source: str = "probes"  # score masks: data-free probes, or real samples of a task ("task")


METHODS: dict[str, Traits] = {
    "full": Traits(dense=True),
    "spider": Traits(dense=True),  # gates each step back toward theta_pre; no static mask
    "lora": Traits(dense=True),  # adapters, merged into dense weights after training
    "dowser": Traits(needs_scores=True),
    "random": Traits(seeded=True),
    # controls (issue 10): the most important rho instead of the least; Dowser's rule on scores
    # from real upstream training samples (finetune.method_params.oracle: task, samples)
    "dowser-top": Traits(needs_scores=True, selection="top"),
    "oracle": Traits(needs_scores=True, score_source="task"),
    "magnitude": Traits(needs_model=True),
    "wanda": Traits(needs_model=True, needs_probes=True),  # |W| * ||X_j|| over probe tokens
    "dare": Traits(post_hoc=True),
    "tailor": Traits(post_hoc=True),
    "grafting": Traits(post_hoc=True),
}

# The budget rho applies to every method that is not dense (masked or post-hoc).


def traits(name: str) -> Traits:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(METHODS)}") from None


def has_mask(name: str) -> bool:
    """A mask artifact (results/masks/<id>/mask.h5) is built for this method."""
    t = traits(name)
    return not (t.dense or t.post_hoc)
