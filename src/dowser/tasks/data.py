"""Read one split of a benchmark into the common schema (see `dowser.tasks`).

Local parquet is read straight into Arrow (no `datasets` cache writes: many evaluation
processes may read the same files at once); hub datasets go through `load_dataset`,
which honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from dowser.tasks import TaskInfo, local_file
from dowser.tasks.real import ADAPTERS

COMMON = ("id", "image", "question", "answer", "references", "choices", "task")


def common_features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "references": datasets.Sequence(datasets.Value("string")),
        "choices": datasets.Sequence(datasets.Value("string")),
        "task": datasets.Value("string"), "hint": datasets.Value("string"),
        "group": datasets.Value("string"),
    })


def _read_local(path: Path):
    import datasets
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return datasets.Dataset(pq.read_table(path, memory_map=True))
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
        records = records if isinstance(records, list) else records.get("data", records)
    return records


def _is_common(columns) -> bool:
    return set(COMMON) <= set(columns)


def _convert(info: TaskInfo, raw, base_dir: Path | None = None, images=None):
    """Raw rows (a Dataset or a list of dicts) -> common-schema Dataset.

    A Dataset is converted with `map` (Arrow cache files for hub data, so COCO's 40k
    images never sit in Python lists); images stay encoded until a doc is used.
    """
    import datasets

    features = common_features()
    columns = raw.column_names if isinstance(raw, datasets.Dataset) else list(raw[0])
    # LLaVA conversation records (UCIT's IconQA, Flickr30k, ImageNet-R) and the authors' question
    # files (text + reference) whatever the task
    llava_rows = "conversations" in columns or info.adapter is None or {"text", "reference"} <= set(columns)
    adapter = ADAPTERS["llava" if llava_rows else info.adapter]
    extra = {"base_dir": base_dir} if adapter is ADAPTERS["llava"] else {}

    def convert(r):
        if images is not None:  # GQA keeps its images in a separate config
            r["image"] = images[r["imageId"]]
        return adapter(r, task=info.name, **extra)

    if isinstance(raw, datasets.Dataset):
        for col, feat in raw.features.items():
            if isinstance(feat, datasets.Image):
                raw = raw.cast_column(col, datasets.Image(decode=False))

        def convert_batch(batch):
            n = len(next(iter(batch.values())))
            rows = [r for k in range(n) for r in convert({c: v[k] for c, v in batch.items()})]
            return {c: [r[c] for r in rows] for c in features}

        out = raw.map(convert_batch, batched=True, batch_size=256, features=features,
                      remove_columns=raw.column_names, desc=f"{info.name}: common schema")
    else:
        out = datasets.Dataset.from_list([r for rec in raw for r in convert(dict(rec))],
                                         features=features)
    if len(out) == 0:
        raise ValueError(f"{info.name}: no usable rows after conversion")
    return out


def _common_from_records(info: TaskInfo, records: list[dict], base_dir: Path):
    import datasets

    rows = []
    for r in records:
        image = r["image"]
        if isinstance(image, str):
            p = Path(image)
            image = {"bytes": None, "path": str(p if p.is_absolute() else base_dir / p)}
        rows.append({**{k: r.get(k) for k in COMMON}, "image": image,
                     "references": r.get("references") or [r["answer"]],
                     "choices": r.get("choices") or [], "task": r.get("task") or info.name,
                     "hint": r.get("hint") or "", "group": str(r.get("group") or r["id"])})
    return datasets.Dataset.from_list(rows, features=common_features())


@contextmanager
def _offline_as_env_says():
    """`datasets` and `huggingface_hub` read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, at
    import; a process (or test) that sets them later would still reach for the network."""
    import datasets.config
    import huggingface_hub.constants as hub

    flags = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")]
    if not any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags):
        yield
        return
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _load_hub(info: TaskInfo, split: str):
    import datasets

    with _offline_as_env_says():
        try:
            raw = datasets.load_dataset(info.hub_path, info.hub_name, split=split)
            images = None
            if info.adapter == "gqa":
                img = datasets.load_dataset(info.hub_path, "testdev_balanced_images",
                                            split=split)
                img = img.cast_column("image", datasets.Image(decode=False))
                images = {r["id"]: r["image"] for r in img}
        except Exception as err:  # offline, gated, renamed: say what and where, on one line
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileNotFoundError(
                f"{info.name}: no local file and the hub dataset {info.hub_path}"
                f"{'/' + info.hub_name if info.hub_name else ''} split {split!r} could not "
                f"be loaded ({type(err).__name__}: {msg})") from None
    return _convert(info, raw, images=images)


def load_split(info: TaskInfo, data_root: str | Path | None, split: str | None = None):
    """The rows of `split` (default: the evaluated split) as a common-schema Dataset."""
    split = split or info.split
    path = local_file(info.data_name, data_root, split)
    if path is None:
        where = Path(data_root or ".") / info.data_name / f"{split}.parquet"
        if info.world:
            if data_root is None or not Path(data_root).is_dir():
                raise FileNotFoundError(f"{info.name}: data root {data_root} does not exist")
            raise FileNotFoundError(f"{info.name}: split {split!r} not found: expected {where}")
        if info.hub_path is None:
            raise FileNotFoundError(
                f"{info.name}: split {split!r} needs a local file {where} (or .jsonl/.json); "
                "it has no hub table")
        return _load_hub(info, split)
    try:
        raw = _read_local(path)
    except Exception as err:  # truncated parquet, bad JSON: name the file, one line
        raise ValueError(f"{info.name}: cannot read {path} ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})"
                         ) from None
    if len(raw) == 0:
        raise ValueError(f"{info.name}: {path} has no rows")
    columns = raw.column_names if hasattr(raw, "column_names") else list(raw[0])
    if _is_common(columns):
        if isinstance(raw, list):
            return _common_from_records(info, raw, path.parent)
        return raw
    if info.world:
        missing = sorted(set(COMMON) - set(columns))
        raise ValueError(f"{info.name}: {path} lacks columns {missing}")
    return _convert(info, raw, base_dir=path.parent)


def prompt_function(info: TaskInfo):
    """The `doc_to_text` hook named in the benchmark's shipped YAML (read without lm-eval)."""
    import importlib

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    ref = yaml.load(info.yaml_path.read_text(), Loader=Loader)["doc_to_text"]
    module, _, name = ref.rpartition(".")
    return getattr(importlib.import_module(module), name)


def training_parquet(info: TaskInfo, data_root: str | Path, source: Path) -> Path:
    """A real benchmark's train file as common-schema parquet whose `question` is the
    evaluation prompt (options, instructions) without the image slot, so fine-tuning
    sees what evaluation asks. Written once next to the source, atomically."""
    import datasets

    out = source.with_name(f"{info.train_split}.dowser.parquet")
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    to_text = prompt_function(info)
    ds = load_split(info, data_root, info.train_split)
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = ds.map(lambda d: {"question": to_text(d).removeprefix("<image>")},
                desc=f"{info.name}: training prompts")
    ds = ds.cast_column("image", datasets.Image())
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    ds.to_parquet(str(tmp))
    os.replace(tmp, out)
    return out
