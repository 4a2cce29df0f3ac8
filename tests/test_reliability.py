"""Faults survived: SIGKILL and resume, DDP on CPU, checkpoint safety, column mismatch.

The README's Reliability table points at these tests (and at the older ones it names).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import GUARD, cohort_config, guard_module, make_tiny_cohort
from conftest import SMALL as SMALL_MODEL

from gazimed_lab.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from gazimed_lab.cli import main
from gazimed_lab.config import save_config
from gazimed_lab.runner import predict_manifest, train_and_evaluate

SMALL = SMALL_MODEL


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary.pop("fit_seconds")
    return summary


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    manifest = make_tiny_cohort(tmp / "cohort")
    cfg = cohort_config(manifest, tmp, *SMALL, "trainer.max_epochs=1", "data.augment=false")
    return train_and_evaluate(cfg), manifest, tmp


# --------------------------------------------------------------- SIGKILL, resume
KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import pytorch_lightning as pl
    from gazimed_lab.config import load_config
    from gazimed_lab.runner import train_and_evaluate

    class SigkillAt(pl.Callback):
        """SIGKILL this process before a given training batch: no cleanup, no hooks."""
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    train_and_evaluate(load_config(sys.argv[1]), callbacks=[SigkillAt()])
''')


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tiny_cohort, tmp_path):
    # Augmentation, dropout, modality and feature dropout all on: every random draw
    # must come out the same after the resume.
    settings = [*SMALL, "trainer.max_epochs=4", "data.batch_size=4", "data.augment=true",
                "data.aug_prob=1.0", "trainer.deterministic=true"]
    cfg = cohort_config(tiny_cohort, tmp_path / "killed", *settings)
    save_config(cfg, tmp_path / "killed.yaml")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "killed.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = Path(cfg.system.run_dir)
    assert not (run / "metrics.json").exists()
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1  # killed in epoch 2, after its first batch

    resumed = train_and_evaluate(cfg, resume="last")
    reference = train_and_evaluate(cohort_config(tiny_cohort, tmp_path / "straight", *settings))

    assert resumed.epochs == reference.epochs == 4
    # The final weights are bit-identical (not only the chosen checkpoint's scores).
    last = [torch.load(r.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for r in (resumed, reference)]
    assert last[0].keys() == last[1].keys()
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    assert _summary(resumed.run_dir) == _summary(reference.run_dir)
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(resumed.predictions[split], reference.predictions[split])
    # The training log holds every epoch once, the killed one included, as logged
    # by the uninterrupted run.
    log = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
    straight = pd.read_csv(reference.run_dir / "logs" / "csv" / "metrics.csv")
    assert sorted(log.dropna(subset=["val/loss"])["epoch"].astype(int)) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(log, straight, check_like=True)  # column order aside


# ------------------------------------------------------------------ DDP on CPU
@pytest.mark.slow
@pytest.mark.parametrize("sessions", [False, True], ids=["subjects", "sessions"])
def test_two_process_ddp_matches_one_process_and_only_rank_zero_writes(tmp_path, sessions):
    # With sessions: training rows are sessions (shared out across the processes), the
    # evaluation splits score each subject's first session, metrics count subjects once.
    if sessions:
        from test_sessions import make_longitudinal_cohort

        manifest = make_longitudinal_cohort(tmp_path / "cohort", n=24)
    else:
        manifest = make_tiny_cohort(tmp_path / "cohort", n=24)
    common = [
        f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'cache'}", *SMALL,
        "trainer.max_epochs=3", "data.augment=false", "model.dropout=0.0",
        "model.modality_dropout=0.0", "model.clinical_feature_dropout=0.0",
        "trainer.accelerator=cpu", "trainer.deterministic=true",
        "data.val_fraction=0.25", "data.test_fraction=0.25",
    ]
    runs = {"one": ["data.batch_size=4", "trainer.devices=1"],
            "ddp": ["data.batch_size=2", "trainer.devices=2", "trainer.strategy=ddp"]}
    for name, extra in runs.items():
        env = _subprocess_env(
            PYTHONPATH=os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH"))
                                       if p),
            GAZIMED_GUARD_LOG=str(tmp_path / f"guard_{name}"), GAZIMED_GUARD_WRITES="1",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "gazimed_lab.cli", "train", *common, *extra,
             f"system.run_dir={tmp_path / name}"],
            capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    # Equal global batches (interleaved shares of one order, statistics all-reduced):
    # the two runs agree up to float rounding.
    one, ddp = _summary(tmp_path / "one"), _summary(tmp_path / "ddp")
    assert one["epochs"] == ddp["epochs"] == 3
    assert one["best_checkpoint"] == ddp["best_checkpoint"]
    for split in ("val", "test"):
        for key in ("auroc", "mae", "mse", "pearson", "accuracy"):
            assert ddp[split][key] == pytest.approx(one[split][key], abs=1e-4), (split, key)
        a = pd.read_csv(tmp_path / "one" / "predictions" / f"{split}.csv")
        b = pd.read_csv(tmp_path / "ddp" / "predictions" / f"{split}.csv")
        assert list(a["subject_id"]) == list(b["subject_id"])
        assert ("session_id" in a.columns) == sessions == ("session_id" in b.columns)
        if sessions:
            assert list(a["session_id"]) == list(b["session_id"])
        assert (a["score"] - b["score"]).abs().max() < 1e-4

    # Two processes ran; the second (LOCAL_RANK 1) wrote nothing into the run folder.
    records = guard_module().read_records(tmp_path / "guard_ddp")
    starts = {r["pid"]: r for r in records if r["event"] == "start"}
    ranks = {pid: r["local_rank"] for pid, r in starts.items()}
    assert sorted(ranks.values(), key=str) == ["1", None]
    run = str(tmp_path / "ddp")
    writes = [r for r in records if r["event"] == "write" and r["path"].startswith(run)]
    by_rank = {ranks[r["pid"]] for r in writes}
    assert by_rank == {None}, sorted({(str(ranks[r["pid"]]), r["path"]) for r in writes})
    assert any(r["path"].endswith("metrics.json") for r in writes)


@pytest.mark.slow  # a 2-fold cv, one epoch each, in two processes: about 40 s
def test_cv_under_ddp_keeps_its_folder_on_rank_zero(tmp_path):
    # Lightning starts the second process by running the command again, during the first
    # fold's fit: it runs the cv loop too. It must neither write the cv bookkeeping nor
    # clear the fold rank 0 is training (it did: fold 0 lost its config, splits and
    # environment, and the second process failed on the summary).
    manifest = make_tiny_cohort(tmp_path / "cohort", n=24)
    env = _subprocess_env(
        PYTHONPATH=os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH")) if p),
        GAZIMED_GUARD_LOG=str(tmp_path / "guard"), GAZIMED_GUARD_WRITES="1")
    run = tmp_path / "cv"
    proc = subprocess.run(
        [sys.executable, "-m", "gazimed_lab.cli", "cv", "--folds", "2", "--run-dir", str(run),
         "--n-boot", "20", f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'cache'}",
         *SMALL, "trainer.max_epochs=1", "data.augment=false", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gazimed-lab cv: error" not in proc.stderr, proc.stderr[-3000:]  # no process failed
    for k in (0, 1):
        fold = run / "folds" / str(k)
        for name in ("config.yaml", "environment.txt", "metrics.json", "splits/train.csv",
                     "predictions/test.csv"):
            assert (fold / name).is_file(), f"fold {k} lacks {name}"
    assert (run / "metrics.json").is_file() and (run / "folds.csv").is_file()
    records = guard_module().read_records(tmp_path / "guard")
    ranks = {r["pid"]: r["local_rank"] for r in records if r["event"] == "start"}
    assert sorted(ranks.values(), key=str) == ["1", None]
    secondary = sorted({r["path"] for r in records if r["event"] == "write"
                        and ranks[r["pid"]] is not None and r["path"].startswith(str(run))})
    assert secondary == []


def test_secondary_processes_are_told_by_their_rank_variables(monkeypatch):
    from gazimed_lab.paths import NODE_VARIABLES, RANK_VARIABLES, is_secondary_process

    for name in (*RANK_VARIABLES, *NODE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    assert not is_secondary_process()
    monkeypatch.setenv("SLURM_PROCID", "2")  # srun's third task
    assert is_secondary_process()
    monkeypatch.setenv("LOCAL_RANK", "0")  # read before SLURM_PROCID, as Lightning does
    assert not is_secondary_process()
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second node
    assert is_secondary_process()
    monkeypatch.setenv("RANK", "0")  # torchrun's global rank decides alone
    assert not is_secondary_process()
    monkeypatch.setenv("RANK", "5")
    assert is_secondary_process()


STANDARDIZE_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from gazimed_lab.models.standardize import SubjectStandardize

    def work(rank, out):
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.manual_seed(0)
        x = torch.randn(6, 3, 5) * 0.05 + 4.0  # large mean, small spread: MNI-like
        weights = torch.randn(6, 3, 5)
        layer = SubjectStandardize(15).train()
        mine = x[rank::2].clone().requires_grad_(True)  # interleaved share
        y = layer(mine)
        (y * weights[rank::2]).sum().backward()
        torch.save({"y": y.detach(), "grad": mine.grad, "mean": layer.running_mean,
                    "var": layer.running_var}, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        mp.spawn(work, args=(sys.argv[1],), nprocs=2)
''')


def _spawn_two(tmp_path: Path, script_text: str) -> None:
    """Run a two-process gloo script (``argv``: output folder, a free port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "two_processes.py"
    script.write_text(script_text)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(port)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two spawned processes: about 20 s
def test_standardize_statistics_span_processes(tmp_path):
    _spawn_two(tmp_path, STANDARDIZE_SCRIPT)

    from gazimed_lab.models.standardize import SubjectStandardize

    torch.manual_seed(0)
    x = torch.randn(6, 3, 5) * 0.05 + 4.0
    weights = torch.randn(6, 3, 5)
    layer = SubjectStandardize(15).train()
    whole = x.clone().requires_grad_(True)
    y = layer(whole)
    (y * weights).sum().backward()
    for rank in (0, 1):
        part = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(part["y"], y.detach()[rank::2], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(part["grad"], whole.grad[rank::2], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(part["mean"], layer.running_mean)
        torch.testing.assert_close(part["var"], layer.running_var, atol=1e-6, rtol=1e-4)


RIDGE_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from gazimed_lab.models.ridge import RidgeFit

    def work(rank, out):
        dist.init_process_group("gloo", rank=rank, world_size=2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(13, 4, generator=g, dtype=torch.float64) * 3.0 + 5.0
        y = x @ torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64) + torch.randn(
            13, generator=g, dtype=torch.float64)
        mine = slice(rank, None, 2)  # interleaved shares of 7 and 6 rows
        fit = RidgeFit(4)
        fit.accumulate(x[mine][:3], y[mine][:3])  # in two parts, as batches come
        fit.accumulate(x[mine][3:], y[mine][3:])
        solution = fit.solve(standardize_target=True)
        torch.save({"coef": solution.coef, "intercept": solution.intercept,
                    "alpha": solution.alpha, "loo": solution.loo_mse, "rows": solution.rows,
                    "std": solution.target_std}, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        mp.spawn(work, args=(sys.argv[1],), nprocs=2)
''')


@pytest.mark.slow  # two spawned processes: about 15 s
def test_ridge_readout_fit_spans_processes(tmp_path):
    # Each process holds only its own rows; the sums and the leave-one-out errors are
    # all-reduced, so both processes solve the regression of all 13 rows.
    from gazimed_lab.models.ridge import RidgeFit

    _spawn_two(tmp_path, RIDGE_SCRIPT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 4, generator=g, dtype=torch.float64) * 3.0 + 5.0
    y = x @ torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64) + torch.randn(
        13, generator=g, dtype=torch.float64)
    whole = RidgeFit(4)
    whole.accumulate(x, y)
    expected = whole.solve(standardize_target=True)
    for rank in (0, 1):
        part = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert part["rows"] == 13
        assert part["alpha"] == expected.alpha
        torch.testing.assert_close(part["coef"], expected.coef)
        assert part["intercept"] == pytest.approx(expected.intercept, abs=1e-10)
        assert part["std"] == pytest.approx(expected.target_std, abs=1e-12)
        assert part["loo"] == pytest.approx(expected.loo_mse, rel=1e-9)


# ----------------------------------------------------------- checkpoint safety
@pytest.mark.slow
def test_checkpoint_with_pickled_code_is_refused(finished_run, tmp_path):
    result, _, _ = finished_run
    ckpt = torch.load(result.best_checkpoint, weights_only=True)
    ckpt["callback"] = subprocess.Popen  # any object that needs pickled code to load
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match=r"weights_only=True, so no pickled code runs.*evil"):
        load_checkpoint(evil)


@pytest.mark.slow
def test_truncated_or_foreign_checkpoint_is_named(finished_run, tmp_path):
    result, _, _ = finished_run
    data = result.best_checkpoint.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"complete torch checkpoint.*cut\.ckpt.*truncated"):
        read_checkpoint(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match=r"gazimed-lab checkpoint.*'epoch'.*foreign"):
        load_checkpoint(foreign)


@pytest.mark.slow
def test_weights_that_do_not_fit_their_config_are_named(finished_run, tmp_path):
    result, _, _ = finished_run
    ckpt = torch.load(result.best_checkpoint, weights_only=True)
    # the cpu-demo preset reads images through the regions pathway: fusion_dim has no
    # weights there, the clinical encoder's width does
    ckpt["hyper_parameters"]["cfg"]["model"]["clinical_out_dim"] = 24
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"weights must fit the config.*bad\.ckpt"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_resume_from_a_checkpoint_of_another_config_fails_clearly(finished_run, tmp_path,
                                                                  capsys):
    result, manifest, tmp = finished_run
    cfg = cohort_config(manifest, tmp_path, *SMALL, "model.embed_dim=24", "trainer.max_epochs=2")
    with pytest.raises(CheckpointError, match=r"model\.embed_dim: checkpoint 12, config 24"):
        train_and_evaluate(cfg, resume=result.best_checkpoint)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before writing anything
    code = main(["train", f"data.manifest={manifest}", f"data.cache_dir={tmp / 'cache'}",
                 f"system.run_dir={tmp_path / 'cli'}", *SMALL, "model.fusion_dim=64",
                 "--resume", str(result.best_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "model.fusion_dim: checkpoint 32, config 64" in err
    assert "Traceback" not in err


# ------------------------------------------------- predict-time column mismatch
@pytest.mark.slow
def test_predict_reorders_clinical_columns_by_name_and_names_missing_ones(finished_run,
                                                                          tmp_path):
    result, manifest, _ = finished_run
    table = pd.read_csv(manifest)
    features = [c for c in table.columns if c.startswith("feat_")]
    base = predict_manifest(result.best_checkpoint, manifest)

    shuffled = table[[c for c in table.columns if c not in features] + features[::-1]]
    moved = manifest.parent / "reordered.csv"
    shuffled.to_csv(moved, index=False)
    with pytest.warns(UserWarning, match="reordered by name"):
        again = predict_manifest(result.best_checkpoint, moved)
    pd.testing.assert_series_equal(again["score"], base["score"])

    # Same values under swapped names would be a silent misalignment: it must change scores.
    swapped = table.rename(columns={features[0]: features[-1], features[-1]: features[0]})
    swapped_path = manifest.parent / "swapped.csv"
    swapped.to_csv(swapped_path, index=False)
    with pytest.warns(UserWarning, match="reordered by name"):
        renamed = predict_manifest(result.best_checkpoint, swapped_path)
    assert not renamed["score"].equals(base["score"])

    dropped = manifest.parent / "dropped.csv"
    table.drop(columns=[features[1]]).to_csv(dropped, index=False)
    with pytest.raises(ValueError, match=rf"got 1 missing: \['{features[1]}'\].*dropped\.csv"):
        predict_manifest(result.best_checkpoint, dropped)
