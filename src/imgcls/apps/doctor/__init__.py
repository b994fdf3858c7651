"""``imgcls doctor``: find what is wrong with a dataset before training on it.

``run_doctor(path, DoctorOptions(...))`` scans, :mod:`.report` and :mod:`.html` write the
results, :mod:`.quarantine` moves blocking files out of the way and back. Problem codes
and their severities are in :data:`imgcls.apps.doctor.checks.PROBLEMS`.
"""

from pathlib import Path

from imgcls.apps.doctor.checks import BLOCKING, PROBLEMS
from imgcls.apps.doctor.doctor import DoctorOptions, DoctorReport, run_doctor
from imgcls.apps.doctor.html import write_html
from imgcls.apps.doctor.quarantine import apply_fix, plan_fix, quarantine_dir, restore
from imgcls.apps.doctor.report import write_json, write_overview

__all__ = ["BLOCKING", "PROBLEMS", "DoctorOptions", "DoctorReport", "apply_fix", "plan_fix", "quarantine_dir",
           "restore", "run_doctor", "write_reports"]


def write_reports(report: DoctorReport, out_dir) -> dict:
    """overview.csv, doctor.json and doctor.html in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"overview": write_overview(report, out / "overview.csv"), "json": write_json(report, out / "doctor.json"),
            "html": write_html(report, out / "doctor.html")}
