"""A task as a standalone model, for a robot with no NetTailor server: ONNX and torch.export (``.pt2``).

One graph holds everything the task computes: the input normalisation, the stem, only the universal
blocks its plan keeps (with its own batch-norm statistics), its proxies, path weights and classifier.
The input is the uint8 image that :meth:`blockstore.Preprocess.to_uint8` makes (EXIF-upright, converted
to grey or RGB, resized bilinearly to ``size x size``), so a caller cannot get the mean and std wrong;
the preprocessing is also written into the model's metadata (ONNX ``metadata_props``, and
``nettailor.json`` inside the ``.pt2``).

The graph is :class:`blockstore.TailoredNet`, the one definition of a task; tests and
``bench/export_parity.py`` check it against the server's executor on real images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from blockstore import Backbone, Preprocess, TailoredNet, TaskPack

from .errors import ConfigError

__all__ = ["ExportResult", "PortableTask", "export_task", "portable_metadata"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
INPUT_DOC = ("uint8 [N, channels, size, size]: the image turned upright by its EXIF orientation, converted to "
             "grey (channels 1) or RGB (channels 3), resized to size x size with bilinear filtering; the mean/std "
             "normalisation below is inside the graph")
OUTPUT_DOC = "float32 logits [N, len(labels)]; softmax gives the probabilities the server reports"


class PortableTask(nn.Module):
    """uint8 images in, logits out.  Registers only the backbone modules the plan keeps, so an export
    carries the stem, the kept blocks and the task's own tensors, and nothing else."""

    def __init__(self, net: TailoredNet, preprocess: Preprocess) -> None:
        super().__init__()
        self.net = net.eval()
        self.preprocess = preprocess
        bb = net.backbone.net
        blocks = net.backbone.blocks
        self.shared = nn.ModuleDict({"conv1": bb.conv1, "bn1": bb.bn1})
        for l in net.plan.blocks_kept:
            self.shared[f"block{l}"] = blocks[l - 1]

    def forward(self, image: Tensor) -> Tensor:
        return self.net(self.preprocess.normalize(image))


def portable_metadata(pack: TaskPack) -> dict[str, str]:
    """String metadata describing the task and how to feed it."""
    pre = pack.preprocess
    return {
        "nettailor_format": "nettailor-portable/1", "task_id": pack.task_id, "version": pack.version,
        "backbone_id": pack.backbone_id, "pack_sha256": pack.sha256, "labels": json.dumps(pack.labels),
        "size": str(pre.size), "channels": str(pre.channels), "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)), "input": INPUT_DOC, "output": OUTPUT_DOC,
        "blocks_kept": json.dumps(list(pack.plan.blocks_kept)), "metrics": json.dumps(pack.metrics, sort_keys=True),
    }


@dataclass
class ExportResult:
    files: dict[str, Path]
    metadata: dict[str, str]
    checks: dict[str, float] = field(default_factory=dict)  # format -> max |logits - TailoredNet's|


def export_task(pack: TaskPack, backbone: Backbone, out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
                opset: int | None = None, check: bool = True) -> ExportResult:
    """Write ``TASK.onnx`` and/or ``TASK.pt2`` (plus ``TASK.json``, the metadata) under ``out_dir``.

    With ``check``, each artefact is run (the ONNX one with onnxruntime when installed) on seeded images
    and compared with the task's TailoredNet; the largest absolute logit difference is reported."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ConfigError(f"export formats are {list(FORMATS)}, not {sorted(unknown) or 'none'}")
    cpu = backbone if next(backbone.parameters()).device.type == "cpu" else Backbone.from_bytes(backbone.to_bytes())
    net = TaskPack.from_bytes(pack.to_bytes()).build(cpu.eval())  # its own tensors: the caller's pack stays as is
    module = PortableTask(net, pack.preprocess).eval()
    pre = pack.preprocess
    example = torch.zeros(2, pre.channels, pre.size, pre.size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    meta = portable_metadata(pack)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"metadata": out_dir / f"{pack.task_id}.json"}
    files["metadata"].write_text(json.dumps(meta, indent=2) + "\n")
    if "pt2" in formats:
        files["pt2"] = out_dir / f"{pack.task_id}.pt2"
        torch.export.save(program, files["pt2"], extra_files={"nettailor.json": json.dumps(meta)})
    if "onnx" in formats:
        files["onnx"] = out_dir / f"{pack.task_id}.onnx"
        _write_onnx(program, example, files["onnx"], meta, opset)
    result = ExportResult(files, meta)
    if check:
        result.checks = _check(module, files, pre)
    return result


def _write_onnx(program: torch.export.ExportedProgram, example: Tensor, path: Path, meta: dict[str, str],
                opset: int | None) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxscript: pip install 'nettailor[export]'") from None
    # The exporter's optimiser logs every pass at INFO; a user wants the file, not its diary.
    chatty = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    try:
        torch.onnx.export(program, (example,), str(path), dynamo=True, input_names=["image"],
                          output_names=["logits"], opset_version=opset, external_data=False, verbose=False)
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    model.doc_string = f"NetTailor task {meta['task_id']} (version {meta['version']}): {meta['input']}"
    onnx.save(model, str(path))


def _check(module: PortableTask, files: dict[str, Path], pre: Preprocess) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, pre.channels, pre.size, pre.size), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        want = module(x)
    checks: dict[str, float] = {}
    if "pt2" in files:
        with torch.no_grad():
            got = torch.export.load(files["pt2"]).module()(x)
        checks["pt2"] = float((got - want).abs().max())
    if "onnx" in files:
        try:
            import onnxruntime as ort
        except ImportError:
            log.warning("onnxruntime is not installed: the ONNX file was not checked")
        else:
            session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
            got_onnx = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
            checks["onnx"] = float((got_onnx - want).abs().max())
    return checks
