"""``doctor.html``: one self-contained page (thumbnails as data URIs) to review the findings."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from jinja2 import Environment

from imgcls.apps.doctor.checks import DATASET_LEVEL, PROBLEMS
from imgcls.apps.doctor.doctor import DoctorReport
from imgcls.apps.doctor.report import report_dict
from imgcls.data.images import ImageDecodeError, load_rgb

# Sections are capped so a dataset with thousands of findings still gives a page a browser
# opens; everything is in overview.csv and doctor.json anyway.
MAX_PER_SECTION = 200
THUMBNAIL = 112

GROUP_SECTIONS = [
    ("duplicate", "Exact duplicates within a class", "the first file is kept; the others are flagged"),
    ("conflicting_label", "Same file under different classes", "all copies are flagged"),
    ("leak", "Leakage between splits", "the held-out copy (left) is kept; the other copy is flagged"),
    ("label_error", "Suspected label errors", "given label vs the class a cross-validated probe suggests"),
]

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgcls doctor: {{ data.dataset }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 3px 10px; text-align: left; border-bottom: 1px solid #ddd; }
.error { color: #b00020; font-weight: 600; } .warning { color: #a06000; }
.group { display: flex; gap: 10px; align-items: flex-start; margin: 8px 0; padding: 6px; border: 1px solid #ddd; border-radius: 6px; }
figure { margin: 0; width: {{ size }}px; font-size: 11px; word-break: break-all; }
figure img { width: {{ size }}px; height: {{ size }}px; object-fit: contain; background: #eee; display: block; }
figure.flagged img { outline: 3px solid #b00020; }
.bar { background: #4a7bd0; height: 12px; display: inline-block; }
.note { color: #666; font-size: 13px; }
</style></head><body>
<h1>imgcls doctor</h1>
<p>{{ data.dataset }} &mdash; {{ data.layout }}, {{ data.files }} files, {{ data.blocking_files }} with blocking problems.</p>
<h2>Problems</h2>
{% if data.problems %}<table><tr><th>code</th><th>count</th><th>severity</th><th>meaning</th></tr>
{% for code, p in data.problems.items() %}<tr><td><a href="#{{ code }}">{{ code }}</a></td><td>{{ p.count }}</td>
<td class="{{ p.severity }}">{{ p.severity }}</td><td>{{ p.meaning }}</td></tr>{% endfor %}</table>
{% else %}<p>No problems found.</p>{% endif %}
{% if data.understood or layout %}<h2 id="layout">Dataset layout</h2>
{% for line in data.understood %}<p class="note">{{ line }}</p>{% endfor %}
{% if layout %}<table><tr><th>code</th><th>severity</th><th>where</th><th>detail</th></tr>
{% for f in layout %}<tr><td>{{ f.code }}</td><td class="{{ f.severity }}">{{ f.severity }}</td><td>{{ f.where }}</td>
<td>{{ f.detail }}</td></tr>{% endfor %}</table>{% endif %}
{% if data.unused %}<details><summary>{{ data.unused|length }} files or folders training does not use</summary>
<table>{% for u in data.unused[:max_rows] %}<tr><td>{{ u.path }}</td><td>{{ u.reason }}</td></tr>{% endfor %}</table>
</details>{% endif %}{% endif %}
<h2 id="imbalance">Class balance (train)</h2>
{% if train_counts %}<p>largest / smallest = {{ "%.1f"|format(data.balance.ratio or 0) }}{% if data.balance.imbalanced %}
<span class="warning">: imbalanced, consider <code>imgcls train --balance weights</code></span>{% endif %}</p>
<table>{% for name, n in train_counts.items() %}<tr><td>{{ name }}</td><td>{{ n }}</td>
<td><span class="bar" style="width: {{ (300 * n / largest)|round|int }}px"></span></td></tr>{% endfor %}</table>{% endif %}
{% if data.label_sets %}<h2 id="label_sets">Label sets ({{ data.label_sets.labels|length }} labels)</h2>
<p class="note">Images carrying each label, per split (an image counts once for each of its labels).</p>
<table><tr><th>label</th>{% for split in data.label_sets.splits %}<th>{{ split }}</th>{% endfor %}</tr>
{% for label in data.label_sets.labels %}<tr><td>{{ label }}</td>{% for s in data.label_sets.splits.values() %}<td>{{ s.counts[label] }}</td>{% endfor %}</tr>
{% endfor %}<tr><td class="note">images / labels per image / without a label</td>{% for s in data.label_sets.splits.values() %}<td>{{ s.images }} / {{ "%.2f"|format(s.mean_labels) }} / {{ s.empty }}</td>{% endfor %}</tr></table>
{% if data.label_sets.labels|length <= 40 %}<h3>Co-occurrence (train)</h3><p class="note">Training images carrying both labels; the diagonal: each label's count.</p>
<table><tr><th></th>{% for label in data.label_sets.labels %}<th>{{ label }}</th>{% endfor %}</tr>
{% for row in data.label_sets.cooccurrence %}<tr><th>{{ data.label_sets.labels[loop.index0] }}</th>{% for n in row %}<td>{{ n }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}{% endif %}{% for section in sections %}<h2 id="{{ section.code }}">{{ section.title }} ({{ section.total }})</h2>
<p class="note">{{ section.note }}{% if section.total > section.groups|length %}; first {{ section.groups|length }} shown{% endif %}</p>
{% for group in section.groups %}<div class="group">{% for item in group.figures %}
<figure class="{{ 'flagged' if item.flagged else '' }}">{% if item.src %}<img src="{{ item.src }}" alt="">{% endif %}
<figcaption>{{ item.caption }}</figcaption></figure>{% endfor %}<div class="note">{{ group.detail }}</div></div>{% endfor %}
{% endfor %}
{% for table in tables %}<h2 id="{{ table.code }}">{{ table.code }} ({{ table.rows|length }})</h2>
<p class="note">{{ table.meaning }}</p><table><tr><th></th><th>file</th><th>detail</th></tr>
{% for row in table.rows %}<tr><td>{% if row.src %}<img src="{{ row.src }}" width="48" alt="">{% endif %}</td>
<td>{{ row.path }}</td><td>{{ row.detail }}</td></tr>{% endfor %}</table>{% endfor %}
</body></html>
"""


