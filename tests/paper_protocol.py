"""A port of the paper's unsupervised part mIoU, line for line (its `mIOU_Matcher` and `mIOU_Evaluator`,
part_distillation/evaluation/miou_matcher.py and miou_evaluator.py, as method_reference.md 4.2-4.3 gives
them), run beside partdistill's evaluator on the same inputs to measure where the two differ:

    python tests/paper_protocol.py random       # C-mIoU of both on random inputs, over seeds
    python tests/paper_protocol.py cityscapes   # a Cityscapes-format case scored through `partdistill evaluate`
    python tests/paper_protocol.py ties         # AR@1 with tied scores: the paper's order vs the file's

Kept out of the package: it reproduces the paper's defects on purpose (a label that overlaps no part
maps to global part 0; A-mIoU indexes parts by object names). The numbers these commands print are the
ones README.md quotes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partdistill.data import masks
from partdistill.data.catalog import Metadata
from partdistill.data.records import object_record, part_record
from partdistill.evaluation.part_miou import PartMIoUEvaluator
from partdistill.evaluation.samples import Prediction

NUM_CLUSTERS = 8  # the paper's PART_RANKING.NUM_CLUSTERS / NUM_PART_CLASSES


@dataclass
class Sample:
    """What the paper's evaluators get per object: predicted and GT part masks with their classes."""

    pred_masks: np.ndarray  # [N, H, W] bool, already multiplied by the GT object mask
    pred_classes: np.ndarray  # [N]
    gt_masks: np.ndarray  # [P, H, W] bool, merged per part class
    gt_classes: np.ndarray  # [P] global part ids
    gt_object_label: int


def paper_samples(records: list[dict], predictions: list[Prediction]) -> list[Sample]:
    """The paper's inputs from partdistill's: one sample per object with parts (`for_segmentation`),
    predictions restricted to the object mask (APPLY_MASKING_WITH_OBJECT_MASK), GT merged per part class
    (USE_MERGED_GT). The segments go in ascending score order, so that where they overlap the later one,
    which the paper's rasterisation keeps, is the higher-scoring one, as partdistill ranks them."""
    samples = []
    for record, prediction in zip(records, predictions):
        order = np.argsort(prediction.scores, kind="stable")
        for obj in record["annotations"]:
            if not obj["parts"]:
                continue
            object_mask = masks.decode(obj["segmentation"])
            merged: dict[int, np.ndarray] = {}
            for part in obj["parts"]:
                mask = masks.decode(part["segmentation"]) & object_mask
                merged[part["category_id"]] = merged.get(part["category_id"], False) | mask
            samples.append(Sample(prediction.masks[order] & object_mask, prediction.labels[order],
                                  np.stack(list(merged.values())), np.array(list(merged)), obj["category_id"]))
    return samples


def binary_mask_to_semseg(masks_: np.ndarray, classes: np.ndarray, fill: int, shape) -> np.ndarray:
    """Every pixel `fill`, then each mask's pixels set to its class in order: later masks overwrite."""
    semseg = np.full(shape, fill, np.int64)
    for mask, c in zip(masks_, classes):
        semseg[mask] = c
    return semseg


class PaperMatcher:
    """mIOU_Matcher: an (n+1)^2 confusion matrix per GT object class, rows = prediction, cols = GT,
    n = max(GT part classes, clusters); each cluster maps to the argmax of its row over the GT parts."""

    def __init__(self, gt_num_classes: int, pred_num_classes: int = NUM_CLUSTERS):
        self.pred_num_classes = pred_num_classes
        self.gt_num_classes = gt_num_classes
        self.n = max(gt_num_classes, pred_num_classes)
        self.conf_matrix: dict[int, np.ndarray] = {}

    def process(self, samples: list[Sample]) -> None:
        for s in samples:
            if s.gt_object_label not in self.conf_matrix:
                self.conf_matrix[s.gt_object_label] = np.zeros((self.n + 1, self.n + 1), np.float64)
            shape = s.gt_masks.shape[1:]
            pd = binary_mask_to_semseg(s.pred_masks, s.pred_classes, self.n, shape)
            gt = binary_mask_to_semseg(s.gt_masks, s.gt_classes, self.n, shape)
            conf = self.conf_matrix[s.gt_object_label]
            conf += np.bincount((self.n + 1) * pd.reshape(-1) + gt.reshape(-1), minlength=conf.size).reshape(conf.shape)

    def evaluate(self) -> dict[int, np.ndarray]:
        """Majority voting: a row of zeros (a cluster on no GT part) goes to part 0, argmax's first index."""
        return {k: conf[: self.pred_num_classes, : self.gt_num_classes].argmax(axis=1)
                for k, conf in self.conf_matrix.items()}


