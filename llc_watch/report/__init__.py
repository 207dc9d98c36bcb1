"""One self-contained HTML report per run, from a Jinja2 template (report.html.j2) filled by render.py."""
from .render import ReportError, render_report, write_report

__all__ = ["write_report", "render_report", "ReportError"]
