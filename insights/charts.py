"""Server-side charts as inline SVG: a line chart and a grouped bar chart, no JavaScript. The numbers are always in
the table next to the chart too; the chart only shows their shape."""
from django.utils.html import escape
from django.utils.safestring import mark_safe

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 40, 16, 48  # room for the y values and a centred last x label
COLOURS = ("#417690", "#e08b2c", "#5b9e47", "#ba2121", "#7b5ea7", "#2c8c8c", "#8c6d2c", "#666666")
MAX_LABELS = 12  # x labels shown at most; the others every k-th


def _nice_top(value):
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above `value` (the y axis' top)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _number(value):
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:,.2f}"


def _frame(labels, low, high, unit):
    """The axes, four y grid lines with their values and the x labels; returns (svg parts, x of index, y of value)."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(labels), 1)

    def x_of(index, slot=False):
        return LEFT + inner_w * ((index + 0.5) / count if slot else (index / max(count - 1, 1)))

    def y_of(value):
        return TOP + inner_h * (1 - (value - low) / ((high - low) or 1))

    parts = []
    for step in range(5):
        value = low + (high - low) * step / 4
        y = y_of(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                     f'{escape(_number(value))}</text>')
    if unit:
        parts.append(f'<text x="4" y="{TOP - 4}" font-size="11">{escape(unit)}</text>')
    every = max(1, -(-len(labels) // MAX_LABELS))
    return parts, x_of, y_of, every


def _legend(names):
    items = []
    for n, name in enumerate(names):
        x = LEFT + 150 * n
        items.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{COLOURS[n % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11">{escape(name)}</text>')
    return items


def _svg(title, parts):
    return mark_safe(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
                     f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
                     f'<title>{escape(title)}</title>{"".join(parts)}</svg>')


def _bounds(series):
    values = [value for _, values in series for value in values if value is not None]
    low = min([0, *values])
    return (-_nice_top(-low) if low < 0 else 0), _nice_top(max([0, *values]))


def line_chart(*, title, labels, series, unit=""):
    """`series`: [(name, [value or None per label])]; None leaves a gap in the line."""
    low, high = _bounds(series)
    parts, x_of, y_of, every = _frame(labels, low, high, unit)
    for index, label in enumerate(labels):
        if index % every == 0:
            parts.append(f'<text x="{x_of(index):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                         f'font-size="11">{escape(label)}</text>')
    for n, (name, values) in enumerate(series):
        colour, runs, run = COLOURS[n % len(COLOURS)], [], []
        for index, value in enumerate(values):
            if value is None:
                runs, run = runs + [run] if run else runs, []
                continue
            run.append((x_of(index), y_of(value), labels[index], value))
        runs += [run] if run else []
        for points in runs:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{escape(name)}, '
                      f'{escape(label)}: {escape(_number(value))}</title></circle>' for x, y, label, value in points]
    return _svg(title, parts + _legend([name for name, _ in series]))


def bar_chart(*, title, labels, series, unit=""):
    """Grouped bars: for each label, one bar per series (`series`: [(name, [value per label])])."""
    low, high = _bounds(series)
    parts, x_of, y_of, every = _frame(labels, low, high, unit)
    count, groups = max(len(labels), 1), max(len(series), 1)
    slot = (WIDTH - LEFT - RIGHT) / count
    width = slot * 0.8 / groups
    for index, label in enumerate(labels):
        if index % every == 0:
            parts.append(f'<text x="{x_of(index, slot=True):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                         f'font-size="11">{escape(label)}</text>')
        for n, (name, values) in enumerate(series):
            value = values[index] or 0
            x = LEFT + slot * index + slot * 0.1 + width * n
            top, bottom = sorted((y_of(value), y_of(0)))
            parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{bottom - top:.1f}" '
                         f'fill="{COLOURS[n % len(COLOURS)]}"><title>{escape(name)}, {escape(label)}: '
                         f'{escape(_number(value))}</title></rect>')
    return _svg(title, parts + _legend([name for name, _ in series]))