class PaperEvaluator:
    """mIOU_Evaluator: a (G+1)^2 matrix per GT object class of the mapped predictions; per class mIoU
    over parts with GT, divided by the parts with GT or prediction; `IoU-{name}` for each name of the
    dataset's `thing_classes` (object names for Pascal-Part and Cityscapes: the A-* indexing defect)."""

    def __init__(self, gt_num_classes: int, thing_classes: list[str]):
        self.gt_num_classes = gt_num_classes
        self.class_names = thing_classes
        self.conf_matrix: dict[int, np.ndarray] = {}

    def process(self, samples: list[Sample], mapping: dict[int, np.ndarray]) -> None:
        g = self.gt_num_classes
        for s in samples:
            if s.gt_object_label not in self.conf_matrix:
                self.conf_matrix[s.gt_object_label] = np.zeros((g + 1, g + 1), np.float64)
            shape = s.gt_masks.shape[1:]
            pd = binary_mask_to_semseg(s.pred_masks, mapping[s.gt_object_label][s.pred_classes], g, shape)
            gt = binary_mask_to_semseg(s.gt_masks, s.gt_classes, g, shape)
            conf = self.conf_matrix[s.gt_object_label]
            conf += np.bincount((g + 1) * pd.reshape(-1) + gt.reshape(-1), minlength=conf.size).reshape(conf.shape)

    def measure_miou(self, conf: np.ndarray) -> dict:
        g = self.gt_num_classes
        acc, iou, iopred = (np.full(g, np.nan) for _ in range(3))
        tp = conf.diagonal()[:-1]
        pos_gt = conf[:, :-1].sum(axis=0)  # pixels predicted as background count as misses
        pos_pred = conf[:-1, :].sum(axis=1)  # predictions on GT background count as false positives
        acc_valid, iou_valid, iopred_valid = pos_gt > 0, pos_gt + pos_pred > 0, pos_pred > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou[acc_valid] = tp[acc_valid] / union[acc_valid]
        iopred[iopred_valid] = tp[iopred_valid] / pos_pred[iopred_valid]
        res = {"mIoU": 100 * np.sum(iou[acc_valid]) / np.sum(iou_valid),
               "mACC": 100 * np.sum(acc[acc_valid]) / np.sum(acc_valid),
               "mIoPred": 100 * np.sum(iopred[iopred_valid]) / np.sum(iopred_valid)}
        for i, name in enumerate(self.class_names):
            res[f"IoU-{name}"], res[f"ACC-{name}"], res[f"IoPred-{name}"] = 100 * iou[i], 100 * acc[i], 100 * iopred[i]
        return res

    def evaluate(self) -> dict:
        out = {key: [] for key in ("C-mIoU", "A-mIoU", "C-mACC", "A-mACC", "C-mIoPred", "A-mIoPred")}
        for k in sorted(self.conf_matrix):
            res = self.measure_miou(self.conf_matrix[k])
            for metric, prefix in (("mIoU", "IoU-"), ("mACC", "ACC-"), ("mIoPred", "IoPred-")):
                out[f"C-{metric}"].append(res[metric])
                out[f"A-{metric}"] += [v for key, v in res.items() if key.startswith(prefix) and not np.isnan(v)]
        return {key: float(np.mean(values)) for key, values in out.items()}


def paper_scores(meta: Metadata, records: list[dict], predictions: list[Prediction],
                 thing_classes: list[str] | None = None) -> dict:
    """The paper's flow on one split: match, then evaluate with that mapping (the same split, as its
    scripts do). `thing_classes`: the names its registration gives (default: the object classes)."""
    samples = paper_samples(records, predictions)
    matcher = PaperMatcher(len(meta.part_classes))
    matcher.process(samples)
    evaluator = PaperEvaluator(len(meta.part_classes), thing_classes or list(meta.thing_classes))
    evaluator.process(samples, matcher.evaluate())
    return evaluator.evaluate()


