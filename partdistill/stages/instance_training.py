"""Stage 0 `instance_training`: the object instance-segmentation Mask2Former the method starts from.

The method's premise is that a model trained to segment *objects* carries part structure in its
features. At scale that model is the COCO instance Mask2Former (`model.pretrained=<hub id or folder>`);
where nothing can be downloaded (the built-in synthetic data, `experiment=demo`) this stage trains
one on any dataset whose records carry objects (`data.train`): every object annotation is an
instance labelled with its object class. It runs on the engine like the other training stages
(resumable, checkpoints under run_dir/instance_training/), is evaluated every `stage.eval_period`
and at the end by the IoU of its top instance with the ground-truth object on the run's suite
(`eval=`), and writes its result with `save_pretrained` to `stage.export` (config.json with the
class names + model.safetensors), the folder that `object_masks` and `pixel_grouping` then load
through `model.pretrained=<folder>`, exactly as they load the COCO model.

    python launch.py experiment=demo stage=instance_training
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from partdistill.data import catalog
from partdistill.data.augmentation import InstanceDataset
from partdistill.engine.distributed import is_main_process
from partdistill.errors import UserError
from partdistill.evaluation.instances import TopInstanceIoUEvaluator
from partdistill.models.export import save_pretrained_folder
from partdistill.models.inputs import to_model_sample
from partdistill.models.losses import configure_loss, loss_terms
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages.common import device_of
from partdistill.stages.inference import proposals
from partdistill.stages.training import score, split_records, train

STAGE = "instance_training"


def training_items(records: list[dict]) -> list[dict]:
    """{"file_name", "segments": [object RLE, ...], "labels": [object class, ...]} per image with objects."""
    return [{"file_name": r["file_name"], "segments": [a["segmentation"] for a in r["annotations"]],
             "labels": [int(a["category_id"]) for a in r["annotations"]]}
            for r in records if r.get("annotations")]


def model_options(cfg: DictConfig) -> dict:
    """The model config this stage builds: from config alone when model.pretrained is this stage's own
    export (the stages after it load that folder), else starting from model.pretrained."""
    options = OmegaConf.to_container(cfg.model, resolve=True)
    if options.get("pretrained") and Path(options["pretrained"]).expanduser().resolve() == Path(cfg.stage.export).resolve():
        options["pretrained"] = None
    return options


def evaluate_instances(model, dataset: str, size: int, device, batch_size: int, limit: int | None = None) -> dict:
    """{dataset: top-instance IoU} of the model on a catalog split (e.g. synthetic_val)."""
    name, records = split_records(dataset, limit)
    return {name: score(model, TopInstanceIoUEvaluator(), records, proposals(1), size, device, batch_size).evaluate()}


def run(cfg: DictConfig) -> dict:
    s = cfg.stage
    records = catalog.load(cfg.data.train, project_root())
    items = training_items(records)
    if not items:
        raise UserError(f"{STAGE}: no image of {cfg.data.train} has object annotations; train the instance "
                        "model on a dataset with objects (data=synthetic or data=demo), or give a trained one "
                        "with model.pretrained=<folder or hub id> and skip this stage")
    classes = list(catalog.metadata(cfg.data.train, project_root()).thing_classes)
    model = build_model(model_options(cfg), num_labels=len(classes))
    configure_loss(model, s.loss)
    device, scored = device_of(cfg), f"{cfg.eval.dataset}_{cfg.eval.split}"

    def evaluate(m):
        return evaluate_instances(m, scored, int(s.augmentation.base_size), device, int(s.eval_batch_size),
                                  s.eval_images)

    result = train(cfg, STAGE, model, InstanceDataset(items, s.augmentation, to_model_sample), loss_terms, evaluate,
                   {"images": len(items), "objects": sum(len(i["segments"]) for i in items)},
                   head={"kind": "instances", "num_labels": len(classes), "classes": classes})
    if is_main_process():
        save_pretrained_folder(model, Path(s.export), classes)
        print(f"{STAGE}: instance model -> {s.export} (load it with model.pretrained={s.export})")
    return result
