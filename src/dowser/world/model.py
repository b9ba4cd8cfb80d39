"""The world's base model: a ~1M-parameter LlavaForConditionalGeneration.

    from dowser.world.model import build_model
    model = build_model(WorldConfig(), build_processor(WorldConfig()))

CLIP vision tower (hidden 64 x 2 layers, 4 px patches) -> 2-layer GELU projector -> Llama
decoder (hidden 128 x 6 blocks). Randomly initialised from `torch.manual_seed(cfg.seed)`.
"""

from __future__ import annotations

from dowser.world.config import WorldConfig


def build_llava_config(cfg: WorldConfig, processor):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_ffn,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        # with 2 vision layers the default -2 would skip half the tower
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=n_patches,
        tie_word_embeddings=False,
    )
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    return config


def build_model(cfg: WorldConfig, processor):
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(build_llava_config(cfg, processor))
    # Embedding-scale fix (docs/world.md §6, prototype 2): CLIP's default init gives patch features
    # of std ~0.1 that the position embedding drowns after the pre-layer-norm.
    tower = model.model.vision_tower
    emb = getattr(tower, "vision_model", tower).embeddings  # transformers 4.x nests it
    with torch.no_grad():
        torch.nn.init.normal_(emb.patch_embedding.weight, std=cfg.patch_init_std)
        torch.nn.init.normal_(emb.position_embedding.weight, std=cfg.position_init_std)
        torch.nn.init.normal_(emb.class_embedding, std=cfg.position_init_std)
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return model


def count_parameters(model) -> dict:
    parts = {
        "vision": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "decoder": model.model.language_model,
        "lm_head": model.lm_head,
    }
    out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out
