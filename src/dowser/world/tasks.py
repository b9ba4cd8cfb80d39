"""The ten world tasks: seeded generators and their parquet splits.

    from dowser.world.tasks import generate_task_data
    generate_task_data(WorldConfig(), Path("results/world/data"))
    # -> results/world/data/<task>/{train,validation,test}.parquet

Upstream tasks (pretraining skills, analogues of the paper's six):
  world-textvqa     read the number drawn in the image -> "0".."9"
  world-okvqa       a fact not in the pixels: the thing sharing the object's colour
                    (red -> fire, blue -> sea, ...) -> one of six words
  world-gqa         two objects, one per half: GQA's query ("what colour are both objects")
                    and compare ("are the two objects the same colour") -> colour / shape /
                    yes / no
  world-count       how many objects -> "1".."4"
  world-mmbench     4-option multiple choice on colour or shape -> the option's word
  world-mmbench-cn  the same questions in a word-for-word second vocabulary
                    (pinyin-like words; options jia/yi/bing/ding)
Downstream tasks (never seen in pretraining; each changes output style or images):
  world-coco        caption "two red circles on the left", five references -> CIDEr
  world-flickr      caption in another style ("a small blue square near the top") -> CIDEr
  world-imagenet-r  shape of a style-shifted rendering (outline, stripes, dots,
                    inverted) -> shape word
  world-iconqa      which icon appears most in a 3x3 icon grid (each icon in its own
                    colour, the most frequent ahead by two) -> icon word

Simplifications (docs/world.md §5: simplify rather than leave a task at chance):
  - textvqa reads single digits (10-way) in a 3x5 font at scale 4, one font pixel per 4 px
    patch, near the image centre (4 positions); the prototype's 0-99 reading stayed at
    0.02, and a scale-3 font at free positions stayed at chance after 1500 steps; with all
    24 patch-grid positions the tower learned digits slowly (0.58 after 800 steps alone).
  - upstream objects are 8, 12 or 16 px and snap to the 4 px patch grid, so a shape always
    yields the same few patch patterns; with free positions shape (and so gqa, mmbench)
    stayed near chance after 1500 steps. Downstream renderings are not aligned.
  - objects of multi-object scenes sit in distinct image quadrants, so counting and
    left/right never depend on overlaps.
  - gqa asks only questions that need no binding of an attribute to one object: with
    "what colour is the <shape>", "is the <shape> left of the <shape>" (run of 2026-11-25,
    2500 steps) or "what colour is the object on the left", "which side is the <colour>
    object on" (2500 steps) the decoder only learned which attributes were present (0.45),
    though a question-attention head on the same tower reached 0.80.
  - mmbench asks about a single object (colour or shape), four options "A red B blue ..."
    in random order, answered by the option's word rather than its letter: letter answers
    (a pointer from attribute to option) stayed at chance (0.27) after 1500 steps.
  - pretraining starts with a curriculum phase on okvqa/gqa/count (config.curriculum_*).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dowser.world import scenes
from dowser.world.config import SKILLS, WorldConfig
from dowser.world.scenes import COLOURS, ICONS, SHAPES, STYLES

UPSTREAM = [
    "world-textvqa",
    "world-okvqa",
    "world-gqa",
    "world-count",
    "world-mmbench",
    "world-mmbench-cn",
]
DOWNSTREAM = ["world-coco", "world-flickr", "world-imagenet-r", "world-iconqa"]
TASKS = UPSTREAM + DOWNSTREAM
TASK_METRIC = {t: "exact_match" for t in TASKS} | {"world-coco": "cider", "world-flickr": "cider"}
SPLITS = ("train", "validation", "test")

COLOUR_NAMES = tuple(COLOURS)
DIGITS = tuple(str(i) for i in range(10))
FACTS = {"red": "fire", "green": "grass", "blue": "sea", "yellow": "sun",
         "purple": "grape", "white": "snow"}  # fmt: skip
LETTERS = ("A", "B", "C", "D")
NUMBER_WORDS = ("one", "two", "three")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

Q_TEXTVQA = "what number is written in the image ?"
Q_OKVQA = "what thing has the same colour as the object ?"
Q_COUNT = "how many objects are there ?"
Q_COCO = "write a short caption for the image ."
Q_FLICKR = "describe the picture in one sentence ."
Q_IMAGENET_R = "what shape is shown in this drawing ?"
Q_ICONQA = "which icon appears most often in the grid ?"
COCO_TEMPLATES = (
    "{num} {colour} {shapes} on the {side}",
    "there {be} {num} {colour} {shapes} on the {side}",
    "on the {side} there {be} {num} {colour} {shapes}",
    "the {side} side has {num} {colour} {shapes}",
    "{num} {colour} {shapes} {be} on the {side}",
)
FLICKR_TEMPLATES = (
    "a {size} {colour} {shape} near the {vside}",
    "a picture of a {size} {colour} {shape} near the {vside}",
    "near the {vside} is a {size} {colour} {shape}",
    "we see a {size} {colour} {shape} near the {vside}",
    "the image shows a {size} {colour} {shape} near the {vside}",
)
# The second vocabulary of world-mmbench-cn: a fixed word-for-word translation.
CN = {
    "what": "shenme", "colour": "yanse", "shape": "xingzhuang", "is": "shi", "the": "zhe",
    "object": "wuti", "options": "xuanxiang", "?": "?", ":": ":",
    "A": "jia", "B": "yi", "C": "bing", "D": "ding",
    "red": "hong", "green": "lv", "blue": "lan", "yellow": "huang", "purple": "zi",
    "white": "bai", "circle": "yuan", "square": "fangkuai", "triangle": "sanjiao",
    "cross": "shizi",
}  # fmt: skip

CHOICES = {
    "world-textvqa": list(DIGITS),
    "world-okvqa": list(FACTS.values()),
    "world-gqa": list(COLOUR_NAMES) + list(SHAPES) + ["yes", "no"],
    "world-count": ["1", "2", "3", "4"],
    "world-mmbench": list(COLOUR_NAMES) + list(SHAPES),
    "world-mmbench-cn": [CN[x] for x in COLOUR_NAMES + SHAPES],
    "world-coco": [],
    "world-flickr": [],
    "world-imagenet-r": list(SHAPES),
    "world-iconqa": list(ICONS),
}
# Accuracy of uniform guessing among the answers valid for each question (gqa: mean over
# its three equally likely question kinds: colour 1/6, shape 1/4, yes/no 1/2).
CHANCE = {
    "world-textvqa": 1 / 10,
    "world-okvqa": 1 / 6,
    "world-gqa": (1 / 6 + 1 / 4 + 1 / 2) / 3,
    "world-count": 1 / 4,
    "world-mmbench": 1 / 4,
    "world-mmbench-cn": 1 / 4,
    "world-imagenet-r": 1 / 4,
    "world-iconqa": 1 / 3,
}


def _pick(rng, seq, k=None):
    idx = rng.choice(len(seq), size=k, replace=False) if k else rng.integers(len(seq))
    return [seq[i] for i in idx] if k else seq[idx]


def _grid(rng, lo: int, hi: int) -> int:
    """A coordinate in [lo, hi] on the 4 px patch grid (upstream objects snap to patches)."""
    return lo + 4 * int(rng.integers(0, (hi - lo) // 4 + 1))


def _quadrant_objects(rng, img, cells, sizes, shapes, colours):
    """Draw one object per (col, row) quadrant cell, patch-aligned, side from `sizes`."""
    half = img.shape[0] // 2
    for (qx, qy), shape, colour in zip(cells, shapes, colours):
        s = int(_pick(rng, sizes))
        # a 4 px margin on the image's centre lines keeps neighbours >= 8 px apart
        x0 = _grid(rng, qx * half + 4 * qx, qx * half + half - s - 4 * (1 - qx))
        y0 = _grid(rng, qy * half + 4 * qy, qy * half + half - s - 4 * (1 - qy))
        scenes.draw_shape(img, rng, shape, colour, x0 + s / 2, y0 + s / 2, s)


def _single_object(rng, img, sizes=(12, 16)):
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    s = int(_pick(rng, sizes))
    size = img.shape[0]
    x0, y0 = _grid(rng, 0, size - s), _grid(rng, 0, size - s)
    scenes.draw_shape(img, rng, shape, colour, x0 + s / 2, y0 + s / 2, s)
    return shape, colour


def gen_textvqa(rng, size):
    img = scenes.background(rng, size)
    digit = _pick(rng, DIGITS)
    # near the centre (4 patch-grid positions): with all 24 grid positions the tower was at
    # 0.58 after 800 steps of digits alone (2026-11-25)
    x, y = _grid(rng, size // 2 - 8, size // 2 - 4), _grid(rng, size // 2 - 12, size // 2 - 8)
    rgb = scenes.jitter_colour(rng, _pick(rng, COLOUR_NAMES))
    scenes.draw_digit(img, digit, x, y, rgb, scale=4)  # one font pixel = one patch
    return img, Q_TEXTVQA, digit, [digit]


def gen_okvqa(rng, size):
    img = scenes.background(rng, size)
    _, colour = _single_object(rng, img)
    return img, Q_OKVQA, FACTS[colour], [FACTS[colour]]


def gen_gqa(rng, size):
    """GQA's query and compare structures over a two-object scene, without binding."""
    img = scenes.background(rng, size)
    kind = int(rng.integers(3))
    shapes, colours = _pick(rng, SHAPES, 2), _pick(rng, COLOUR_NAMES, 2)
    if kind == 0:  # query a shared colour
        colours = [colours[0]] * 2
        q, a = "what colour are both objects ?", colours[0]
    elif kind == 1:  # query a shared shape
        shapes = [shapes[0]] * 2
        q, a = "what shape are both objects ?", shapes[0]
    else:  # compare colours
        same = bool(rng.integers(2))
        if same:
            colours = [colours[0]] * 2
        q, a = "are the two objects the same colour ?", "yes" if same else "no"
    rows = rng.integers(0, 2, size=2)
    cells = [(0, int(rows[0])), (1, int(rows[1]))]  # one object per half
    _quadrant_objects(rng, img, cells, (8, 12), shapes, colours)
    return img, q, a, [a]


