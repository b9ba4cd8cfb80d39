"""Fine-tuning methods: one file each, one registry.

A method is a class registered by name with `@register("name")`. The fine-tune loop
(`dowser.finetune`) knows no method by name; it asks the method for:

- `dense` (bool): train whole weights of the trainable modules (True) or a masked
  subset (False; the mask comes from the run's mask artifact, built by the mask stage
  with `build_mask`).
- `build_mask(ctx) -> {module: bool}` (static-mask methods): called by the mask stage.
  `ctx` is a `MaskContext` with the model's scored shapes, the merged scores (if the
  method uses them), rho, scope and seed. True = trainable.
- `on_step(model, step)` (dynamic methods): after every optimizer step.
- `post_train(model, base_state)` (post-hoc methods): after training.

Every default names its source (paper table or official repository file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_method(name: str):
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()


@dataclass
class MaskContext:
    shapes: dict[str, tuple[int, int]]
    rho: float
    scope: str = "module"
    selection: str = "bottom"
    seed: int | None = None
    scores: dict[str, np.ndarray] | None = None
    extra: dict = field(default_factory=dict)


class Method:
    name = "method"
    dense = False
    needs_scores = False

    def build_mask(self, ctx: MaskContext) -> dict[str, np.ndarray]:
        raise TypeError(f"method '{self.name}' does not build a static mask")

    def on_step(self, model, step: int) -> None:
        pass

    def post_train(self, model, base_state) -> None:
        pass


def _load_all():
    from dowser.methods import dowser, full, random  # noqa: F401  (registration side effect)
