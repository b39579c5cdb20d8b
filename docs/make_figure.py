"""Draw docs/tensorboard.png from a run's TensorBoard event file: what TensorBoard shows, in one picture.

    python docs/make_figure.py logs/volatility/version_0 [--out docs/tensorboard.png]

Panels: validation MSE against the baselines (original units), gradient norms before and
after clipping, and the last `grad_flow/per_step` and `forecast/val` images the run logged.
"""

import argparse
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def series(events, tag):
    points = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
    return [p.step for p in points], [p.value for p in points]


def main(run: str, out: str) -> None:
    events = EventAccumulator(run, size_guidance={"images": 0, "scalars": 0}).Reload()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    ax = axes[0, 0]
    for tag, label in [("val/mse_orig", "LSTM"), ("val/baseline_mse_har", "HAR"),
                       ("val/baseline_mse_naive", "same as yesterday")]:  # fmt: skip
        ax.plot(*series(events, tag), marker="o", ms=3, label=label)
    ax.set(title="validation MSE (original units): val/mse_orig, val/baseline_mse_*", xlabel="step")
    ax.legend()
    ax = axes[0, 1]
    for tag, label in [("grad_norm/total_pre_clip", "before clipping"), ("grad_norm/total_post_clip", "after")]:
        ax.plot(*series(events, tag), lw=0.8, label=label)
    ax.set(title="gradient norm: grad_norm/total_pre_clip, _post_clip", xlabel="step", yscale="log")
    ax.legend()
    for ax, tag in [(axes[1, 0], "grad_flow/per_step"), (axes[1, 1], "forecast/val")]:
        images = events.Images(tag) if tag in events.Tags()["images"] else []
        if images:
            ax.imshow(mpimg.imread(io.BytesIO(images[-1].encoded_image_string), format="png"))
        ax.set_title(f"image {tag} (last)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run", help="a run folder holding an events.out.tfevents file")
    parser.add_argument("--out", default="docs/tensorboard.png")
    args = parser.parse_args()
    main(args.run, args.out)
