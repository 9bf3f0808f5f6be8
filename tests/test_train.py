"""`tokshift train`: every input form, broken videos, kill -9 then --resume (bit-identical), torchrun x2 on gloo,
the output folder in classify/evaluate, --linear-probe, --init through a real Hub server, and the paper's point on
a synthetic task that only a model that looks across frames can learn."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import av  # a core dependency: missing, the suite fails (never skips)
from procs import kill9_when, start  # noqa: E402
from videogen import make_empty, make_text, make_video, write_rgb_video  # noqa: E402

from tokshift_cli.errors import UsageError  # noqa: E402
from tokshift_cli.models.weights import load_model  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402
from tokshift_cli.train import TrainOptions, default_lr, make_scheduler, train  # noqa: E402
from tokshift_cli.train.data import clip_draws, epoch_order, load_train_data, rank_share  # noqa: E402
from tokshift_cli.train.model import build_start_model  # noqa: E402
from tokshift_cli.video.train_clips import train_clip_indices  # noqa: E402

#: A small TokShift from scratch: the bundled untrained model (width 64, 2 blocks) at 64 px, 8 consecutive frames.
TINY = ["--model", BUNDLED_UNTRAINED, "--img-size", "64", "--frames", "8", "--stride", "1", "--device", "cpu",
        "--dtype", "float32", "--val-views", "1x1"]


def tiny_options(**kw) -> TrainOptions:
    return TrainOptions(**{"img_size": 64, "frames": 8, "stride": 1, "device": "cpu", "dtype": "float32",
                           "val_views": "1x1", "workers": 0, "epochs": 1, "batch_size": 4, "accum_steps": 1,
                           "optimizer": "adamw", "lr": 1e-3, **kw})


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


# --- synthetic videos: fading in vs fading out ---------------------------------------------------------------


def fade_video(path: Path, direction: int, seed: int, frames: int = 12, size: int = 64) -> Path:
    """A random 8x8-block texture whose brightness rises (direction 1) or falls (-1) linearly over the video.
    A clip of a fading-in video and the time-reversed clip of a fading-out one hold the same set of frames, so a
    model that averages per-frame outputs cannot tell the classes apart; no flip or crop can swap them."""
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.uniform(0.3, 1.0, (size // 8, size // 8, 3)), np.ones((8, 8, 1)))
    levels = np.linspace(0.1, 0.9, frames)[::direction]
    return write_rgb_video(path, ((tex * b * 255).round().astype(np.uint8) for b in levels), size=size)


def make_fade_set(root: Path, per_class: int, seed: int = 0, frames: int = 12) -> Path:
    """``root/fade_in/*.mp4`` and ``root/fade_out/*.mp4``, ``per_class`` each."""
    for name, d in (("fade_in", 1), ("fade_out", -1)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fade_video(root / name / f"{name}_{i:02d}.mp4", d, seed + 1000 * (d > 0) + i, frames=frames)
    return root


@pytest.fixture(scope="module")
def fade(tmp_path_factory):
    root = tmp_path_factory.mktemp("fade")
    return {"train": make_fade_set(root / "train", 20, seed=0), "val": make_fade_set(root / "val", 10, seed=500)}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --- units: clips, order, draws, schedule, labels ------------------------------------------------------------


def test_training_clips_start_anywhere_and_wrap_short_videos():
    assert train_clip_indices(20, 8, 1, 0.0).tolist() == [list(range(8))]
    assert train_clip_indices(20, 8, 1, 0.999).tolist() == [list(range(12, 20))]  # the last start is possible
    starts = {int(train_clip_indices(20, 8, 1, u)[0, 0]) for u in np.linspace(0, 0.999, 200)}
    assert starts == set(range(13))
    assert train_clip_indices(100, 8, 32, 0.7).tolist() == [[0, 32, 64, 96, 28, 60, 92, 24]]  # shorter: wraps


def test_each_rank_takes_its_part_of_every_global_batch():
    order = epoch_order(seed=3, epoch=1, n=23)
    assert sorted(order.tolist()) == list(range(23))
    assert not np.array_equal(order, epoch_order(seed=3, epoch=2, n=23))
    one = rank_share(order, batch=4, world=1, rank=0)  # 5 batches of 4, 3 items left out
    two = [rank_share(order, batch=2, world=2, rank=r) for r in (0, 1)]
    assert one.shape == (5, 4) and two[0].shape == (5, 2)
    assert np.array_equal(np.concatenate(two, axis=1), one)
    a = clip_draws(0, 1, 7, (64, 94))
    assert a == clip_draws(0, 1, 7, (64, 94)) and a != clip_draws(0, 2, 7, (64, 94))
    assert 64 <= a.short_side <= 94


def test_step_schedule_drops_at_10_and_15_of_18_epochs_and_lr_scales_with_the_batch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt, "step", lr=0.1, epochs=18, steps_per_epoch=3)
    lrs = [opt.param_groups[0]["lr"]]
    for n in range(1, 54):
        sched.step_update(num_updates=n)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[29] == 0.1 and lrs[30] == pytest.approx(0.01) and lrs[44] == pytest.approx(0.01)
    assert lrs[45] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)
    assert default_lr("sgd", 21 * 10 * 2) == pytest.approx(0.1)  # the authors: 21 clips x 2 GPUs, accumulation 10
    assert default_lr("sgd", 2 * 10) == pytest.approx(0.1 * 20 / 420)


def test_classes_are_sorted_numbers_sort_as_numbers_and_labels_files_fix_the_order(tmp_path, fade):
    files = sorted(fade["train"].rglob("*.mp4"))[:4]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {n}\n" for p, n in zip(files, ("10", "2", "0", "2"))), encoding="utf-8")
    d = load_train_data(lst)
    assert d.classes == ["0", "2", "10"] and d.targets == [2, 1, 0, 1]
    order = tmp_path / "classes.txt"
    order.write_text("fade_out\nfade_in\nsomething else\n", encoding="utf-8")
    d = load_train_data(fade["train"], labels=order, val=fade["val"])
    assert d.classes == ["fade_out", "fade_in", "something else"]
    assert set(d.targets) == {0, 1} and set(d.val_targets) == {0, 1}
    with pytest.raises(UsageError, match="validation labels must be training classes"):
        load_train_data(fade["val"], labels=None, val=lst)


def test_a_random_architecture_written_to_a_folder_is_a_starting_model(tmp_path):
    from tokshift_cli import TokShiftConfig, create_model
    from tokshift_cli.models.convert import write_model_files

    torch.manual_seed(0)
    net = create_model(TokShiftConfig(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3))
    write_model_files(tmp_path / "scratch", net.state_dict(), net.config)
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(str(tmp_path / "scratch"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    start = build_start_model(["a", "b"], model=str(tmp_path / "scratch"), img_size=48).model
    assert start.config.num_classes == 2 and start.pos_embed.shape == (1, 1 + 9, 32)
    assert not start.head.weight.any()


# --- the data: every input form, workers, broken videos ------------------------------------------------------


def test_every_input_form_and_any_number_of_workers_train_the_same_weights(tmp_path, fade):
    """A folder, a list file, a CSV and the Kinetics CSV naming the same videos in the same order give the same
    classes and bit-identical weights; so does decoding in 2 worker processes instead of the main one."""
    folder = tmp_path / "folder"
    k400 = tmp_path / "k400"
    k400.mkdir()
    items = []
    for cls in ("fade_in", "fade_out"):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            src = fade["train"] / cls / f"{cls}_{i:02d}.mp4"
            shutil.copy(src, folder / cls / src.name)
            yid = f"{cls[5:]}{i:08d}x"
            shutil.copy(src, k400 / f"{yid}_000000_000010.mp4")
            items.append((folder / cls / src.name, cls, yid))
    (tmp_path / "list.txt").write_text("".join(f"{cls}/{p.name} {cls}\n" for p, cls, _ in items), encoding="utf-8")
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([[str(p), cls] for p, cls, _ in items])
    with open(tmp_path / "kinetics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows([[cls, yid, 0, 10, "train"] for _, cls, yid in items])
    forms = {"folder": (folder, None), "list": (tmp_path / "list.txt", folder), "csv": (tmp_path / "data.csv", None),
             "kinetics-csv": (tmp_path / "kinetics.csv", k400)}
    ref = None
    for name, (data, root) in forms.items():
        d = load_train_data(data, root=root)
        assert d.train.format == name and d.classes == ["fade_in", "fade_out"] and d.targets == [0] * 4 + [1] * 4
        out = tmp_path / f"out-{name}"
        res = train(data, out, root=root, model=BUNDLED_UNTRAINED, options=tiny_options(epochs=2))
        assert res.steps == 4 and res.selected == "last"
        w = _weights(out)
        if ref is None:
            ref = w
        else:
            assert all(torch.equal(ref[k], w[k]) for k in ref), name
    train(folder, tmp_path / "out-workers", model=BUNDLED_UNTRAINED, options=tiny_options(epochs=2, workers=2))
    w = _weights(tmp_path / "out-workers")
    assert all(torch.equal(ref[k], w[k]) for k in ref)


def test_broken_videos_are_skipped_with_one_line_each_and_counted(tmp_path, fade):
    data = tmp_path / "data"
    for cls in ("fade_in", "fade_out"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            shutil.copy(fade["train"] / cls / f"{cls}_{i:02d}.mp4", data / cls)
    make_text(data / "fade_in" / "not_a_video.mp4")
    make_empty(data / "fade_out" / "empty.mp4")
    out = tmp_path / "out"
    r = tokshift("train", str(data), "--out", str(out), *TINY, "--epochs", "2", "--batch-size", "4",
                 "--accum-steps", "1", "--workers", "1")
    assert r.returncode == 1, r.stderr[-3000:]  # the run finished; some inputs failed: exit 1, as classify
    lines = [ln for ln in r.stderr.splitlines() if "(skipped)" in ln]
    assert len(lines) == 2 and any("not_a_video.mp4" in ln for ln in lines) and any("empty.mp4" in ln for ln in lines)
    assert "2 training videos skipped" in r.stderr and "Traceback" not in r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"]["training"]["skipped_videos"] == 2
    epochs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["skipped_videos"] for e in epochs if e["type"] == "epoch"] == [2, 2]
    assert not (out / "checkpoints").exists()


# --- checkpoints: kill -9 mid-epoch, then --resume -------------------------------------------------------------


def _strip_times(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in ("time_s", "clips_per_s")}
            for ln in path.read_text().splitlines()]


def test_kill9_mid_epoch_then_resume_is_bit_identical(tmp_path, fade):
    """SIGKILL after a mid-epoch checkpoint, then --resume: the final weights are the same bytes as an uninterrupted
    run's (CPU, same seed), and so are metrics.jsonl's numbers. Without --resume the folder is not touched; a
    resume with another option is refused, naming it."""
    args = ["train", str(fade["train"]), "--val", str(fade["val"]), *TINY, "--epochs", "2", "--batch-size", "2",
            "--accum-steps", "2", "--save-every", "2", "--log-every", "1", "--workers", "1", "--seed", "5",
            "--drop-path", "0.1", "--optimizer", "sgd", "--lr", "0.05"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = tokshift(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr[-3000:]

    latest = out / "checkpoints" / "latest.json"

    def mid_second_epoch() -> bool:
        try:
            meta = json.loads(latest.read_text())
        except (OSError, ValueError):
            return False
        return meta["epoch"] == 1 and meta["micro"] > 0

    kill9_when(start([*args, "--out", str(out)], env={"COLUMNS": "200"}), mid_second_epoch, timeout=300,
               poll=0.002)
    assert not (out / "model.safetensors").exists()
    killed_at = json.loads(latest.read_text())["step"]
    assert 10 < killed_at < 20  # 10 steps per epoch

    again = tokshift(*args, "--out", str(out))
    assert again.returncode == 4 and "--resume" in again.stderr  # progress is never silently discarded
    other = tokshift(*args, "--out", str(out), "--resume", "--lr", "0.01")
    assert other.returncode == 2 and "recipe.lr" in other.stderr and "--overwrite" in other.stderr
    r = tokshift(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming at step {killed_at}" in r.stderr
    assert (ref / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert _strip_times(ref / "metrics.jsonl") == _strip_times(out / "metrics.jsonl")
    a, b = (json.loads((d / "config.json").read_text()) for d in (ref, out))
    a["source"]["training"].pop("wall_s"), b["source"]["training"].pop("wall_s")
    assert a == b
    done = tokshift(*args, "--out", str(out), "--resume")
    assert done.returncode == 0 and "complete already" in done.stderr


# --- the paper's point ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reversal_runs(fade, tmp_path_factory):
    """`tokshift train` with and without the shift on fade-in vs fade-out, then `tokshift evaluate` on held-out
    videos: {"shift": (folder, report), "no-shift": (folder, report)}."""
    root = tmp_path_factory.mktemp("reversal")
    runs = {}
    for name, flag in (("shift", "--shift"), ("no-shift", "--no-shift")):
        out = root / name
        r = tokshift("train", str(fade["train"]), "--val", str(fade["val"]), "--out", str(out), *TINY, flag,
                     "--epochs", "4", "--batch-size", "8", "--accum-steps", "1", "--optimizer", "adamw",
                     "--lr", "1e-3", "--workers", "1")
        assert r.returncode == 0, r.stderr[-3000:]
        ev = tokshift("evaluate", str(fade["val"]), "--model", str(out), "--device", "cpu", "--json")
        assert ev.returncode == 0, ev.stderr[-3000:]
        runs[name] = (out, json.loads(ev.stdout))
    return runs


@pytest.mark.slow
def test_time_reversed_classes_need_the_shift(reversal_runs):
    """Fading in and fading out are the same frames in reverse order: with the shift the model learns it
    (>= 95 % top-1 on held-out videos), the plain video-ViT that averages per-frame logits stays at chance."""
    shift = reversal_runs["shift"][1]["metrics"]["top1"]
    plain = reversal_runs["no-shift"][1]["metrics"]["top1"]
    print(f"[train] time reversal, evaluate top-1: TokShift {shift:.3f}, plain ViT {plain:.3f}")
    assert shift >= 0.95
    assert 0.3 <= plain <= 0.7
    curve = [json.loads(ln) for ln in (reversal_runs["no-shift"][0] / "metrics.jsonl").read_text().splitlines()]
    assert max(e["val_top1"] for e in curve if e["type"] == "epoch") <= 0.7


@pytest.mark.slow
def test_the_trained_folder_is_a_model_classify_loads_with_the_new_labels(reversal_runs, fade):
    out = reversal_runs["shift"][0]
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md", "metrics.jsonl",
                                              "training_curve.png"}
    net = load_model(str(out))
    cfg = net.config
    assert cfg.labels == ["fade_in", "fade_out"] and cfg.label_order == "custom" and not cfg.untrained
    assert (cfg.num_frames, cfg.frame_stride, cfg.img_size, cfg.fold_div, cfg.shift) == (8, 1, 64, 4, True)
    t = cfg.source["training"]
    assert t["complete"] and t["epochs"] == 4 and t["seed"] == 0 and t["selected"] == "best"
    assert t["best"]["top1"] >= 0.95 and len(t["data"]["train"]["sha256"]) == 64
    assert t["recipe"]["optimizer"] == "adamw" and t["recipe"]["flip"] is True
    card = (out / "README.md").read_text()
    assert "training_curve.png" in card and "fade_in, fade_out" in card
    video = fade["val"] / "fade_out" / "fade_out_03.mp4"
    r = tokshift("classify", str(video), "--model", str(out), "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    top = json.loads(r.stdout)["results"][0]["top_k"]
    assert [e["label"] for e in top] == ["fade_out", "fade_in"]


# --- linear probe, --init through the Hub, torchrun -------------------------------------------------------------


def test_linear_probe_trains_the_head_on_cached_features(tmp_path):
    """Only the head changes; features are extracted once (extract-features) and removed at the end unless
    kept; a class that looks different (noise vs flat bands) is learned from the frozen random backbone."""
    data, val = tmp_path / "data", tmp_path / "val"
    for root, n, seed in ((data, 6, 0), (val, 3, 100)):
        for cls, pattern in (("bands", "index"), ("noise", "noise")):
            (root / cls).mkdir(parents=True)
            for i in range(n):
                make_video(root / cls / f"{i}.mp4", frames=12, width=64, height=64, pattern=pattern, seed=seed + i)
    opts = tiny_options(linear_probe=True, epochs=20, batch_size=None, accum_steps=None, lr=3e-2, keep_checkpoints=True)
    res = train(data, tmp_path / "out", val_data=val, model=BUNDLED_UNTRAINED, options=opts)
    assert res.best_top1 == 1.0 and res.steps == 20  # 12 feature rows: one batch of 64 per epoch
    assert (tmp_path / "out" / "features" / "train.npy").exists()  # kept (keep_checkpoints)
    trained = _weights(tmp_path / "out")
    start = build_start_model(["bands", "noise"], model=BUNDLED_UNTRAINED, img_size=64, frames=8, stride=1).model
    for k, v in start.state_dict().items():
        if k.startswith("head."):
            assert not torch.equal(v, trained[k])
        else:
            assert torch.equal(v, trained[k]), k
    again = train(data, tmp_path / "out", val_data=val, model=BUNDLED_UNTRAINED, options=opts, resume=True)
    assert again.complete_already


def _timm_repo(hub, repo: str) -> dict[str, torch.Tensor]:
    """A small timm-format ViT (config.json with architecture and model_args, model.safetensors) on the Hub."""
    import timm
    from safetensors.torch import save

    args = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    sd = {k: v.contiguous() for k, v in vit.state_dict().items()}
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 0, "num_features": 64, "model_args": args,
              "pretrained_cfg": {"tag": "test", "input_size": [3, 32, 32], "fixed_input_size": True,
                                 "interpolation": "bicubic", "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5],
                                 "std": [0.5, 0.5, 0.5], "num_classes": 0, "first_conv": "patch_embed.proj",
                                 "classifier": "head"}}
    hub.add_repo(repo, {"config.json": json.dumps(config), "model.safetensors": save(sd)})
    return sd


def test_init_from_a_timm_vit_served_by_a_hub_server(hub, tmp_path, fade):
    """--init hf-hub:ORG/NAME through the real huggingface_hub client (timm downloads config.json and
    model.safetensors from HF_ENDPOINT): a TokShift model with the ViT's weights, a zero head for the new
    classes; after one SGD step only the head has moved (the zero head passes no gradient back)."""
    served = _timm_repo(hub, "tokshift-tests/vit-micro")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_PROGRESS_BARS="1")
    data = tmp_path / "data"
    for cls in ("fade_in", "fade_out"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            shutil.copy(fade["train"] / cls / f"{cls}_{i:02d}.mp4", data / cls)
    out, cache = tmp_path / "out", tmp_path / "cache"
    r = tokshift("train", str(data), "--out", str(out), "--init", "hf-hub:tokshift-tests/vit-micro", "--epochs", "1",
                 "--batch-size", "8", "--accum-steps", "1", "--frames", "4", "--device", "cpu", "--dtype", "float32",
                 "--workers", "1", "--cache-dir", str(cache), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(cache.rglob("model.safetensors")) and not (tmp_path / "hf" / "hub").exists()  # --cache-dir honoured
    assert "from hf-hub:tokshift-tests/vit-micro" in r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["img_size"], cfg["num_frames"],
            cfg["frame_stride"]) == (64, 2, 2, 32, 4, 32)
    assert cfg["id2label"] == {"0": "fade_in", "1": "fade_out"} and cfg["shift"] is True
    assert cfg["source"]["start"]["timm_name"] == "hf-hub:tokshift-tests/vit-micro"
    w = _weights(out)
    assert set(w) == set(served) | {"head.weight", "head.bias"}
    assert all(torch.equal(w[k], served[k]) for k in served)  # one step: the backbone is the served ViT's
    assert w["head.weight"].abs().sum() > 0
    bad = tokshift("train", str(data), "--out", str(tmp_path / "o2"), "--init", "hf-hub:tokshift-tests/missing",
                   "--device", "cpu", env=env)
    assert bad.returncode == 3 and "tokshift-tests/missing" in bad.stderr and "Traceback" not in bad.stderr
    offline = tokshift("train", str(data), "--out", str(tmp_path / "o3"), "--init", "hf-hub:tokshift-tests/vit-micro",
                       "--device", "cpu", "--local-files-only", "--cache-dir", str(tmp_path / "empty"), env=env)
    assert offline.returncode == 3 and "--local-files-only" in offline.stderr, offline.stderr[-2000:]


def test_another_ranks_write_probe_is_not_content(tmp_path):
    """Under torchrun every rank checks the output folder at once; one rank's write probe (created and removed
    by ensure_output_folder) seen by another must not make the folder "not empty" (it did: exit 4, or an
    internal StopIteration when the probe vanished between the two listings)."""
    from tokshift_cli.errors import OutputExistsError
    from tokshift_cli.train.files import TrainFiles

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".tokshift.k2j4x9.probe").touch()  # another rank's, mid-probe
    assert TrainFiles(folder).preflight(resume=False, overwrite=False) == "fresh"
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        TrainFiles(folder).preflight(resume=False, overwrite=False)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process_with_the_same_total_batch(tmp_path, fade):
    """DistributedDataParallel on gloo: 2 processes x 2 clips give the weights of 1 process x 4 clips to float
    tolerance (all-reduce sums in another order: measured max difference 3e-8, asserted 1e-5)."""
    common = [str(fade["train"]), "--val", str(fade["val"]), *TINY, "--epochs", "1", "--accum-steps", "2",
              "--workers", "1", "--optimizer", "sgd", "--lr", "0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    one = subprocess.run([sys.executable, "-m", "tokshift_cli", "train", *common, "--batch-size", "4", "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "tokshift_cli", "train", *common, "--batch-size", "2", "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("epoch 1/1:") == 1  # rank 0 reports
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"[train] torchrun x2 vs one process: max weight difference {diff:.2e}")
    assert diff < 1e-5
    ca, cb = (json.loads((tmp_path / d / "config.json").read_text())["source"]["training"] for d in ("one", "two"))
    assert cb["world_size"] == 2 and cb["recipe"]["total_batch"] == ca["recipe"]["total_batch"] == 8
    assert ca["best"]["top1"] == cb["best"]["top1"]


# --- options, outputs, bench -----------------------------------------------------------------------------------


def test_usage_and_output_errors_are_one_line_with_their_exit_codes(tmp_path, fade):
    from typer.testing import CliRunner

    from tokshift_cli.cli import app

    runner = CliRunner()
    base = ["train", str(fade["val"]), "--device", "cpu"]
    cases = [
        (["--out", str(tmp_path / "a"), "--optimizer", "lamb"], 2, "--optimizer"),
        (["--out", str(tmp_path / "a"), "--model", "x", "--init", "y"], 2, "not both"),
        (["--out", str(tmp_path / "a"), "--val-views", "3"], 2, "--views"),
        (["--out", str(tmp_path / "a"), "--dtype", "float16"], 2, "float16"),
        (["--out", str(tmp_path / "a"), "--short-side", "10"], 2, "--short-side"),
        (["--out", str(tmp_path / "a"), "--labels", str(tmp_path / "missing.txt")], 2, "--labels"),
    ]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine", encoding="utf-8")
    cases.append((["--out", str(taken)], 4, "--overwrite"))
    for args, code, text in cases:
        r = runner.invoke(app, [*base, *args])
        assert r.exit_code == code, (args, r.output)
        assert text in r.output and "Traceback" not in r.output, (args, r.output)
    assert (taken / "notes.txt").read_text() == "mine"


def test_bench_train_times_tokshift_and_plain_vit_steps():
    from tokshift_cli.bench.training import bench_train
    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.models.tokshift import create_model

    torch.manual_seed(0)
    net = create_model(TokShiftConfig(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=5))
    rep = bench_train(net, batch_sizes=[2], dtypes=["float32", "bfloat16"], iters=2, warmup=1)
    assert [r.dtype for r in rep.runs] == ["float32", "bfloat16"]
    for r in rep.runs:
        assert r.error is None and r.clips_per_s > 0 and r.plain_vit_clips_per_s > 0
        assert r.shift_step_ratio > 0 and r.step_ms.p50 > 0 and r.peak_mem_mb > 0
    assert rep.to_dict()["kind"] == "train"
