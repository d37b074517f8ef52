"""`medimg report`: the thesis's tables with ours beside them, generated from MLflow.

Modules, in the order the report is made:
    thesis      the thesis's published figures (thesis_results.yaml) and the layout
    collect     our configurations' runs, children and evaluation files from MLflow
    tables      the report's tables as plain rows of cells
    charts      ROC overlays and confusion matrices as PNG bytes
    render      Markdown and self-contained HTML
    report      the whole: reads params and MLflow, writes reports/report.{md,html}
"""

from medimg.errors import UserError


class ReportError(UserError, RuntimeError):
    """The report cannot be made: an unreadable thesis file or inconsistent run records."""
