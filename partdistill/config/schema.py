"""Structured-config schemas: the types that every YAML option in `conf/` is checked against.

Each YAML option names its schema first in its defaults list (for example
`conf/stage/pixel_grouping.yaml` starts from `schema_pixel_grouping`), so a misspelt key or a
value of the wrong type in a file or an override fails at composition with Hydra's message,
not hours later inside a job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from partdistill.config.stage_schemas import (  # noqa: F401 - the stages' schemas, registered below
    Metric,
    ObjectSource,
    Resume,
    Resources,
    StageConfig,
    PartitionedStageConfig,
    ObjectMasksConfig,
    KMeansConfig,
    DenseCRFConfig,
    PixelGroupingConfig,
    SolverConfig,
    LossConfig,
    AugmentationConfig,
    TrainingStageConfig,
    InstanceTrainingConfig,
    ProposalLearningConfig,
    PartRankingConfig,
    DistillationConfig,
    FinetuneHead,
    FinetuneConfig,
    EvaluateConfig,
    ReportConfig,
    PipelineConfig,
)


class Mapping(Enum):
    majority = "majority"  # each predicted label -> the GT part it overlaps most (paper)
    hungarian = "hungarian"  # one-to-one assignment on the overlaps
    identity = "identity"  # labels already are the dataset's part classes (supervised)


class ObjectClass(Enum):
    synset = "synset"  # PartImageNet: the image's ImageNet synset (paper)
    supercategory = "supercategory"  # PartImageNet: one of its 11 supercategories


# ---------------------------------------------------------------------------------------------
# Groups that choose one option: data, eval, model; the experiment


@dataclass
class DataConfig:
    # dataset folder under $PART_DISTILLATION_ROOT/datasets: imagenet_1k | imagenet_22k | synthetic | ...
    name: str = MISSING
    train: str = MISSING  # catalog name of the training split, e.g. imagenet_1k_train
    num_workers: Optional[int] = None  # image-loading processes per process; null = one per CPU, at most 8


@dataclass
class EvalConfig:
    suite: str = MISSING  # suite name: pascal_parts | part_imagenet | cityscapes_part | synthetic
    dataset: str = MISSING  # dataset folder under $PART_DISTILLATION_ROOT/datasets
    split: str = MISSING  # the split that is scored
    match_split: str = MISSING  # the split the label -> part mapping is learned on
    mapping: Mapping = Mapping.majority
    object_class: ObjectClass = ObjectClass.synset
    predictions: Optional[str] = None  # score this prediction file (JSON / JSON Lines) instead of a model
    match_predictions: Optional[str] = None  # predictions on match_split, when it differs from split
    allow_empty: bool = False  # score a predictions file without records (every metric reads 0) instead of refusing it
    min_gt_iou: float = 0.001  # proposal AR drops proposals whose best IoU with a GT part is not above this
    overlays: int = 4  # PNG overlays of predicted parts written per suite
    proposals: int = 200  # a proposal model's top-scoring masks that are scored (AR@k needs k <= this)


@dataclass
class BackboneConfig:
    type: str = "swin"  # swin | resnet
    embed_dim: int = 192  # Swin: width of the first stage
    depths: List[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: List[int] = field(default_factory=lambda: [6, 12, 24, 48])
    window_size: int = 12
    image_size: int = 384  # Swin pre-training resolution (sets its position bias tables)


@dataclass
class ModelConfig:
    name: str = MISSING
    pretrained: Optional[str] = None  # hub id or local folder of transformers weights; null = from config
    weights: Optional[str] = None  # a partdistill run folder or checkpoint to load after building
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden_dim: int = 256  # pixel decoder / transformer decoder width
    num_queries: int = 200
    decoder_layers: int = 10


@dataclass
class ExperimentConfig:
    name: str = MISSING  # paper | compute_friendly | smoke | demo: names the run folder
    description: str = ""


# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    data: DataConfig = MISSING
    eval: EvalConfig = MISSING
    model: ModelConfig = MISSING
    experiment: ExperimentConfig = MISSING
    stage: Any = MISSING  # one of the stage schemas above, chosen by the stage group
    # the experiment's values of every stage, merged into `stage` right after composition and removed
    stages: Optional[Dict[str, Any]] = None
    run_dir: str = MISSING  # where the stages of one run meet: store, checkpoints, results
    dry_run: bool = False  # print the plan (stages, datasets, jobs, resources) and exit
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


SCHEMAS = {
    "schema_config": Config,
    "schema_instance_training": InstanceTrainingConfig,
    "schema_object_masks": ObjectMasksConfig,
    "schema_pixel_grouping": PixelGroupingConfig,
    "schema_proposal_learning": ProposalLearningConfig,
    "schema_part_ranking": PartRankingConfig,
    "schema_distillation": DistillationConfig,
    "schema_evaluate": EvaluateConfig,
    "schema_report": ReportConfig,
    "schema_finetune": FinetuneConfig,
    "schema_pipeline": PipelineConfig,
}
