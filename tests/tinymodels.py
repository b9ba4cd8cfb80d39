"""Tiny models built from configs (no hub) shared by the tests."""

import torch


def tiny_llama(dtype=torch.float64, layers=2, vocab=24, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_llava(dtype=torch.float32, layers=2, vocab=64, seed=0, image_token=63):
    """A LLaVA (CLIP tower 28 px / 14 px patches = 4 image tokens, Llama decoder), random weights."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        image_token_index=image_token,
    )
    model = LlavaForConditionalGeneration(cfg).to(dtype)
    model.eval()
    return model


def tiny_llama_tokenizer():
    """A Llama BPE tokenizer (Metaspace, byte fallback, BOS added) over bytes, letters, digits and
    a few merges, with `<image>` (id 331) and `<pad>` (330): chunk-wise tokenization differs from
    whole-text tokenization after `<image>`, as with Llama's own."""
    import string

    import transformers as T

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁" + string.ascii_letters + string.digits + ".,:?'!":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "A"), ("▁", "U"), ("▁", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return T.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, pad_token="<pad>",
                            extra_special_tokens={"image_token": "<image>"})


def tiny_llava_processor(size=28, mean=None, std=None):
    """A llava-hf style LlavaProcessor for tiny_llava: CLIP resize + centre crop to `size`, 14 px
    patches, CLS dropped (size 28: 4 image tokens), tiny_llama_tokenizer."""
    import transformers as T

    kw = {} if mean is None else {"image_mean": list(mean), "image_std": list(std)}
    clip = T.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **kw)
    return T.LlavaProcessor(image_processor=clip, tokenizer=tiny_llama_tokenizer(), patch_size=14,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                            image_token="<image>", chat_template="{% for m in messages %}USER: {% endfor %}")


def tiny_world_llava(dtype=torch.float64, seed=0):
    """(model, processor): a LlavaForConditionalGeneration with the world's tokenizer
    (124 words, 6 special ids) and a 2-block, 16-wide decoder; frozen, eval mode."""
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig.from_dict(dict(seed=seed, text_hidden=16, text_layers=2, text_heads=2, text_ffn=24,
                                     vision_hidden=8, vision_layers=1, vision_heads=2, vision_ffn=16,
                                     image_size=8, patch_size=4))
    processor = build_processor(cfg)
    model = build_model(cfg, processor).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, processor


def moved_llama(dtype=torch.float64, scale=0.01, layers=3, depth=2):
    """A "fine-tuned" tiny_llama for the post-hoc methods: every weight of the last `depth` blocks'
    trainable modules moved by scale * N(0, 1). Returns (model, names, base_state, state_before):
    base_state holds those weights before the move, state_before the whole state dict."""
    from dowser.models import trainable_modules

    model = tiny_llama(dtype, layers=layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    names = [m.name for m in trainable_modules(model, depth)]
    base_state = {n: modules[n].weight.detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            modules[n].weight += scale * torch.randn_like(modules[n].weight)
    return model, names, base_state, before


def lm_batches(n=3, rows=4, length=9, vocab=24, seed=0):
    """PostHocContext's `batches`: n fixed batches of random tokens as a causal LM's own labels."""
    gen = torch.Generator().manual_seed(seed)
    data = [torch.randint(3, vocab, (rows, length), generator=gen) for _ in range(n)]

    def batches(max_rows=None, limit_batches=None):
        for ids in data[:limit_batches]:
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    return batches


def assert_only_trainable_changed(model, names, before):
    """Every entry of the state dict outside the `names` modules' weights equals `before`."""
    trainable = {n + ".weight" for n in names}
    for k, v in model.state_dict().items():
        if k not in trainable:
            assert torch.equal(v, before[k]), k
