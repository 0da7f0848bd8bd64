"""Tiny MONAI Model Zoo bundles built by the tests, in exactly the zoo's layouts.

Each is what the zoo ships: ``configs/metadata.json``, ``configs/inference.json`` (the zoo's
keys: ``dataset``/``dataloader`` reading a data list from files, ``evaluator``, ``handlers``,
``checkpointloader``, ``run``), ``models/model.pt`` (a state_dict), ``docs/README.md`` and, for
detection, ``scripts/`` with the zoo's ``RetinaNetInferer``. A ``radpipe.json`` sidecar with
routing rules is added when asked (a zoo bundle has none of its own).

* segmentation: a 3-D UNet, 2 labels + background, softmax / Invertd / argmax / SaveImaged;
  ``network="threshold"`` swaps in a 1x1x1 convolution whose argmax is a known HU threshold
  (label 1 from -400 HU, label 2 from 200 HU), so the tests know the expected label map;
* detection: the lung_nodule_ct_detection layout (MONAI's RetinaNet and RetinaNetDetector on
  a tiny feature pyramid shipped in the bundle's ``scripts/``, as the zoo's ResNet-50 FPN needs
  torchvision; anchors, ``detector_ops``, ClipBoxToImaged / AffineBoxToWorldCoordinated /
  ConvertBoxModed), its classification head's bias raised so random weights yield boxes;
* classification: a small DenseNet, softmax over 2 classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import torch

ROUTING = [{"modality": ["CT"], "min_instances": 3}]


def sample_series() -> list[pydicom.Dataset]:
    """A chest phantom with a bright block in one corner (left, anterior, caudal), so a flipped
    axis anywhere would misplace it: what the zoo bundles are run on."""
    from radpipe.demo import make_phantom, phantom_to_datasets

    phantom = make_phantom(3, nodules=[12.0], shape=(24, 64, 64), spacing=(2.5, 3.0, 3.0))
    phantom.volume[2:8, 4:16, 44:60] = 600.0
    return phantom_to_datasets(phantom)


_COMMON: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network": "$@network_def.to(@device)",
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 4,
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        {"_target_": "StatsHandler", "iteration_log": False},
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": True,
    },
    "initialize": ["$monai.utils.set_determinism(seed=123)"],
    "run": ["$@evaluator.run()"],
}


def _metadata(name: str, task: str, pred: dict[str, Any], spatial: list[int]) -> dict[str, Any]:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "built by Radpipe's tests"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "optional_packages_version": {},
        "name": name,
        "task": task,
        "description": f"A tiny {task} bundle built by Radpipe's tests (random weights).",
        "authors": "Radpipe tests",
        "copyright": "Copyright (c) Radpipe contributors",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {"pred": pred},
        },
    }


def _write(
    root: Path,
    metadata: dict[str, Any],
    inference: dict[str, Any],
    state: dict[str, torch.Tensor],
    routing: bool,
) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    torch.save(state, root / "models" / "model.pt")
    (root / "docs" / "README.md").write_text(f"# {metadata['name']}\n\n{metadata['description']}\n")
    if routing:
        (root / "radpipe.json").write_text(json.dumps({"routing": ROUTING}))
    return root


def _load(spacing: list[float], key: str = "image") -> list[dict[str, Any]]:
    return [
        {"_target_": "LoadImaged", "keys": key},
        {"_target_": "EnsureChannelFirstd", "keys": key},
        {"_target_": "Orientationd", "keys": key, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": key, "pixdim": spacing, "mode": "bilinear"},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": key,
            "a_min": -1000,
            "a_max": 1000,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "EnsureTyped", "keys": key},
    ]


def segmentation_bundle(
    root: Path, *, network: str = "unet", routing: bool = True, name: str = "tiny_seg"
) -> Path:
    """A 2-label segmentation bundle (spleen_ct_segmentation's layout)."""
    torch.manual_seed(7)
    if network == "unet":
        network_def: dict[str, Any] = {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 1,
            "norm": "batch",
        }
        from monai.networks.nets import UNet

        model = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")
        state = model.state_dict()
    else:
        network_def = {
            "_target_": "torch.nn.Conv3d",
            "in_channels": 1,
            "out_channels": 3,
            "kernel_size": 1,
        }
        # x = (HU + 1000) / 2000: logits 0, 100x - 30 (> 0 from -400 HU), 300x - 150 (over
        # channel 1 from 200 HU)
        state = {
            "weight": torch.tensor([0.0, 100.0, 300.0]).reshape(3, 1, 1, 1, 1),
            "bias": torch.tensor([0.0, -30.0, -150.0]),
        }
    inference = {
        **_COMMON,
        "network_def": network_def,
        "preprocessing": {"_target_": "Compose", "transforms": _load([3.0, 3.0, 5.0])},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [32, 32, 16],
            "sw_batch_size": 2,
            "overlap": 0.25,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "meta_key_postfix": "meta_dict",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "resample": False,
                },
            ],
        },
    }
    pred = {
        "type": "image",
        "format": "segmentation",
        "num_channels": 3,
        "spatial_shape": [32, 32, 16],
        "dtype": "float32",
        "value_range": [0, 1, 2],
        "is_patch_data": False,
        "channel_def": {"0": "background", "1": "lung", "2": "dense tissue"},
    }
    metadata = _metadata(name, "Segmentation of two labels in CT", pred, [32, 32, 16])
    return _write(root, metadata, inference, state, routing)


