"""`dowser prepare-data`: files in each benchmark's hub schema -> common-schema parquet,
checksums and manifest; a second run does nothing; offline errors; offline evaluation."""

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest
from tasks.test_real_benchmarks import make_fixtures  # files in the hub datasets' schemas

from dowser.cli import main
from dowser.prepare import prepare_benchmarks, read_manifest
from dowser.tasks import get_task, load_split, training_split
from dowser.tasks.data import COMMON

# upstream (VQA, flattened OCR-VQA, MMBench with circular copies) and downstream tasks
# (IconQA filtered to choose_txt, ImageNet-R from LLaVA JSON with image paths)
NAMES = ["textvqa", "ocrvqa", "mmbench", "iconqa", "imagenet-r"]
_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _source(root):
    src = make_fixtures(root)
    shutil.copy(src / "iconqa" / "test.parquet", src / "iconqa" / "train.parquet")
    shutil.copy(src / "imagenet-r" / "test.json", src / "imagenet-r" / "train.json")
    return src


def _files(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared through the CLI; the source is deleted afterwards: the output must not
    point back at it (ImageNet-R's images were paths next to its JSON)."""
    src = _source(tmp_path_factory.mktemp("hub"))
    out = tmp_path_factory.mktemp("prepared")
    assert main(["prepare-data", "--benchmarks", *NAMES, "--source", str(src), "--out",
                 str(out), "--train-samples", "1"]) == 0
    shutil.rmtree(src)
    return out


def test_prepared_files_are_common_schema_with_checksums(prepared, tmp_path):
    manifest = read_manifest(prepared)["files"]
    expected = {f"{get_task(n).data_name}/{split}.parquet" for n in NAMES
                for split in (get_task(n).split, get_task(n).train_split) if split}
    assert set(manifest) == expected
    for key, entry in manifest.items():
        path = prepared / key
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["sha256"] == digest and entry["bytes"] == path.stat().st_size, key
        assert path.with_suffix(".sha256").read_text() == f"{digest}  {path.name}\n"
        table = pq.read_table(path)
        assert entry["rows"] == table.num_rows and {*COMMON, "hint", "group"} <= set(
            table.column_names), key
        images = table.column("image").to_pylist()
        assert all(im["bytes"][:4] == b"\x89PNG" for im in images), key
    assert manifest["ocrvqa/test.parquet"]["rows"] == 4  # two questions per cover
    assert manifest["iconqa/test.parquet"]["rows"] == 2  # choose_txt only
    assert manifest["iconqa/train.parquet"]["cap"] == 1
    assert manifest["iconqa/train.parquet"]["rows"] == 1
    assert manifest["iconqa/test.parquet"]["source"].endswith("iconqa/test.parquet")
    # the same rows as reading the hub-schema files directly
    src = _source(tmp_path)
    for name in NAMES:
        a, b = load_split(name, prepared), load_split(name, src)
        for col in ("id", "question", "answer", "references", "choices", "hint", "group"):
            assert a[col] == b[col], (name, col)
        assert a[0]["image"].size == b[0]["image"].size == (16, 16)
    assert (prepared / "iconqa" / "train.dowser.parquet").is_file()  # fine-tuning prompts


def test_second_run_does_nothing_unless_forced(tmp_path):
    src, out = _source(tmp_path / "src"), tmp_path / "out"
    log = []
    first = prepare_benchmarks(["gqa", "iconqa"], out, src, log=log.append)
    assert [e["status"] for e in first["iconqa"]] == ["prepared", "prepared"]
    before = _files(out)
    again = prepare_benchmarks(["gqa", "iconqa"], out, src, log=log.append)
    assert {e["status"] for es in again.values() for e in es} == {"unchanged"}
    assert _files(out) == before  # nothing rewritten, the manifest included
    assert log[-1].startswith("iconqa: train: unchanged 2 rows")

    forced = prepare_benchmarks(["gqa"], out, src, force=True, log=log.append)
    assert forced["gqa"][0]["status"] == "prepared"
    assert forced["gqa"][0]["sha256"] == first["gqa"][0]["sha256"]  # same bytes again
    # a damaged file, or another row cap, is prepared again
    (out / "gqa" / "testdev.parquet").write_bytes(b"damaged")
    assert prepare_benchmarks(["gqa"], out, src, log=log.append)["gqa"][0]["status"] == "prepared"
    capped = prepare_benchmarks(["gqa"], out, src, limit=2, log=log.append)["gqa"][0]
    assert capped["status"] == "prepared" and capped["rows"] == 2
    assert read_manifest(out)["files"]["gqa/testdev.parquet"]["rows"] == 2
    # a file prepare-data did not write is not overwritten without --force
    (out / "okvqa").mkdir()
    shutil.copy(src / "okvqa" / "val2014.parquet", out / "okvqa" / "val2014.parquet")
    with pytest.raises(ValueError, match=r"okvqa: .*val2014.parquet exists and was not written"):
        prepare_benchmarks(["okvqa"], out, src, log=log.append)
    assert prepare_benchmarks(["okvqa"], out, src, force=True,
                              log=log.append)["okvqa"][0]["rows"] == 3
    assert not list(out.rglob(".*tmp*"))  # no temporary files left


def test_offline_without_local_copy_is_one_line(tmp_path, monkeypatch, capsys):
    for var in _OFFLINE:
        monkeypatch.setenv(var, "1")
    assert main(["prepare-data", "--benchmarks", "okvqa", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dowser: error: okvqa: ") and err.count("\n") == 1
    assert "lmms-lab/OK-VQA" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "okvqa").exists() and not (tmp_path / "manifest.json").exists()
    # no hub table: the file is needed, whatever the network
    assert main(["prepare-data", "--benchmarks", "imagenet-r", "--out", str(tmp_path)]) == 2
    assert "imagenet-r: split 'test' needs a local file" in capsys.readouterr().err
    assert main(["prepare-data", "--benchmarks", "world-gqa", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dowser: error: world-gqa: world benchmarks are generated by the "
                          "pipeline") and err.count("\n") == 1


def test_evaluate_on_prepared_data_offline(prepared, tmp_path, monkeypatch):
    for var in _OFFLINE:
        monkeypatch.setenv(var, "1")
    from dowser.evaluate import evaluate_benchmarks
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tokenizer import build_processor

    before = _files(prepared)
    processor = build_processor(WorldConfig())
    model = build_model(WorldConfig(), processor).eval()
    names = [*NAMES, "textvqa-ocr"]  # shares textvqa's folder
    evaluate_benchmarks(model, processor, names, prepared, batch_size=4, limit=2,
                        max_new_tokens=3, out_dir=tmp_path)
    for name in names:
        res = json.loads((tmp_path / f"{name}.json").read_text())
        assert res["metric"] == get_task(name).metric and res["n"] == 2, name
        assert res["value"] >= 0.0
    assert training_split("iconqa", prepared).name == "train.dowser.parquet"
    assert _files(prepared) == before  # read only: the prepared folder is not written to