def gen_count(rng, size):
    img = scenes.background(rng, size)
    n = int(rng.integers(1, 5))
    cells = _pick(rng, [(0, 0), (0, 1), (1, 0), (1, 1)], n)
    shapes = [_pick(rng, SHAPES) for _ in range(n)]
    colours = [_pick(rng, COLOUR_NAMES) for _ in range(n)]
    _quadrant_objects(rng, img, cells, (8, 12), shapes, colours)
    return img, Q_COUNT, str(n), [str(n)]


def _mmbench(rng, size):
    img = scenes.background(rng, size)
    shape, colour = _single_object(rng, img)
    if rng.integers(2) == 0:
        head, pool, truth = "what colour is the object ?", COLOUR_NAMES, colour
    else:
        head, pool, truth = "what shape is the object ?", SHAPES, shape
    others = _pick(rng, [x for x in pool if x != truth], 3)
    options = others + [truth]
    order = rng.permutation(4)
    options = [options[j] for j in order]
    opts = " ".join(f"{L} {o}" for L, o in zip(LETTERS, options))
    # answered by the option's word, not its letter (see the module docstring)
    return img, f"{head} options : {opts}", truth


def gen_mmbench(rng, size):
    img, q, a = _mmbench(rng, size)
    return img, q, a, [a]


