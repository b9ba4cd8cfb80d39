"""Every knob that determines the miniature world's data and its base model.

Standard library only: `dowser.spec` and Snakemake import this at parse time.

    from dowser.world.config import WorldConfig
    cfg = WorldConfig.from_dict({"seed": 1, "pretrain_steps": 50})

Defaults follow the prototypes measured in docs/world.md §6 (2 cores, 2026-11).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Bump whenever generation, tokenizer, model or pretraining code changes what a given
# WorldConfig produces: the shipped model's world_spec.json records it.
WORLD_VERSION = "2"  # 2: iconqa icons in fixed colours (upstream data unchanged)


# Names here (stdlib only) so a config is checked without numpy: tasks.py draws them.
SKILLS = ("world-describe", "world-styles")
STYLE_NAMES = ("outline", "stripes", "inverted", "dots")


@dataclass(frozen=True)
class WorldConfig:
    # --- data -----------------------------------------------------------------------
    # Root seed of every split of every task (numpy Generator seeded per task/split).
    seed: int = 0
    # 32 px with 4 px patches = 64 image tokens: the prototype's best accuracy per minute;
    # 48 px / 8 px patches (36 tokens) did worse.
    image_size: int = 32
    patch_size: int = 4
    # Upstream train splits feed pretraining only; 4000 per task: 2500 steps x 32 see each
    # item ~3-6 times, and all ten tasks generate in ~9 s.
    upstream_train_size: int = 4000
    # Downstream train splits serve the short fine-tunes (100-300 steps x batch 32).
    downstream_train_size: int = 1500
    # Modest eval splits: one model on all ten tasks evaluates in seconds.
    validation_size: int = 100
    test_size: int = 200

    # --- vision tower (CLIP) ----------------------------------------------------------
    # Hidden 64 x 2 layers: docs/world.md §3's size; enough for colour, shape, digit, position.
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_ffn: int = 128
    # Embedding-scale fix (docs/world.md §6, prototype 2): CLIP's default init leaves patch
    # embeddings (out std ~0.1) drowned by positions after the layer norm; re-init both to a
    # similar scale raised the 5-minute mean accuracy from 0.41 to 0.59.
    patch_init_std: float = 0.2
    position_init_std: float = 0.5

    # --- text decoder (Llama) ---------------------------------------------------------
    # 6 blocks: the depth sweep needs L=2 and L=all to differ; ~1M params in all.
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_ffn: int = 256
    # Prompt (64 image tokens + <= ~25 words) plus a caption fits easily.
    max_positions: int = 160

    # --- stage 1: vision tower warm-up (pretrain.warmup_vision) ------------------------
    # Without it, digit reading stayed at chance through the decoder for 1500 joint steps
    # (2026-11-25); the tower with a question-attention head learns it directly (1500
    # steps: held-out digit 0.86, count 0.89). lr 3e-3 spiked on digits alone.
    vision_warmup_steps: int = 2500
    vision_warmup_batch: int = 64
    vision_warmup_lr: float = 2e-3
    # LLaVA-1.5 keeps CLIP frozen; unfrozen here, the random decoder's gradients wiped the
    # warmed-up digit features (textvqa at chance after 800 steps).
    freeze_vision: bool = True

    # --- stage 2: projector + decoder -------------------------------------------------
    # AdamW + linear warmup + cosine: the prototype's recipe (lr 3e-3 beat 5e-3). 2500
    # steps x 32: ~13 min on one free core (measured 2026-11-25).
    pretrain_steps: int = 2500
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 100
    pretrain_weight_decay: float = 0.01
    pretrain_grad_clip: float = 1.0
    # Mixed-task pretraining from scratch sat at chance for 1500-3000 steps; a short
    # phase on the easier skills first broke the plateau (docs/world.md §6, prototype 1).
    curriculum_steps: int = 300
    curriculum_tasks: tuple = ("world-okvqa", "world-gqa", "world-count")
    # Language-modelling loss beside the answers (question words of 2 items per task +
    # `lexicon_batch` "<s> w </s>" sequences), weighted against the answer loss. Without
    # it the decoder never emits a word outside the upstream answers nor more than one
    # word, and a 150-step caption fine-tune produced "on on on ..." (with it: "two blue
    # triangles on the right"; 2026-11-25).
    text_loss_weight: float = 0.2
    lexicon_batch: int = 16
    # Sampling weight of each upstream task, in tasks.UPSTREAM order (textvqa, okvqa, gqa,
    # count, mmbench, mmbench-cn): okvqa converges in ~300 steps, reading lags.
    task_weights: tuple = (2.0, 0.5, 1.5, 1.0, 1.0, 1.0)
    # CPU matmul reductions depend on the thread count; fixing it keeps reruns identical.
    pretrain_threads: int = 1

    # --- skills: pretraining tasks near the downstream ones (docs/world.md §8) -----------
    # The default world's base knows nothing of its downstream tasks (zero-shot CIDEr 4 against
    # Full-FT's 369), so learning one needs large moves (||dW||/||W|| ~1). A pretrained VLM starts
    # near its downstream tasks: the skill is there, the format is new. Names from
    # tasks.SKILLS: "world-describe" (long descriptions of caption-like scenes, so that a short
    # caption is a change of style), "world-styles" (the shape of a style-shifted rendering,
    # asked in mmbench's option form, for the styles in `skill_styles`). Empty: the default world.
    skills: tuple = ()
    skill_weight: float = 1.5   # stage-2 sampling weight of each skill (upstream weights sum to 7)
    skill_styles: tuple = ("outline", "stripes")

    def to_dict(self) -> dict:
        """Every field; without skills, the skill fields are left out (the default world's
        world_spec.json predates them and stays current)."""
        d = dataclasses.asdict(self)
        if not self.skills:
            for key in ("skills", "skill_weight", "skill_styles"):
                d.pop(key)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key not in names:
                raise ValueError(f"world.{key}: unknown key")
            default = names[key].default
            if isinstance(default, tuple):
                value = tuple(value)
            kwargs[key] = value
        cfg = cls(**kwargs)
        for name in cfg.skills:
            if name not in SKILLS:
                raise ValueError(f"world.skills: unknown skill {name!r} (known: {', '.join(SKILLS)})")
        for name in cfg.skill_styles:
            if name not in STYLE_NAMES:
                raise ValueError(f"world.skill_styles: unknown style {name!r} (known: {', '.join(STYLE_NAMES)})")
        return cfg


__all__ = ["SKILLS", "STYLE_NAMES", "WORLD_VERSION", "WorldConfig"]