def partdistill_scores(meta: Metadata, records: list[dict], predictions: list[Prediction]) -> dict:
    evaluator = PartMIoUEvaluator(meta)
    evaluator.process(records, predictions)
    return evaluator.evaluate()


# -- inputs -------------------------------------------------------------------------------------------
def random_case(seed: int, num_classes: int = 5, parts: int = 3, objects: int = 8, void: float = 0.15,
                leak: float = 0.5):
    """Random one-object images: each object's pixels fall in one of its class's parts or, with
    probability `void`, in none. The prediction gives each part a cluster of the class's own and the
    unlabelled pixels one more; 40 % of the pixels take a random one of the part clusters instead, and in
    a fraction `leak` of the classes (drawn per class) the extra cluster is among them, so that it touches
    parts there and lands on no part at all in the others."""
    rng = np.random.default_rng(seed)
    leaks = rng.random(num_classes) < leak  # the classes whose extra cluster also falls on parts
    clusters = [rng.permutation(NUM_CLUSTERS)[: parts + 1] for _ in range(num_classes)]  # per part, then the rest
    meta = Metadata([f"object{c}" for c in range(num_classes)],
                    [f"object{c}-part{p}" for c in range(num_classes) for p in range(parts)],
                    {c: list(range(c * parts, (c + 1) * parts)) for c in range(num_classes)})
    records, predictions = [], []
    for i in range(objects * num_classes):
        c = i % num_classes
        h, w = rng.integers(8, 20, size=2)
        where = np.where(rng.random((h, w)) < void, parts, rng.integers(0, parts, size=(h, w)))  # parts = none
        own = clusters[c]
        noisy = rng.random((h, w)) < 0.4
        labels = np.where(noisy, own[rng.integers(0, parts + int(leaks[c]), size=(h, w))], own[where])
        obj = np.ones((h, w), bool)
        part_list = [part_record(meta.parts_of[c][p], where == p) for p in range(parts) if (where == p).any()]
        records.append({"image_id": i, "height": int(h), "width": int(w),
                        "annotations": [object_record(c, obj, part_list)]})
        present = np.unique(labels)
        predictions.append(Prediction(labels[None] == present[:, None, None], present, np.ones(len(present))))
    return meta, records, predictions


def measure_random(seeds=range(10)) -> list[tuple[int, float, float]]:
    rows = []
    for seed in seeds:
        meta, records, predictions = random_case(seed)
        rows.append((seed, paper_scores(meta, records, predictions)["C-mIoU"],
                     partdistill_scores(meta, records, predictions)["C-mIoU"]))
    return rows


def cityscapes_predictions(records: list[dict], seed: int = 0) -> list[dict]:
    """A method that finds each part with a cluster of its own (the part's local index), a quarter of
    each part's pixels going to a wrong one of those clusters, and the object pixels in no part (void
    in Cityscapes-Panoptic-Parts) as one more cluster, 7."""
    rng = np.random.default_rng(seed)
    out = []
    for record in records:
        for obj in record["annotations"]:
            if not obj["parts"]:
                continue
            whole = masks.decode(obj["segmentation"])
            label = np.full(whole.shape, -1)
            label[whole] = 7
            ids = sorted({p["category_id"] for p in obj["parts"]})
            for part in obj["parts"]:
                mask = masks.decode(part["segmentation"]) & whole
                local = ids.index(part["category_id"])
                wrong = rng.random(mask.shape) < 0.25
                label[mask & ~wrong] = local
                label[mask & wrong] = rng.integers(0, len(ids), size=int((mask & wrong).sum()))
            out += [{"image_id": record["image_id"], "segmentation": masks.encode(label == k), "label": int(k),
                     "score": 1.0} for k in np.unique(label[whole])]
    return out


