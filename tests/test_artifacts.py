"""dowser.artifacts: atomic writes that honour the umask, spec and provenance files."""

import json
import os
import stat
import subprocess
import sys

import pytest

from dowser import artifacts


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_umask_is_read_back(mask):
    assert artifacts.umask() == mask


def test_write_json_honours_umask(tmp_path, mask):
    artifacts.write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [2]})
    assert mode(tmp_path / "a" / "x.json") == 0o666 & ~mask  # 0644 / 0664, not mkstemp's 0600
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"a": [2], "b": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]  # no temp left behind


def test_atomic_path_file_and_folder_honour_umask(tmp_path, mask):
    with artifacts.atomic_path(tmp_path / "f.bin") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as a library using mkstemp would
        os.write(fd, b"data")
        os.close(fd)
    assert mode(tmp_path / "f.bin") == 0o666 & ~mask
    with artifacts.atomic_path(tmp_path / "run") as tmp:
        (tmp / "sub").mkdir(parents=True)
        artifacts.write_json(tmp / "sub" / "m.json", {})
        os.chmod(tmp / "sub", 0o700)
        os.close(os.open(tmp / "sub" / "raw", os.O_WRONLY | os.O_CREAT, 0o600))
    for p, full in [("run", 0o777), ("run/sub", 0o777), ("run/sub/m.json", 0o666),
                    ("run/sub/raw", 0o666)]:
        assert mode(tmp_path / p) == full & ~mask, p


def test_atomic_path_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(tmp_path / "out") as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_write_spec_provenance_torch_threads(tmp_path, mask):
    import torch

    torch.set_num_threads(2)
    artifacts.write_spec(tmp_path, json.dumps({"stage": "x"}), started=0.0)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["torch_threads"] == 2
    assert json.loads((tmp_path / "spec.json").read_text()) == {"stage": "x"}
    assert mode(tmp_path / "provenance.json") == 0o666 & ~mask


def test_provenance_does_not_import_torch():
    code = ("import sys, time; from dowser import artifacts; p = artifacts.provenance(time.time()); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(p['torch_threads'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
