import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dowser.world.config import WorldConfig
from dowser.world.tasks import (
    CHANCE,
    CHOICES,
    DOWNSTREAM,
    GENERATORS,
    SPLITS,
    TASK_METRIC,
    TASKS,
    UPSTREAM,
    generate_split,
    generate_task_data,
    vocabulary,
)

SMALL = WorldConfig(
    upstream_train_size=30, downstream_train_size=20, validation_size=8, test_size=12
)
COLUMNS = ["id", "image", "question", "answer", "references", "choices", "task"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world-data")
    generate_task_data(SMALL, out)
    return out


def test_task_names_and_metrics():
    assert UPSTREAM == ["world-textvqa", "world-okvqa", "world-gqa", "world-count",
                        "world-mmbench", "world-mmbench-cn"]  # fmt: skip
    assert DOWNSTREAM == ["world-coco", "world-flickr", "world-imagenet-r", "world-iconqa"]
    assert {t for t, m in TASK_METRIC.items() if m == "cider"} == {"world-coco", "world-flickr"}
    assert set(TASK_METRIC.values()) == {"exact_match", "cider"}


def test_all_splits_written_with_sizes(data_dir):
    for task in TASKS:
        for split in SPLITS:
            table = pq.read_table(data_dir / task / f"{split}.parquet")
            assert table.column_names == COLUMNS
            train_n = SMALL.upstream_train_size if task in UPSTREAM else SMALL.downstream_train_size
            want = {"train": train_n, "validation": 8, "test": 12}[split]
            assert table.num_rows == want
    assert not list(data_dir.rglob("*.tmp*"))


def test_same_seed_same_bytes_other_seed_differs(data_dir, tmp_path):
    generate_task_data(SMALL, tmp_path / "again")
    for f in data_dir.rglob("*.parquet"):
        assert f.read_bytes() == (tmp_path / "again" / f.relative_to(data_dir)).read_bytes()
    other = generate_split(WorldConfig(seed=1, test_size=12), "world-gqa", "test")
    same = generate_split(SMALL, "world-gqa", "test")
    assert other["image"] != same["image"]


def test_splits_are_disjoint(data_dir):
    for task in TASKS:
        ids, images = [], []
        for split in SPLITS:
            t = pq.read_table(data_dir / task / f"{split}.parquet").to_pydict()
            ids.append(set(t["id"]))
            images.append({hashlib.sha256(im["bytes"]).hexdigest() for im in t["image"]})
        for i in range(3):
            for j in range(i + 1, 3):
                assert not ids[i] & ids[j]
                assert not images[i] & images[j]


def test_datasets_reads_images_as_pil(data_dir):
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files={"test": str(data_dir / "world-coco" / "test.parquet")}
    )["test"]
    row = ds[0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (SMALL.image_size, SMALL.image_size)
    assert isinstance(row["references"], list) and len(row["references"]) == 5
    assert row["answer"] == row["references"][0]
    assert row["choices"] == [] and row["task"] == "world-coco"


def test_answers_lie_in_choices_and_vocabulary():
    vocab = set(vocabulary())
    rng = np.random.default_rng(0)
    for task, gen in GENERATORS.items():
        answers = set()
        for _ in range(300):
            img, q, a, refs = gen(rng, 32)
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8
            assert a in refs
            for text in [q, *refs]:
                assert set(text.split()) <= vocab, (task, text)
            if CHOICES[task]:
                assert a in CHOICES[task]
            answers.add(a)
        if task in CHANCE and task != "world-gqa":
            # every label actually occurs: chance really is 1/len(choices)
            assert answers == set(CHOICES[task]) or task == "world-iconqa"


def test_images_decode_to_generated_pixels():
    cols = generate_split(SMALL, "world-textvqa", "validation")
    rng = np.random.default_rng([SMALL.seed, TASKS.index("world-textvqa"), 1])
    img, q, a, _ = GENERATORS["world-textvqa"](rng, SMALL.image_size)
    decoded = np.asarray(Image.open(io.BytesIO(cols["image"][0]["bytes"])))
    assert np.array_equal(decoded, img) and cols["answer"][0] == a


def test_skills_data_only_when_asked_and_in_the_vocabulary(tmp_path):
    """A skills world writes each skill's train and test splits; its words are the tokenizer's;
    the default world's splits are untouched by the skills (same bytes)."""
    from dowser.world.tasks import SKILLS, generate_split, vocabulary

    near = WorldConfig(skills=SKILLS, upstream_train_size=20, downstream_train_size=4, validation_size=2,
                       test_size=6)
    plain = WorldConfig(upstream_train_size=20, downstream_train_size=4, validation_size=2, test_size=6)
    assert generate_split(near, "world-coco", "test") == generate_split(plain, "world-coco", "test")
    words = set(vocabulary())
    describe = generate_split(near, "world-describe", "train")
    assert len(describe["id"]) == 20
    assert all(set((q + " " + a).split()) <= words for q, a in zip(describe["question"], describe["answer"]))
    assert all(a.startswith("the image shows ") and a.count(" . ") == 1 for a in describe["answer"])
    styles = generate_split(near, "world-styles", "test")
    assert all(a in q.split() and q.startswith("what shape is the object ? options : A ")
               for q, a in zip(styles["question"], styles["answer"]))
    generate_task_data(near, tmp_path)
    assert sorted(p.name for p in (tmp_path / "world-styles").iterdir()) == ["test.parquet", "train.parquet"]
    plain_dir = tmp_path / "plain"
    generate_task_data(plain, plain_dir)
    assert not (plain_dir / "world-describe").exists()


def test_skills_config_checked_and_default_spec_unchanged():
    assert "skills" not in WorldConfig().to_dict()  # the default world's world_spec.json stays current
    assert WorldConfig(skills=("world-describe",)).to_dict()["skills"] == ["world-describe"]
    with pytest.raises(ValueError, match="world.skills: unknown skill 'world-sing'"):
        WorldConfig.from_dict({"skills": ["world-sing"]})
    with pytest.raises(ValueError, match="world.skill_styles: unknown style 'plaid'"):
        WorldConfig.from_dict({"skills": ["world-styles"], "skill_styles": ["plaid"]})
