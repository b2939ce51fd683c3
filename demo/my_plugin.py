"""A plugin of your own: the global gradient norm every N steps (``my/grad_norm``, SCALARS dashboard).

Register it by object: ``tbhooks.Trainer(..., plugins=[GradNorm(every_n_steps=10)])``
or ``tbhooks.attach(model, ..., plugins=[GradNorm()])``.
"""

from __future__ import annotations

import torch

from tbhooks import Run, hookimpl


class GradNorm:
    name = "grad_norm"  # the name for disable=["grad_norm"] and `tbhooks plugins`

    def __init__(self, every_n_steps: int = 10) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"GradNorm(every_n_steps=...) expects an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps

    def batch_end_due(self, step: int) -> bool:  # a plain method: on_batch_end is raised on these steps only
        return step % self.every_n_steps == 0

    @hookimpl
    def on_batch_end(self, run: Run, step: int) -> None:  # take only the arguments you need
        if run.is_writer:  # under torchrun only rank 0 writes: the others skip the work
            norms = [p.grad.detach().norm() for p in run.model.parameters() if p.grad is not None]
            if norms:
                run.writer.add_scalar("my/grad_norm", float(torch.stack(norms).norm()), step)
