"""A long-memory task with a known answer: the latch. Does the carried state really remember?

Each series has two channels: noise N(0, 1), and a pulse channel that is +1 or -1 at one step
every `lag`..`lag + lag // 2` steps and 0 elsewhere. The target at every step is the sign of
the latest pulse (0 before the first). Scored at the step before each new pulse, the answer
depends on an event at least `lag` steps back: a model that sees only the last `window` < lag
steps can do no better than 0 there (MSE 1); one whose state holds the sign scores near 0.
Used by tests/test_long_memory.py and benchmarks/long_memory.py (stream vs windowed mode).
"""

import torch


def latch(n_series: int, length: int, lag: int, generator: torch.Generator):
    """x: (n_series * length, 2) rows, series after series; y: (rows, 1) targets; series: (rows,)
    ids; scored: rows just before a new pulse (the answer there lies >= lag steps back)."""
    xs, ys, scored = [], [], []
    for s in range(n_series):
        pulse = torch.zeros(length)
        t = int(torch.randint(0, lag, (1,), generator=generator))
        while t < length:
            pulse[t] = 1.0 if torch.rand(1, generator=generator) < 0.5 else -1.0
            t += lag + int(torch.randint(0, lag // 2 + 1, (1,), generator=generator))
        at = torch.nonzero(pulse).flatten()
        sign = torch.zeros(length)
        for a, b in zip(at.tolist(), [*at[1:].tolist(), length], strict=True):
            sign[a:b] = pulse[a]
        scored.append(s * length + at[1:] - 1)  # the last step before each later pulse
        xs.append(torch.stack([torch.randn(length, generator=generator), pulse], 1))
        ys.append(sign[:, None])
    series = torch.arange(n_series).repeat_interleave(length)
    return torch.cat(xs), torch.cat(ys), series, torch.cat(scored)
