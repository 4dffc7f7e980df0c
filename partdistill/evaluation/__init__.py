"""Evaluation: evaluators with one protocol (reset / process(records, predictions) / evaluate / state /
merge), saved-prediction scoring, result files, and the multirun summary table.

- part_miou.PartMIoUEvaluator      unsupervised part mIoU (majority / hungarian / identity mapping)
- proposals.ProposalAREvaluator    class-agnostic part proposal AR@k, overlapping and not
- coco_ap.PartAPEvaluator          COCO-style part instance AP/AR (pycocotools COCOeval)
- supervised.SupervisedMIoUEvaluator  standard mIoU over the dataset's own part classes
"""
