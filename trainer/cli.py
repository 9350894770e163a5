"""The trainer's ``nettailor`` subcommands: pretrain, teacher, student, prune, finetune, tailor, publish, inspect.

Stages run one at a time exchange files in ``--work-dir``: ``teacher.safetensors`` + ``teacher.json``,
``student.pack`` + ``student.json``, ``pruned.pack``, ``finetuned.pack`` + ``finetuned.json`` (packs are
safetensors with JSON metadata).  Heavy imports happen inside the handlers so ``nettailor --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cli_args import (
    add_backbone_args,
    add_data_args,
    add_student_args,
    add_train_args,
    data_config,
    default_task_id,
    parse_sweep,
    student_kwargs,
    train_kwargs,
)
from .errors import ConfigError

__all__ = ["register"]

log = logging.getLogger("nettailor.trainer")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train a universal backbone on a source data set and store it")
    add_data_args(p, default="fashion+shapes")
    add_train_args(p, lr=0.05, budget=": 3 passes within [500, 3000] steps")
    p.add_argument("--arch", default="resnet18", help="resnet10, resnet18, resnet34 or resnet50 (default resnet18)")
    p.add_argument("--stem", default="imagenet",
                   help="imagenet, 3x3s1 or 3x3s2 (default imagenet: about 3x faster to train at 32 px on a CPU)")
    p.add_argument("--store", default=None, help="store URL or directory (default NETTAILOR_STORE or .nettailor/store)")
    p.add_argument("--no-default", action="store_true", help="store the backbone without making it the default")
    p.add_argument("--out", type=Path, default=None, help="also write the backbone .safetensors here")
    p.add_argument("--work-dir", type=Path, default=Path(".nettailor/work/pretrain"),
                   help="where the per-epoch checkpoint lives (default .nettailor/work/pretrain)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("teacher", help="fine-tune the whole pre-trained network on the target task")
    _stage_common(p)
    add_train_args(p, lr=0.01, budget=": 6 passes within [300, 1500] steps, stopped early on validation")
    p.set_defaults(func=_teacher)

    p = sub.add_parser("student", help="train the proxy-augmented student (needs the teacher in --work-dir)")
    _stage_common(p)
    add_train_args(p, lr=0.03, budget=": 6 passes within [400, 2000] steps, stopped when validation and the "
                                     "alphas have settled")
    add_student_args(p)
    p.set_defaults(func=_student)

    p = sub.add_parser("prune", help="prune a trained student's plan with the exclusion rules")
    add_backbone_args(p)
    p.add_argument("--work-dir", type=Path, default=Path(".nettailor/work/task"), help="stage files (default "
                   ".nettailor/work/task)")
    p.add_argument("--input", type=Path, default=None, help="student pack (default WORK_DIR/student.pack)")
    p.add_argument("--output", type=Path, default=None, help="pruned pack (default WORK_DIR/pruned.pack)")
    p.add_argument("--threshold", type=float, default=0.05, help="drop proxies with alpha below this (default 0.05)")
    p.add_argument("--blocks", type=int, default=0, help="n: drop the n lowest-alpha universal blocks (default 0)")
    p.set_defaults(func=_prune)

    p = sub.add_parser("finetune", help="retrain a pruned net's task parameters with gamma1 = 0")
    _stage_common(p)
    add_train_args(p, lr=0.03, budget=": 10 passes within [400, 1500] steps, stopped early on validation")
    p.add_argument("--input", type=Path, default=None, help="pruned pack (default WORK_DIR/pruned.pack)")
    p.add_argument("--output", type=Path, default=None, help="result pack (default WORK_DIR/finetuned.pack)")
    p.add_argument("--gamma2", type=float, default=10.0, help="weight of the distillation Omega (default 10)")
    p.set_defaults(func=_finetune)

    _register_tailor(sub)

    p = sub.add_parser("publish", help="register a pack with a store (Redis URL or directory)")
    p.add_argument("pack", type=Path, help="the .pack file")
    p.add_argument("--store", default=None, help="store URL or directory (default NETTAILOR_STORE or .nettailor/store)")
    p.add_argument("--backbone-file", type=Path, default=None, help="also upload this backbone .safetensors")
    p.set_defaults(func=_publish)

    p = sub.add_parser("inspect", help="print a pack's plan, parameters, FLOPs and metrics")
    p.add_argument("pack", type=Path, help="the .pack file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--store", default=None, help="store holding the pack's backbone, for alphas and exact cost "
                                                 "(default NETTAILOR_STORE or .nettailor/store)")
    p.add_argument("--backbone-file", type=Path, default=None, help="the pack's backbone .safetensors")
    p.set_defaults(func=_inspect)

    from .evaluate import register as register_evaluate

    register_evaluate(sub)


def _register_tailor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tailor", help="teacher -> student -> sweep of n -> fine-tune -> select, ending in a pack")
    _stage_common(p)
    add_train_args(p, "teacher", lr=0.01, title="teacher", shared=False,
                   budget=": 6 passes within [300, 1500] steps, stopped early on validation")
    add_train_args(p, "student", lr=0.03, title="student", shared=False,
                   budget=": 6 passes within [400, 2000] steps, stopped when validation and the alphas have settled")
    add_train_args(p, "finetune", lr=0.03, title="fine-tune (each candidate of the sweep) and shared loop flags",
                   budget=": 10 passes within [400, 1500] steps, stopped early on validation")
    add_student_args(p)
    g = p.add_argument_group("selection and output")
    g.add_argument("--threshold", type=float, default=0.05, help="drop proxies with alpha below this (default 0.05)")
    g.add_argument("--sweep", default=None, help="values of n to try: '0,2,4' or '0-5' (default 0..L-1)")
    g.add_argument("--tolerance", type=float, default=0.5,
                   help="keep the leanest net within this many accuracy points of the teacher on validation "
                        "(default 0.5)")
    g.add_argument("--version", default="1", help="pack version string (default 1)")
    g.add_argument("--out", type=Path, default=None, help="pack file (default runs/TASK/TASK.pack)")
    g.add_argument("--report-dir", type=Path, default=None, help="report JSON and PNGs (default runs/TASK)")
    g.add_argument("--publish", action="store_true", help="register the pack with --store when done")
    p.set_defaults(func=_tailor)


def _stage_common(p: argparse.ArgumentParser) -> None:
    add_backbone_args(p)
    add_data_args(p)
    p.add_argument("--task-id", default=None, help="task id (default: derived from --dataset)")
    p.add_argument("--work-dir", type=Path, default=None, help="stage files (default .nettailor/work/TASK)")


# -- helpers ---------------------------------------------------------------------------------------


def _backbone(args: argparse.Namespace, device: str | None = None):
    from blockstore import Backbone, BackboneConfig, UnsupportedFormat, load_backbone, load_resident, open_store
    from blockstore.errors import BackboneError, CorruptPack, WeightsUnavailable

    from .engine import select_device

    dev = select_device(device)
    if args.backbone_file is None:
        store = open_store(args.store)
        try:
            return load_resident(store, args.backbone_id, dev)
        finally:
            store.close()
    path: Path = args.backbone_file
    if not path.is_file():
        raise WeightsUnavailable(f"backbone file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return Backbone.from_bytes(path.read_bytes()).freeze().eval().to(dev)
        except (UnsupportedFormat, CorruptPack, BackboneError) as e:
            if not isinstance(e, UnsupportedFormat):
                raise BackboneError(f"{path}: {e.detail}") from None
    size = getattr(args, "size", 32)
    bb = load_backbone(BackboneConfig(args.arch, args.stem, size, 1000), str(path))
    return bb.freeze().eval().to(dev)


def _task(args: argparse.Namespace, backbone):
    """Task id, work dir and data, resized to the backbone's input size unless --size says otherwise."""
    from blockstore import validate_task_id

    from .data import load_task

    task_id = validate_task_id(args.task_id or default_task_id(args.dataset))
    work = args.work_dir or Path(".nettailor/work") / task_id
    data = load_task(data_config(args, backbone.config.input_size), getattr(backbone, "normalization", None))
    log.info("%s", data.summary())
    return task_id, work, data