def write_html(report: DoctorReport, path: Path) -> Path:
    by_rel = {r.rel: r for r in report.records}
    thumbs = _Thumbnails(by_rel)
    train_counts = report.balance["counts"].get("train", {})
    page = Environment(autoescape=True).from_string(TEMPLATE).render(
        data=report_dict(report),
        size=THUMBNAIL,
        train_counts=train_counts,
        largest=max(train_counts.values(), default=1) or 1,
        sections=[_section(report, code, title, note, thumbs) for code, title, note in GROUP_SECTIONS
                  if any(f.code == code for f in report.findings)],
        tables=_tables(report, thumbs),
        layout=[{"code": f.code, "severity": PROBLEMS[f.code].severity, "where": ", ".join(f.files), "detail": f.detail}
                for f in report.findings if f.code in DATASET_LEVEL],
        max_rows=MAX_PER_SECTION,
    )
    path.write_text(page)
    return path


def _section(report: DoctorReport, code: str, title: str, note: str, thumbs: "_Thumbnails") -> dict:
    findings = [f for f in report.findings if f.code == code]
    groups = []
    for finding in findings[:MAX_PER_SECTION]:
        items = []
        for rel in finding.files:
            record = thumbs.records[rel]
            caption = f"{rel} ({record.label})" if record.label else rel
            if code == "label_error":
                caption = f"{rel}: given {finding.extra['given']} ({finding.extra['given_prob']:.2f}), " \
                          f"suggested {finding.extra['suggested']} ({finding.extra['suggested_prob']:.2f})"
            items.append({"src": thumbs.get(rel), "caption": caption, "flagged": rel in finding.flagged})
        groups.append({"figures": items, "detail": finding.detail})
    return {"code": code, "title": title, "note": note, "groups": groups, "total": len(findings)}


def _tables(report: DoctorReport, thumbs: "_Thumbnails") -> list[dict]:
    grouped = {code for code, _, _ in GROUP_SECTIONS}
    tables = []
    for code, problem in PROBLEMS.items():
        if code in grouped or code == "imbalance":
            continue
        records = [r for r in report.records if code in r.problems]
        if records:
            rows = [{"path": r.rel, "detail": r.problems[code], "src": thumbs.get(r.rel) if r.decodes else None}
                    for r in records[:MAX_PER_SECTION]]
            tables.append({"code": code, "meaning": problem.meaning, "rows": rows})
    return tables


class _Thumbnails:
    def __init__(self, records: dict):
        self.records = records
        self.cache: dict[str, str | None] = {}

    def get(self, rel: str) -> str | None:
        if rel not in self.cache:
            self.cache[rel] = _data_uri(self.records[rel].path)
        return self.cache[rel]


def _data_uri(path: Path) -> str | None:
    try:
        image = load_rgb(path, draft_size=THUMBNAIL)
    except (ImageDecodeError, OSError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
