"""dowser.launch: one rendezvous port per multi-GPU job, as the finetune rule's shell computes it."""

import os
import socket
import subprocess
import sys

import pytest

from dowser.launch import PORT_BASE, PORT_SPAN, job_port


def test_port_follows_the_slurm_job_id():
    assert job_port({"SLURM_JOB_ID": "1234567"}) == 20000 + 1234567 % 9000 == 21567
    ports = [job_port({"SLURM_JOB_ID": str(j)}) for j in range(500_000, 500_000 + PORT_SPAN)]
    assert len(set(ports)) == PORT_SPAN  # jobs with nearby ids (those running together) never share one
    assert min(ports) == PORT_BASE and max(ports) == PORT_BASE + PORT_SPAN - 1 < 29500  # not accelerate's default
    with pytest.raises(ValueError, match=r"^SLURM_JOB_ID: '12_3' is not a job number$"):
        job_port({"SLURM_JOB_ID": "12_3"})


def test_port_outside_slurm_is_free():
    port = job_port({})
    assert port != 29500
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # nothing else holds it


def test_shell_substitution_of_the_rule():
    """`$(python -m dowser.launch port)` as the finetune rule's launcher line runs it in the job's shell."""
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", SLURM_JOB_ID="77")
    out = subprocess.run(["bash", "-c", "echo --main_process_port $(python -m dowser.launch port)"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout == "--main_process_port 20077\n"
    bad = subprocess.run([sys.executable, "-m", "dowser.launch", "port"], env={**env, "SLURM_JOB_ID": "x"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "dowser.launch: error: SLURM_JOB_ID: 'x' is not a job number\n"
