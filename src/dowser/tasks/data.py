"""Read one split of a benchmark into the common schema (see `dowser.tasks`).

Local parquet is read straight into Arrow (no `datasets` cache writes: many evaluation
processes may read the same files at once); hub datasets go through `load_dataset`,
which honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
"""

from __future__ import annotations

import json
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
        return datasets.Dataset(pq.read_table(path))
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
    """Raw rows (a Dataset or a list of dicts) -> common-schema Dataset."""
    import datasets

    if isinstance(raw, datasets.Dataset):
        image_cols = [c for c, f in raw.features.items() if isinstance(f, datasets.Image)]
        for col in image_cols:  # keep the encoded bytes; decode only when a doc is used
            raw = raw.cast_column(col, datasets.Image(decode=False))
    adapter = ADAPTERS.get(info.adapter or "llava")
    rows = []
    for r in raw:
        r = dict(r)
        if images is not None:  # GQA keeps its images in a separate config
            r["image"] = images[r["imageId"]]
        if info.adapter == "llava" or info.adapter is None:
            rows += adapter(r, task=info.name, base_dir=base_dir)
        else:
            rows += adapter(r, task=info.name)
    if not rows:
        raise ValueError(f"{info.name}: no usable rows after conversion")
    return datasets.Dataset.from_list(rows, features=common_features())


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


def _load_hub(info: TaskInfo, split: str):
    import datasets

    try:
        raw = datasets.load_dataset(info.hub_path, info.hub_name, split=split)
        images = None
        if info.adapter == "gqa":
            img = datasets.load_dataset(info.hub_path, "testdev_balanced_images", split=split)
            img = img.cast_column("image", datasets.Image(decode=False))
            images = {r["id"]: r["image"] for r in img}
    except Exception as err:  # offline, gated, renamed: say what and where, on one line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{info.name}: no local file and the hub dataset {info.hub_path}"
            f"{'/' + info.hub_name if info.hub_name else ''} split {split!r} could not be "
            f"loaded ({type(err).__name__}: {msg})") from None
    return _convert(info, raw, images=images)


def load_split(info: TaskInfo, data_root: str | Path | None, split: str | None = None):
    """The rows of `split` (default: the evaluated split) as a common-schema Dataset."""
    split = split or info.split
    path = local_file(info.name, data_root, split)
    if path is None:
        where = Path(data_root or ".") / info.name / f"{split}.parquet"
        if info.world:
            if data_root is None or not Path(data_root).is_dir():
                raise FileNotFoundError(f"{info.name}: data root {data_root} does not exist")
            raise FileNotFoundError(f"{info.name}: split {split!r} not found: expected {where}")
        if info.hub_path is None:
            raise FileNotFoundError(
                f"{info.name}: split {split!r} needs a local file {where} (or .jsonl/.json); "
                "it has no hub table")
        return _load_hub(info, split)
    raw = _read_local(path)
    columns = raw.column_names if hasattr(raw, "column_names") else (raw[0] if raw else {})
    if not raw or len(raw) == 0:
        raise ValueError(f"{info.name}: {path} has no rows")
    if _is_common(columns):
        if isinstance(raw, list):
            return _common_from_records(info, raw, path.parent)
        return raw
    if info.world:
        missing = sorted(set(COMMON) - set(columns))
        raise ValueError(f"{info.name}: {path} lacks columns {missing}")
    return _convert(info, raw, base_dir=path.parent)