def measure_cityscapes() -> dict:
    """Writes the synthetic Cityscapes-Panoptic-Parts copy and predictions, scores them with `partdistill
    evaluate` and with the port."""
    from partdistill.data import catalog, cityscapes_part
    from partdistill.evaluation import predictions as saved

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cityscapes_part.synthesize("cityscapes_part", root / "datasets/cityscapes_part", 16, 0)
        records = catalog.load("cityscapes_part_val", root)
        meta = catalog.metadata("cityscapes_part_val", root)
        (root / "preds.json").write_text(json.dumps(cityscapes_predictions(records)))
        env = {**os.environ, "PART_DISTILLATION_ROOT": str(root)}
        command = [sys.executable, "-m", "partdistill.cli", "evaluate", "--dataset", "cityscapes_part_val",
                   "--predictions", str(root / "preds.json"), "--out", str(root / "out"), "--overlays", "0"]
        subprocess.run(command, check=True, env=env, capture_output=True)
        ours = json.loads((root / "out/metrics.json").read_text())
        grouped = saved.group_by_image(saved.read_predictions(root / "preds.json"), records)
        predictions = [saved.to_prediction(grouped.get(r["image_id"], []), r["height"], r["width"]) for r in records]
        paper = paper_scores(meta, records, predictions)
        every_part = paper_scores(meta, records, predictions, thing_classes=list(meta.part_classes))
    keys = ("C-mIoU", "A-mIoU")
    return {"paper": {k: round(paper[k], 2) for k in keys},
            "paper, A-mIoU over every part": {k: round(every_part[k], 2) for k in keys},
            "partdistill evaluate": {k: round(ours[k], 2) for k in keys}}


def paper_proposal_order(scores: np.ndarray) -> np.ndarray:
    """The paper's proposal ranking: torch's sort, descending, not stable (ties in no set order)."""
    import torch

    return torch.as_tensor(np.asarray(scores, np.float32)).sort(descending=True)[1].numpy()


def ar_at_1(meta: Metadata, records: list[dict], predictions: list[Prediction], paper_order: bool) -> float:
    """partdistill's AR@1 of the proposals as given (ties keep this order) or in the paper's order."""
    from partdistill.evaluation.proposals import ProposalAREvaluator

    evaluator = ProposalAREvaluator(meta, limits=(1,))
    for record, p in zip(records, predictions):
        order = paper_proposal_order(p.scores) if paper_order else np.arange(len(p.scores))
        evaluator.process([record], [Prediction(p.masks[order], p.labels[order], p.scores[order])])
    return evaluator.evaluate()["AR@1"]


def measure_ties(images: int = 200, proposals: int = 30, seed: int = 0) -> tuple[float, float]:
    """AR@1 of random proposals (one in ten exactly a part) that all score 1.0, as a method without
    confidences writes them: in the file's order, as partdistill ranks ties, and in the paper's."""
    rng = np.random.default_rng(seed)
    meta = Metadata(["thing"], ["left", "right"], {0: [0, 1]})
    left = np.zeros((12, 16), bool)
    left[:, :8] = True
    record = {"height": 12, "width": 16,
              "annotations": [object_record(0, np.ones((12, 16), bool), [part_record(0, left), part_record(1, ~left)])]}
    records, predictions = [], []
    for i in range(images):
        boxes = np.zeros((proposals, 12, 16), bool)
        for k in range(proposals):
            if rng.random() < 0.1:
                boxes[k] = left if rng.random() < 0.5 else ~left
            else:
                y, x = rng.integers(0, 10), rng.integers(0, 14)
                boxes[k, y : y + rng.integers(2, 6), x : x + rng.integers(2, 8)] = True
        records.append({**record, "image_id": i})
        predictions.append(Prediction(boxes, np.zeros(proposals, np.int64), np.ones(proposals, np.float32)))
    return ar_at_1(meta, records, predictions, False), ar_at_1(meta, records, predictions, True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "random"
    if what == "random":
        for seed, paper, ours in measure_random():
            print(f"seed {seed}: C-mIoU paper {paper:.2f}  partdistill {ours:.2f}  difference {ours - paper:+.2f}")
    elif what == "cityscapes":
        print(json.dumps(measure_cityscapes(), indent=1))
    elif what == "ties":
        for seed in range(4):
            ours, paper = measure_ties(seed=seed)
            print(f"seed {seed}: AR@1 with all scores tied: file order (partdistill) {ours:.2f}, "
                  f"the paper's sort order {paper:.2f}")
    else:
        sys.exit(f"usage: python tests/paper_protocol.py random|cityscapes|ties, not {what}")
