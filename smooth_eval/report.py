"""The report of an evaluation: results.csv, summary.md (the paper's Table 1 layout), plots, index.html.

Scores are first averaged over the edits of a video, then over the videos: the mean and its
95% interval (Student's t over the videos) are per video, as the dataset's unit is a video.
CLIP-T is the benchmark's `logits_per_image` mean (about 100 x the cosine), CLIP-F the mean
pair cosine x100 (the leaderboard's figure), the VL score the pack's (Eq. 6, in [-1, 1]).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import pathlib
import urllib.parse

from . import arms, runner

COLUMNS = ("key", "arm", "split", "video", "edit", "status", "error", "clip_text", "clip_frame", "clip_frame_x100",
           "vl_score", "frames", "seconds", "attempts", "tune_cached", "worker", "source_prompt", "edit_prompt")
METRICS = (("clip_text", "CLIP-T"), ("clip_frame_x100", "CLIP-F (x100)"), ("vl_score", "VL score"))


def collect(out: pathlib.Path, groups: list[list[dict]]) -> list[dict]:
    """One row per planned job: its record, or status "pending" where the run did not reach it."""
    rows = []
    for group in groups:
        for job in group:
            path = runner.job_folder(out, job["key"]) / runner.RECORD
            record = json.loads(path.read_text()) if path.exists() else {**job, "status": "pending", "error": ""}
            rows.append({column: record.get(column, "") for column in COLUMNS})
    return sorted(rows, key=lambda row: (row["split"], row["video"], row["edit"], row["arm"]))


def per_video(rows: list[dict], arm: str, metric: str, split: str | None = None) -> dict[tuple, float]:
    """{(split, video): the metric averaged over the video's finished edits} for one arm."""
    values: dict[tuple, list[float]] = {}
    for row in rows:
        if row["arm"] == arm and row["status"] == "done" and row[metric] != "" and split in (None, row["split"]):
            values.setdefault((row["split"], row["video"]), []).append(float(row[metric]))
    return {video: sum(v) / len(v) for video, v in values.items()}


def paired(rows: list[dict], arm: str, reference: str, metric: str) -> list[float]:
    """Per video, the mean over its edits that both arms finished of the arm's score minus the reference's."""
    def scores(name):
        return {(row["split"], row["video"], row["edit"]): float(row[metric]) for row in rows
                if row["arm"] == name and row["status"] == "done" and row[metric] != ""}

    mine, theirs = scores(arm), scores(reference)
    by_video: dict[tuple, list[float]] = {}
    for edit in sorted(set(mine) & set(theirs)):
        by_video.setdefault(edit[:2], []).append(mine[edit] - theirs[edit])
    return [sum(d) / len(d) for d in by_video.values()]


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% interval (Student's t, n - 1 degrees of freedom; nan for n < 2)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def cell(values: list[float], digits: int) -> str:
    mean, half = mean_interval(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{mean:.{digits}f}"


def summary_table(rows: list[dict], arm_names: tuple[str, ...], clip: bool) -> str:
    splits = [None] + sorted({row["split"] for row in rows})
    metrics = METRICS if clip else METRICS[2:]
    lines = ["# Evaluation summary", "",
             "Mean ± 95% interval over videos (each video's score is the mean over its edits); "
             "CLIP-T is LOVEU-TGVE-2023's `logits_per_image` mean, CLIP-F its mean pair cosine x100, "
             "the VL score Eq. 6 of the paper.", ""]
    if not clip:
        lines += ["CLIP-T and CLIP-F were not computed: give `--clip` a transformers CLIP folder "
                  "(openai/clip-vit-large-patch14, as the benchmark uses).", ""]
    for split in splits:
        in_split = [row for row in rows if split in (None, row["split"])]
        videos = len({(row["split"], row["video"]) for row in in_split})
        lines += [f"## {'All videos' if split is None else split} ({videos} video{'s' * (videos != 1)})", "",
                  "| arm | " + " | ".join(label for _, label in metrics) + " | jobs done | failed |",
                  "| --- | " + " | ".join("---" for _ in metrics) + " | --- | --- |"]
        for name in arm_names:
            arm_rows = [row for row in in_split if row["arm"] == name]
            cells = [cell(list(per_video(rows, name, metric, split).values()), 2 if metric != "vl_score" else 4)
                     for metric, _ in metrics]
            done = sum(row["status"] == "done" for row in arm_rows)
            bad = sum(row["status"] == "failed" for row in arm_rows)
            lines.append(f"| {arms.ARMS[name].label} (`{name}`) | " + " | ".join(cells) + f" | {done}/{len(arm_rows)} | {bad} |")
        lines.append("")
    reference, others = arm_names[0], arm_names[1:]
    if others:
        lines += [f"## Paired differences against {arms.ARMS[reference].label} (`{reference}`)", "",
                  "Arm minus reference on the same edits (those both finished), averaged per video; mean ± 95% "
                  "interval over videos: the between-video spread cancels out.", "",
                  "| arm | " + " | ".join(f"Δ {label}" for _, label in metrics) + " | VL score higher in |",
                  "| --- | " + " | ".join("---" for _ in metrics) + " | --- |"]
        for name in others:
            cells = [cell(paired(rows, name, reference, metric), 2 if metric != "vl_score" else 4) for metric, _ in metrics]
            vl = paired(rows, name, reference, "vl_score")
            lines.append(f"| {arms.ARMS[name].label} (`{name}`) | " + " | ".join(cells)
                         + f" | {sum(d > 0 for d in vl)}/{len(vl)} videos |")
        lines.append("")
    failures = [row for row in rows if row["status"] == "failed"]
    if failures:
        lines += ["## Failed jobs", "", "| job | error |", "| --- | --- |"]
        lines += [f"| {row['key']} | {str(row['error']).replace('|', '/').replace(chr(10), ' ')[:300]} |" for row in failures]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], arm_names: tuple[str, ...], clip: bool, out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    reference = arm_names[0]
    others = [name for name in arm_names if name != reference]
    if others:
        figure, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 4.2), squeeze=False)
        base = per_video(rows, reference, "vl_score")
        for axis, name in zip(axes[0], others):
            arm_scores = per_video(rows, name, "vl_score")
            common = sorted(set(base) & set(arm_scores))
            xs, ys = [base[v] for v in common], [arm_scores[v] for v in common]
            splits = sorted({v[0] for v in common})
            for split in splits:
                pick = [i for i, v in enumerate(common) if v[0] == split]
                axis.scatter([xs[i] for i in pick], [ys[i] for i in pick], label=split, s=28)
            if xs:
                low, high = min(xs + ys), max(xs + ys)
                pad = (high - low) * 0.05 or 0.01
                axis.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=1, ls="--")
                above = sum(y > x for x, y in zip(xs, ys))
                axis.set_title(f"{arms.ARMS[name].label}\nabove the diagonal: {above}/{len(xs)} videos", fontsize=9)
            axis.set_xlabel(f"VL score, {arms.ARMS[reference].label}")
            axis.set_ylabel(f"VL score, {arms.ARMS[name].label}")
            axis.legend(fontsize=7)
        figure.tight_layout()
        written.append(save_figure(figure, out / "vl_per_video.png"))
    metrics = METRICS if clip else METRICS[2:]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for axis, (metric, label) in zip(axes[0], metrics):
        means, halves = [], []
        for name in arm_names:
            mean, half = mean_interval(list(per_video(rows, name, metric).values()))
            means.append(mean)
            halves.append(0.0 if math.isnan(half) else half)
        axis.bar(range(len(arm_names)), means, yerr=halves, capsize=4, color="#5b8bd0")
        axis.set_xticks(range(len(arm_names)), arm_names, rotation=20, ha="right", fontsize=8)
        axis.set_title(f"{label} (mean, 95% interval)", fontsize=9)
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            spread = max(max(finite) - min(finite), max(halves), 1e-3)
            axis.set_ylim(min(finite) - 2 * spread, max(finite) + 2 * spread)
    figure.tight_layout()
    written.append(save_figure(figure, out / "metrics.png"))
    return written


