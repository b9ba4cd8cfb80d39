"""Benchmark registry: the miniature world's ten tasks and the paper's ten real benchmarks.

    from dowser.tasks import get_task, training_split, load_split
    info = get_task("textvqa")                  # TaskInfo(role="upstream", metric="vqa_acc", ...)
    ds = load_split("world-coco", "results/world/data", "test")   # datasets.Dataset, common schema
    train = training_split("world-coco", "results/world/data")    # Path to train.parquet

Every benchmark is read into one common schema (what `dowser.world` writes):
`id, image, question, answer, references, choices, task` (+ `hint`, `group` where the
benchmark has them). Where the rows come from, first match wins:
1. a local file `<data_root>/<name>/<split>.parquet|.jsonl|.json` in the common schema,
   in the benchmark's own hub schema, or in LLaVA conversation JSON (image paths relative
   to the file) -- this is the "local path" option;
2. for real benchmarks, the hub dataset below (honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE).
Prompts, generation and metrics live in the shipped lm-eval YAMLs under `tasks/lmeval/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES = ("upstream", "downstream")
METRICS = ("exact_match", "vqa_acc", "cider", "mc_letter")
YAML_DIR = Path(__file__).parent / "lmeval"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    role: str  # "upstream" | "downstream"
    metric: str  # "exact_match" | "vqa_acc" | "cider" | "mc_letter"
    yaml: str  # shipped lm-eval template: tasks/lmeval/<yaml>.yaml
    world: bool = False
    hub_path: str | None = None
    hub_name: str | None = None
    split: str = "test"  # the split that is evaluated
    train_split: str | None = None  # downstream tasks: the split fine-tuning reads
    adapter: str | None = None  # row converter in dowser.tasks.real (hub schema -> common)
    max_new_tokens: int | None = None  # overrides evaluate's default (captions are longer)
    label_acc: bool = True  # also score log-likelihood over the closed answer set
    analogue: str = ""  # the paper benchmark a world task stands in for
    data_dir: str | None = None  # folder under data_root when shared (default: name)

    @property
    def data_name(self) -> str:
        return self.data_dir or self.name

    @property
    def yaml_path(self) -> Path:
        return YAML_DIR / f"{self.yaml}.yaml"


def _world(name, role, metric, analogue, **kw) -> TaskInfo:
    caption = metric == "cider"
    return TaskInfo(name=name, role=role, metric=metric, analogue=analogue,
                    yaml="world_caption" if caption else "world_answer", world=True,
                    train_split="train" if role == "downstream" else None,
                    label_acc=not caption, max_new_tokens=24 if caption else None, **kw)


_TASKS = [
    # The miniature world (docs/world.md): data at <data_root>/<name>/{train,validation,test}.parquet.
    _world("world-textvqa", "upstream", "exact_match", "textvqa"),
    _world("world-okvqa", "upstream", "exact_match", "okvqa"),
    _world("world-gqa", "upstream", "exact_match", "gqa"),
    _world("world-count", "upstream", "exact_match", "vqa counting"),
    _world("world-mmbench", "upstream", "exact_match", "mmbench"),
    _world("world-mmbench-cn", "upstream", "exact_match", "mmbench-cn"),
    _world("world-coco", "downstream", "cider", "coco-caption"),
    _world("world-flickr", "downstream", "cider", "flickr30k"),
    _world("world-imagenet-r", "downstream", "exact_match", "imagenet-r"),
    _world("world-iconqa", "downstream", "exact_match", "iconqa"),
    # The paper's benchmarks (Section 4, Appendix E.1); sources and prompts: docs/benchmarks.md.
    TaskInfo("textvqa", "upstream", "vqa_acc", "textvqa", hub_path="lmms-lab/textvqa",
             split="validation", adapter="textvqa", label_acc=False),
    # LLaVA-1.5 reports TextVQA with the OCR tokens in the prompt (lmms-eval's `ocr: true`).
    TaskInfo("textvqa-ocr", "upstream", "vqa_acc", "textvqa_ocr", hub_path="lmms-lab/textvqa",
             split="validation", adapter="textvqa", label_acc=False, data_dir="textvqa"),
    TaskInfo("okvqa", "upstream", "vqa_acc", "okvqa", hub_path="lmms-lab/OK-VQA",
             split="val2014", adapter="okvqa", label_acc=False),
    TaskInfo("ocrvqa", "upstream", "exact_match", "ocrvqa", hub_path="howard-hou/OCR-VQA",
             split="test", adapter="ocrvqa", label_acc=False),
    TaskInfo("gqa", "upstream", "exact_match", "gqa", hub_path="lmms-lab/GQA",
             hub_name="testdev_balanced_instructions", split="testdev", adapter="gqa",
             label_acc=False),
    TaskInfo("mmbench", "upstream", "mc_letter", "mmbench", hub_path="lmms-lab/MMBench",
             hub_name="en", split="dev", adapter="mmbench"),
    TaskInfo("mmbench-cn", "upstream", "mc_letter", "mmbench_cn", hub_path="lmms-lab/MMBench",
             hub_name="cn", split="dev", adapter="mmbench"),
    TaskInfo("coco-caption", "downstream", "cider", "coco_caption",
             hub_path="lmms-lab/COCO-Caption", split="val", train_split="train",
             adapter="coco", max_new_tokens=64, label_acc=False),
    TaskInfo("flickr30k", "downstream", "cider", "flickr30k", hub_path="lmms-lab/flickr30k",
             split="test", train_split="train", adapter="flickr", max_new_tokens=64,
             label_acc=False),
    # UCIT's VQA form of ImageNet-R (Guo et al. 2025a) is a file release, not a table on
    # the hub: it is read from a local file only. Its rows carry no option list (the
    # closed set would be all 200 classes), so no label-restricted accuracy.
    TaskInfo("imagenet-r", "downstream", "exact_match", "imagenet_r", split="test",
             train_split="train", adapter="llava", label_acc=False),
    TaskInfo("iconqa", "downstream", "exact_match", "iconqa", hub_path="lmms-lab/ICON-QA",
             split="test", train_split="train", adapter="iconqa"),
]
TASKS: dict[str, TaskInfo] = {t.name: t for t in _TASKS}
WORLD_TASKS = [t.name for t in _TASKS if t.world]
REAL_TASKS = [t.name for t in _TASKS if not t.world]


def get_task(name: str) -> TaskInfo:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(TASKS)}") from None


def local_file(name: str, data_root: str | Path | None, split: str) -> Path | None:
    """The local file holding `split` of benchmark `name`, or None."""
    if data_root is None:
        return None
    for ext in ("parquet", "jsonl", "json"):
        path = Path(data_root) / name / f"{split}.{ext}"
        if path.is_file():
            return path
    return None


def training_split(name: str, data_root: str | Path) -> Path:
    """The train split of a downstream task as a common-schema parquet file.

    World tasks: `<data_root>/<name>/train.parquet` as generated. Real benchmarks: the
    local train file (any accepted format) converted once to `train.dowser.parquet`
    beside it, with `question` set to the evaluation prompt (see `training_parquet`).
    """
    info = get_task(name)
    if info.train_split is None:
        raise ValueError(f"benchmark {name!r} ({info.role}) has no training split")
    path = local_file(info.data_name, data_root, info.train_split)
    if path is None:
        raise FileNotFoundError(
            f"training split of {name!r} not found: expected "
            f"{Path(data_root) / info.data_name / info.train_split}.parquet (or .jsonl/.json)")
    if info.world:
        return path
    from dowser.tasks.data import training_parquet

    return training_parquet(info, data_root, path)


def scoring_split(name: str, data_root: str | Path) -> Path:
    """The split real-data scores draw samples from (`score.source: task`, the oracle mask and
    Appendix G's reference): a downstream task's training split; for an upstream task, its
    `train` split where one exists -- the world generates every split of every task
    (upstream train rows are what its base model was pretrained on); a real upstream
    benchmark has only its evaluation split, which is refused rather than scored."""
    info = get_task(name)
    if info.train_split is not None:
        return training_split(name, data_root)
    path = local_file(info.data_name, data_root, "train") if info.world else None
    if path is None:
        raise ValueError(f"benchmark {name!r} ({info.role}) has no training split to draw scoring samples from"
                         + (f" (expected {Path(data_root) / info.data_name}/train.parquet)" if info.world else ""))
    return path


def load_split(name: str, data_root: str | Path | None, split: str | None = None):
    """Rows of one split of a benchmark in the common schema (a `datasets.Dataset`)."""
    from dowser.tasks.data import load_split as _load

    return _load(get_task(name), data_root, split)
