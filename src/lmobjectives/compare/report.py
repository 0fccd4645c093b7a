"""The comparison's report: ``results.json`` (every number), ``report.md``, a self-contained ``report.html``
(its plots embedded as base64 PNGs) and the plots as PNG files.

The comparison is read from the held-out evaluations (:mod:`lmobjectives.evaluation`), which score every
run on the same held-out text the same way. The training losses are shown for information only: each is
the run's own objective (next-token loss for CLM, the masked tokens' loss for MLM, ...), so two objectives'
training losses measure different things and are never plotted on one axis.

Each number is the mean over the seeds with the min–max range; a difference smaller than that spread is no
difference (:func:`verdicts` says which differences exceed it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .specs import PRESETS

__all__ = ["better", "format_summary", "format_table", "summarise", "verdicts", "write_report"]

RESULTS_FILE = "results.json"
TABLE_METRICS = ("accuracy", "bits_per_byte", "balanced_accuracy")  # what the terminal table shows of each task


def better(metric: str) -> str | None:
    """``"higher"`` or ``"lower"``: which way a metric improves, from its name (None when unknown).

    References that no model improves (``majority_accuracy``: always answering the commonest class; ``chance_...``)
    have none.

    >>> better("accuracy"), better("bits_per_byte"), better("nsp_balanced_accuracy"), better("majority_accuracy")
    ('higher', 'lower', 'higher', None)
    """
    if any(word in metric for word in ("majority", "chance", "true_")):
        return None
    if "accuracy" in metric:
        return "higher"
    if any(word in metric for word in ("loss", "bits", "perplexity", "repetition")):
        return "lower"
    return None


def summarise(config: Any, runs: list[dict[str, Any]], *, elapsed_s: float) -> dict[str, Any]:
    """The report's data (what ``results.json`` holds): settings, budget, runs, and per objective and metric the
    mean, min and max over seeds."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    summary: dict[str, dict[str, Any]] = {label: {} for label in labels}
    metrics: list[dict[str, Any]] = []
    not_applicable: dict[str, dict[str, str]] = {}
    for run in runs:
        for task, result in run["evaluation"].items():
            if not result["applies"]:
                not_applicable.setdefault(task, {})[run["label"]] = result["reason"]
                continue
            for name, value in result["metrics"].items():
                key = f"{task}.{name}"
                if not any(m["key"] == key for m in metrics):
                    metrics.append(
                        {
                            "key": key,
                            "task": task,
                            "metric": name,
                            "better": better(name),
                            "headline": name == next(iter(result["metrics"])),
                        }
                    )
                cell = summary[run["label"]].setdefault(
                    key, {"values": [], "scored": _scored(result.get("info", {}), name)}
                )
                cell["values"].append(value)
    tasks = list(dict.fromkeys(task for run in runs for task in run["evaluation"]))
    metrics.sort(key=lambda m: tasks.index(m["task"]))  # a task's metrics side by side, whichever run had them first
    for per_label in summary.values():
        for cell in per_label.values():
            values = [v for v in cell["values"] if v is not None]
            cell.update(
                mean=sum(values) / len(values) if values else None,
                min=min(values, default=None),
                max=max(values, default=None),
                n=len(values),
            )
    preset = PRESETS.get(config.preset) if config.preset else None
    results = {
        "title": f"lmobj compare: {config.preset}" if config.preset else "lmobj compare: " + " vs ".join(labels),
        "question": preset.question if preset else None,
        "expect": preset.expect if preset else None,
        "command": config.command,
        "settings": config.settings(),
        "budget": {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "seq_len": config.seq_len,
            "input_tokens": config.steps * config.batch_size * config.seq_len,
            "meaning": "equal optimizer steps x batch size x sequence length for every run (input positions); "
            "not equal FLOPs: the parameter count of each model is listed",
        },
        "labels": labels,
        "seeds": config.seed_list,
        "metrics": metrics,
        "summary": summary,
        "not_applicable": not_applicable,
        "runs": runs,
        "timing": {
            "total_s": elapsed_s,
            "train_s": sum(r["train_s"] for r in runs),
            "eval_s": sum(r["eval_s"] for r in runs),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "lmobjectives": __version__,
        },
    }
    results["verdicts"] = verdicts(results)
    return results


