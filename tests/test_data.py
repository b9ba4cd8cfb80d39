"""Training batches: pre-tokenised samples, collated, equal the processor's own batch; so do
samples tokenised one at a time (the path for data too large to keep)."""

import pandas as pd
import torch

from dowser.data import SFTSamples, answer_tokens, collate, sft_batch


def rows_and_processor():
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_split
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig(downstream_train_size=10)
    rows = pd.DataFrame(generate_split(cfg, "world-coco", "train"))[["image", "question", "answer"]]
    rows.loc[::3, "answer"] = rows["answer"][::3] + " " + rows["answer"][::3]  # answers of several lengths
    return rows, build_processor(cfg)


def test_collated_samples_equal_the_processor_batch():
    rows, processor = rows_and_processor()
    pad = processor.tokenizer.pad_token_id
    kept, lazy = SFTSamples(processor, rows, chunk=4), SFTSamples(processor, rows, budget_bytes=0)
    assert kept.pretokenized and not lazy.pretokenized
    for idx in ([0, 1, 2], [9, 3, 5, 7], [4]):
        want = sft_batch(processor, rows.iloc[idx])
        for data in (kept, lazy):
            got = collate([data[i] for i in idx], pad)
            assert got.keys() == want.keys()
            for k in want:
                assert torch.equal(got[k], want[k]), k
    lengths = {int(kept[i]["input_ids"].shape[1]) for i in range(len(rows))}
    assert len(lengths) > 1  # padding was really cut and restored
    labels = sft_batch(processor, rows)["labels"]
    assert int(answer_tokens(labels).sum()) == int((labels[:, 1:] != -100).sum()) > 0
