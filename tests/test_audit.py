"""python -m torchinvariance audit: a torchvision resnet18, a trained paper-style MLP, the data sources, the errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchinvariance as ti
from torchinvariance.audit import GroupSpec, main
from torchinvariance.audit._inputs import _fit

ROOT = Path(__file__).resolve().parents[1]
ROT = ti.get_group("rotation", order=4)
DATA = Path(os.environ.get("TORCHINVARIANCE_DATA", ROOT.parent / "shared" / "data"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_resnet18_from_torchvision_via_python_m(tmp_path):
    """The issue's example command, as a user runs it (a subprocess), on the CPU."""
    pytest.importorskip("torchvision")
    out = tmp_path / "audit"
    cmd = [sys.executable, "-m", "torchinvariance", "audit", "--model", "torchvision.models:resnet18"]
    cmd += ["--model-kwargs", '{"num_classes": 10}', "--group", "rotation:order=4", "--input-shape", "3,32,32"]
    cmd += ["--samples", "8", "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote report.json" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "rotation-order4_elements.png"]
    assert (out / "rotation-order4_elements.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["seconds"] < 60 and report["model"]["classes"] == 10 and report["data"]["labels"] is False
    (group,) = report["groups"]
    assert group["model"]["elements"] == ["rot0", "rot90", "rot180", "rot270"]
    assert "accuracy" not in group["model"]  # random data: no labels
    # an independent recomputation: the same seeded model and inputs through the functional metrics
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        di = ti.distribution_invariance(model, ROT, x).item()
        li_terms = ti.logit_invariance(model, ROT, x, reduction="none")
    np.testing.assert_allclose(group["summary"]["di"]["model"], di, rtol=1e-4)
    np.testing.assert_allclose(group["model"]["li"]["per_element"], li_terms.mean(1).numpy(), rtol=1e-4)
    assert group["summary"]["li"]["model"] > 1e-4  # an untrained resnet is not invariant: not vacuous
    assert group["summary"]["li"]["group_averaged"] < 1e-9 and group["summary"]["di"]["group_averaged"] < 1e-6
    assert group["summary"]["consistency_orbit"]["group_averaged"] == 1.0
    assert group["summary"]["li"]["random_inputs"] > 0
    md = (out / "report.md").read_text()
    assert "| LI |" in md and "group-averaged" in md and "![rotation-order4_elements.png]" in md


def _shapes_dataset(n_per_class, seed=0):
    """Four classes of 12x12 images: a bright bar in one of four places, plus noise (not rotation invariant)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(4):
        x = 0.2 * torch.rand(n_per_class, 1, 12, 12, generator=g)
        if c == 0:
            x[:, :, 2:4, 2:10] += 0.8
        elif c == 1:
            x[:, :, 8:10, 2:10] += 0.8
        elif c == 2:
            x[:, :, 2:10, 2:4] += 0.8
        else:
            x[:, :, 5:7, 5:7] += 0.8
        xs.append(x.clamp(0, 1))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def _train(model, x, y, nu=0.0, steps=60):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    reg = ti.InvarianceLoss(model, ROT)
    for _ in range(steps):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y) + (nu * reg(x, logits=logits) if nu else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _write_folder(root, x, y):
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().byte().numpy()).save(folder / f"{i:03d}.png")


def test_trained_paper_mlp_checkpoint_with_labels_and_si(tmp_path, capsys):
    pytest.importorskip("PIL")
    x, y = _shapes_dataset(16)
    torch.manual_seed(0)
    da = _train(ti.MLP(in_shape=(1, 12, 12), num_classes=4, hidden=32), x, y)
    torch.manual_seed(0)
    ir = _train(ti.MLP(in_shape=(1, 12, 12), num_classes=4, hidden=32), x, y, nu=10.0)
    _write_folder(tmp_path / "images", x, y)
    reports = {}
    for name, model in (("da", da), ("ir", ir)):
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
        rc, _, err = _run(
            capsys,
            "--model", "torchinvariance.models:MLP",
            "--model-kwargs", '{"in_shape": [1, 12, 12], "num_classes": 4, "hidden": 32}',
            "--checkpoint", tmp_path / f"{name}.pt",
            "--group", "rotation:order=4", "--group", "flip:axis=x",
            "--data", f"folder:{tmp_path / 'images'}", "--input-shape", "1,12,12", "--samples", "64",
            "--metrics", "di,li,si", "--si-steps", "8", "--no-progress", "--out", tmp_path / name,
        )  # fmt: skip
        assert rc == 0, err
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    rot = {k: r["groups"][0] for k, r in reports.items()}
    assert [g["group"] for g in reports["da"]["groups"]] == ["rotation:order=4", "flip:axis=x"]
    assert sorted(p.name for p in (tmp_path / "da").glob("*.png")) == [
        "flip-axisx_elements.png", "flip-axisx_saliency.png", "rotation-order4_elements.png",
        "rotation-order4_saliency.png",
    ]  # fmt: skip
    # the data went through PNG files (uint8) and back: compare with the model on the same images
    xq = (x * 255).round() / 255
    with torch.no_grad():
        acc = np.stack([(da(ROT.act(g, xq)).argmax(1) == y).double().numpy() for g in ROT.elements()])
        li = ti.logit_invariance(da, ROT, xq).item()
    np.testing.assert_allclose(rot["da"]["model"]["accuracy"]["per_element"], acc.mean(1), atol=1e-12)
    np.testing.assert_allclose(rot["da"]["summary"]["li"]["model"], li, rtol=1e-5)
    assert rot["da"]["model"]["accuracy"]["per_element"][0] > 0.9  # trained: it learned the task
    si = ti.saliency_invariance(da, ROT, xq, n_steps=8).item()
    np.testing.assert_allclose(rot["da"]["summary"]["si"]["model"], si, rtol=1e-5)
    # the regularized model is the more invariant one, and the group-averaged reference is exactly invariant
    assert rot["ir"]["summary"]["li"]["model"] < rot["da"]["summary"]["li"]["model"] / 5
    assert rot["da"]["summary"]["si"]["group_averaged"] > 0.999
    assert reports["da"]["data"]["labels"] is True and reports["da"]["data"]["samples"] == 64


def test_mnist_from_torchvision_layout(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    if not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {DATA} (set TORCHINVARIANCE_DATA)")
    torch.manual_seed(0)
    torch.save(ti.MLP(in_shape=(1, 36, 36), num_classes=9, hidden=16).state_dict(), tmp_path / "m.pt")
    rc, _, err = _run(
        capsys,
        "--model", "torchinvariance.models:MLP",
        "--model-kwargs", '{"in_shape": [1, 36, 36], "num_classes": 9, "hidden": 16}',
        "--checkpoint", tmp_path / "m.pt", "--group", "rotation:order=4", "--data", "mnist", "--data-root", DATA,
        "--input-shape", "1,36,36", "--samples", "40", "--no-progress", "--out", tmp_path / "out",
    )  # fmt: skip
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # the independent reader: torchvision's MNIST test split; the 9-class model skips the digit 9
    test = torchvision.datasets.MNIST(str(DATA), train=False, download=False)
    labels = test.targets
    keep = torch.nonzero(labels < 9).flatten()[:40]
    assert report["data"]["skipped_labels_outside_the_model"] == int((labels[: int(keep[-1]) + 1] == 9).sum())
    x = _fit(test.data[keep].unsqueeze(1).float() / 255, (1, 36, 36), "mnist")
    model = ti.MLP(in_shape=(1, 36, 36), num_classes=9, hidden=16)
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == labels[keep]).double().mean().item()
    assert report["groups"][0]["model"]["accuracy"]["per_element"][0] == pytest.approx(acc)
    assert x[:, :, :4].abs().max() == 0  # centred zero padding, 28 -> 36 as in the paper


def test_more_samples_than_the_data_have_says_so_and_counts_every_skipped_one(tmp_path, capsys):
    """--samples 20000 of a 3-class model on MNIST: 3147 samples, '6849 skipped' (the last 4 images, digits >= 3,
    were not counted, though read) and no word that fewer than asked were audited."""
    torchvision = pytest.importorskip("torchvision")
    if not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {DATA} (set TORCHINVARIANCE_DATA)")
    rc, out, err = _run(
        capsys,
        "--model", "torchinvariance.models:MLP", "--model-kwargs", '{"in_shape": [1, 8, 8], "num_classes": 3}',
        "--group", "flip", "--data", "mnist", "--data-root", DATA, "--input-shape", "1,8,8", "--samples", "20000",
        "--metrics", "li", "--no-progress", "--out", tmp_path / "out",
    )  # fmt: skip
    assert rc == 0, err
    labels = torchvision.datasets.MNIST(str(DATA), train=False, download=False).targets
    kept, skipped = int((labels < 3).sum()), int((labels >= 3).sum())
    d = json.loads((tmp_path / "out" / "report.json").read_text())["data"]
    assert (d["samples"], d["samples_requested"], d["skipped_labels_outside_the_model"]) == (kept, 20000, skipped)
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{kept} samples of shape (1, 8, 8) (all there are: --samples asked for 20,000)" in md
    assert f"({skipped} samples skipped: label not a class of the model)" in md
    assert f"audit: warning: --samples 20000, but mnist has {kept} usable samples" in out


def test_group_spec_and_fit():
    spec = GroupSpec.parse("translation:order=3,axis=x")
    assert (
        spec.name == "translation"
        and spec.params == {"order": 3, "axis": "x"}
        and spec.slug == "translation-order3-axisx"
    )
    assert GroupSpec.parse("dihedral").params == {}
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    fitted = _fit(x, (3, 4, 3), "test")
    assert fitted.shape == (1, 3, 4, 3) and torch.equal(fitted[0, 2, 1:3, 0:2], x[0, 0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "torchvision.models"], "expected MODULE:FACTORY"),
        (["--model", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--model", "torchinvariance.models:Nope"], "has no attribute 'Nope'"),
        (["--model-kwargs", "{num_classes: 3}"], "not valid JSON"),
        (["--model-kwargs", '{"nope": 3}'], "could not be built"),
        (["--input-shape", "1,8"], "C,H,W"),
        (["--input-shape", "1,8,6", "--model-kwargs", '{"in_shape": [1, 8, 6]}'], "rotations need square images"),
        (["--group", "nosuchgroup"], "unknown group 'nosuchgroup'; available"),
        (["--group", "so2"], "continuous"),
        (["--metrics", "di,acc"], "--metrics must be"),
        (["--data", "cifar"], "--data must be"),
        (["--data", "mnist", "--data-root", "{tmp}/empty"], "nothing is downloaded"),
        (["--normalize", "0.5"], "--normalize"),
        (["--out", "{tmp}/file"], "not a writable folder"),
        (["--checkpoint", "{tmp}/missing.pt"], "no such file"),
        (["--checkpoint", "{tmp}/pickled.pt"], "weights_only=True"),
        (["--checkpoint", "{tmp}/other.pt"], "does not match the model"),
    ],
)
def test_errors_name_the_fix(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    torch.save(ti.MLP(in_shape=(1, 8, 8), num_classes=5, hidden=8).state_dict(), tmp_path / "other.pt")
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": '{"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}',
        "--group": "rotation:order=4",
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(tmp_path / "out"),
    }
    given = dict(zip(args[::2], [a.replace("{tmp}", str(tmp_path)) for a in args[1::2]]))
    argv = [v for k, val in {**base, **given}.items() for v in (k, val)] + ["--no-progress"]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    assert message in err, err


def test_python_m_torchinvariance_usage(capsys):
    from torchinvariance.__main__ import main as top

    assert top([]) == 2 and "audit" in capsys.readouterr().out
    assert top(["--help"]) == 0
    assert top(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        top(["audit", "--help"])
    assert "--checkpoint" in capsys.readouterr().out


def test_rotation_of_order_8_names_so2_angles(tmp_path, capsys):
    """``--group rotation:order=8`` is not exact on the pixel grid: a clean error naming so2's angles (issue 20.6)."""
    rc, _, err = _run(
        capsys,
        *("--model", "torchinvariance.models:MLP", "--model-kwargs", '{"in_shape": [1, 8, 8], "num_classes": 3}'),
        *("--group", "rotation:order=8", "--input-shape", "1,8,8", "--samples", "2", "--out", tmp_path / "out"),
    )
    assert rc != 0 and "Traceback" not in err
    assert "--group 'rotation:order=8'" in err and "so2:angles=0,45,90,135,180,225,270,315" in err
