"""The attrition funnel of a trial, drawn as inline SVG on the server; its counts come from
``service/screening/funnel.py`` (the feasibility report counts the same funnel).
"""

from __future__ import annotations

from markupsafe import Markup, escape

from service.screening.funnel import Step, attrition

__all__ = ["Step", "attrition", "funnel_svg"]


# Drawing: a label column, a bar scaled to the screened count, the number after the bar.
_ROW, _BAR, _LABEL_WIDTH, _BAR_WIDTH, _WIDTH = 26, 18, 190, 470, 760


def funnel_svg(steps: list[Step], title: str, element_id: str) -> Markup:
    """An accessible SVG (role img, title and description); colours pass WCAG AA contrast."""
    top = max((s.count for s in steps), default=0) or 1
    height = _ROW * len(steps) + 10
    described = ", ".join(f"{s.label} {s.count}" for s in steps)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="funnel" viewBox="0 0 {_WIDTH} {height}" '
        f'role="img" aria-labelledby="{element_id}-title {element_id}-desc">',
        f'<title id="{element_id}-title">{escape(title)}</title>',
        f'<desc id="{element_id}-desc">{escape(described)}</desc>',
    ]
    for index, step in enumerate(steps):
        y = 5 + index * _ROW
        width = round(_BAR_WIDTH * step.count / top, 1)
        share = f" ({round(100 * step.count / top)}%)" if index else ""
        fill = "#1f5f8b" if step.label not in ("screened", "candidates") else "#174a2c"
        parts += [
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + _BAR - 5}" text-anchor="end" '
            f'font-size="13" fill="#1a1a1a">{escape(step.label)}</text>',
            f'<rect x="{_LABEL_WIDTH}" y="{y}" width="{max(width, 1)}" height="{_BAR}" '
            f'fill="{fill}" rx="2"/>',
            f'<text x="{_LABEL_WIDTH + max(width, 1) + 6}" y="{y + _BAR - 5}" font-size="13" '
            f'fill="#1a1a1a">{step.count}{share}</text>',
        ]
    parts.append("</svg>")
    return Markup("".join(parts))
