"""Summaries and Markdown for the reproduction tables: mean ± std over seeds, the paper beside it."""
from __future__ import annotations

import math
import re

GROUPS = ("top1", "many", "medium", "few")


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; an empty shot group (None) stays None, one seed has no std."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def summarise(entries: list[dict], paper: dict) -> dict:
    """``{IF: {method: {"seeds": [...], "top1": [mean, std], ..., "paper": x}}}``, in entry order."""
    out: dict[str, dict] = {}
    for e in entries:
        out.setdefault(f"{e['imbalance']:g}", {}).setdefault(e["method"], []).append(e)
    summary = {}
    for imb, methods in out.items():
        summary[imb] = {}
        for method, es in methods.items():
            row = {"seeds": [e["seed"] for e in es]}
            for k in GROUPS:
                row[k] = list(mean_std([e[k] for e in es]))
            row["paper"] = paper.get(method, {}).get(float(imb))
            summary[imb][method] = row
    return summary


def cell(ms: list) -> str:
    m, s = ms
    if m is None:
        return "n/a"
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def _short(commit: str | None) -> str:
    if not commit:
        return "?"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _provenance_line(doc: dict) -> str:
    es = doc["entries"]
    devices = sorted({e["provenance"]["device"] for e in es if e["provenance"].get("device")})
    commits = sorted({_short(e["provenance"].get("commit")) for e in es})
    dates = sorted(e["provenance"]["finished"][:10] for e in es if e["provenance"].get("finished"))
    scale = doc["epochs_scale"]
    schedule = ("the papers' schedules" if scale == 1 else
                f"every stage's epochs x{scale:g} (a 200-epoch stage runs {max(1, round(200 * scale))}); "
                f"stages of at most {doc['short_stage_epochs']} epochs (cRT, LWS) at full length")
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "?")
    return (f"Device: {', '.join(devices) or '?'}. Schedule: {schedule}. Commits: {', '.join(commits) or '?'}. "
            f"Runs finished: {when}.")


def render_markdown(doc: dict) -> str:
    """The table the README shows, one block per imbalance factor."""
    lines = [f"### {doc['table']} ({doc['tag']}, epochs x{doc['epochs_scale']:g})", "",
             _provenance_line(doc) if doc["entries"] else "No runs yet.", ""]
    for imb, methods in doc.get("summary", {}).items():
        lines += [f"**IF = {imb}** (top-1 %, mean ± std over seeds)", "",
                  "| method | top-1 | many | medium | few | paper top-1 | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for method, row in methods.items():
            paper = "–" if row["paper"] is None else f"{row['paper']:.1f}"
            lines.append(f"| {method} | " + " | ".join(cell(row[k]) for k in GROUPS)
                         + f" | {paper} | {','.join(map(str, row['seeds']))} |")
        lines.append("")
    lines.append(f"Paper numbers: {doc['paper_source']}. Written by `longtail bench reproduce`; "
                 f"every run's config hash, commit and wall time are in the JSON beside this table.")
    return "\n".join(lines) + "\n"


def replace_block(text: str, key: str, body: str) -> str:
    """Put ``body`` between ``<!-- key -->`` and ``<!-- /key -->``; text without the markers is returned as is."""
    pattern = re.compile(rf"(<!-- {re.escape(key)} -->\n).*?(<!-- /{re.escape(key)} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
