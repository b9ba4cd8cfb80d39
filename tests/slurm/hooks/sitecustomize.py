"""Test hook (tests/slurm/test_slurm.py): pause one fine-tune right after its first checkpoint.

Put this folder on PYTHONPATH and set DOWSER_TEST_PAUSE_MARKER=<file>: the first
`dowser finetune` process that writes a checkpoint creates <file> (holding its SLURM job id
and run folder) and sleeps, so the test can `scancel` it mid-run deterministically instead of
racing a run that takes a second. Every other process is untouched. Nothing here runs
unless the variable is set.
"""

import os
import sys

_MARKER = os.environ.get("DOWSER_TEST_PAUSE_MARKER")


def _patch(module):
    save = module.save_checkpoint

    def save_then_pause(ckpt, *args, **kwargs):
        save(ckpt, *args, **kwargs)
        try:
            fd = os.open(_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID', '')} {ckpt}\n")
        import time

        time.sleep(float(os.environ.get("DOWSER_TEST_PAUSE_SECONDS", "600")))

    module.save_checkpoint = save_then_pause


if _MARKER:
    import importlib.abc
    import importlib.machinery

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "dowser.finetune":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
