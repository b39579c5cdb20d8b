"""What Lightning itself costs per step, and what one `self.log` call costs, on a model too small to hide it.

    python benchmarks/lightning_floor.py                  # CPU, about 30 s
    python benchmarks/lightning_floor.py --accelerator cuda

A linear model on 500 fixed batches of 64, trained (1) by a plain PyTorch loop, (2) by a bare
LightningModule, (3) the same calling `self.log(..., on_step=True, on_epoch=True)` every batch
(what most modules do), (4) summing the loss on the device and calling `self.log` every 20th
batch (what forecasting.models.forecaster does). Alternating, --repeats times, best of each;
milliseconds per step, and the difference from (1). The differences are what the template can
and cannot remove: (2) - (1) is Lightning's loop and hooks, (3) - (2) the per-batch `self.log`.
"""

import argparse
import time

import lightning as L
import torch
from common import begin, quiet
from torch import nn

STEPS, EVERY = 500, 20


class Module(L.LightningModule):
    def __init__(self, log: str):
        super().__init__()
        self.net, self.how = nn.Linear(4, 1), log
        self.total = 0.0

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        if self.how == "every batch":
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=64)
        elif self.how == f"every {EVERY}th batch":
            self.total = self.total + loss.detach()
            if (batch_idx + 1) % EVERY == 0:
                self.log("train/loss", self.total / EVERY, prog_bar=True, on_step=True, on_epoch=True, batch_size=64)
                self.total = 0.0
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(data, device: str) -> float:
    net = nn.Linear(4, 1).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = nn.functional.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def lightning_loop(data, device: str, how: str) -> float:
    trainer = L.Trainer(
        accelerator=device, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=EVERY,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    start = time.perf_counter()
    trainer.fit(Module(how), loader)
    sync(device)
    return time.perf_counter() - start  # includes Trainer.fit's start-up: a fixed cost over STEPS steps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    begin(accelerator=args.accelerator)
    quiet()
    torch.manual_seed(0)
    data = [(torch.randn(64, 4), torch.randn(64, 1)) for _ in range(STEPS)]
    runs = {"(1) plain PyTorch loop": lambda: plain_loop(data, args.accelerator)}
    for how in ("none", "every batch", f"every {EVERY}th batch"):
        label = {"none": "(2) LightningModule, nothing logged", "every batch": "(3) + self.log every batch"}.get(
            how, f"(4) + self.log every {EVERY}th batch"
        )
        runs[label] = lambda how=how: lightning_loop(data, args.accelerator, how)
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    plain = best["(1) plain PyTorch loop"]
    print(f"\n{STEPS} steps of a 4 -> 1 linear model, batch 64, best of {args.repeats}\n")
    print("| loop | ms / step | extra ms / step vs (1) |\n|:--|--:|--:|")
    for name, seconds in best.items():
        print(f"| {name} | {1e3 * seconds / STEPS:.3f} | {1e3 * (seconds - plain) / STEPS:.3f} |")