def is_main() -> bool:
    """Rank 0, or the only process (imported lazily: ``nettailor --help`` must not import torch)."""
    from .distributed import is_main as main_rank

    return main_rank()


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _brief(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "history"}


# -- handlers --------------------------------------------------------------------------------------


def _pretrain(args: argparse.Namespace) -> int:
    from blockstore.stores import save_backbone

    from .data import load_task
    from .pretrain import PretrainConfig, pretrain

    data = load_task(data_config(args))
    log.info("%s", data.summary())
    config = PretrainConfig(arch=args.arch, stem=args.stem, **train_kwargs(args, defaults=PretrainConfig))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.work_dir / f"{args.arch}-{args.stem}.ckpt.safetensors"
    bb, metrics = pretrain(data, config, ckpt)
    if not is_main():  # under torchrun, rank 0 stores the backbone
        return 0
    bid, _, _ = save_backbone(bb.to_bytes(), args.store, make_default=not args.no_default, out=args.out)
    ckpt.unlink(missing_ok=True)
    _print({"backbone_id": bid, "store": args.store or "default", "file": args.out, **_brief(metrics)})
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from .export import write_json
    from .teacher import TeacherConfig, train_teacher

    config = TeacherConfig(**train_kwargs(args, defaults=TeacherConfig))
    bb = _backbone(args, config.device)
    _, work, data = _task(args, bb)
    work.mkdir(parents=True, exist_ok=True)
    teacher, metrics = train_teacher(bb, data, config, work / "teacher.ckpt.safetensors")
    if not is_main():
        return 0
    (work / "teacher.safetensors").write_bytes(teacher.to_bytes())
    write_json(work / "teacher.json", metrics)
    (work / "teacher.ckpt.safetensors").unlink(missing_ok=True)
    _print({"teacher": str(work / "teacher.safetensors"), **_brief(metrics)})
    return 0