DETECTOR_INFERER = '''\
# The zoo's lung_nodule_ct_detection scripts/detection_inferer.py (its logic).
from typing import Any, List, Union

import numpy as np
import torch
from monai.inferers.inferer import Inferer
from torch import Tensor


class RetinaNetInferer(Inferer):
    """RetinaNet Inferer takes RetinaNet as input."""

    def __init__(self, detector: torch.nn.Module, force_sliding_window: bool = False) -> None:
        Inferer.__init__(self)
        self.detector = detector
        self.sliding_window_size = None
        self.force_sliding_window = force_sliding_window
        if self.detector.inferer is not None:
            if hasattr(self.detector.inferer, "roi_size"):
                self.sliding_window_size = np.prod(self.detector.inferer.roi_size)

    def __call__(
        self, inputs: Union[List[Tensor], Tensor], network: torch.nn.Module, *args: Any, **kw: Any
    ):
        self.detector.network = network
        self.detector.training = self.detector.network.training
        use_inferer = self.force_sliding_window or (
            self.sliding_window_size is not None
            and not all([data_i[0, ...].numel() < self.sliding_window_size for data_i in inputs])
        )
        return self.detector(inputs, use_inferer=use_inferer, *args, **kw)
'''


TINY_FPN = '''\
from collections import OrderedDict

import torch


class TinyFPN(torch.nn.Module):
    """Three feature levels (strides 2x2x1, 4x4x2, 8x8x4), as the anchors' scales 1, 2, 4."""

    def __init__(self, out_channels: int = 8) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.c1 = torch.nn.Conv3d(1, out_channels, 3, stride=(2, 2, 1), padding=1)
        self.c2 = torch.nn.Conv3d(out_channels, out_channels, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv3d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        f1 = torch.relu(self.c1(x))
        f2 = torch.relu(self.c2(f1))
        f3 = torch.relu(self.c3(f2))
        return OrderedDict([("0", f1), ("1", f2), ("pool", f3)])
'''


