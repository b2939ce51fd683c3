"""The demo's text task for ``--loop transformers``: generated token data, a tiny BERT, and HF's Trainer.

The data is easy enough for a two-layer BERT to learn in a couple of CPU epochs; nothing is downloaded,
and transformers is imported only inside the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, TensorDataset

from tbhooks.demo.data import DemoData

if TYPE_CHECKING:
    from pathlib import Path

    from torch.utils.data import DataLoader
    from transformers import PreTrainedModel

TEXT_CLASSES = ["sports", "science", "music", "travel"]
VOCAB_SIZE = 50
"""Token 0 is padding (unused), 1 is ``[CLS]``, then 4 keywords per class, then filler words."""
SEQ_LEN = 16
KEYWORDS = 4
TRAIN_SIZE, TEST_SIZE = 1200, 300


def text_data(seed: int = 0) -> DemoData:
    """Sentences of ``SEQ_LEN`` token ids (``[CLS]`` first) with labels, a train and a test split.

    Each holds three keywords of its class among filler words and, half of the time, one keyword of
    another class: the class is the keywords' majority, which attention has to find.
    """
    generator = torch.Generator().manual_seed(seed)
    classes = len(TEXT_CLASSES)
    filler = 2 + classes * KEYWORDS
    count = TRAIN_SIZE + TEST_SIZE
    labels = torch.randint(classes, (count,), generator=generator)
    tokens = torch.randint(filler, VOCAB_SIZE, (count, SEQ_LEN), generator=generator)
    tokens[:, 0] = 1
    slots = torch.rand(count, SEQ_LEN - 1, generator=generator).argsort(dim=1)[:, :4] + 1  # 4 distinct places
    rows = torch.arange(count).unsqueeze(1)
    own = 2 + labels.unsqueeze(1) * KEYWORDS + torch.randint(KEYWORDS, (count, 3), generator=generator)
    tokens[rows, slots[:, :3]] = own
    other = (labels + torch.randint(1, classes, (count,), generator=generator)) % classes
    decoy = 2 + other * KEYWORDS + torch.randint(KEYWORDS, (count,), generator=generator)
    noisy = torch.rand(count, generator=generator) < 0.5
    tokens[noisy, slots[noisy, 3]] = decoy[noisy]
    train, test = slice(0, TRAIN_SIZE), slice(TRAIN_SIZE, count)
    return DemoData(
        "text",
        TensorDataset(tokens[train], labels[train]),
        TensorDataset(tokens[test], labels[test]),
        list(TEXT_CLASSES),
    )


def tiny_bert(classes: int) -> PreTrainedModel:
    """A two-layer BERT for sequence classification over :data:`VOCAB_SIZE` tokens, built from a config."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,  # at 32, some seeds stall near 50% for epochs before attention finds the keywords
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=classes,
    )
    return BertForSequenceClassification(config)


class TokenDataset(Dataset):
    """A ``TensorDataset`` of ``(input_ids, label)`` as the dicts HF's Trainer feeds the model."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids, label = self.dataset[index]
        return {"input_ids": input_ids, "labels": label}


def fit_transformers(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    logdir: str | Path,
    device: torch.device,
    **options: Any,
) -> dict[str, float]:
    """Train with ``transformers.Trainer`` and ``TbhooksCallback(logdir=logdir, **options)``.

    The Trainer batches the loaders' datasets with their batch sizes and the training loader's seed;
    ``optimizer`` runs at a constant rate without clipping, as in the other loops.  Evaluates every
    epoch; returns tbhooks' last evaluation metrics (``loss``, ``accuracy``).
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from tbhooks.integrations.transformers import TbhooksCallback

    generator = getattr(train_loader, "generator", None)
    args = TrainingArguments(
        output_dir=str(logdir),
        num_train_epochs=epochs,
        per_device_train_batch_size=train_loader.batch_size or 1,
        per_device_eval_batch_size=test_loader.batch_size or 1,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        seed=generator.initial_seed() % 2**32 if generator is not None else 0,
    )
    callback = TbhooksCallback(logdir=logdir, **options)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(train_loader.dataset),
        eval_dataset=TokenDataset(test_loader.dataset),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # HF would print every log dict; the demo prints its own lines
    with callback:
        trainer.train()
    return dict(callback.hooks.last_metrics) if callback.hooks is not None else {}
