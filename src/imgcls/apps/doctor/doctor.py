"""``run_doctor``: scan a dataset, run every check asked for, and collect the findings."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgcls.apps.doctor.checks import BLOCKING, DATASET_LEVEL, PROBLEMS
from imgcls.apps.doctor.groups import Finding, class_balance, dataset_checks
from imgcls.apps.doctor.labelsets import label_set_checks
from imgcls.apps.doctor.layout import LayoutReport, layout_checks
from imgcls.apps.doctor.scan import FileRecord, find_files, scan_files
from imgcls.apps.doctor.deep import embed, embedding_leaks, label_errors, label_errors_from_cv
from imgcls.inference.embedding import BackboneEmbedder
from imgcls.options import DoctorOptions  # declared with the CLI's other options; imported from here too
from imgcls.runtime import log


@dataclass
class DoctorReport:
    root: Path
    layout: str
    options: DoctorOptions
    records: list[FileRecord]
    findings: list[Finding]
    balance: dict
    seconds: dict[str, float] = field(default_factory=dict)
    dataset: LayoutReport = field(default_factory=LayoutReport)  # the layout as training reads it
    labels: dict | None = None  # a multilabel manifest's label-set statistics (labelsets.label_set_checks)

    @property
    def flagged(self) -> list[FileRecord]:
        return [r for r in self.records if r.problems]

    @property
    def blocking(self) -> list[FileRecord]:
        return [r for r in self.records if r.problems.keys() & BLOCKING]

    def counts(self) -> dict[str, int]:
        """Files per problem code, in the order of :data:`PROBLEMS` (imbalance counts classes,
        the other dataset-level codes their findings: folders, or the dataset once)."""
        found = {code: sum(code in r.problems for r in self.records) for code in PROBLEMS}
        for finding in self.findings:
            found[finding.code] += finding.code in DATASET_LEVEL
        found["imbalance"] = len(self.balance["minority"])  # classes, not files
        return {code: n for code, n in found.items() if n}

    def options_dict(self) -> dict:
        return asdict(self.options)


def run_doctor(data: str | Path, options: DoctorOptions | None = None, embedder=None) -> DoctorReport:
    """Check the dataset at ``data`` (a folder or CSV manifest); nothing is changed on disk.

    ``embedder`` (paths -> (L2-normalised vectors, decoded mask)) computes the features of
    ``--deep`` and ``--label-check``; by default a :class:`BackboneEmbedder` of ``options.backbone``.
    """
    options = options or DoctorOptions()
    files = find_files(data)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    records = scan_files(files.records, full=options.full, min_size=options.min_size, workers=options.workers)
    seconds["scan"] = time.perf_counter() - started
    started = time.perf_counter()
    findings = dataset_checks(records, options.near_distance)
    dataset = layout_checks(Path(data), files.root, records)
    findings = dataset.findings + findings
    balance = class_balance(records, options.imbalance_ratio)
    label_stats, label_findings = label_set_checks(records)
    findings += label_findings
    seconds["cross-file checks"] = time.perf_counter() - started
    if options.label_check and label_stats is not None:
        log.warning("doctor: --label-check is for single-label data; skipped for this multilabel manifest")
        options = dataclasses.replace(options, label_check=False)
    if options.label_check and options.cv:
        started = time.perf_counter()
        findings += label_errors_from_cv(records, options.cv)
        seconds["label check"] = time.perf_counter() - started
    if options.deep or (options.label_check and not options.cv):
        embedder = embedder or BackboneEmbedder(options.backbone, options.pretrained, options.feature_size,
                                                options.batch_size, options.workers, options.device)
        findings += _feature_checks(records, findings, options, seconds, embedder)
    return DoctorReport(files.root, files.layout, options, records, findings, balance, seconds, dataset, label_stats)


def _feature_checks(records: list[FileRecord], findings: list[Finding], options: DoctorOptions,
                    seconds: dict[str, float], embedder) -> list[Finding]:
    started = time.perf_counter()
    # Files that training would skip anyway get no features.
    usable = [r for r in records if r.decodes and not r.problems.keys() & {"unreadable", "truncated"}]
    features = embed(usable, embedder)
    seconds["features"] = time.perf_counter() - started
    log.info("doctor: %d images embedded with %s in %.1fs", len(features.records), options.backbone,
             seconds["features"])
    new: list[Finding] = []
    if options.deep:
        known = {(f.files[1], f.files[0]) for f in findings if f.code == "leak"}
        new += embedding_leaks(features, options.deep_threshold, known)
    if options.label_check and not options.cv:
        started = time.perf_counter()
        new += label_errors(features, options.folds)
        seconds["label check"] = time.perf_counter() - started
    return new
