"""InvarianceMonitor and the metric classes with a real lightning.Trainer on the CPU (1 process and DDP with 2)."""

import copy
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


def test_an_epoch_without_measured_samples_logs_nothing_and_does_not_crash(tmp_path):
    """get_input selecting no sample in any batch (a class absent from the validation data): the epoch logs no
    invariance value; it raised 'LogitInvariance.compute() called before any update()' at the epoch end."""
    monitor = InvarianceMonitor(GROUP, metrics=("li", "di"), get_input=lambda batch: batch[0][batch[1] == 99])
    model = Tiny()
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor, max_epochs=1).fit(model, train, val)
    metrics = _callback_metrics(model)
    assert "val_loss" in metrics and not any(k.startswith("invariance/") for k in metrics)


class TwoLoaders(Tiny):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def test_several_validation_dataloaders_are_measured_and_logged_each_on_its_own(tmp_path):
    """Two val loaders: one value per loader under Lightning's dataloader_idx suffix, each over up to max_samples of
    its loader (it logged one 'invariance/li', the mean over the first loader's 6 samples, shown for both)."""
    monitor = InvarianceMonitor(GROUP, metrics=("li",), max_samples=6, per_element=True)
    model = TwoLoaders()
    loaders = [DataLoader(_data(8, 1), batch_size=4), DataLoader(_data(8, 2), batch_size=4)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor).validate(model, loaders, verbose=False)
    metrics = _callback_metrics(model)
    assert "invariance/li" not in metrics
    values = []
    for idx, loader in enumerate(loaders):
        x = loader.dataset.tensors[0][:6]
        with torch.no_grad():
            li = ti.logit_invariance(model, GROUP, x)
            rot90 = ti.logit_invariance(model, GROUP, x, reduction="none")[1].mean()
        np.testing.assert_allclose(metrics[f"invariance/li/dataloader_idx_{idx}"], li.item(), rtol=1e-5)
        np.testing.assert_allclose(metrics[f"invariance/li/rot90/dataloader_idx_{idx}"], rot90.item(), rtol=1e-5)
        values.append(li.item())
    assert abs(values[0] - values[1]) > 1e-3  # two data sets, two values: the check can fail


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


# ----------------------------------------------------------------------------- reuse, continuous groups, early errors
def test_a_monitor_reused_with_a_second_model_measures_that_model(tmp_path):
    """Issue 22 item 1: the metrics stayed bound to the first LightningModule and logged its values for the second."""
    monitor = InvarianceMonitor(GROUP, metrics=("li", "di"))
    first, second = Tiny(), Tiny()
    with torch.no_grad():
        second.net[-1].weight.mul_(30.0)  # a model whose LI is about 900 times the first's
    train, val = _loaders()
    x = val.dataset.tensors[0]
    logged = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        for i, model in enumerate((first, second)):
            _trainer(tmp_path / str(i), monitor, max_epochs=1).fit(model, train, val)
            with torch.no_grad():
                li = ti.logit_invariance(model, GROUP, x).item()
                di = ti.distribution_invariance(model, GROUP, x).item()
            metrics = _callback_metrics(model)
            np.testing.assert_allclose(metrics["invariance/li"], li, rtol=1e-5)
            np.testing.assert_allclose(metrics["invariance/di"], di, rtol=1e-5)
            logged.append(metrics["invariance/li"])
        # and back to the first model, with trainer.validate
        trainer = _trainer(tmp_path / "again", monitor)
        trainer.validate(first, val, verbose=False)
    with torch.no_grad():
        li = ti.logit_invariance(first, GROUP, x).item()
    np.testing.assert_allclose(float(trainer.callback_metrics["invariance/li"]), li, rtol=1e-5)
    assert logged[1] > 10 * logged[0]  # the two models differ: logging the first's value again would fail


def test_monitor_on_so2_with_drawn_elements_matches_a_per_element_loop(tmp_path):
    so2 = ti.get_group("so2")
    monitor = InvarianceMonitor(so2, metrics=("li",), elements=3, seed=2, per_element=True)
    angles = sorted(so2.sample(3, generator=torch.Generator().manual_seed(2)))
    assert monitor.elements == angles and monitor.element_names == [so2.element_name(a) for a in angles]
    model = Tiny()
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _trainer(tmp_path, monitor, max_epochs=1).fit(model, train, val)
    x = val.dataset.tensors[0].double()
    reference = copy.deepcopy(model).double().eval()
    with torch.no_grad():  # an explicit loop over the angles and the samples, in float64
        fx = reference(x)
        per_angle = [
            np.mean([0.5 * float(((fx[b] - f[b]) ** 2).sum()) for b in range(len(x))])
            for f in (reference(so2.act(a, x)) for a in angles)
        ]
    metrics = _callback_metrics(model)
    for a, ref in zip(angles, per_angle):
        np.testing.assert_allclose(metrics[f"invariance/li/{so2.element_name(a)}"], ref, rtol=1e-4)
    np.testing.assert_allclose(metrics["invariance/li"], np.mean(per_angle), rtol=1e-4)
    assert min(per_angle) > 1e-4  # not invariant: a check on the wrong angles would fail


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((GROUP,), {"elements": [7]}, ValueError, "elements 0..3"),
        ((ti.get_group("so2"),), {}, ValueError, "continuous: pass elements="),
        ((ti.get_group("so2"),), {"elements": 0}, ValueError, "k >= 1"),
        ((GROUP,), {"elements": 2, "seed": -3}, ValueError, "seed must be an int"),
        ((GROUP,), {"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ((GROUP,), {"chunk_size": 0, "metrics": ("si",)}, ValueError, "chunk_size must be a positive int"),
        ((GROUP,), {"saliency": {"n_steps": 4}}, TypeError, "saliency must be a SaliencyConfig"),
        ((GROUP,), {"elements": "rot90"}, TypeError, "elements must be a sequence"),
        ((GROUP,), {"prefix": None}, TypeError, "prefix must be a str prepended to the logged names.*got None"),
        (("rotation",), {}, TypeError, r"got the string 'rotation'; build the group first: ti\.get_group"),
    ],
)
def test_monitor_rejects_bad_arguments_when_built_not_in_fit(args, kwargs, error, match):
    """Issue 22 item 23, issue 20 item 4: these were accepted and failed only once the Trainer ran."""
    with pytest.raises(error, match=match):
        InvarianceMonitor(*args, **kwargs)
