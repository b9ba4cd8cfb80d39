"""dowser.tasks: the registry, training splits, the shipped lm-eval YAMLs."""

import pytest
from lm_eval.tasks._yaml_loader import load_yaml

from dowser import tasks
from dowser.tasks import TASKS, WORLD_TASKS, YAML_DIR, get_task, training_split


def test_world_and_paper_tasks_registered():
    assert WORLD_TASKS == ["world-textvqa", "world-okvqa", "world-gqa", "world-count",
                           "world-mmbench", "world-mmbench-cn", "world-coco", "world-flickr",
                           "world-imagenet-r", "world-iconqa"]
    up = [n for n, t in TASKS.items() if not t.world and t.role == "upstream"]
    down = [n for n, t in TASKS.items() if not t.world and t.role == "downstream"]
    assert up == ["textvqa", "textvqa-ocr", "okvqa", "ocrvqa", "gqa", "mmbench", "mmbench-cn"]
    assert down == ["coco-caption", "flickr30k", "imagenet-r", "iconqa"]
    assert get_task("world-coco").metric == "cider"
    assert get_task("textvqa").metric == "vqa_acc"
    assert get_task("mmbench").metric == "mc_letter"
    for t in TASKS.values():
        assert t.role in tasks.ROLES and t.metric in tasks.METRICS
        assert (t.role == "downstream") == (t.train_split is not None)


def test_unknown_benchmark_one_line():
    with pytest.raises(ValueError) as err:
        get_task("foo")
    msg = str(err.value)
    assert msg.startswith("unknown benchmark 'foo'; known: world-textvqa, ") and "\n" not in msg


def test_training_split(tmp_path):
    path = tmp_path / "world-coco" / "train.parquet"
    path.parent.mkdir()
    path.write_bytes(b"")  # only its place matters here
    assert training_split("world-coco", tmp_path) == path
    with pytest.raises(ValueError, match="'world-gqa' \\(upstream\\) has no training split"):
        training_split("world-gqa", tmp_path)
    with pytest.raises(FileNotFoundError, match="training split of 'world-flickr' not found"):
        training_split("world-flickr", tmp_path)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_yaml_loads_with_callable_hooks(name):
    info = get_task(name)
    cfg = load_yaml(info.yaml_path, resolve_func=True)
    assert cfg["output_type"] == "generate_until"
    for key in ("custom_dataset", "doc_to_image", "doc_to_text", "process_results"):
        assert callable(cfg[key]), key
    assert cfg["metric_list"][0]["metric"] == info.metric
    assert cfg["dataset_kwargs"]["benchmark"] in TASKS


def test_every_shipped_yaml_is_used_and_indexed():
    from lm_eval.tasks import TaskManager

    shipped = {p.stem for p in YAML_DIR.glob("*.yaml")}
    used = {t.yaml for t in TASKS.values()} | {"labels"}
    assert shipped == used
    manager = TaskManager(include_path=str(YAML_DIR), include_defaults=False)
    assert "dowser-labels" in manager.all_tasks and "dowser-textvqa" in manager.all_tasks
    for path in YAML_DIR.glob("*.yaml"):
        assert path.read_text().startswith("# Shipped lm-eval task: "), path.name
