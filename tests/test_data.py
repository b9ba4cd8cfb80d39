"""Training batches: pre-tokenised samples, collated, equal the processor's own batch; so do
samples tokenised one at a time (the path for data too large to keep). The rows a run reads
(`read_rows`): a seeded subset in proportion to a sorted file's classes, streamed."""

import pandas as pd
import pytest
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


# --- read_rows: the rows a run reads, streamed from the parquet file


def test_random_subset_covers_sorted_classes_in_proportion(tmp_path, host_memory):
    from dowser.data import read_rows

    path = host_memory.sorted_split(tmp_path / "sorted.parquet", classes=10, per_class=200)
    whole = pd.read_parquet(path)
    first = read_rows(path, 500, "first")
    assert first.equals(whole.iloc[:500]) and first["answer"].nunique() == 3  # the old rule: 3 of 10 classes
    rows = read_rows(path, 500, "random", seed=0, batch_rows=16)
    counts = rows["answer"].value_counts()
    assert len(rows) == 500 and rows["id"].is_unique and rows["id"].is_monotonic_increasing  # file order
    assert len(counts) == 10 and counts.min() >= 30 and counts.max() <= 70  # 50 each expected (sd ~6.5)
    # the rows are the file's own (images included), a function of the seed alone
    assert rows.equals(whole[whole["id"].isin(rows["id"])].reset_index(drop=True))
    assert rows.equals(read_rows(path, 500, "random", seed=0, batch_rows=7))
    assert not rows["id"].equals(read_rows(path, 500, "random", seed=1)["id"])
    # a split no larger than train_samples: every row in file order, whatever the rule (the world's configs)
    assert read_rows(path, 2000, "random", seed=5).equals(whole) and read_rows(path, None, "random").equals(whole)
    with pytest.raises(ValueError, match="^subset 'last' is not one of random, first$"):
        read_rows(path, 10, "last")


def test_missing_column_is_named_before_any_row_is_read(tmp_path, host_memory):
    from dowser.data import read_rows

    path = host_memory.sorted_split(tmp_path / "a.parquet", 2, 5)
    pd.read_parquet(path).drop(columns=["question"]).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b.parquet: missing column\(s\) question$"):
        read_rows(tmp_path / "b.parquet", 3)


def test_reading_n_of_m_rows_holds_n_rows_not_m(tmp_path, host_memory):
    """Peak RSS of a fresh process reading 100 rows of 400 and of 4000 (16 kB images, 100 rows per
    group; benchmarks/host_memory.py): the reader holds the kept rows and one batch, so the 10x
    larger file costs no more. Measured: 8.8 and 9.9 MiB; a whole-file read (the reader before
    issue 17): 40 and 209 MiB."""
    peaks = {}
    for classes in (4, 40):
        path = host_memory.sorted_split(tmp_path / f"{classes}.parquet", classes, 100, image_bytes=16_000)
        doc = host_memory.read_rows_peak(path, 100)
        assert doc["rows"] == 100 and doc["rule"] == "random"
        peaks[classes] = doc["peak"]
    kept, file_big = 100 * 16_000, 4000 * 16_000  # a whole-file read peaks above file_big
    assert peaks[40] < 4 * kept + (8 << 20) < file_big / 4, peaks  # kept rows, a 64-row batch, the pools' slack
    assert peaks[40] - peaks[4] < 4 << 20, peaks  # 10x the rows, no more memory (4 MiB: allocator noise)
