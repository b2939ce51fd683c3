"""The demo as a hand-written loop: the same training as demo/trainer.py, raising tbhooks' events itself.

Run it from the repository root:

    .venv/bin/python demo/custom_loop.py             # 8 epochs, logs to runs/demo/custom-loop-script
    .venv/bin/tensorboard --logdir runs/demo

``tbhooks.attach`` returns the object the Trainer uses internally, so this
loop writes the same tags at the same steps as the Trainer: the loop calls
one method at each point of the lifecycle (``tbhooks demo --loop custom``
runs this loop too).
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
    parser.add_argument("--logdir", default="runs/demo/custom-loop-script")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N images of each split")
    args = parser.parse_args(argv)

    data = load_digits(seed=args.seed).limited(args.limit)
    train_loader, test_loader = make_loaders(data, args.batch_size, seed=args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(args.seed)
    model = Net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()

    # Entering the block fires on_fit_start; leaving it fires on_fit_end (or
    # on_exception), flushes and closes the writer and removes module hooks.
    with tbhooks.attach(
        model,
        logdir=args.logdir,
        optimizer=optimizer,
        epochs=args.epochs,
        plugins=demo_plugins(len(train_loader), args.epochs),
        class_names=data.class_names,
        hparams=hparams_of(model, optimizer, args.epochs, args.batch_size),
    ) as hooks:
        for _epoch in range(args.epochs):
            # -- train ----------------------------------------------------------
            model.train()
            hooks.epoch_start()
            for inputs, targets in train_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                hooks.batch_start()  # registers module hooks only on the steps a plugin wants them
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)  # after the step: gradients are still there
            hooks.epoch_end()

            # -- evaluate -------------------------------------------------------
            model.eval()
            hooks.eval_start()
            with torch.no_grad():
                for inputs, targets in test_loader:
                    inputs, targets = inputs.to(device), targets.to(device)
                    outputs = model(inputs)
                    hooks.eval_batch(inputs, targets, outputs, loss_fn(outputs, targets))
            metrics = hooks.eval_end()  # loss and accuracy over the whole test set
            print(f"epoch {hooks.epoch + 1}: test accuracy {metrics['accuracy']:.4f}")

    print(f"open it with: tensorboard --logdir {args.logdir}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
