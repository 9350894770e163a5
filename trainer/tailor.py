"""The whole procedure for one task: teacher -> student -> sweep of n (prune + fine-tune) -> select -> pack.

Every stage writes its result to ``work_dir`` together with a key (a hash of its configuration and of
everything upstream).  A rerun with the same configuration reuses finished stages and resumes the
stage in progress from its last finished epoch, so an interrupted tailor picks up where it stopped.

Selection uses the validation split only: among the sweep's candidates, the leanest (fewest shared +
task parameters, then fewest FLOPs) whose validation accuracy is within ``tolerance`` points of the
teacher's.  When none is, the most accurate candidate is kept and ``within_tolerance`` is false.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blockstore import Backbone, TailoredNet, TaskPack, validate_task_id

from .data import TaskData
from .engine import fingerprint
from .errors import ConfigError
from .export import cost_metrics, load_net, make_pack, save_net, write_json
from .prune import PruneConfig, alphas_of, prune_plan
from .student import FinetuneConfig, StudentConfig, alpha_table, finetune, train_student
from .teacher import TeacherConfig, load_teacher, train_teacher

__all__ = ["SweepPoint", "TailorConfig", "TailorResult", "select", "tailor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TailorConfig:
    task_id: str
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    threshold: float = 0.05
    sweep: tuple[int, ...] | None = None  # values of n (blocks dropped); None: 0, 1, ..., L-1
    tolerance: float = 0.5  # accuracy points below the teacher's validation accuracy
    patience: int | None = 2  # stop the sweep after this many consecutive misses; None: run it all
    version: str = "1"

    def __post_init__(self) -> None:
        validate_task_id(self.task_id)
        PruneConfig(self.threshold, 0)
        if self.tolerance < 0:
            raise ConfigError("tolerance must be >= 0 points")
        if self.sweep is not None and (not self.sweep or min(self.sweep) < 0):
            raise ConfigError("sweep must be a non-empty list of n >= 0")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience must be at least 1")


@dataclass
class SweepPoint:
    n: int
    val_acc: float
    test_acc: float
    cost: dict
    plan: str  # JSON
    same_as: int | None = None  # n of an earlier point that gave the same plan

    @property
    def size(self) -> tuple[int, int]:
        return self.cost["params"], self.cost["flops"]


@dataclass
class TailorResult:
    pack: TaskPack
    net: TailoredNet
    report: dict


def select(points: list[SweepPoint], teacher_val: float, tolerance: float) -> tuple[SweepPoint, bool]:
    """The leanest point within ``tolerance`` points of ``teacher_val``, or the most accurate one."""
    ok = [p for p in points if 100 * p.val_acc >= 100 * teacher_val - tolerance - 1e-9]
    if ok:
        return min(ok, key=lambda p: (p.size, p.n)), True
    return max(points, key=lambda p: (p.val_acc, -p.size[0], -p.size[1])), False


def _done(meta_path: Path, key: str) -> dict | None:
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("key") != key:
        log.info("%s was made with another configuration; redoing that stage", meta_path)
        return None
    return meta


def tailor(backbone: Backbone, data: TaskData, config: TailorConfig, work_dir: Path) -> TailorResult:
    if data.preprocess.size != backbone.config.input_size:
        raise ConfigError(f"the data are {data.preprocess.size} px but the backbone was measured at "
                          f"{backbone.config.input_size} px; use --size {backbone.config.input_size}")
    work_dir.mkdir(parents=True, exist_ok=True)
    backbone.freeze().eval()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    task = config.task_id
    data_key = [data.summary(), data.preprocess.to_json(), data.classes]

    # 1. teacher
    t0 = time.perf_counter()
    tkey = fingerprint(config.teacher, backbone.backbone_id, data_key)
    tmeta = _done(work_dir / "teacher.json", tkey)
    if tmeta is not None and (work_dir / "teacher.safetensors").is_file():
        teacher = load_teacher(work_dir / "teacher.safetensors", backbone, data.num_classes)
        log.info("teacher: reusing %s (val %.4f)", work_dir / "teacher.safetensors", tmeta["val_acc"])
    else:
        ckpt = work_dir / "teacher.ckpt.safetensors"
        teacher, tm = train_teacher(backbone, data, config.teacher, ckpt)
        (work_dir / "teacher.safetensors").write_bytes(teacher.to_bytes())
        tmeta = {"key": tkey, **tm}
        write_json(work_dir / "teacher.json", tmeta)
        ckpt.unlink(missing_ok=True)
    log.info("teacher: val %.4f, test %.4f", tmeta["val_acc"], tmeta["test_acc"])
    timings["teacher_s"] = time.perf_counter() - t0

    # 2. student
    t0 = time.perf_counter()
    skey = fingerprint(config.student, tkey)
    smeta = _done(work_dir / "student.json", skey)
    if smeta is not None and (work_dir / "student.pack").is_file():
        student, _ = load_net(work_dir / "student.pack", backbone)
    else:
        ckpt = work_dir / "student.ckpt.safetensors"
        student, sm = train_student(backbone, teacher, data, config.student, ckpt)
        save_net(work_dir / "student.pack", student, task, data.classes, data.preprocess)
        smeta = {"key": skey, **sm}
        write_json(work_dir / "student.json", smeta)
        ckpt.unlink(missing_ok=True)
    log.info("student: val %.4f, test %.4f", smeta["val_acc"], smeta["test_acc"])
    student_alphas = alphas_of(student)
    timings["student_s"] = time.perf_counter() - t0

    # 3. sweep of n: prune, fine-tune, validate
    t0 = time.perf_counter()
    L = len(student.plan.layers)
    ns = sorted(set(config.sweep)) if config.sweep is not None else list(range(L))
    if max(ns) > L:
        raise ConfigError(f"sweep asks to drop {max(ns)} blocks, the backbone has {L}")
    points: list[SweepPoint] = []
    nets: dict[int, TailoredNet] = {}
    misses = 0
    for n in ns:
        plan = prune_plan(student.plan, student_alphas, config.threshold, n)
        earlier = next((p for p in points if p.plan == plan.to_json()), None)
        if earlier is not None:
            points.append(SweepPoint(n, earlier.val_acc, earlier.test_acc, earlier.cost, earlier.plan, earlier.n))
            continue
        pkey = fingerprint(config.finetune, skey, config.threshold, n)
        path, meta_path = work_dir / "sweep" / f"n{n}.pack", work_dir / "sweep" / f"n{n}.json"
        meta = _done(meta_path, pkey)
        if meta is not None and path.is_file():
            net, _ = load_net(path, backbone)
        else:
            net = student.with_plan(plan)
            ckpt = work_dir / "sweep" / f"n{n}.ckpt.safetensors"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            fm = finetune(net, teacher, data, config.finetune, ckpt, desc=f"finetune n={n}")
            meta = {"key": pkey, **fm}
            save_net(path, net, task, data.classes, data.preprocess)
            write_json(meta_path, meta)
            ckpt.unlink(missing_ok=True)
        nets[n] = net
        point = SweepPoint(n, meta["val_acc"], meta["test_acc"], cost_metrics(net.plan, backbone, data.num_classes),
                           net.plan.to_json())
        points.append(point)
        log.info("n=%d: %d/%d blocks, %.1f%% of block params removed, val %.4f (teacher %.4f)", n,
                 point.cost["blocks_kept"], L, 100 * point.cost["blocks_params_removed"], point.val_acc,
                 tmeta["val_acc"])
        good = 100 * point.val_acc >= 100 * tmeta["val_acc"] - config.tolerance - 1e-9
        misses = 0 if good else misses + 1
        if config.patience is not None and misses >= config.patience:
            log.info("sweep: %d consecutive points below tolerance; stopping at n=%d", misses, n)
            break
    timings["sweep_s"] = time.perf_counter() - t0

    # 4. select and export
    best, within = select([p for p in points if p.same_as is None], tmeta["val_acc"], config.tolerance)
    net = nets[best.n]
    metrics = {
        "val_acc": best.val_acc, "test_acc": best.test_acc,
        "teacher_val_acc": tmeta["val_acc"], "teacher_test_acc": tmeta["test_acc"],
        "student_val_acc": smeta["val_acc"], "student_test_acc": smeta["test_acc"],
        "n": best.n, "threshold": config.threshold, "tolerance": config.tolerance, "within_tolerance": within,
        **best.cost,
    }
    pack = make_pack(net, task, data, metrics, config.version)
    timings["total_s"] = time.perf_counter() - t_start
    final_alphas = alphas_of(net)
    architecture = []
    for l in range(1, L + 1):
        kept = net.plan.paths(l)
        architecture.append([
            {"src": s, "alpha_student": a, "kept": s in kept,
             "alpha_final": final_alphas[l][kept.index(s)] if s in kept else None}
            for s, a in zip(student.plan.paths(l), student_alphas[l])
        ])
    report = {
        "task_id": task, "data": data.summary(), "classes": data.classes, "backbone_id": backbone.backbone_id,
        "arch": backbone.config.arch, "stem": backbone.config.stem, "metrics": metrics,
        "teacher": {k: tmeta[k] for k in ("val_acc", "test_acc")},
        "student": {k: smeta[k] for k in ("val_acc", "test_acc")},
        "student_alphas": alpha_table(student), "architecture": architecture,
        "sweep": [asdict(p) | {"selected": p.n == best.n} for p in points],
        "timings": timings,
        "config": asdict(config),
    }
    return TailorResult(pack, net, report)