def gen_mmbench_cn(rng, size):
    img, q, a = _mmbench(rng, size)
    q, a = " ".join(CN[w] for w in q.split()), CN[a]
    return img, q, a, [a]


def _coco_scene(rng, size):
    """1-3 objects of one shape and colour in a column on one side (world-coco's scenes)."""
    img = scenes.background(rng, size)
    n, shape, colour = int(rng.integers(1, 4)), _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    side = _pick(rng, ("left", "right"))
    rows = sorted(_pick(rng, [0, 1, 2], n))
    cell = size / 3
    for r in rows:
        s = rng.uniform(7, 10)
        cx = (0 if side == "left" else size / 2) + size / 4 + rng.uniform(-2, 2)
        cy = r * cell + cell / 2 + rng.uniform(-0.5, 0.5)
        scenes.draw_shape(img, rng, shape, colour, cx, cy, s)
    fill = dict(num=NUMBER_WORDS[n - 1], colour=colour, side=side, be="is" if n == 1 else "are",
                shapes=shape if n == 1 else PLURALS[shape])  # fmt: skip
    return img, fill


def _flickr_scene(rng, size):
    """One big or small object near the top or the bottom (world-flickr's scenes)."""
    img = scenes.background(rng, size)
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    big, top = bool(rng.integers(2)), bool(rng.integers(2))
    s = rng.uniform(13, 16) if big else rng.uniform(6, 8)
    cx = rng.uniform(s / 2, size - s / 2)
    cy = size / 4 + (0 if top else size / 2) + rng.uniform(-1, 1)
    scenes.draw_shape(img, rng, shape, colour, cx, cy, s)
    fill = dict(size="big" if big else "small", colour=colour, shape=shape,
                vside="top" if top else "bottom")  # fmt: skip
    return img, fill


