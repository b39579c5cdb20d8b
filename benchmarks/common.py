"""What every benchmark script shares: the lines it prints first, and keeping Lightning quiet.

Imported as `from common import begin` (the scripts run as `python benchmarks/<name>.py`,
which puts this folder on the path).
"""

import logging
import os
import platform
import sys
import warnings

import lightning as L
import torch


def begin(*extra: str, threads: int | None = None, accelerator: str | None = None) -> None:
    """Set the torch thread count (None: torch's choice), then print the command, the machine,
    the versions (plus `extra`, e.g. "numpy 2.4") and the load average, and the GPU on CUDA."""
    if threads:
        torch.set_num_threads(threads)
    details = [f"{os.cpu_count()} CPUs", f"{torch.get_num_threads()} torch threads",
               f"python {platform.python_version()}", f"torch {torch.__version__}", f"lightning {L.__version__}",
               *extra, f"load average {os.getloadavg()[0]:.1f}"]  # fmt: skip
    if accelerator:
        details.insert(-1, f"accelerator {accelerator}")
    print(f"# python {' '.join(sys.argv)}\n# {', '.join(details)}")
    if accelerator in ("cuda", "gpu"):
        print(f"# {torch.cuda.get_device_name()}")


def quiet() -> None:
    """Keep Lightning's info lines and warnings out of the printed tables."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sys.argv = sys.argv[:1]  # LightningCLI would parse the script's own flags too
