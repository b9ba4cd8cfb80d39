"""A Dowser mask in your own training code: a `transformers` TrainerCallback.

    from dowser.callbacks import DowserMaskCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[DowserMaskCallback("results/masks/<id>/mask.h5", depth=20)])
    trainer.train()

At the end of Trainer.__init__ (before the optimizer exists) the callback freezes every
parameter and makes only the mask's True entries of the last `depth` blocks' scored
linears trainable (`dowser.sparse.apply_masks`), so the Trainer's optimizer holds state
for those entries alone and frozen entries stay bit-identical (weight decay included).
At the end of training the sparse deltas are baked into plain weights, so
`trainer.save_model()` writes an ordinary checkpoint. Scripts without a Trainer call
`dowser.apply_masks(model, dowser.load_masks(path), depth)` before building the optimizer.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from dowser.mask import load_masks
from dowser.sparse import apply_masks, remove_masks


class DowserMaskCallback(TrainerCallback):
    def __init__(self, mask_path: str | Path, depth: int):
        self.masks = load_masks(mask_path)
        self.depth = depth
        self.applied = False

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("DowserMaskCallback: the Trainer passed no model")
        apply_masks(model, self.masks, self.depth)
        self.applied = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.applied:
            remove_masks(model)
