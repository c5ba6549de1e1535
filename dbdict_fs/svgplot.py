"""Small inline SVG line plots for the HTML report: axes, ticks, series, bands, dots.

No plotting library: the report must open anywhere and cost no import. Each series is a
`<g class="series">`, so a browser test can count what is drawn.
"""

import html
import math

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")


def _ticks(lo, hi, log, n=5):
    if log:
        return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    if hi == lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _label(value):
    return f"{value:.3g}"


def svg_plot(series, *, xlabel, ylabel, logx=False, logy=False, dots=None, name="plot", legend=False,
             width=380, height=260):
    """series: [(label, [(x, mean, lo, hi), ...]), ...]; dots: [(x, y), ...] drawn under them."""
    points = [(p[0], v) for _, pts in series for p in pts for v in (p[2], p[3])] + list(dots or ())
    if logx:
        points = [p for p in points if p[0] > 0]
    if logy:
        points = [p for p in points if p[1] > 0]
    left, right, top, bottom = 56, 12, 12, 40
    if legend:
        right = 190
    pw, ph = width - left - right, height - top - bottom
    out = [f"<figure class=plot data-name='{html.escape(name, quote=True)}'>"
           f"<svg xmlns='http://www.w3.org/2000/svg' width={width} height={height} viewBox='0 0 {width} {height}'>"]
    if not points:
        out.append(f"<text x={width // 2} y={height // 2} text-anchor=middle>no data</text></svg></figure>")
        return "".join(out)
    tx = (lambda v: math.log10(v)) if logx else float
    ty = (lambda v: math.log10(v)) if logy else float
    xs, ys = [tx(p[0]) for p in points], [ty(p[1]) for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def sx(v):
        return left + (tx(v) - x0) / (x1 - x0) * pw

    def sy(v):
        return top + ph - (ty(v) - y0) / (y1 - y0) * ph

    out.append(f"<rect x={left} y={top} width={pw} height={ph} fill='none' stroke='#bbb' />")
    lo_x, hi_x = (10 ** x0, 10 ** x1) if logx else (x0, x1)
    lo_y, hi_y = (10 ** y0, 10 ** y1) if logy else (y0, y1)
    for t in _ticks(lo_x, hi_x, logx):
        if lo_x <= t <= hi_x:
            x = sx(t)
            out.append(f"<line x1={x:.1f} x2={x:.1f} y1={top} y2={top + ph} stroke='#eee'/>"
                       f"<text x={x:.1f} y={top + ph + 14} text-anchor=middle>{_label(t)}</text>")
    for t in _ticks(lo_y, hi_y, logy):
        if lo_y <= t <= hi_y:
            y = sy(t)
            out.append(f"<line x1={left} x2={left + pw} y1={y:.1f} y2={y:.1f} stroke='#eee'/>"
                       f"<text x={left - 4} y={y + 4:.1f} text-anchor=end>{_label(t)}</text>")
    out.append(f"<text x={left + pw / 2:.0f} y={height - 6} text-anchor=middle>{html.escape(xlabel)}"
               f"{' (log)' if logx else ''}</text>"
               f"<text transform='translate(12 {top + ph / 2:.0f}) rotate(-90)' text-anchor=middle>"
               f"{html.escape(ylabel)}{' (log)' if logy else ''}</text>")
    ok = (lambda x, y: (not logx or x > 0) and (not logy or y > 0))
    if dots:
        d = "".join(f"M{sx(x):.1f} {sy(y):.1f}h0" for x, y in dots if ok(x, y))
        out.append(f"<g class=dots><path d='{d}' stroke='#999' stroke-opacity=.5 stroke-width=4 "
                   f"stroke-linecap=round fill='none'/></g>")
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [p for p in pts if ok(p[0], p[1]) and ok(p[0], p[2])]
        out.append(f"<g class=series data-label='{html.escape(str(label), quote=True)}'>"
                   f"<title>{html.escape(str(label))}</title>")
        if pts and any(p[2] != p[3] for p in pts):
            poly = " ".join(f"{sx(p[0]):.1f},{sy(p[3]):.1f}" for p in pts) + " " + \
                " ".join(f"{sx(p[0]):.1f},{sy(p[2]):.1f}" for p in reversed(pts))
            out.append(f"<polygon points='{poly}' fill='{color}' fill-opacity=.15 stroke='none'/>")
        if pts:
            d = "M" + "L".join(f"{sx(p[0]):.1f} {sy(p[1]):.1f}" for p in pts)
            out.append(f"<path d='{d}' stroke='{color}' stroke-width=1.8 fill='none'/>")
        out.append("</g>")
        if legend and i < 15:
            y = top + 10 + i * 16
            out.append(f"<line x1={left + pw + 10} x2={left + pw + 28} y1={y} y2={y} stroke='{color}' "
                       f"stroke-width='2'/><text x={left + pw + 32} y={y + 4}>{html.escape(str(label)[:24])}</text>")
    out.append("</svg></figure>")
    return "".join(out)
