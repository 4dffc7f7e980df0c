"""`partdistill predict` and `partdistill export`: a trained model used outside the benchmarks.

One distilled model (the 4-iteration smoke distillation on a part-ranking store made from the synthetic
ground truth, as tests/test_distillation.py trains it) is trained once for the module; a proposal and a
semantic head are random tiny models written as a training stage writes them (head.json + checkpoint).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_distillation import ranking_store_from_ground_truth

from partdistill import config, stages
from partdistill.cli import main
from partdistill.data import catalog, synthetic
from partdistill.evaluation.predictions import read_predictions

K = 3  # the smoke distillation's part classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, run folder) of a trained smoke distillation on 6 synthetic images per split."""
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PART_DISTILLATION_ROOT", str(root))
        synthetic.synthesize("synthetic", root / "datasets/synthetic", num_images=6, seed=0)
        run_dir = root / "runs/a"
        ranking_store_from_ground_truth(run_dir, root)
        stages.run(config.compose(["experiment=smoke", "stage=distillation", f"run_dir={run_dir}",
                                   "stage.init_from=null", "stage.eval_suites=[]"]))
    return root, run_dir


@pytest.fixture
def env(trained, monkeypatch):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(trained[0]))
    return trained


def predict(*args: str) -> int:
    return main(["predict", "--workers", "0", "--batch-size", "2", *args])


