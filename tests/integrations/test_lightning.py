"""InvarianceMonitor and the metric classes with a real lightning.Trainer on the CPU (1 process and DDP with 2)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchinvariance as ti

pl = pytest.importorskip("lightning.pytorch", reason='the Lightning extra: pip install "torchinvariance[lightning]"')
from torchinvariance.integrations.lightning import InvarianceMonitor  # noqa: E402

GROUP = ti.get_group("rotation", order=4)
ROOT = Path(__file__).resolve().parents[2]


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(3, (n,), generator=g))


class Tiny(pl.LightningModule):
    """A small classifier with a BatchNorm (whose statistics a measurement must not change) and a logged LI metric."""

    def __init__(self, log_metric=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.log_metric = log_metric
        if log_metric:  # self.log(name, metric) with a torchinvariance metric, as with any torchmetrics metric
            self.val_li = ti.LogitInvariance(self, GROUP)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
        if self.log_metric:
            self.val_li.update(x)
            self.log("val_li", self.val_li)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, monitor, **kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        callbacks=[monitor],
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def _loaders(n_val=12):
    return DataLoader(_data(32, 0), batch_size=8), DataLoader(_data(n_val, 1), batch_size=4)


def test_monitor_logs_the_metrics_of_the_validation_data(tmp_path):
    monitor = InvarianceMonitor(GROUP, metrics=("li", "di"), max_samples=10, per_element=True)
    model = Tiny()
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor).fit(model, train, val)
    x = val.dataset.tensors[0][:10]  # max_samples: the first 10 validation samples
    with torch.no_grad():
        li = ti.logit_invariance(model, GROUP, x)
        di = ti.distribution_invariance(model, GROUP, x)
        li_terms = ti.logit_invariance(model, GROUP, x, reduction="none")
    metrics = _callback_metrics(model)
    np.testing.assert_allclose(metrics["invariance/li"], li.item(), rtol=1e-5)
    np.testing.assert_allclose(metrics["invariance/di"], di.item(), rtol=1e-5)
    np.testing.assert_allclose(metrics["invariance/li/rot90"], li_terms[1].mean().item(), rtol=1e-5)
    assert metrics["invariance/li"] > 1e-4  # the model is not invariant: the check can fail
    frame = pytest.importorskip("pandas").read_csv(next(tmp_path.rglob("metrics.csv")))
    assert frame["invariance/li"].notna().sum() == 2  # one value per epoch, none from the sanity check


def _callback_metrics(model):
    return {k: float(v) for k, v in model.trainer.callback_metrics.items()}


def test_every_n_epochs_eval_mode_buffers_and_validate(tmp_path):
    monitor = InvarianceMonitor(GROUP, metrics=("li",), every_n_epochs=2)
    model = Tiny()
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor, max_epochs=3).fit(model, train, val)
        frame = pytest.importorskip("pandas").read_csv(next(tmp_path.rglob("metrics.csv")))
        measured = frame.loc[frame["invariance/li"].notna(), "epoch"].tolist()
        assert measured == [1]  # epochs are counted from 0 in the logs: the 2nd epoch only
        # trainer.validate always measures; the measurement leaves the BatchNorm statistics alone
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = _trainer(tmp_path / "validate", monitor)
        trainer.validate(model, val, verbose=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        li = ti.logit_invariance(model, GROUP, val.dataset.tensors[0])
    np.testing.assert_allclose(float(trainer.callback_metrics["invariance/li"]), li.item(), rtol=1e-5)


def test_saliency_in_the_monitor_and_self_log_of_a_metric(tmp_path):
    monitor = InvarianceMonitor(GROUP, metrics=("si",), max_samples=3, saliency=ti.SaliencyConfig(n_steps=4))
    model = Tiny(log_metric=True)
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor, max_epochs=1).fit(model, train, val)
    x = val.dataset.tensors[0]
    si = ti.saliency_invariance(model, GROUP, x[:3], n_steps=4)
    with torch.no_grad():
        li = ti.logit_invariance(model, GROUP, x)
    metrics = _callback_metrics(model)
    np.testing.assert_allclose(metrics["invariance/si"], si.item(), rtol=1e-5)
    np.testing.assert_allclose(metrics["val_li"], li.item(), rtol=1e-5)  # self.log(name, metric): whole epoch
    # the metric is a child of the LightningModule but holds the module without registering it (no cycle)
    assert "val_li.li_count" in model.state_dict() and not any(".model." in k for k in model.state_dict())


def test_monitor_arguments():
    with pytest.raises(ValueError, match="metrics must be"):
        InvarianceMonitor(GROUP, metrics=("accuracy",))
    with pytest.raises(ValueError, match="every_n_epochs"):
        InvarianceMonitor(GROUP, every_n_epochs=0)
    with pytest.raises(ValueError, match="max_samples"):
        InvarianceMonitor(GROUP, max_samples=0)
    with pytest.raises(TypeError, match="Group"):
        InvarianceMonitor("rotation")
    with pytest.raises(TypeError, match="get_input"):
        from torchinvariance.integrations.lightning import default_input

        default_input({"image": torch.zeros(1)})


# ----------------------------------------------------------------------------- DDP: 2 gloo processes
@pytest.mark.slow
def test_monitor_under_ddp_two_processes(tmp_path):
    """strategy="ddp" re-runs its script for the second process: lightning_ddp_script.py, in a subprocess."""
    out = tmp_path / "ddp.json"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("lightning_ddp_script.py")), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2
    # each process measured half of the validation set; torchmetrics summed the states: the metric of all of it
    np.testing.assert_allclose(res["logged"]["invariance/li"], res["li"], rtol=1e-5)
    np.testing.assert_allclose(res["logged"]["invariance/di"], res["di"], rtol=1e-5)
    assert abs(res["logged"]["invariance/li"] - res["li_rank0_alone"]) > 1e-4 * res["li"]  # the sync is not vacuous