def _student(args: argparse.Namespace) -> int:
    from .export import save_net, write_json
    from .student import StudentConfig, train_student
    from .teacher import load_teacher

    config = StudentConfig(**train_kwargs(args, defaults=StudentConfig), **student_kwargs(args))
    bb = _backbone(args, config.device)
    task_id, work, data = _task(args, bb)
    teacher = load_teacher(work / "teacher.safetensors", bb, data.num_classes)
    net, metrics = train_student(bb, teacher, data, config, work / "student.ckpt.safetensors")
    if not is_main():
        return 0
    save_net(work / "student.pack", net, task_id, data.classes, data.preprocess, _brief(metrics))
    write_json(work / "student.json", metrics)
    (work / "student.ckpt.safetensors").unlink(missing_ok=True)
    _print({"student": str(work / "student.pack"), **_brief(metrics)})
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .export import cost_metrics, load_net, save_net
    from .prune import PruneConfig, prune

    src = args.input or args.work_dir / "student.pack"
    out = args.output or args.work_dir / "pruned.pack"
    bb = _backbone(args)
    net, pack = load_net(src, bb)
    pruned = prune(net, PruneConfig(args.threshold, args.blocks))
    cost = cost_metrics(pruned.plan, bb, len(pack.labels))
    save_net(out, pruned, pack.task_id, pack.labels, pack.preprocess, {"n": args.blocks, **cost})
    _print({"pruned": str(out), "plan": [pruned.plan.paths(l) for l in range(1, len(pruned.plan.layers) + 1)],
            **cost})
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .export import cost_metrics, load_net, save_net, write_json
    from .student import FinetuneConfig, finetune
    from .teacher import load_teacher

    config = FinetuneConfig(gamma_distill=args.gamma2, **train_kwargs(args, defaults=FinetuneConfig))
    bb = _backbone(args, config.device)
    task_id, work, data = _task(args, bb)
    net, pack = load_net(args.input or work / "pruned.pack", bb)
    if pack.labels != data.classes:
        raise ConfigError(f"the pruned pack's labels {pack.labels[:5]} are not the data set's {data.classes[:5]}")
    teacher = load_teacher(work / "teacher.safetensors", bb, data.num_classes)
    metrics = finetune(net, teacher, data, config, work / "finetune.ckpt.safetensors")
    if not is_main():
        return 0
    out = args.output or work / "finetuned.pack"
    metrics |= cost_metrics(net.plan, bb, data.num_classes)
    save_net(out, net, task_id, data.classes, data.preprocess, _brief(metrics))
    write_json(work / "finetuned.json", metrics)
    (work / "finetune.ckpt.safetensors").unlink(missing_ok=True)
    _print({"finetuned": str(out), **_brief(metrics)})
    return 0


