"""report.json (everything) and report.md (the table) of one evaluation."""
from __future__ import annotations

import json

from eval.metrics import CONVENTIONS, TIE_BREAKING
from shards import storage


def markdown(report: dict) -> str:
    cfg = report["config"]
    k = cfg["top_k"]
    pks = [p for p in map(str, cfg["precision_at"]) if all(p in r["metrics"]["precision_at"] for r in report["rows"])]
    lines = [
        "# Retrieval report", "",
        f"- query codes: `{report['query']['url']}` ({report['query']['items']} items)",
        f"- database codes: `{report['database']['url']}` ({report['database']['items']} items)",
        f"- checkpoint: `{report['checkpoint']}`; tag semantics hash `{report['tag_semantics_hash']}`",
        f"- relevance: query and item share at least one ground-truth label ({report['label_count']} labels)",
        f"- mAP@{k}: AP normalised by the relevant items within the top-{k}; "
        f"**skip** = {CONVENTIONS['skip']}; **zero** = {CONVENTIONS['zero']}",
        f"- {TIE_BREAKING}",
        f"- queries without any label: {report['queries_without_labels']}", "",
        "| method | scoring | bits | mAP@{0} skip | mAP@{0} zero | ".format(k)
        + " | ".join(f"P@{p}" for p in pks) + " |",
        "|---|---|---|---|---|" + "---|" * len(pks),
    ]
    for row in report["rows"]:
        m = row["metrics"]
        bits = "float" if row["bits"] is None else str(row["bits"])
        lines.append(f"| {row['method']} | {row['scoring']} | {bits} | {m['mAP']['skip']:.4f} | "
                     f"{m['mAP']['zero']:.4f} | "
                     + " | ".join(f"{m['precision_at'].get(p, float('nan')):.4f}" for p in pks) + " |")
    for note in report.get("notes", []):
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> None:
    storage.write_bytes(storage.join(out, "report.json"), (json.dumps(report, indent=1) + "\n").encode())
    storage.write_bytes(storage.join(out, "report.md"), markdown(report).encode())
