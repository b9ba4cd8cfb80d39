"""Fine-tuning methods: one file each, one registry.

A method is a class registered by name with `@register("name")`; its constructor takes
the method's options (`finetune.method_params.<name>` in the config, carried in the run
or mask spec as `params`), every default naming its source. The fine-tune loop
(`dowser.finetune`) and the post-hoc stage (`dowser.posthoc`) know no method by name;
they ask the method for:

- `dense` (bool): no mask artifact; train whole weights of the trainable modules (or an
  adapter over them, `prepare`). False: a masked subset, from the run's mask artifact,
  built by the mask stage with `build_mask`.
- `needs_scores` / `needs_probes` (bool): the mask stage passes the merged scores
  (`ctx.scores`) / the synthetic probes (`ctx.extra["probes"]`); the model is always in
  `ctx.extra["model"]` for methods without scores.
- `post_hoc` (bool): no training; start from the parent Full-FT run of the same task and
  depth (its cached delta) and edit the trainable weights in `post_train`.
- `build_mask(ctx) -> {module: bool}` (static-mask methods): `ctx` is a `MaskContext`
  with the model's scored shapes, the merged scores (if used), rho, scope and seed.
  True = trainable.
- `prepare(model, masks, depth) -> [parameters]`: freeze the model and return the
  trainable parameters (default `dowser.sparse.apply_masks`; lora injects adapters).
- `expected_trainable(model, depth, masks) -> int`: checked against `trainable.json`.
- `before_train(model, params)`: once, after device placement, before any step (and
  before a resumed run loads its checkpoint: the model still holds theta_pre).
- `on_step(model, step)` (dynamic methods): after every optimizer step, gradients
  (clipped) still in `.grad`.
- `post_train(model, base_state, ctx)`: after training (or, post-hoc, after loading the
  parent). `base_state` = {module: pretrained weight} of the trainable modules; `ctx`
  (post-hoc only) a `dowser.posthoc.PostHocContext` with the task's rows and processor.
- `state_dict()` / `load_state_dict(d)`: method state that a resumed run needs.
- `state_tensors()`: every tensor the method holds (memory benchmark).

Every default names its source (paper table or official repository file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dowser.methods.table import traits

if TYPE_CHECKING:  # numpy only in annotations: `dowser.methods.table` is imported by the spec module
    import numpy as np

REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        # dense / needs_scores / needs_probes / post_hoc come from the one table (methods/table.py)
        for key, value in vars(traits(name)).items():
            setattr(cls, key, value)
        REGISTRY[name] = cls
        return cls

    return wrap


def get_method(name: str, params: dict | None = None):
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"finetune.method_params.{name}: {e}") from None


@dataclass
class MaskContext:
    shapes: dict[str, tuple[int, int]]
    rho: float
    scope: str = "module"
    selection: str = "bottom"
    seed: int | None = None
    scores: dict[str, np.ndarray] | None = None
    extra: dict = field(default_factory=dict)
    rule: str = "exact"  # score masks: dowser.mask RULES (official: the authors' <= k-th value)


class Method:
    name = "method"
    dense = False
    needs_scores = False
    needs_probes = False
    post_hoc = False

    def build_mask(self, ctx: MaskContext) -> dict[str, np.ndarray]:
        raise TypeError(f"method '{self.name}' does not build a static mask")

    def prepare(self, model, masks, depth: int) -> list:
        from dowser.sparse import apply_masks

        return apply_masks(model, masks, depth)

    def expected_trainable(self, model, depth: int, masks) -> int:
        from dowser.models import trainable_modules

        mods = trainable_modules(model, depth)
        if masks is None:
            return sum(m.shape[0] * m.shape[1] for m in mods)
        return sum(int(masks[m.name].sum()) for m in mods)

    def before_train(self, model, params) -> None:
        pass

    def on_step(self, model, step: int) -> None:
        pass

    def post_train(self, model, base_state, ctx=None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def state_tensors(self) -> list:
        return []


def _load_all():
    from dowser.methods import (  # noqa: F401  (registration side effect)
        controls,
        dare,
        dowser,
        full,
        grafting,
        lora,
        magnitude,
        random,
        spider,
        tailor,
        wanda,
    )
