"""What the audit writes into --out (issue 22 items 3, 4, 16; issue 21 item 2): an interrupted run leaves no stale
report, planted symlinks are not followed, non-finite metrics are reported instead of crashing, the verdict."""

import json
import os

import pytest

import torchinvariance.audit._run as audit_run
from torchinvariance.audit import main

MLP_KWARGS = '{"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}'


def _argv(out, *groups, **given):
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": MLP_KWARGS,
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(out),
    }
    base.update({f"--{k.replace('_', '-')}": str(v) for k, v in given.items()})
    argv = [f"{k}={v}" for k, v in base.items()]
    for g in groups or ("rotation:order=4",):
        argv += ["--group", g]
    return [*argv, "--no-progress"]


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------------ item 3: Ctrl-C into an existing --out
def test_interrupted_run_leaves_no_stale_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x"))
    assert rc == 0, err
    before = _files(out)
    assert {"report.json", "report.md", "rotation-order4_elements.png", "flip-axisx_elements.png"} == set(before)

    calls = []
    evaluate = audit_run._evaluate

    def interrupted(*args, **kwargs):  # Ctrl-C while the second group is measured
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(audit_run, "_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))  # other numbers, other figures
    after = _files(out)
    assert "report.json" not in after and "report.md" not in after  # clearly absent, not the old one
    # nothing of the interrupted run was written: the old figures are the old ones, no temp files are left
    assert after == {k: v for k, v in before.items() if not k.startswith("report.")}


def test_interrupted_while_writing_leaves_no_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x"))
    assert rc == 0, err
    old_report = json.loads((out / "report.json").read_text())
    writes = []
    atomic_write = audit_run._atomic_write

    def interrupted(path, data):  # Ctrl-C after the first figure was replaced
        writes.append(path.name)
        if len(writes) == 2:
            raise KeyboardInterrupt
        atomic_write(path, data)

    monkeypatch.setattr(audit_run, "_atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))
    assert writes == ["rotation-order4_elements.png", "flip-axisx_elements.png"]  # figures first, report last
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    assert sorted(p.name for p in out.iterdir()) == ["flip-axisx_elements.png", "rotation-order4_elements.png"]
    monkeypatch.setattr(audit_run, "_atomic_write", atomic_write)
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))
    assert rc == 0, err
    new_report = json.loads((out / "report.json").read_text())
    assert new_report["data"]["samples"] == 6 and old_report["data"]["samples"] == 4


def test_report_is_whole_after_a_successful_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    for seed in (0, 1):
        rc, _, err = _run(capsys, _argv(out, seed=seed))
        assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "rotation-order4_elements.png"]
    assert oct(os.stat(out / "report.json").st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ item 4: symlinks planted in --out
@pytest.mark.parametrize("dangling", [False, True])
def test_planted_symlinks_are_replaced_not_followed(tmp_path, capsys, dangling):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    names = ["report.json", "report.md", "rotation-order4_elements.png"]
    for name in names:
        target = outside / f"victim-{name}"
        if not dangling:
            target.write_text(f"precious {name}")
        (out / name).symlink_to(target)
    rc, _, err = _run(capsys, _argv(out))
    assert rc == 0, err
    for name in names:
        target = outside / f"victim-{name}"
        if dangling:
            assert not target.exists(), f"{name}: the audit wrote through a dangling symlink to {target}"
        else:
            assert target.read_text() == f"precious {name}", f"{name}: the audit overwrote {target}"
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert json.loads((out / "report.json").read_text())["groups"][0]["group"] == "rotation:order=4"
    assert (out / "rotation-order4_elements.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in outside.iterdir()) == ([] if dangling else [f"victim-{n}" for n in sorted(names)])


def test_report_path_that_is_a_folder_is_refused_before_measuring(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)
    rc, _, err = _run(capsys, _argv(out))
    assert rc == 2 and "report.json is a folder" in err, err
