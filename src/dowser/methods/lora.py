"""LoRA (peft) on the scored linears of the last L blocks; merged into dense weights after training.

Source: huggingface/peft (`LoraConfig`, `inject_adapter_in_model`); defaults r 128,
alpha 256, dropout 0.05 from LLaVA-1.5's `scripts/v1_5/finetune_lora.sh` (also the
`TrainingArguments` of didizhu-zju/Model-Tailor `main_model_tailor.py`). The paper lists
LoRA (and MoeLoRA) in its continual-learning table (Appendix H).

The base weights never train: each target linear becomes peft's `lora.Linear` around the
frozen `base_layer`; only lora_A / lora_B are parameters. `post_train` merges
W = W0 + (alpha / r) * B @ A (in fp32: the adapters are fp32 masters) into the base layer and puts the plain `nn.Linear` back, so the
run's delta is the dense weights of the trainable modules (like Full-FT) and nothing
outside them changes. The learning rate is the shared recipe's (LLaVA's LoRA script uses
2e-4 against 2e-5 for full fine-tuning: set `finetune.train.lr` per experiment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dowser.methods import Method, register


@register("lora")
@dataclass
class Lora(Method):
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    targets: list = field(default_factory=list, init=False, repr=False)

    def prepare(self, model, masks, depth: int) -> list:
        from peft import LoraConfig, inject_adapter_in_model

        from dowser.models import trainable_modules

        for p in model.parameters():
            p.requires_grad_(False)
        mods = trainable_modules(model, depth)
        self.targets = [m.name for m in mods]
        self._expected = sum(self.r * (m.shape[0] + m.shape[1]) for m in mods)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                            target_modules=self.targets)
        inject_adapter_in_model(config, model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        return params

    def expected_trainable(self, model, depth: int, masks) -> int:
        return self._expected

    @torch.no_grad()
    def post_train(self, model, base_state, ctx=None) -> None:
        merge_lora(model, self.targets)


def merge_lora(model, targets: list[str]) -> None:
    """Fold every adapter into its base layer and put the plain nn.Linear back. The merged weight
    W0 + (alpha / r) B @ A is formed in fp32 (or wider) and kept there: rounding it to a bf16
    model's dtype would lose a small update (evaluation rounds once, when it loads the delta)."""
    modules = dict(model.named_modules())
    for name in targets:
        wrapped = modules[name]
        if not hasattr(wrapped, "base_layer"):
            continue
        base = wrapped.base_layer
        dtype = torch.promote_types(base.weight.dtype, torch.float32)
        weight = base.weight.detach().to(dtype)
        for adapter in wrapped.active_adapters:
            if adapter in wrapped.lora_A:
                a, b = wrapped.lora_A[adapter].weight.to(dtype), wrapped.lora_B[adapter].weight.to(dtype)
                weight = weight + (b @ a) * wrapped.scaling[adapter]
        base.weight = torch.nn.Parameter(weight, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, base)
