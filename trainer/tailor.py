"""The whole procedure for one task: teacher -> student -> sweep of n (prune + fine-tune) -> select -> pack.

Every stage writes its result to ``work_dir`` with a key (a hash of its configuration and of everything
upstream) through one helper, :func:`cached_stage`: a rerun with the same configuration reuses finished
stages and resumes the stage in progress from its last check, so an interrupted tailor picks up where
it stopped.

Selection uses the validation split only (:func:`select`, the one copy of the tolerance rule): the
leanest candidate (fewest shared + task parameters, then fewest FLOPs) whose validation accuracy is
within ``tolerance`` points of the teacher's.  The sweep fine-tunes candidates leanest first and stops
as soon as one is within tolerance, since every remaining candidate is at least as large and so cannot
win; when none is, every candidate has been tried, the most accurate is kept, and the result carries a
warning with the likely remedies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from blockstore import Backbone, Plan, TailoredNet, TaskPack, validate_task_id

from .data import TaskData
from .distributed import barrier, is_main
from .engine import fingerprint
from .errors import ConfigError
from .export import cost_metrics, load_net, make_pack, save_net, write_json
from .prune import PruneConfig, alphas_of, prune_plan
from .student import FinetuneConfig, StudentConfig, alpha_table, finetune, train_student
from .teacher import TeacherConfig, load_teacher, train_teacher

__all__ = ["SweepPoint", "TailorConfig", "TailorResult", "cached_stage", "select", "tailor", "within_tolerance"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TailorConfig:
    task_id: str
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    threshold: float = 0.05
    sweep: tuple[int, ...] | None = None  # values of n (blocks dropped); None: 0, 1, ..., L-1
    tolerance: float = 0.5  # accuracy points below the teacher's validation accuracy
    version: str = "1"

    def __post_init__(self) -> None:
        validate_task_id(self.task_id)
        PruneConfig(self.threshold, 0)
        if self.tolerance < 0:
            raise ConfigError("tolerance must be >= 0 points")
        if self.sweep is not None and (not self.sweep or min(self.sweep) < 0):
            raise ConfigError("sweep must be a non-empty list of n >= 0")


@dataclass
class SweepPoint:
    n: int
    val_acc: float | None  # None: not fine-tuned, because a leaner candidate was within tolerance
    test_acc: float | None
    cost: dict
    plan: str  # JSON
    same_as: int | None = None  # n of an earlier point that gave the same plan
    steps: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.cost["params"], self.cost["flops"]

    @property
    def tried(self) -> bool:
        return self.val_acc is not None and self.same_as is None


@dataclass
class TailorResult:
    pack: TaskPack
    net: TailoredNet
    report: dict


def within_tolerance(acc: float, teacher_acc: float, tolerance: float) -> bool:
    """The tolerance rule: ``acc`` (0-1) is at most ``tolerance`` points below ``teacher_acc``."""
    return 100 * acc >= 100 * teacher_acc - tolerance - 1e-9


def select(points: list[SweepPoint], teacher_val: float, tolerance: float) -> tuple[SweepPoint, bool]:
    """The leanest tried point within ``tolerance`` of ``teacher_val``, or else the most accurate one."""
    tried = [p for p in points if p.tried]
    ok = [p for p in tried if within_tolerance(p.val_acc, teacher_val, tolerance)]  # type: ignore[arg-type]
    if ok:
        return min(ok, key=lambda p: (p.size, p.n)), True
    return max(tried, key=lambda p: (p.val_acc, -p.size[0], -p.size[1])), False


def cached_stage(work_dir: Path, name: str, key: str, run: Callable[[Path], tuple[T, dict]],
                 load: Callable[[Path], T], artefact: str) -> tuple[T, dict]:
    """Run stage ``name`` unless ``work_dir`` holds its result for ``key``.

    ``run(checkpoint)`` trains and returns (result, metrics), ``load(path)`` reads a finished result
    back; the stage's artefact is ``work_dir/artefact`` and its metrics ``work_dir/<name>.json``."""
    meta_path, path = work_dir / f"{name}.json", work_dir / artefact
    if meta_path.is_file() and path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("key") == key:
            log.info("%s: reusing %s", name, path)
            return load(path), meta
        log.info("%s was made with another configuration; redoing that stage", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / f"{name}.ckpt.safetensors"
    result, metrics = run(ckpt)
    meta = {"key": key, **metrics}
    if is_main():  # under torchrun only rank 0 writes; the others wait until it has
        write_json(meta_path, meta)
        ckpt.unlink(missing_ok=True)
    barrier()
    return result, meta


def _teacher(backbone: Backbone, data: TaskData, config: TailorConfig, work: Path) -> tuple[Backbone, dict]:
    key = fingerprint(config.teacher, backbone.backbone_id, [data.summary(), data.preprocess.to_json(), data.classes])

    def run(ckpt: Path) -> tuple[Backbone, dict]:
        teacher, m = train_teacher(backbone, data, config.teacher, ckpt)
        if is_main():
            (work / "teacher.safetensors").write_bytes(teacher.to_bytes())
        return teacher, m

    teacher, meta = cached_stage(work, "teacher", key, run,
                                 lambda p: load_teacher(p, backbone, data.num_classes), "teacher.safetensors")
    log.info("teacher: val %.4f, test %.4f", meta["val_acc"], meta["test_acc"])
    return teacher, meta


def _student(backbone: Backbone, teacher: Backbone, data: TaskData, config: TailorConfig, work: Path,
             teacher_key: str) -> tuple[TailoredNet, dict]:
    def run(ckpt: Path) -> tuple[TailoredNet, dict]:
        student, m = train_student(backbone, teacher, data, config.student, ckpt)
        if is_main():
            save_net(work / "student.pack", student, config.task_id, data.classes, data.preprocess)
        return student, m

    student, meta = cached_stage(work, "student", fingerprint(config.student, teacher_key), run,
                                 lambda p: load_net(p, backbone)[0], "student.pack")
    log.info("student: val %.4f, test %.4f", meta["val_acc"], meta["test_acc"])
    return student, meta


def _candidates(student: TailoredNet, config: TailorConfig, backbone: Backbone, num_classes: int) -> list[SweepPoint]:
    """Every n of the sweep with its pruned plan and cost (no training); repeated plans point back."""
    L = len(student.plan.layers)
    ns = sorted(set(config.sweep)) if config.sweep is not None else list(range(L))
    if max(ns) > L:
        raise ConfigError(f"sweep asks to drop {max(ns)} blocks, the backbone has {L}")
    alphas = alphas_of(student)
    points: list[SweepPoint] = []
    for n in ns:
        plan = prune_plan(student.plan, alphas, config.threshold, n)
        earlier = next((p for p in points if p.plan == plan.to_json()), None)
        points.append(SweepPoint(n, None, None, cost_metrics(plan, backbone, num_classes), plan.to_json(),
                                 earlier.n if earlier is not None else None))
    return points


def _sweep(backbone: Backbone, teacher: Backbone, student: TailoredNet, data: TaskData, config: TailorConfig,
           work: Path, student_key: str, teacher_val: float) -> tuple[list[SweepPoint], dict[int, TailoredNet]]:
    points = _candidates(student, config, backbone, data.num_classes)
    nets: dict[int, TailoredNet] = {}
    for point in sorted((p for p in points if p.same_as is None), key=lambda p: (p.size, p.n)):
        n = point.n
        key = fingerprint(config.finetune, student_key, config.threshold, n)

        def run(ckpt: Path, n: int = n, plan: str = point.plan) -> tuple[TailoredNet, dict]:
            net = student.with_plan(Plan.from_json(plan))
            m = finetune(net, teacher, data, config.finetune, ckpt, desc=f"finetune n={n}")
            if is_main():
                save_net(work / "sweep" / f"n{n}.pack", net, config.task_id, data.classes, data.preprocess)
            return net, m

        net, meta = cached_stage(work / "sweep", f"n{n}", key, run, lambda p: load_net(p, backbone)[0],
                                 f"n{n}.pack")
        nets[n] = net
        point.val_acc, point.test_acc = meta["val_acc"], meta["test_acc"]
        point.steps = int(meta.get("history", {}).get("steps", 0))
        good = within_tolerance(point.val_acc, teacher_val, config.tolerance)
        log.info("n=%d: %d/%d blocks, %.1f%% of block params removed, val %.4f (teacher %.4f)%s", n,
                 point.cost["blocks_kept"], point.cost["blocks_total"], 100 * point.cost["blocks_params_removed"],
                 point.val_acc, teacher_val, ": within tolerance, the larger candidates cannot win" if good else "")
        if good:
            break
    for p in points:  # repeated plans share their original's result
        if p.same_as is not None:
            src = next(q for q in points if q.n == p.same_as)
            p.val_acc, p.test_acc = src.val_acc, src.test_acc
    return points, nets


def remedy(metrics: dict, data: TaskData) -> str:
    """What to try when no candidate is within tolerance: a warning a user can act on."""
    gap = 100 * (metrics["teacher_val_acc"] - metrics["val_acc"])
    return (f"no tailored network is within {metrics['tolerance']} points of the teacher on validation "
            f"(best: {gap:.2f} points below, n={metrics['n']}, {len(data.val)} validation images). Likely "
            f"remedies: a longer budget (--student-epochs / --finetune-epochs, or more training images), a "
            f"stronger universal backbone ('nettailor pretrain' with more steps, or 'nettailor backbone import' "
            f"of ImageNet weights), or a larger --tolerance.")


def tailor(backbone: Backbone, data: TaskData, config: TailorConfig, work_dir: Path) -> TailorResult:
    if data.preprocess.size != backbone.config.input_size:
        raise ConfigError(f"the data are {data.preprocess.size} px but the backbone was measured at "
                          f"{backbone.config.input_size} px; use --size {backbone.config.input_size}")
    work_dir.mkdir(parents=True, exist_ok=True)
    backbone.freeze().eval()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    teacher, tmeta = _teacher(backbone, data, config, work_dir)
    timings["teacher_s"] = time.perf_counter() - t0
    student, smeta = _student(backbone, teacher, data, config, work_dir, tmeta["key"])
    timings["student_s"] = time.perf_counter() - t0 - timings["teacher_s"]
    points, nets = _sweep(backbone, teacher, student, data, config, work_dir, smeta["key"], tmeta["val_acc"])
    timings["sweep_s"] = time.perf_counter() - t0 - timings["teacher_s"] - timings["student_s"]
    best, within = select(points, tmeta["val_acc"], config.tolerance)
    net = nets[best.n]
    metrics = {
        "val_acc": best.val_acc, "test_acc": best.test_acc, "val_images": len(data.val),
        "test_images": len(data.test), "teacher_val_acc": tmeta["val_acc"], "teacher_test_acc": tmeta["test_acc"],
        "student_val_acc": smeta["val_acc"], "student_test_acc": smeta["test_acc"],
        "n": best.n, "threshold": config.threshold, "tolerance": config.tolerance, "within_tolerance": within,
        **best.cost,
    }
    if not within:
        metrics["warning"] = remedy(metrics, data)
        log.warning("task %s: %s", config.task_id, metrics["warning"])
    pack = make_pack(net, config.task_id, data, metrics, config.version)
    timings["total_s"] = time.perf_counter() - t0
    report = _report(backbone, data, config, student, net, points, best, metrics, tmeta, smeta, timings)
    return TailorResult(pack, net, report)


def _report(backbone: Backbone, data: TaskData, config: TailorConfig, student: TailoredNet, net: TailoredNet,
            points: list[SweepPoint], best: SweepPoint, metrics: dict, tmeta: dict, smeta: dict,
            timings: dict) -> dict:
    student_alphas, final_alphas = alphas_of(student), alphas_of(net)
    architecture = []
    for l in range(1, len(student.plan.layers) + 1):
        kept = net.plan.paths(l)
        architecture.append([
            {"src": s, "alpha_student": a, "kept": s in kept,
             "alpha_final": final_alphas[l][kept.index(s)] if s in kept else None}
            for s, a in zip(student.plan.paths(l), student_alphas[l])
        ])
    stage = {k: {m: meta.get(m) for m in ("val_acc", "test_acc")} | _run_facts(meta)
             for k, meta in (("teacher", tmeta), ("student", smeta))}
    return {
        "task_id": config.task_id, "data": data.summary(), "classes": data.classes, "augmentation": data.augment,
        "backbone_id": backbone.backbone_id, "arch": backbone.config.arch, "stem": backbone.config.stem,
        "metrics": metrics, **stage,
        "student_alphas": alpha_table(student), "architecture": architecture,
        "sweep": [asdict(p) | {"selected": p.n == best.n, "tried": p.tried} for p in points],
        "timings": timings, "config": asdict(config),
    }


def _run_facts(meta: dict) -> dict:
    h = meta.get("history", {})
    return {"steps": h.get("steps"), "budget": h.get("budget"), "stopped": h.get("stopped")}
