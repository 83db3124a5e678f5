"""The audit's inputs under bad use (issue 22 items 11, 17, 18, 19): clean errors, an honest report."""

import json

import pytest

from torchinvariance.audit import AuditConfig, AuditError, GroupSpec, main, run_audit

MLP_KWARGS = '{"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}'


def _argv(tmp_path, **given):
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": MLP_KWARGS,
        "--group": "rotation:order=4",
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(tmp_path / "out"),
    }
    base.update({f"--{k.replace('_', '-')}": str(v) for k, v in given.items()})
    return [f"{k}={v}" for k, v in base.items()] + ["--no-progress"]  # k=v: values such as -inf:1 start with -


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ item 11: --normalize
@pytest.mark.parametrize("spec", ["nan:1", "0:inf", "inf:1", "0:nan", "0:-inf", "-inf:1"])
def test_normalize_rejects_non_finite_values(tmp_path, capsys, spec):
    rc, _, err = _run(capsys, _argv(tmp_path, normalize=spec))
    assert rc == 2
    assert f"--normalize {spec!r}" in err and "finite" in err, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_normalize_non_finite_rejected_from_python_too(tmp_path):
    """run_audit with an AuditConfig built by hand (no parse_args) checks the same, also for --data random."""
    cfg = AuditConfig(
        model="torchinvariance.models:MLP",
        model_kwargs=json.loads(MLP_KWARGS),
        groups=(GroupSpec.parse("rotation:order=4"),),
        input_shape=(1, 8, 8),
        samples=4,
        out=tmp_path / "out",
        normalize="nan:1",
        progress=False,
    )
    with pytest.raises(AuditError, match="finite"):
        run_audit(cfg)


def test_random_data_report_says_normalization_was_not_applied(tmp_path, capsys):
    rc, _, err = _run(capsys, _argv(tmp_path, normalize="standardize"))
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["normalize"] == "none"
    assert report["data"]["normalize_requested"] == "standardize"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "normalize none (--normalize standardize not applied" in md
    assert "normalize standardize," not in md


def test_applied_normalization_is_reported_as_applied(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    rc, _, err = _run(capsys, _argv(tmp_path, normalize="0.5:0.25", data=f"folder:{folder}"))
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["normalize"] == report["data"]["normalize_requested"] == "0.5:0.25"
    assert "not applied" not in (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------ item 17: a factory that raises
FACTORIES = """
import torch


def runtime(**kwargs):
    raise RuntimeError("CUDA out of memory while building")


def value(**kwargs):
    raise ValueError("num_classes must be even")


def oserror(**kwargs):
    raise FileNotFoundError("weights.bin not found")


class Rounded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 3)

    def forward(self, x):
        return (100 * self.lin(x.flatten(1))).round().long()


class OneLogit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 1)

    def forward(self, x):
        return self.lin(x.flatten(1))
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "audit_factories.py").write_text(FACTORIES)
    (tmp_path / "audit_broken_module.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("runtime", "RuntimeError: CUDA out of memory while building"),
        ("value", "ValueError: num_classes must be even"),
        ("oserror", "FileNotFoundError: weights.bin not found"),
    ],
)
def test_factory_that_raises_gives_a_clean_error(factories, capsys, factory, message):
    rc, _, err = _run(capsys, _argv(factories, model=f"audit_factories:{factory}", model_kwargs="{}"))
    assert rc == 2, err
    assert err.startswith("audit: error: ") and "Traceback" not in err
    assert f"'audit_factories:{factory}'" in err and message in err, err
    assert not (factories / "out" / "report.json").exists()


@pytest.mark.parametrize(
    ("factory", "metrics", "message"),
    [  # before: GroupAveraged's 'mean(): could not infer output dtype' / log_softmax's 'not implemented for Long'
        ("Rounded", "di,li", "the model returns torch.int64 outputs (1, 3) for one input; the audit needs floating"),
        # before: worst/flip raised robustness's ValueError traceback; di,li gave DI 0 and consistency 1 regardless
        ("OneLogit", "di,li", "the model returns (1, 1) for one input: one logit"),
        ("OneLogit", "flip", "at least 2 classes"),
    ],
)
def test_model_outputs_that_are_not_class_logits(factories, capsys, factory, metrics, message):
    rc, _, err = _run(capsys, _argv(factories, model=f"audit_factories:{factory}", model_kwargs="{}", metrics=metrics))
    assert rc == 2, err
    assert err.startswith("audit: error: ") and "Traceback" not in err
    assert message in err, err
    assert not (factories / "out" / "report.json").exists()


def test_module_that_raises_on_import_gives_a_clean_error(factories, capsys):
    rc, _, err = _run(capsys, _argv(factories, model="audit_broken_module:f"))
    assert rc == 2
    assert "importing module 'audit_broken_module' raised RuntimeError: broken at import" in err, err


# ------------------------------------------------------------------ item 18: an unreadable image
def _images(folder, n=4):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")


@pytest.mark.parametrize("kind", ["not-an-image", "truncated", "empty"])
def test_corrupt_image_in_folder_names_the_file(tmp_path, capsys, kind):
    folder = tmp_path / "images"
    _images(folder)
    bad = folder / "2.png"
    if kind == "not-an-image":
        bad.write_text("this is not a PNG")  # PIL.UnidentifiedImageError
    elif kind == "truncated":
        from PIL import Image

        Image.effect_noise((64, 64), 50).save(bad)  # incompressible pixels: cutting the file cuts the image data
        bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header reads, decoding: OSError
    else:
        bad.write_bytes(b"")
    rc, _, err = _run(capsys, _argv(tmp_path, data=f"folder:{folder}"))
    assert rc == 2, err
    assert f"cannot read the image {bad}" in err and "remove or replace that file" in err, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_corrupt_image_beyond_samples_is_not_read(tmp_path, capsys):
    folder = tmp_path / "images"
    _images(folder, n=5)
    (folder / "4.png").write_text("not read: only the first --samples images are")
    rc, _, err = _run(capsys, _argv(tmp_path, data=f"folder:{folder}", samples=4))
    assert rc == 0, err


# ------------------------------------------------------------------ item 19: checkpoints that are not state_dicts
def _state(tmp_path, name, change):
    import torch

    import torchinvariance as ti

    state = ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=8).state_dict()
    change(state)
    torch.save(state, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text", "cannot be loaded with weights_only=True (KeyError"),
        ("binary", "cannot be loaded with weights_only=True (RuntimeError"),
        ("string-value", "entries hold something else than a tensor (e.g. ['features.1.weight: str'])"),
        ("int-value", "entries hold something else than a tensor (e.g. ['features.1.weight: int'])"),
        ("list", "holds a list, not a state_dict"),
    ],
)
def test_bad_checkpoint_gives_a_clean_error(tmp_path, capsys, content, message):
    import torch

    path = tmp_path / "model.pt"
    if content == "text":
        path.write_text("hello world\nthis is not a checkpoint\n")
    elif content == "binary":
        path.write_bytes(b"PK\x03\x04 not a zip archive")
    elif content == "string-value":
        path = _state(tmp_path, "model.pt", lambda s: s.__setitem__("features.1.weight", "hello"))
    elif content == "int-value":
        path = _state(tmp_path, "model.pt", lambda s: s.__setitem__("features.1.weight", 3))
    else:
        torch.save([1, 2, 3], path)
    rc, _, err = _run(capsys, _argv(tmp_path, checkpoint=path))
    assert rc == 2, err
    assert f"--checkpoint {path}" in err and message in err and "Traceback" not in err, err
