"""Model-Dowser: data-free importance probing and sparse fine-tuning of multimodal LLMs.

The Python API, for users with their own training scripts::

    import dowser
    model, processor = dowser.load_model("llava-hf/llava-1.5-7b-hf")  # or a local folder; revision=...
    probes = dowser.synthesize_probes(model, processor, n=64)       # texts the model writes itself
    scores = dowser.score_model(model, probes, draws=8)             # {module: S (d_out x d_in)}
    masks = dowser.build_masks(scores, rho=0.1)                     # {module: bool, True = trainable}
    dowser.apply_masks(model, masks, depth=20)                      # freeze all but the masked entries

Attributes load lazily: `import dowser.spec` (Snakemake does it on every call) must not
import torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "load_model": "dowser.models",
    "resolve_model": "dowser.models",
    "scored_modules": "dowser.models",
    "synthesize_probes": "dowser.probe",
    "score_model": "dowser.score",
    "build_masks": "dowser.mask",
    "save_masks": "dowser.mask",
    "load_masks": "dowser.mask",
    "apply_masks": "dowser.sparse",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'dowser' has no attribute '{name}'")