def detection_bundle(root: Path, *, routing: bool = True, name: str = "tiny_det") -> Path:
    """A RetinaNet bundle in lung_nodule_ct_detection's layout (tiny ResNet-10 backbone)."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet

    torch.manual_seed(11)
    inference = {
        **_COMMON,
        "imports": ["$import glob", "$import numpy", "$import os"],
        "image_key": "image",
        "amp": True,
        "spatial_dims": 3,
        "num_classes": 1,
        "size_divisible": [16, 16, 8],
        "infer_patch_size": [64, 64, 32],
        "anchor_generator": {
            "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
            "feature_map_scales": [1, 2, 4],
            "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]],
        },
        # the zoo's is resnet_fpn_feature_extractor (ResNet-50 FPN, needs torchvision): a tiny
        # one from the bundle's scripts, same interface (out_channels; a dict of 3 levels)
        "feature_extractor": {"_target_": "scripts.tiny_fpn.TinyFPN", "out_channels": 8},
        "network_def": {
            "_target_": "RetinaNet",
            "spatial_dims": "@spatial_dims",
            "num_classes": "@num_classes",
            "num_anchors": 3,
            "feature_extractor": "@feature_extractor",
            "size_divisible": "@size_divisible",
            "use_list_output": False,
        },
        "detector": {
            "_target_": "RetinaNetDetector",
            "network": "@network",
            "anchor_generator": "@anchor_generator",
            "debug": False,
            "spatial_dims": "@spatial_dims",
            "num_classes": "@num_classes",
            "size_divisible": "@size_divisible",
        },
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            "$@detector.set_box_selector_parameters(score_thresh=0.02,topk_candidates_per_level=50,nms_thresh=0.22,detections_per_img=20)",
            "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,mode='constant',device='cpu')",
        ],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [3.0, 3.0, 4.0]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "@image_key",
                    "a_min": -1024.0,
                    "a_max": 300.0,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
        "dataloader": {
            **_COMMON["dataloader"],
            "collate_fn": "$monai.data.utils.no_collation",
        },
        "inferer": {
            "_target_": "scripts.detection_inferer.RetinaNetInferer",
            "detector": "@detector",
            "force_sliding_window": False,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "ClipBoxToImaged",
                    "box_keys": "box",
                    "label_keys": "label",
                    "box_ref_image_keys": "@image_key",
                    "remove_empty": True,
                },
                {
                    "_target_": "AffineBoxToWorldCoordinated",
                    "box_keys": "box",
                    "box_ref_image_keys": "@image_key",
                    "affine_lps_to_ras": True,
                },
                {
                    "_target_": "ConvertBoxModed",
                    "box_keys": "box",
                    "src_mode": "xyzxyz",
                    "dst_mode": "cccwhd",
                },
                {"_target_": "DeleteItemsd", "keys": ["@image_key"]},
            ],
        },
        "evaluator": {
            "_target_": "scripts.evaluator.DetectionEvaluator",
            "_requires_": "@detector_ops",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@amp",
        },
    }
    namespace: dict[str, Any] = {}
    exec(TINY_FPN, namespace)  # the same code the bundle ships in scripts/tiny_fpn.py
    extractor = namespace["TinyFPN"](out_channels=8)
    model = RetinaNet(3, 1, 3, extractor, size_divisible=[16, 16, 8], use_list_output=False)
    with torch.no_grad():  # confident boxes from random weights (the prior bias is -4.6)
        model.classification_head.cls_logits.bias.fill_(3.0)
    pred = {
        "type": "object",
        "format": "bbox",
        "num_channels": 1,
        "spatial_shape": [64, 64, 32],
        "dtype": "float32",
        "value_range": [-10000, 10000],
        "is_patch_data": False,
        "channel_def": {"0": "nodule"},
    }
    metadata = _metadata(name, "Lung nodule detection in CT (boxes)", pred, [64, 64, 32])
    _write(root, metadata, inference, model.state_dict(), routing)
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "detection_inferer.py").write_text(DETECTOR_INFERER)
    (root / "scripts" / "tiny_fpn.py").write_text(TINY_FPN)
    (root / "scripts" / "evaluator.py").write_text(
        "# The zoo's DetectionEvaluator (ignite); never instantiated by Radpipe.\n"
    )
    return root


def classification_bundle(root: Path, *, routing: bool = True, name: str = "tiny_cls") -> Path:
    """A 2-class classification bundle (a DenseNet, softmax)."""
    from monai.networks.nets import DenseNet

    torch.manual_seed(5)
    kwargs = {"init_features": 4, "growth_rate": 4, "block_config": [2, 2], "bn_size": 2}
    network_def = {
        "_target_": "DenseNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        **kwargs,
    }
    model = DenseNet(3, 1, 2, **kwargs)  # type: ignore[arg-type]
    transforms = _load([3.0, 3.0, 3.0])
    transforms.insert(4, {"_target_": "Resized", "keys": "image", "spatial_size": [32, 32, 32]})
    inference = {
        **_COMMON,
        "network_def": network_def,
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
    }
    pred = {
        "type": "probabilities",
        "format": "classes",
        "num_channels": 2,
        "spatial_shape": [2],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "no nodule", "1": "nodule"},
    }
    metadata = _metadata(name, "Nodule present or not (classification)", pred, [32, 32, 32])
    return _write(root, metadata, inference, model.state_dict(), routing)


BRIGHTEST_BOX = '''\
import torch


class BrightestBox:
    """An inferer in the zoo's detection output format (a list of {box, label, label_scores},
    boxes xyzxyz in voxels of the pre-processed image): the box around the voxels at the top
    of the intensity window, so the tests know where it lies in the patient."""

    def __call__(self, inputs, network, *args, **kwargs):
        out = []
        for image in inputs:
            index = torch.nonzero(image[0] >= 0.999).float()
            box = torch.cat([index.min(0).values, index.max(0).values + 1.0])[None]
            out.append(
                {"box": box, "label": torch.zeros(1, dtype=torch.long),
                 "label_scores": torch.tensor([0.9])}
            )
        return out
'''


def stub_detection_bundle(root: Path) -> Path:
    """The detection layout with an inferer whose one box is known: around the voxels at or
    above 300 HU (the top of the window)."""
    detection_bundle(root, routing=False, name="stub_det")
    config = json.loads((root / "configs" / "inference.json").read_text())
    for key in ("detector", "detector_ops", "anchor_generator", "feature_extractor"):
        config.pop(key)
    config["network_def"] = {"_target_": "torch.nn.Identity"}
    config["inferer"] = {"_target_": "scripts.brightest.BrightestBox"}
    config["evaluator"].pop("_requires_")
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    torch.save({}, root / "models" / "model.pt")
    (root / "scripts" / "brightest.py").write_text(BRIGHTEST_BOX)
    return root
