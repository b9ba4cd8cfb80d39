"""The rendezvous port of a multi-GPU job's `accelerate launch` (torch-free, so it starts fast).

    accelerate launch --main_process_port $(python -m dowser.launch port) ... -m dowser.cli finetune ...

accelerate's default port is 29500 for every job, so two multi-GPU fine-tunes that SLURM puts
on one node collide (the second one's rendezvous fails or joins the first). Inside a SLURM job
the port is derived from the job id, which is unique on the cluster while the job runs: jobs
on one node share a port only when their ids differ by a multiple of PORT_SPAN. Outside SLURM
(a workstation running several fine-tunes) the operating system picks a free port.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

# 20000-28999: below Linux's ephemeral range (32768+, where the OS hands out client ports) and
# clear of accelerate's 29500, which other jobs on the node may still use.
PORT_BASE = 20000
PORT_SPAN = 9000


def job_port(environ: Mapping[str, str] = os.environ) -> int:
    """PORT_BASE + SLURM_JOB_ID mod PORT_SPAN in a SLURM job; else a port that is free now."""
    job = environ.get("SLURM_JOB_ID", "")
    if job:
        if not job.isdigit():
            raise ValueError(f"SLURM_JOB_ID: {job!r} is not a job number")
        return PORT_BASE + int(job) % PORT_SPAN
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    if argv != ["port"]:
        print("usage: python -m dowser.launch port", file=sys.stderr)
        return 2
    try:
        print(job_port())
    except ValueError as e:
        print(f"dowser.launch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
