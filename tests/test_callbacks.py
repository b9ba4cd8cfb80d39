"""DowserMaskCallback with a real transformers Trainer on the world model."""

import pandas as pd
import torch
from transformers import Trainer, TrainingArguments

from dowser.callbacks import DowserMaskCallback
from dowser.data import sft_batch
from dowser.mask import build_masks, random_scores, save_masks
from dowser.models import scored_modules, trainable_modules


def test_trainer_trains_only_the_mask(tmp_path):
    import numpy as np

    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.scenes import png_bytes
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig()
    processor = build_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, processor)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shapes = {m.name: m.shape for m in scored_modules(model)}
    masks = build_masks(random_scores(shapes, 0), 0.1)
    save_masks(masks, tmp_path / "mask.h5", 0.1)

    rng = np.random.default_rng(0)
    rows = pd.DataFrame({
        "image": [{"bytes": png_bytes(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "path": None} for _ in range(8)],
        "question": ["what colour is the circle ?"] * 8, "answer": ["red"] * 8})
    dataset = [rows.iloc[[i]] for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=lambda items: sft_batch(processor, pd.concat(items)),
                      callbacks=[DowserMaskCallback(tmp_path / "mask.h5", depth=2)])
    n_opt = sum(p.numel() for g in trainer.create_optimizer().param_groups for p in g["params"])
    last = {m.name for m in trainable_modules(model, 2)}
    assert n_opt == sum(int(masks[n].sum()) for n in last)
    trainer.train()

    after = model.state_dict()
    assert set(after) == set(before)  # masks baked into plain weights at train end
    changed = 0
    for key, w0 in before.items():
        name = key.rsplit(".", 1)[0]
        frozen = ~torch.from_numpy(masks[name]) if name in last and key.endswith("weight") else torch.ones_like(w0, dtype=torch.bool)
        assert torch.equal(after[key][frozen], w0[frozen]), key
        changed += int((after[key] != w0).sum())
    assert changed > 0