def gen_coco(rng, size):
    img, fill = _coco_scene(rng, size)
    refs = [t.format(**fill) for t in COCO_TEMPLATES]
    return img, Q_COCO, refs[0], refs


def gen_flickr(rng, size):
    img, fill = _flickr_scene(rng, size)
    refs = [t.format(**fill) for t in FLICKR_TEMPLATES]
    return img, Q_FLICKR, refs[0], refs


def _styled_object(rng, size, styles=STYLES):
    style = _pick(rng, styles)
    img = scenes.background(rng, size, light=style == "inverted")
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    s = rng.uniform(16, 24)
    cx, cy = size / 2 + rng.uniform(-3, 3, size=2)
    scenes.draw_styled(img, rng, shape, colour, cx, cy, s, style)
    return img, shape


def gen_imagenet_r(rng, size):
    img, shape = _styled_object(rng, size)
    return img, Q_IMAGENET_R, shape, [shape]


# Each icon has its own colour: with random colours, a 150-step fine-tune of the decoder
# (frozen tower, never trained on icons) stayed at the majority answer (0.40, 2026-11-25).
ICON_COLOURS = {"star": "yellow", "heart": "red", "arrow": "green", "moon": "blue"}


def gen_iconqa(rng, size):
    img = scenes.background(rng, size)
    names = list(ICONS)
    k = int(rng.integers(2, 4))
    types = _pick(rng, names, k)
    while True:  # 9 cells, every type present, the most frequent one ahead by >= 2
        assign = rng.integers(0, k, size=9)
        counts = np.sort(np.bincount(assign, minlength=k))
        if counts[0] > 0 and counts[-1] - counts[-2] >= 2:
            break
    counts = np.bincount(assign, minlength=k)
    rgbs = [scenes.jitter_colour(rng, ICON_COLOURS[t]) for t in types]
    cell = (size - 2) // 3
    for c, t in enumerate(assign):
        x0, y0 = 1 + (c % 3) * cell, 1 + (c // 3) * cell
        jx, jy = rng.integers(0, cell - 7 + 1, size=2)
        scenes.draw_icon(img, types[t], int(x0 + jx), int(y0 + jy), rgbs[t])
    answer = types[int(counts.argmax())]
    return img, Q_ICONQA, answer, [answer]


GENERATORS = {
    "world-textvqa": gen_textvqa,
    "world-okvqa": gen_okvqa,
    "world-gqa": gen_gqa,
    "world-count": gen_count,
    "world-mmbench": gen_mmbench,
    "world-mmbench-cn": gen_mmbench_cn,
    "world-coco": gen_coco,
    "world-flickr": gen_flickr,
    "world-imagenet-r": gen_imagenet_r,
    "world-iconqa": gen_iconqa,
}


# --- skills (WorldConfig.skills): pretraining tasks near the downstream ones ------------------
# Never evaluated as upstream tasks (A_up keeps its six); they put the downstream skill in the
# base, as a pretrained VLM has it, so that fine-tuning changes a format, not a capability.
Q_DESCRIBE = ("describe the image .", "what is shown in the image ?", "what is in this picture ?")
DESCRIBE_COCO = "the image shows {num} {colour} {shapes} . the {shapes} {be} on the {side} side ."
DESCRIBE_FLICKR = "the image shows a {size} {colour} {shape} . the {shape} is near the {vside} ."


def gen_describe(rng, size):
    """A long description (two sentences) of a world-coco or world-flickr scene: the same facts
    as their captions, in another form, under other prompts."""
    if rng.integers(2) == 0:
        img, fill = _coco_scene(rng, size)
        text = DESCRIBE_COCO.format(**fill)
    else:
        img, fill = _flickr_scene(rng, size)
        text = DESCRIBE_FLICKR.format(**fill)
    return img, _pick(rng, Q_DESCRIBE), text, [text]


def gen_styles(rng, size, styles=STYLES):
    """The shape of a style-shifted rendering (world-imagenet-r's images, the styles of
    WorldConfig.skill_styles), asked in mmbench's option form and answered by the word."""
    img, shape = _styled_object(rng, size, styles)
    others = _pick(rng, [x for x in SHAPES if x != shape], 3)
    options = [(others + [shape])[j] for j in rng.permutation(4)]
    opts = " ".join(f"{L} {o}" for L, o in zip(LETTERS, options))
    return img, f"what shape is the object ? options : {opts}", shape, [shape]


SKILL_GENERATORS = {"world-describe": gen_describe, "world-styles": gen_styles}
assert tuple(SKILL_GENERATORS) == SKILLS
CHOICES |= {"world-describe": [], "world-styles": list(SHAPES)}


def split_size(cfg: WorldConfig, task: str, split: str) -> int:
    if task in SKILL_GENERATORS:
        return cfg.upstream_train_size if split == "train" else cfg.test_size
    if split == "train":
        return cfg.upstream_train_size if task in UPSTREAM else cfg.downstream_train_size
    return cfg.validation_size if split == "validation" else cfg.test_size


def generate_split(cfg: WorldConfig, task: str, split: str) -> dict:
    """Columns of one split as Python lists; images as PNG bytes."""
    index = TASKS.index(task) if task in TASKS else len(TASKS) + SKILLS.index(task)
    rng = np.random.default_rng([cfg.seed, index, SPLITS.index(split)])
    cols = {k: [] for k in ("id", "image", "question", "answer", "references", "choices", "task")}
    gen = GENERATORS.get(task)
    if gen is None:
        gen = SKILL_GENERATORS[task]
        if task == "world-styles":
            gen = lambda rng, size: gen_styles(rng, size, cfg.skill_styles)  # noqa: E731
    for i in range(split_size(cfg, task, split)):
        img, q, a, refs = gen(rng, cfg.image_size)
        cols["id"].append(f"{task}-{split}-{i:05d}")
        cols["image"].append({"bytes": scenes.png_bytes(img), "path": None})
        cols["question"].append(q)
        cols["answer"].append(a)
        cols["references"].append(refs)
        cols["choices"].append(CHOICES[task])
        cols["task"].append(task)
    return cols


def _features():
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "references": datasets.List(datasets.Value("string")),
            "choices": datasets.List(datasets.Value("string")),
            "task": datasets.Value("string"),
        }
    )