SCORED_KEYS = ("targets", "hidden_tokens", "tokens", "test_sentences")
"""The entry of an evaluation's ``info`` that counts the items its accuracy is a share of (next_token, fill_in,
pll, probe); sentence_pairs counts per kind (``info["nsp"]["pairs"]``)."""


def _scored(info: dict[str, Any], metric: str) -> int | None:
    """How many items an accuracy ``metric`` was measured on, or None (not an accuracy, or not counted)."""
    if "accuracy" not in metric:
        return None
    kind = info.get(metric.split("_")[0])
    if isinstance(kind, dict) and isinstance(kind.get("pairs"), int):
        return kind["pairs"]
    return next((info[k] for k in SCORED_KEYS if isinstance(info.get(k), int)), None)


def _sampling_error(b: dict[str, Any], s: dict[str, Any]) -> float | None:
    """The binomial standard error of the difference of two accuracies, each over its own ``scored`` items
    (unpaired: an upper bound when both were measured on the same items), or None when a count is missing."""
    if not b.get("scored") or not s.get("scored"):
        return None
    return math.sqrt(sum(c["mean"] * (1 - c["mean"]) / c["scored"] for c in (b, s)))


def _cell(results: dict[str, Any], label: str, key: str) -> dict[str, Any] | None:
    cell = results["summary"].get(label, {}).get(key)
    return cell if cell and cell["mean"] is not None else None


def verdicts(results: dict[str, Any], *, table_only: bool = False) -> list[str]:
    """One sentence per metric with a direction that two objectives or more have: which is best, by how much,
    and whether that exceeds the spread over seeds (the best's range and the runner-up's do not overlap).
    ``table_only``: only the metrics of the terminal table."""
    out = []
    methods = _methods(results)
    for m in _table_metrics(results) if table_only else results["metrics"]:
        if m["better"] is None:
            continue
        cells = [(label, c) for label in results["labels"] if (c := _cell(results, label, m["key"]))]
        if len(cells) < 2:
            continue
        differ = len({methods.get(m["task"], {}).get(label) for label, _ in cells}) > 1
        if differ and "accuracy" not in m["metric"]:
            out.append(
                f"{m['task']} {m['metric']}: not compared, the objectives' runs are measured by different methods "
                "(see how each number was measured)."
            )
            continue
        cells.sort(key=lambda lc: lc[1]["mean"], reverse=m["better"] == "higher")
        (best, b), (second, s) = cells[0], cells[1]
        gap = abs(b["mean"] - s["mean"])
        head = f"{m['task']} {m['metric']} ({m['better']} is better): {best} {_num(b['mean'])}, then {second} {_num(s['mean'])}"
        if differ:
            how = ", ".join(f"{label}: {methods[m['task']][label]}" for label, _ in cells[:2])
            head += f" (measured by different methods: {how})"
        if min(b["n"], s["n"]) < 2:
            out.append(
                f"{head}; one seed each, so the spread is unknown (--seeds 2 or more to know whether {_num(gap)} is a difference)."
            )
        elif (
            (b["min"] > s["max"] or b["max"] < s["min"]) and (se := _sampling_error(b, s)) is not None and gap < 2 * se
        ):
            out.append(
                f"{head}: a difference of {_num(gap)}, larger than the spread over seeds but less than twice the "
                f"evaluation's sampling error (±{_num(se)}, binomial over {b['scored']:,} and {s['scored']:,} items): "
                "more held-out data would be needed to call it a difference."
            )
        elif b["min"] > s["max"] or b["max"] < s["min"]:
            out.append(
                f"{head}: a difference of {_num(gap)}, larger than the spread over seeds (the ranges do not overlap)."
            )
        else:
            out.append(f"{head}: no difference beyond the spread over seeds (the ranges overlap).")
    return out


