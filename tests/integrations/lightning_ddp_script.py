"""Run by tests/integrations/test_lightning.py: InvarianceMonitor under strategy="ddp" with 2 CPU processes (gloo).

Lightning's "ddp" strategy starts the second process by running this script again, so it must be a script, not a
test function. Rank 0 writes the logged values and the references computed on the whole validation set to the
JSON file named on the command line.
"""

import json
import sys
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchinvariance as ti
from torchinvariance.integrations.lightning import InvarianceMonitor

GROUP = ti.get_group("rotation", order=4)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(3, (n,), generator=g))


def main(out: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    model = Tiny()
    val = DataLoader(_data(16, 1), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[InvarianceMonitor(GROUP, metrics=("li", "di"))],
    )
    trainer.fit(model, DataLoader(_data(32, 0), batch_size=8), val)
    if trainer.global_rank == 0:
        x = val.dataset.tensors[0]
        with torch.no_grad():
            result = {
                "logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "li": ti.logit_invariance(model, GROUP, x).item(),
                "di": ti.distribution_invariance(model, GROUP, x).item(),
                "li_rank0_alone": ti.logit_invariance(model, GROUP, x[[0, 2, 4, 6, 8, 10, 12, 14]]).item(),
                "world_size": trainer.world_size,
            }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