def write_split(cols: dict, path: Path) -> None:
    """Atomic parquet write; the schema carries `datasets` features (image -> PIL)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _features().arrow_schema
    table = pa.Table.from_pydict(cols, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def generate_task_data(cfg: WorldConfig, out_dir: Path) -> None:
    """Every task's splits; a skill of `cfg.skills` gets train and test splits beside them."""
    out_dir = Path(out_dir)
    for task in cfg.skills:
        for split in ("train", "test"):
            write_split(generate_split(cfg, task, split), out_dir / task / f"{split}.parquet")
    for task in TASKS:
        for split in SPLITS:
            write_split(generate_split(cfg, task, split), out_dir / task / f"{split}.parquet")


def vocabulary() -> list[str]:
    """Every word any task can emit, in a fixed order (the tokenizer's vocabulary)."""
    texts = [Q_TEXTVQA, Q_OKVQA, Q_COUNT, Q_COCO, Q_FLICKR, Q_IMAGENET_R, Q_ICONQA,
             "what colour are both objects ? are the two objects the same colour ?",
             "what shape is the object ? options :",
             "yes no big small top bottom left right",
             *COCO_TEMPLATES, *FLICKR_TEMPLATES]  # fmt: skip
    words = [w for t in texts for w in t.split() if not w.startswith("{")]
    words += [*DIGITS, *COLOUR_NAMES, *SHAPES, *PLURALS.values(), *FACTS.values(), *LETTERS]
    words += [*NUMBER_WORDS, "is", "are", *ICONS, *CN.values()]
    return list(dict.fromkeys(words))
