"""dowser.tasks.images: lm-eval's requests hold image references; each batch decodes its own."""

import json
import subprocess
import sys

import pytest

SIDE = 1536  # a decoded RGB image is 7 MB; PNG of an upscaled world image ~10 kB
BATCH = 4

# Evaluates world-count (generation + label task) on each data root given, in turn, and prints
# the process's peak RSS (bytes) after each: the first run also pays every import and warm-up.
SCRIPT = """
import json, resource, sys, torch
torch.set_num_threads(1)
from dowser.evaluate import evaluate_benchmarks
from dowser.world.config import WorldConfig
from dowser.world.model import build_model
from dowser.world.tokenizer import build_processor
cfg = WorldConfig()
processor = build_processor(cfg)
model = build_model(cfg, processor).eval()
for root in sys.argv[2:]:
    res = evaluate_benchmarks(model, processor, ["world-count"], root, batch_size=int(sys.argv[1]),
                              max_new_tokens=2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": res["world-count"]["n"], "peak": peak}))
"""


def _big_image_split(src, dst, n):
    """`n` rows cycling over src's rows, each image upscaled to SIDE x SIDE (PNG)."""
    import io

    import datasets
    from PIL import Image

    docs = datasets.Dataset.from_parquet(str(src))
    rows = []
    for k in range(n):
        d = dict(docs[k % len(docs)])
        buf = io.BytesIO()
        d["image"].convert("RGB").resize((SIDE, SIDE), Image.NEAREST).save(buf, format="PNG")
        rows.append({**d, "id": f"{d['id']}-{k}", "image": {"bytes": buf.getvalue(), "path": None}})
    dst.parent.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=docs.features).to_parquet(str(dst))


def _peaks(*roots):
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(BATCH), *map(str, roots)],
                         capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                              "HOME": str(roots[0])})
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(roots):]]


def test_ten_times_more_items_cost_at_most_one_batch_of_decoded_images(tmp_path):
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_split, write_split

    cfg = WorldConfig(test_size=8)
    src = tmp_path / "src.parquet"
    write_split(generate_split(cfg, "world-count", "test"), src)
    small, large = tmp_path / "small", tmp_path / "large"
    _big_image_split(src, small / "world-count" / "test.parquet", 8)
    _big_image_split(src, large / "world-count" / "test.parquet", 80)
    a, b = _peaks(small, large)
    assert (a["n"], b["n"]) == (8, 80)
    one_batch = BATCH * SIDE * SIDE * 3
    # decoded up front by doc_to_image (before this change), the 80 items added 1.3 GB
    assert b["peak"] - a["peak"] < one_batch, (a, b)


def test_reference_loads_its_row_and_names_a_released_source():
    import datasets
    from PIL import Image

    from dowser.tasks import images

    imgs = [Image.new("RGB", (4 + k, 3), (k, 0, 0)) for k in range(3)]
    ds = datasets.Dataset.from_dict({"image": imgs}, features=datasets.Features({"image": datasets.Image()}))
    ds = ds.cast_column("image", datasets.Image(decode=False))
    key = images.register(ds, "t/test@root")
    ref = images.ImageRef.parse(f"{key}#2")
    got = images.load_images([ref])[0]
    assert got.mode == "RGB" and got.size == (6, 3) and got.getpixel((0, 0)) == (2, 0, 0)
    assert images.image_key([ref]) == "t/test@root#2"
    images.release()
    with pytest.raises(KeyError, match="image source 't/test@root' is not registered"):
        ref.load()
