"""The demo with tbhooks.Trainer: the PyTorch TensorBoard tutorial's network on the digits.

Run it from the repository root:

    .venv/bin/python demo/trainer.py                 # 8 epochs, logs to runs/demo/trainer-script
    .venv/bin/python demo/trainer.py --epochs 3 --logdir /tmp/demo
    .venv/bin/tensorboard --logdir runs/demo

Every built-in plugin runs, and so does every plugin installed through the
``tbhooks`` entry point (``tbhooks-figures`` draws the prediction and
confusion-matrix figures).  ``tbhooks demo`` runs the same training and then
prints what each dashboard shows.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import tbhooks
from tbhooks.demo import LEARNING_RATE, Net, demo_plugins, hparams_of, load_digits, make_loaders


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/demo/trainer-script")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N images of each split")
    args = parser.parse_args(argv)

    # 1. Data: 1797 digits resized to 28x28, normalised, 20% held out (the split follows --seed).
    data = load_digits(seed=args.seed).limited(args.limit)
    train_loader, test_loader = make_loaders(data, args.batch_size, seed=args.seed)

    # 2. The tutorial's network and an optimizer.
    torch.manual_seed(args.seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    # 3. The trainer: every built-in plugin (a few configured for this small data set),
    #    plus every installed plugin distribution; class names label the figures,
    #    the PR curves and the projector's points.
    steps_per_epoch = len(train_loader)
    trainer = tbhooks.Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        logdir=args.logdir,
        device="auto",
        plugins=demo_plugins(steps_per_epoch, args.epochs),
        class_names=data.class_names,
        hparams=hparams_of(model, optimizer, args.epochs, args.batch_size),
    )

    # 4. Train, evaluating on the held-out images after every epoch.
    metrics = trainer.fit(train_loader, epochs=args.epochs, eval_loader=test_loader)
    print(f"test accuracy {metrics['accuracy']:.4f}; open it with: tensorboard --logdir {args.logdir}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
