"""The stages of the method by name, in the order a pipeline runs them, and what kind each is."""
from __future__ import annotations

STAGE_ORDER = ("instance_training", "object_masks", "pixel_grouping", "proposal_learning", "part_ranking",
               "distillation", "evaluate", "report")
STAGES = STAGE_ORDER + ("finetune",)
PARTITIONED = ("object_masks", "pixel_grouping", "part_ranking")  # a job array over their partitions
TRAINING = ("instance_training", "proposal_learning", "distillation", "finetune")  # one (multi-node) job
