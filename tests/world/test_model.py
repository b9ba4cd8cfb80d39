import torch

from dowser.world.config import WorldConfig
from dowser.world.model import build_model, count_parameters
from dowser.world.tokenizer import build_processor, format_prompt

CFG = WorldConfig()


def test_size_depth_and_forward_shape():
    processor = build_processor(CFG)
    model = build_model(CFG, processor)
    n = count_parameters(model)
    assert 0.8e6 <= n["total"] <= 1.5e6
    assert len(model.model.language_model.layers) == CFG.text_layers >= 6
    tower = model.model.vision_tower
    emb = getattr(tower, "vision_model", tower).embeddings
    # embedding-scale fix: patch and position embeddings re-initialised to similar scales
    assert abs(emb.patch_embedding.weight.std().item() - CFG.patch_init_std) < 0.02
    assert abs(emb.position_embedding.weight.std().item() - CFG.position_init_std) < 0.05
    pix = torch.zeros(2, 3, CFG.image_size, CFG.image_size)
    text = [format_prompt(processor, "how many objects are there ?") + " 3 </s>"] * 2
    inputs = processor(images=[pix[0].numpy().transpose(1, 2, 0).astype("uint8")] * 2, text=text,
                       return_tensors="pt")  # fmt: skip
    out = model(**inputs)
    assert out.logits.shape == (2, inputs["input_ids"].shape[1], len(processor.tokenizer))


def test_same_seed_same_init():
    processor = build_processor(CFG)
    a = build_model(CFG, processor).state_dict()
    b = build_model(CFG, processor).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
