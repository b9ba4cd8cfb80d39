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