def _methods(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{task: {label: method}}`` where an evaluation reports a ``method`` (a different measurement per kind of
    model, e.g. fill-in by candidates for a causal model): numbers of different methods are not alike."""
    out: dict[str, dict[str, str]] = {}
    for r in results["runs"]:
        for task, result in r["evaluation"].items():
            if result["applies"] and "method" in result.get("info", {}):
                out.setdefault(task, {}).setdefault(r["label"], str(result["info"]["method"]))
    return out


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def _entry(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "n/a"
    if cell["n"] < 2:
        return _num(cell["mean"])
    return f"{_num(cell['mean'])} ({_num(cell['min'])}–{_num(cell['max'])})"


def _arrow(direction: str | None) -> str:
    return {"higher": " ↑", "lower": " ↓"}.get(direction or "", "")


def _table_metrics(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The terminal table's columns: each task's headline and its accuracies."""
    return [
        m
        for m in results["metrics"]
        if m["headline"] or m["metric"] in TABLE_METRICS or m["metric"].endswith("accuracy")
    ]


def _rows(results: dict[str, Any], metrics: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["objective", *(f"{m['task']} {m['metric']}{_arrow(m['better'])}" for m in metrics)]
    rows = []
    for label in results["labels"]:
        row = [label]
        for m in metrics:
            cell = _cell(results, label, m["key"])
            reason = results["not_applicable"].get(m["task"], {}).get(label)
            row.append("not applicable" if cell is None and reason else _entry(cell))
        rows.append(row)
    return header, rows


def format_table(results: dict[str, Any]) -> str:
    """The comparison as a plain-text table (mean over seeds, min–max in brackets), as ``lmobj compare`` prints it."""
    header, rows = _rows(results, _table_metrics(results))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def format_summary(results: dict[str, Any]) -> str:
    """What ``lmobj compare`` prints: the question, the budget, the table and the verdicts on its columns."""
    b, seeds = results["budget"], results["seeds"]
    spread = (
        f"mean (min-max) over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}, no spread"
    )
    lines = [
        results["question"] or results["title"],
        (
            f"{b['steps']:,} steps x {b['batch_size']} x {b['seq_len']} tokens = {b['input_tokens']:,} input tokens per run; "
            f"held-out evaluation, {spread}:"
        ),
        "",
        format_table(results).rstrip(),
        "",
    ]
    lines += [f"- {v}" for v in verdicts(results, table_only=True)]
    return "\n".join(lines) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _runs_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "objective",
        "seed",
        "parameters",
        "input tokens",
        "real tokens",
        "train s",
        "eval s",
        "last training loss",
        "last held-out loss (own objective)",
    ]
    rows = []
    for r in results["runs"]:
        last = r["curve"][-1] if r["curve"] else {}
        held = [p["eval_loss"] for p in r["curve"] if "eval_loss" in p]
        rows.append(
            [
                r["label"],
                str(r["seed"]),
                f"{r['parameters']:,}",
                f"{r['input_positions']:,}",
                f"{r['tokens']:,}",
                f"{r['train_s']:.0f}",
                f"{r['eval_s']:.0f}",
                _num(last.get("loss")),
                _num(held[-1] if held else None),
            ]
        )
    return header, rows


def _procedures(results: dict[str, Any]) -> list[str]:
    """Per task, how each objective's run was measured (the evaluation's method/procedure), warnings, and
    why a task did not apply."""
    lines = []
    tasks = list(dict.fromkeys([m["task"] for m in results["metrics"]] + list(results["not_applicable"])))
    for task in tasks:
        how: dict[str, str] = {}
        notes: list[str] = []
        for r in results["runs"]:
            result = r["evaluation"].get(task)
            if not result or not result["applies"]:
                continue
            info = result.get("info", {})
            method = info.get("procedure") or info.get("method")
            if method and r["label"] not in how:
                counts = [
                    f"{info[k]} {k.replace('_', ' ')}" for k in ("candidates", "hidden_tokens", "targets") if k in info
                ]
                how[r["label"]] = str(method) + (f" ({', '.join(counts)})" if counts else "")
            notes += [f"{r['label']} seed {r['seed']}: {w}" for w in info.get("warnings", [])]
        parts = [f"{label}: {text}" for label, text in how.items()]
        if len(set(_methods(results).get(task, {}).values())) > 1:
            parts.append("the methods differ between objectives: only their accuracies are set side by side")
        parts += [
            f"{label}: not applicable ({reason})" for label, reason in results["not_applicable"].get(task, {}).items()
        ]
        lines.append(f"**{task}**: " + ("; ".join(parts) if parts else "see lmobjectives.evaluation") + ".")
        lines += [f"  - warning: {n}" for n in dict.fromkeys(notes)]
    return lines


def _plot_evaluations(results: dict[str, Any]):
    """One panel per table metric: a bar per objective (mean), its min–max as a line, each seed as a dot."""
    from matplotlib.figure import Figure

    metrics = [
        m for m in _table_metrics(results) if any(_cell(results, label, m["key"]) for label in results["labels"])
    ]
    if not metrics:
        return None
    labels = results["labels"]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    names = max(len(part) for label in labels for part in label.split(","))  # longest line of an objective's name
    fig = Figure(figsize=(3.4 * cols + 0.08 * names, 0.5 + (0.9 + 0.45 * len(labels)) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(labels))]
    for ax, m in zip(axes, metrics):
        for i, label in enumerate(labels):
            cell = _cell(results, label, m["key"])
            if cell is None:
                missing = "not applicable" if label in results["not_applicable"].get(m["task"], {}) else "not measured"
                ax.text(0, i, f" {missing}", va="center", fontsize=8, color="0.4")
                continue
            ax.barh(i, cell["mean"], color=colours[i], alpha=0.75)
            values = [v for v in cell["values"] if v is not None]
            if len(values) > 1:
                ax.plot([cell["min"], cell["max"]], [i, i], color="black", lw=1.5)
            ax.scatter(values, [i] * len(values), color="black", s=10, zorder=3)
        first_column = (list(axes).index(ax) % cols) == 0  # objective names once per row of panels
        ax.set_yticks(range(len(labels)), [label.replace(",", ",\n") for label in labels] if first_column else [])
        ax.invert_yaxis()
        ax.set_title(f"{m['task']}: {m['metric']}{_arrow(m['better'])}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    seeds = len(results["seeds"])
    fig.suptitle(
        f"held-out evaluation ({'bars: mean of ' + str(seeds) + ' seeds, line: min–max' if seeds > 1 else 'one seed'})",
        fontsize=11,
    )
    return fig


def _plot_training(results: dict[str, Any]):
    """One panel per objective: its own training loss (and held-out loss) against input tokens, per seed."""
    from matplotlib.figure import Figure

    labels = results["labels"]
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig = Figure(figsize=(4.2 * cols, 0.6 + 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (i, label) in zip(axes, enumerate(labels)):
        for k, run in enumerate(r for r in results["runs"] if r["label"] == label):
            curve = run["curve"]
            ax.plot(
                [p["tokens"] for p in curve],
                [p["loss"] for p in curve],
                color=f"C{i % 10}",
                lw=1,
                alpha=0.8,
                label="training" if k == 0 else None,
            )
            held = [p for p in curve if "eval_loss" in p]
            ax.plot(
                [p["tokens"] for p in held],
                [p["eval_loss"] for p in held],
                "o--",
                color="black",
                ms=3,
                lw=0.8,
                label="held-out" if k == 0 else None,
            )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("input tokens seen")
        ax.set_ylabel("its own loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(labels) :]:
        ax.set_visible(False)
    fig.suptitle(
        "training loss of each objective, for information: each panel is a different loss, not comparable across panels",
        fontsize=10,
    )
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _sections(results: dict[str, Any], images: dict[str, str]) -> list[tuple[str, Any]]:
    """The report as ``(kind, content)`` pieces that both the Markdown and the HTML render."""
    b = results["budget"]
    s = results["settings"]
    seeds = results["seeds"]
    pieces: list[tuple[str, Any]] = [("h1", results["title"])]
    if results["question"]:
        pieces.append(("p", f"*{results['question']}*"))
    if results["command"]:
        pieces.append(("code", results["command"]))
    pieces.append(
        (
            "p",
            (
                f"**Budget**: every run takes {b['steps']:,} optimizer steps of {b['batch_size']} inputs of {b['seq_len']} tokens, "
                f"{b['input_tokens']:,} input tokens each (equal input tokens, not equal FLOPs: see the parameters below). "
                f"**Model**: the same size for every objective (d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, "
                f"d_ff {s['d_ff']}; heads as each objective needs). **Data**: `{s['data']}`, tokenizer `{s['tokenizer']}`; "
                f"every evaluation reads only the held-out documents ({s['heldout']:.0%} of the corpus, never trained on). "
                f"**Seeds**: {', '.join(map(str, seeds))}"
                + (
                    "; each number is the mean over the seeds with the min–max range in brackets. A difference smaller than the "
                    "spread over seeds is no difference. The spread is over training seeds: every run is evaluated on the same "
                    "held-out positions, so the sampling error of a small evaluation is on top of it."
                    if len(seeds) > 1
                    else "; one seed, so the spread is unknown."
                )
            ),
        )
    )
    pieces.append(("h2", "Results"))
    pieces.append(("table", _rows(results, [m for m in results["metrics"]])))
    if results["verdicts"]:
        pieces.append(("h2", "What the numbers say"))
        pieces.append(("list", results["verdicts"]))
    if results["expect"]:
        pieces.append(("p", f"**What the papers found**: {results['expect']}"))
    pieces.append(("h2", "Plots"))
    if "evaluation" in images:
        pieces.append(("img", ("evaluation", "evaluation.png")))
    if "training" in images:
        pieces.append(("img", ("training", "training.png")))
        pieces.append(
            (
                "p",
                (
                    "The training panels show each run's own objective (for CLM the next-token loss, for MLM the "
                    "loss on its masked tokens, ...): different quantities, so they say how each run trained, not "
                    "which objective is better. The comparison is the held-out evaluation above."
                ),
            )
        )
    pieces.append(("h2", "How each number was measured"))
    pieces.append(("list", _procedures(results)))
    pieces.append(("h2", "Runs"))
    pieces.append(("table", _runs_table(results)))
    t = results["timing"]
    pieces.append(
        (
            "p",
            (
                f"The runs took {t['train_s']:.0f} s training and {t['eval_s']:.0f} s evaluating when they were made; this "
                f"call took {t['total_s']:.0f} s of wall time (less where it reused runs of an earlier call); {t['torch_threads']} torch threads, "
                f"torch {t['torch']}, lmobjectives {t['lmobjectives']}. Every number is in `results.json`."
            ),
        )
    )
    return pieces


def _markdown(pieces: list[tuple[str, Any]]) -> str:
    out = []
    for kind, content in pieces:
        if kind == "h1":
            out.append(f"# {content}")
        elif kind == "h2":
            out.append(f"## {content}")
        elif kind == "p":
            out.append(content)
        elif kind == "code":
            out.append(f"```bash\n{content}\n```")
        elif kind == "list":
            out.append("\n".join(c if c.startswith("  ") else f"- {c}" for c in content))
        elif kind == "table":
            out.append(_markdown_table(*content))
        elif kind == "img":
            out.append(f"![{content[0]}]({content[1]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """``**bold**``, ``*italic*`` and backticks of a Markdown paragraph as HTML (escaped)."""
    import re

    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _html(pieces: list[tuple[str, Any]], images: dict[str, str], title: str) -> str:
    body = []
    for kind, content in pieces:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(content)}</p>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(content)}</code></pre>")
        elif kind == "list":
            items = "".join(f"<li>{_inline(c.strip().removeprefix('- '))}</li>" for c in content)
            body.append(f"<ul>{items}</ul>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img alt="{content[0]}" src="data:image/png;base64,{images[content[0]]}"></p>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``results.json``, the plots (``evaluation.png``, ``training.png``; none without matplotlib, with a
    note in the report), ``report.md`` and ``report.html`` into ``out``; their paths by kind."""
    out = Path(out)
    files = {"json": out / RESULTS_FILE}
    files["json"].write_text(json.dumps(results, indent=2) + "\n")
    images: dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        results = {**results, "verdicts": results["verdicts"] + ["(no plots: pip install matplotlib)"]}
    else:
        for name, draw in (("evaluation", _plot_evaluations), ("training", _plot_training)):
            fig = draw(results)
            if fig is None:
                continue
            data = _png(fig)
            files[name] = out / f"{name}.png"
            files[name].write_bytes(data)
            images[name] = base64.b64encode(data).decode("ascii")
    pieces = _sections(results, images)
    files["md"] = out / "report.md"
    files["md"].write_text(_markdown(pieces))
    files["html"] = out / "report.html"
    files["html"].write_text(_html(pieces, images, results["title"]))
    return files