def test_predict_writes_a_record_and_an_overlay_per_readable_image_and_names_the_corrupt_one(env, tmp_path, capsys):
    root, run_dir = env
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("000000.png", "000001.png", "000002.png"):
        shutil.copy(root / "datasets/synthetic/val" / name, images / name)
    (images / "broken.png").write_bytes(b"not a png")
    (images / "notes.txt").write_text("not an image, and not listed")
    out = tmp_path / "out"
    assert predict("--weights", str(run_dir / "distillation"), "--images", str(images), "--object-class", "disc",
                   "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 image(s)" in printed and "1 unreadable image(s) skipped" in printed and "broken.png" in printed
    summary = json.loads((out / "summary.json").read_text())
    readable = [f"{images}/{name}" for name in ("000000.png", "000001.png", "000002.png")]
    assert [i["image_id"] for i in summary["per_image"]] == readable
    assert [s["file_name"] for s in summary["skipped"]] == [str(images / "broken.png")]
    assert {(i["object_class"], i["object_class_source"]) for i in summary["per_image"]} == {
        ("class-0", "--object-class disc")}
    records = read_predictions(out / "predictions.jsonl")  # the evaluation format, checked
    assert {r["image_id"] for r in records} == set(readable)
    assert all(0 <= r["label"] < K and r["segmentation"]["size"] == [96, 128] for r in records)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == [f"{images.as_posix().strip('/').replace('/', '__')}__{n}.png" for n in ("000000", "000001",
                                                                                                   "000002")]
    with Image.open(out / "overlays" / overlays[0]) as png:
        assert png.height >= 256 and png.width > 2 * 128  # image | parts, upscaled, with a legend


def test_the_distilled_model_needs_a_class_and_names_the_classes(env, tmp_path, capsys):
    _, run_dir = env
    image = env[0] / "datasets/synthetic/val/000000.png"
    assert predict("--weights", str(run_dir), "--images", str(image), "--out", str(tmp_path / "o")) == 2
    assert "give --object-class NAME" in capsys.readouterr().err
    assert predict("--weights", str(run_dir), "--images", str(image), "--object-class", "teapot",
                   "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "'teapot' is not one of the model's 4 training classes" in err and "class-1 (tower)" in err
    assert predict("--weights", str(run_dir), "--images", str(image), "--object-class", "disc", "--device", "gpu0",
                   "--out", str(tmp_path / "o")) == 2
    assert "--device gpu0" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("# image class\nother.png kite\n")
    assert predict("--weights", str(run_dir), "--images", str(image), "--classes", str(tmp_path / "classes.txt"),
                   "--out", str(tmp_path / "o")) == 2
    assert "no class for 1 image(s)" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text(f"{image} kite\n")
    assert predict("--weights", str(run_dir), "--images", str(image), "--classes", str(tmp_path / "classes.txt"),
                   "--out", str(tmp_path / "o")) == 0
    per_image = json.loads((tmp_path / "o/summary.json").read_text())["per_image"]
    assert per_image[0]["object_class"] == "class-2" and per_image[0]["object_class_source"].endswith("classes.txt")


def test_predictions_scored_by_partdistill_evaluate_equal_stage_evaluate(env, tmp_path, capsys):
    """On synthetic_train: one object per image (val shows two of different classes in half its images, and
    predict conditions one class per image), its class given per image by a class file."""
    root, run_dir = env
    records = catalog.load("synthetic_train")
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{r['file_name']} class-{r['annotations'][0]['category_id']}\n" for r in records))
    out = tmp_path / "predicted"
    assert predict("--weights", str(run_dir / "distillation"), "--images", str(root / "datasets/synthetic/train"),
                   "--classes", str(classes), "--dataset", "synthetic_train", "--out", str(out)) == 0
    assert main(["evaluate", "--dataset", "synthetic_train", "--predictions", str(out / "predictions.jsonl"),
                 "--out", str(tmp_path / "scored"), "--overlays", "0"]) == 0
    reference = stages.run(config.compose([
        "experiment=smoke", "stage=evaluate", f"run_dir={run_dir}", f"model.weights={run_dir}/distillation",
        "eval.split=train", "eval.overlays=0", f"stage.out={tmp_path / 'reference'}"]))["evaluate"]
    scored = json.loads((tmp_path / "scored/metrics.json").read_text())
    metrics = {k: v for k, v in reference.items() if isinstance(v, (int, float))}
    assert {"C-mIoU", "A-mIoU", "AR@10"} <= set(metrics) and metrics["C-mIoU"] > 0
    assert {k: scored[k] for k in metrics} == pytest.approx(metrics, abs=1e-9)


def test_on_the_val_set_each_annotated_object_gives_the_metrics_of_stage_evaluate(env, tmp_path, capsys):
    """synthetic_val holds images of two objects of different classes: --dataset-objects conditions each
    annotated object on its own class, as stage=evaluate does, so scoring predict's file gives its metrics."""
    root, run_dir = env
    out = tmp_path / "predicted"
    assert predict("--weights", str(run_dir / "distillation"), "--images", str(root / "datasets/synthetic/val"),
                   "--dataset", "synthetic_val", "--dataset-objects", "--out", str(out)) == 0
    assert main(["evaluate", "--dataset", "synthetic_val", "--predictions", str(out / "predictions.jsonl"),
                 "--out", str(tmp_path / "scored"), "--overlays", "0"]) == 0
    reference = stages.run(config.compose([
        "experiment=smoke", "stage=evaluate", f"run_dir={run_dir}", f"model.weights={run_dir}/distillation",
        "eval.overlays=0", f"stage.out={tmp_path / 'reference'}"]))["evaluate"]
    scored = json.loads((tmp_path / "scored/metrics.json").read_text())
    metrics = {k: v for k, v in reference.items() if isinstance(v, (int, float))}
    assert {"C-mIoU", "A-mIoU"} <= set(metrics) and metrics["C-mIoU"] > 0
    assert {k: scored[k] for k in metrics} == pytest.approx(metrics, abs=1e-9)
    capsys.readouterr()
    assert predict("--weights", str(run_dir / "distillation"), "--images", str(root / "datasets/synthetic/val"),
                   "--dataset-objects", "--out", str(tmp_path / "x")) == 2
    assert "give --dataset NAME too" in capsys.readouterr().err


def test_export_loads_with_transformers_and_gives_the_runs_logits(env, tmp_path, capsys):
    from transformers import Mask2FormerForUniversalSegmentation

    from partdistill.io import output_mode
    from partdistill.models.mask2former import build_model
    from partdistill.stages.trained_models import find_head, load_head_model

    _, run_dir = env
    exported = tmp_path / "exported"
    assert main(["export", "--weights", str(run_dir / "distillation"), "--out", str(exported)]) == 0
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                          "partdistill.json"]
    assert {p.stat().st_mode & 0o777 for p in exported.iterdir()} == {output_mode()}
    info = json.loads((exported / "partdistill.json").read_text())
    assert info["head"]["kind"] == "conditioned_parts" and info["head"]["classes"] == [f"class-{i}" for i in range(4)]
    assert info["head"]["class_names"] == list(synthetic.OBJECT_CLASSES)
    card = (exported / "README.md").read_text()
    assert "synthetic_train" in card and "| total_loss |" in card and "partdistill predict --weights" in card
    theirs = Mask2FormerForUniversalSegmentation.from_pretrained(exported).eval()
    assert theirs.config.id2label[K + 1] == "tower: part 1" and len(theirs.config.id2label) == 4 * K
    ours = load_head_model(run_dir / "distillation", find_head(run_dir / "distillation"), torch.device("cpu"))
    pretrained = build_model({"name": "tiny", "pretrained": str(exported)}).eval()  # model.pretrained=EXPORTED
    x = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(pixel_values=x)
        for model in (theirs, pretrained):
            got = model(pixel_values=x)
            torch.testing.assert_close(got.class_queries_logits, expected.class_queries_logits, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.masks_queries_logits, expected.masks_queries_logits, atol=1e-6, rtol=0)


def test_predict_with_the_exported_folder_equals_predict_with_the_run(env, tmp_path, capsys):
    root, run_dir = env
    exported = tmp_path / "exported"
    assert main(["export", "--weights", str(run_dir), "--out", str(exported)]) == 0
    images = str(root / "datasets/synthetic/val")
    for weights, out in ((run_dir, "from_run"), (exported, "from_export")):
        assert predict("--weights", str(weights), "--images", images, "--object-class", "shield",
                       "--out", str(tmp_path / out)) == 0
    ours = (tmp_path / "from_run/predictions.jsonl").read_text()
    assert ours and (tmp_path / "from_export/predictions.jsonl").read_text() == ours
    assert json.loads((tmp_path / "from_export/summary.json").read_text())["weights"] == str(exported)
    # stage=evaluate takes the exported folder as it takes the run's
    scores = [stages.run(config.compose(["experiment=smoke", "stage=evaluate", f"run_dir={run_dir}",
                                         f"model.weights={w}", "eval.overlays=0", f"stage.out={tmp_path / name}"]
                                        ))["evaluate"]["C-mIoU"]
              for w, name in ((run_dir / "distillation", "eval_run"), (exported, "eval_export"))]
    assert scores[0] == scores[1]


def test_an_object_models_top_instance_gives_the_class_and_the_region(env, tmp_path):
    from partdistill.data import masks
    from partdistill.models.export import save_pretrained_folder
    from partdistill.models.mask2former import build_model
    from partdistill.stages.predict import predict as run_predict

    root, run_dir = env
    torch.manual_seed(3)
    tiny = config.compose(["experiment=smoke"]).model
    save_pretrained_folder(build_model(tiny, num_labels=4), tmp_path / "objects", list(synthetic.OBJECT_CLASSES))
    summary = run_predict(run_dir, [str(root / "datasets/synthetic/val")], tmp_path / "out",
                          object_model=str(tmp_path / "objects"), batch_size=3, workers=0)
    assert summary["predicted"] == 6
    for image in summary["per_image"]:
        source = image["object_class_source"]
        assert source.startswith(f"object model {tmp_path / 'objects'}: ")
        if "top instance" in source:  # the instance's class name, mapped to the training class of that name
            name = source.split("'")[1]
            assert image["object_class"] == f"class-{synthetic.OBJECT_CLASSES.index(name)}"
    # parts lie inside the object: with --object-class as well, fewer pixels than the whole image are labelled
    whole = run_predict(run_dir, [str(root / "datasets/synthetic/val")], tmp_path / "whole", object_class="disc",
                        workers=0)
    inside = run_predict(run_dir, [str(root / "datasets/synthetic/val")], tmp_path / "inside", object_class="disc",
                         object_model=str(tmp_path / "objects"), workers=0)
    assert whole["per_image"][0]["object_class_source"] == inside["per_image"][0]["object_class_source"]

    def pixels(folder):
        return sum(int(masks.decode(r["segmentation"]).sum()) for r in
                   read_predictions(folder / "predictions.jsonl", allow_empty=True))

    assert pixels(tmp_path / "whole") == 6 * 96 * 128 and 0 < pixels(tmp_path / "inside") < 6 * 96 * 128


@pytest.mark.parametrize("kind", ["proposals", "semantic"])
def test_proposal_and_semantic_heads(env, tmp_path, kind, capsys):
    """A random tiny model saved as a training stage saves one, with the head.json of that kind."""
    from partdistill.data import masks
    from partdistill.engine.checkpoint import save_checkpoint
    from partdistill.models.mask2former import build_model

    root, _ = env
    model_cfg = config.compose(["experiment=smoke"]).model
    num_labels = 1 if kind == "proposals" else 5
    torch.manual_seed(0)
    folder = tmp_path / "stage"
    save_checkpoint(folder / "checkpoints", 1, build_model(model_cfg, num_labels=num_labels), None)
    head = {"stage": "finetune", "kind": kind, "num_labels": num_labels, "image_size": 64,
            "model": OmegaConf.to_container(model_cfg, resolve=True)}
    if kind == "semantic":
        head |= {"dataset": "synthetic", "part_classes": [f"piece {i}" for i in range(num_labels)]}
    (folder / "head.json").write_text(json.dumps(head))
    images = [str(root / "datasets/synthetic/val/000000.png"), str(root / "datasets/synthetic/val/000001.png")]
    assert predict("--weights", str(folder), "--images", *images, "--object-class", "disc", "--out",
                   str(tmp_path / "o")) == 2
    assert f"this model's head is '{kind}'" in capsys.readouterr().err
    assert predict("--weights", str(folder), "--images", *images, "--proposals", "4", "--out", str(tmp_path / "o")) == 0
    records = read_predictions(tmp_path / "o/predictions.jsonl")
    per_image = [[r for r in records if r["image_id"] == i] for i in images]
    if kind == "proposals":
        assert [len(r) for r in per_image] == [4, 4] and {r["label"] for r in records} == {0}
    else:  # one mask per class present, covering every pixel once
        for segments in per_image:
            cover = np.sum([masks.decode(s["segmentation"]) for s in segments], axis=0)
            assert (cover == 1).all() and all(0 <= s["label"] < num_labels for s in segments)
    assert len(list((tmp_path / "o/overlays").glob("*.png"))) == 2
    exported = tmp_path / "exported"
    assert main(["export", "--weights", str(folder / "checkpoints"), "--out", str(exported)]) == 0
    info = json.loads((exported / "partdistill.json").read_text())
    assert info["labels"] == (["part"] if kind == "proposals" else head["part_classes"])
    assert os.path.isfile(exported / "README.md")
