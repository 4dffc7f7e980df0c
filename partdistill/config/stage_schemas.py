"""The stages' schemas: the options of each stage (`stage.*`), with their types and defaults.

An experiment's values for them live in conf/experiment/<name>.yaml under stages.<stage>; their
ranges in `ranges.py`. `schema.py` registers them with Hydra.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import II, MISSING


class Metric(Enum):
    dot = "dot"  # f . c against Euclidean centroids (the paper's scripts)
    l2 = "l2"  # 2 f . c - |f|^2 - |c|^2, i.e. nearest centroid


class ObjectSource(Enum):
    model = "model"  # most confident instance of the instance-segmentation model
    gt = "gt"  # ground-truth object masks, where the dataset has them


class Resume(Enum):
    auto = "auto"  # continue from the newest complete checkpoint in the run folder
    never = "never"  # start from the initial weights even if checkpoints exist
    # as auto, but checkpoints made under another configuration (which auto refuses) are removed and
    # training starts over in place; a requeued job of the new configuration then resumes its own
    restart = "restart"


@dataclass
class Resources:
    nodes: int = 1  # SLURM nodes for one job of this stage
    gpus_per_node: int = 8  # 0 = a CPU job
    tasks_per_node: int = II(".gpus_per_node")  # processes per node: one per GPU (CPU jobs: set 1)


@dataclass
class StageConfig:
    name: str = MISSING
    resources: Resources = field(default_factory=Resources)


@dataclass
class PartitionedStageConfig(StageConfig):
    num_partitions: int = 1  # P: the dataset index is split by class into P partitions
    partition: Optional[int] = None  # i in 0..P-1; null = every partition, one after another
    batch_size: int = 8  # images per forward pass
    image_size: int = 640  # images are resized to fit image_size x image_size
    allow_empty: bool = False  # accept a complete store with no record (otherwise the stage fails, naming why)


@dataclass
class ObjectMasksConfig(PartitionedStageConfig):
    source: ObjectSource = ObjectSource.model
    score_threshold: float = 0.0  # instances below this score are not kept


@dataclass
class KMeansConfig:
    k: int = 4  # clusters per object
    iters: int = 20  # Lloyd iterations
    tol: float = 1e-4  # stop early when centroids move less than this (relative)
    init: str = "k-means++"  # k-means++ | first
    n_init: int = 1  # restarts; the best inertia is kept


@dataclass
class DenseCRFConfig:
    enabled: bool = False
    iterations: int = 10
    unary_gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 20.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


@dataclass
class PixelGroupingConfig(PartitionedStageConfig):
    feature_keys: List[str] = field(default_factory=lambda: ["res3", "res4"])
    normalize: bool = False  # L2-normalise feature vectors before clustering
    metric: Metric = Metric.dot  # how full-resolution pixels are assigned to centroids
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    dcrf: DenseCRFConfig = field(default_factory=DenseCRFConfig)
    # score the grouping itself instead: its clusters as part proposals (score 1) on the eval suite's
    # split with its ground-truth objects, by part AR (the paper: eval=part_imagenet, valtest)
    evaluate: bool = False
    # after writing the store, score the grouping that way on these suites too (run_dir/pixel_grouping/)
    eval_suites: List[str] = field(default_factory=list)


@dataclass
class SolverConfig:
    ims_per_batch: int = MISSING  # global batch size, over all processes
    base_lr: float = 1e-4
    max_iter: int = MISSING
    steps: List[int] = field(default_factory=list)  # lr x gamma at each of these iterations
    gamma: float = 0.1
    warmup_iters: int = 10
    warmup_factor: float = 1.0
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1  # backbone lr = base_lr x this
    clip_grad_norm: float = 0.01  # full-model L2 clipping; <= 0 disables
    amp: bool = True  # bf16 autocast on GPU (CPU runs stay fp32)


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.0


@dataclass
class AugmentationConfig:
    base_size: int = 640  # resize to fit, then the fixed-size crop
    flip: bool = True
    crop_relative: float = 0.9  # relative random crop (detectron2 "relative_range")
    min_scale: float = 0.1  # scale jitter range
    max_scale: float = 2.0
    retries: int = 100  # attempts before falling back to the weak augmentation


@dataclass
class TrainingStageConfig(StageConfig):
    solver: SolverConfig = field(default_factory=SolverConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    freeze: List[str] = field(
        default_factory=lambda: ["model.pixel_level_module.encoder", "model.pixel_level_module.decoder.encoder"]
    )  # parameter-name prefixes excluded from training (backbone, deformable encoder)
    eval_suites: List[str] = field(default_factory=list)  # suites evaluated every eval_period
    eval_period: int = 10000
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    resume: Resume = Resume.auto
    num_workers: Optional[int] = None  # loader processes per process; null = one per CPU, at most 8
    eval_images: Optional[int] = None  # images per suite the periodic evaluation scores; null = all
    eval_batch_size: int = 2  # images per forward pass of the periodic evaluation
    # start from a trained partdistill model (a stage folder such as ${run_dir}/proposal_learning, its
    # checkpoints folder or a model file): all its weights but the class head; null = model.pretrained
    init_from: Optional[str] = None


@dataclass
class InstanceTrainingConfig(TrainingStageConfig):
    freeze: List[str] = field(default_factory=list)  # an instance model from scratch trains every weight
    # the save_pretrained folder written at the end; the later stages load it with model.pretrained=<it>
    export: str = "${run_dir}/instance_training/pretrained"


@dataclass
class ProposalLearningConfig(TrainingStageConfig):
    min_object_area_ratio: float = 0.05  # skip images whose object covers less of the image
    min_area_ratio: float = 0.05  # drop part masks below this share of all part area
    min_score: float = -1.0


@dataclass
class PartRankingConfig(PartitionedStageConfig):
    num_clusters: int = 8  # part clusters per object class
    detections_per_image: int = 200
    min_score_1: float = 0.3  # cluster pass: proposal score filter
    min_area_ratio_1: float = 0.05  # cluster pass: part area / object area filter
    min_score_2: float = 0.1  # label pass
    min_area_ratio_2: float = 0.05
    classifier_metric: Metric = Metric.l2  # centroids as a classifier: l2 = nearest centroid, dot = f . c
    feature_norm: bool = True  # L2-normalise query features before clustering and classifying
    min_object_iou: float = 0.001  # both passes: parts must overlap the object mask by more than this IoU
    # per-class k-means (k = num_clusters, k-means++ seeding from `seed` and the partition): the paper
    # ran scikit-learn 1.1.1's KMeans(random_state=0), i.e. n_init 10, max_iter 300, tol 1e-4
    kmeans_iters: int = 300
    kmeans_tol: float = 1e-4
    kmeans_n_init: int = 10


@dataclass
class DistillationConfig(TrainingStageConfig):
    num_part_classes: int = 8  # part classes per object class (= part_ranking.num_clusters)
    min_object_area_ratio: float = 0.05
    min_area_ratio: float = 0.05
    min_score: float = -1.0
    query_feature_normalize: bool = False  # L2-normalise query embeddings before the class head (1K)


class FinetuneHead(Enum):
    semseg = "semseg"  # one class per part class of the dataset, one mask per class present (semantic)
    prop = "prop"  # class-agnostic: every part instance is a mask of the one class "part"


@dataclass
class FinetuneConfig(TrainingStageConfig):
    fraction: float = 1.0  # share of the training images used, in (0, 1] (few-shot: 0.01 .. 1.0)
    subset_seed: int = 1234  # the subset is stable for a seed and nested as fraction grows (paper: 1234)
    head: FinetuneHead = FinetuneHead.semseg


@dataclass
class EvaluateConfig(StageConfig):
    batch_size: int = 8  # images per forward pass
    # the trained model to score: a training stage's folder or checkpoint; null = model.weights
    weights: Optional[str] = None
    # where metrics, predictions and overlays go; null = the job's own output folder (Hydra's)
    out: Optional[str] = None


@dataclass
class ReportConfig(StageConfig):
    out: str = "${run_dir}/report"  # the folder of the summary (Markdown, CSV, JSON) and the figures
    images: int = 4  # val images (rows) per figure
    random_seeds: int = 5  # the random control is the mean over seeds 0..random_seeds-1


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    stages: List[str] = field(default_factory=list)  # run in this order, each reading the last one's outputs
    # the suites its evaluation scores, one after another here, one SLURM job each (empty: the run's eval=)
    eval_suites: List[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    # the pipeline composes every stage's own config under its name (stage.<name>.*)
    instance_training: Any = None
    object_masks: Any = None
    pixel_grouping: Any = None
    proposal_learning: Any = None
    part_ranking: Any = None
    distillation: Any = None
    evaluate: Any = None
    report: Any = None