def save_figure(figure, path: pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path


def html_page(rows: list[dict], arm_names: tuple[str, ...]) -> str:
    """Per edit: the source and each arm's video side by side, with the scores."""
    by_edit: dict[tuple, dict] = {}
    for row in rows:
        by_edit.setdefault((row["split"], row["video"], row["edit"]), {})[row["arm"]] = row
    parts = ["<!doctype html><meta charset='utf-8'><title>SmoothVideo evaluation</title>",
             "<style>body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse}"
             " td{vertical-align:top;padding:4px;font-size:13px} video{width:240px;display:block}"
             " .failed{color:#b00;max-width:240px} h2{margin-top:1.5em}</style>",
             "<h1>SmoothVideo evaluation</h1><p><a href='summary.md'>summary.md</a> · <a href='results.csv'>results.csv</a>"
             " · <img src='metrics.png' style='max-width:100%;display:block;margin-top:8px'></p>"]
    for (split, video, edit), arm_rows in by_edit.items():
        first = next(iter(arm_rows.values()))
        parts.append(f"<h2>{html.escape(split)} / {html.escape(video)} / {html.escape(edit)}</h2>"
                     f"<p>{html.escape(str(first['source_prompt']))} → <b>{html.escape(str(first['edit_prompt']))}</b></p><table><tr>")
        source = urllib.parse.quote(f"sources/{split}/{video}.mp4")
        parts.append(f"<td>source<video src='{source}' controls loop muted autoplay></video></td>")
        for name in arm_names:
            row = arm_rows.get(name)
            if row is None:
                continue
            head = f"{html.escape(arms.ARMS[name].label)}"
            if row["status"] == "done":
                scores = " · ".join(f"{label} {float(row[m]):.{4 if m == 'vl_score' else 2}f}"
                                    for m, label in METRICS if row[m] != "")
                src = urllib.parse.quote(f"{row['key']}/video.mp4")
                parts.append(f"<td>{head}<video src='{src}' controls loop muted autoplay></video>{scores}</td>")
            else:
                parts.append(f"<td>{head}<div class='failed'>{html.escape(row['status'])}: {html.escape(str(row['error'])[:400])}</div></td>")
        parts.append("</tr></table>")
    return "\n".join(parts) + "\n"


def write_report(out: pathlib.Path, groups: list[list[dict]], arm_names: tuple[str, ...], clip: bool) -> list[pathlib.Path]:
    """Writes results.csv, summary.md, the plots and index.html (each atomically); returns their paths."""
    rows = collect(out, groups)
    written = []

    def atomic(name: str, text: str) -> None:
        runner.write_atomically(out / name, text)
        written.append(out / name)

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic("results.csv", table.getvalue())
    atomic("summary.md", summary_table(rows, arm_names, clip))
    written += plot(rows, arm_names, clip, out)
    atomic("index.html", html_page(rows, arm_names))
    return written