def _tailor(args: argparse.Namespace) -> int:
    from .export import publish
    from .report import write_report
    from .student import FinetuneConfig, StudentConfig
    from .tailor import TailorConfig, tailor
    from .teacher import TeacherConfig

    bb = _backbone(args, args.device)
    task_id, work, data = _task(args, bb)
    config = TailorConfig(
        task_id=task_id,
        teacher=TeacherConfig(**train_kwargs(args, "teacher", TeacherConfig)),
        student=StudentConfig(**train_kwargs(args, "student", StudentConfig), **student_kwargs(args)),
        finetune=FinetuneConfig(**train_kwargs(args, "finetune", FinetuneConfig), gamma_distill=args.gamma2,
                                alpha_lr_scale=args.alpha_lr_scale),
        threshold=args.threshold, sweep=parse_sweep(args.sweep), tolerance=args.tolerance, version=args.version,
    )
    result = tailor(bb, data, config, work)
    if not is_main():  # under torchrun, rank 0 writes and publishes
        return 0
    out = args.out or Path("runs") / task_id / f"{task_id}.pack"
    out.parent.mkdir(parents=True, exist_ok=True)
    blob = result.pack.to_bytes()
    out.write_bytes(blob)
    paths = write_report(result.report, args.report_dir or out.parent)
    summary = {"pack": str(out), "sha256": result.pack.sha256, **{f"report_{k}": str(v) for k, v in paths.items()},
               **result.report["metrics"]}
    if args.publish:
        rec = publish(blob, args.store)
        summary["published_version"] = rec.version
    _print(summary)
    if not summary["within_tolerance"]:
        print(f"\nWARNING: task {task_id}: {summary['warning']}", file=sys.stderr)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .errors import DataError
    from .export import publish

    if not args.pack.is_file():
        raise DataError(f"pack file {args.pack} does not exist")
    backbone = args.backbone_file.read_bytes() if args.backbone_file else None
    rec = publish(args.pack.read_bytes(), args.store, backbone)
    _print(rec.to_dict())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from blockstore import Backbone, TaskPack, open_store
    from blockstore.errors import NetTailorError

    from .errors import DataError
    from .inspect_pack import format_summary, pack_summary

    if not args.pack.is_file():
        raise DataError(f"pack file {args.pack} does not exist")
    pack = TaskPack.from_bytes(args.pack.read_bytes())
    bb = None
    try:
        if args.backbone_file is not None:
            bb = Backbone.from_bytes(args.backbone_file.read_bytes())
        else:
            store = open_store(args.store)
            try:
                bb = Backbone.from_bytes(store.get_backbone(pack.backbone_id))
            finally:
                store.close()
    except (NetTailorError, OSError) as e:
        if args.backbone_file is not None:
            raise
        log.debug("no backbone for %s: %s", pack.backbone_id[:12], e)
    summary = pack_summary(pack, bb)
    if args.json:
        _print(summary)
    else:
        sys.stdout.write(format_summary(summary) + "\n")
    return 0
