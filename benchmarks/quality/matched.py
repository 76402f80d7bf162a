"""Speed-up at matched quality: against the cheapest teacher that is as good, not the slowest.

For a student row with all-five accuracy interval [low, high], the matched teacher is the teacher
row with the fewest steps whose all-five accuracy is at least ``low`` (within the student's
interval or better). The speed-up is the ratio of the two rows' seconds per image, both measured
in the same run on the same backend; when no teacher row reaches the student's interval, there is
no matched speed-up (None).
"""

from __future__ import annotations


def matched_speedups(rows: list[dict]) -> list[dict]:
    """``rows``: table rows with ``model``, ``steps``, ``all_attributes``, ``intervals["all"]`` and
    ``seconds_per_image``; teacher rows are those whose ``model`` starts with "teacher". Returns one
    entry per student row: ``{"student", "student_all", "student_interval", "teacher", "teacher_all",
    "teacher_steps", "speedup"}`` (teacher fields None when no teacher row matches)."""
    teachers = sorted((r for r in rows if str(r["model"]).startswith("teacher") and r.get("seconds_per_image")),
                      key=lambda r: r["steps"])
    out = []
    for row in rows:
        if str(row["model"]).startswith(("teacher", "real")) or not row.get("seconds_per_image"):
            continue
        low, high = row["intervals"]["all"]
        match = next((t for t in teachers if t["all_attributes"] >= low), None)
        out.append({"student": row["model"], "student_all": row["all_attributes"], "student_interval": [low, high],
                    "student_seconds": row["seconds_per_image"],
                    "teacher": match["model"] if match else None,
                    "teacher_steps": match["steps"] if match else None,
                    "teacher_all": match["all_attributes"] if match else None,
                    "teacher_seconds": match["seconds_per_image"] if match else None,
                    "speedup": match["seconds_per_image"] / row["seconds_per_image"] if match else None})
    return out


def markdown_matched(entries: list[dict]) -> str:
    header = ["student", "all five [95% CI]", "s/image", "matched teacher", "teacher all five", "teacher s/image",
              "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        low, high = e["student_interval"]
        teacher = e["teacher"] or "none within the interval"
        lines.append(f"| {e['student']} | {e['student_all']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{e['student_seconds']:.4f} | "
                     f"{teacher} | {'-' if e['teacher_all'] is None else format(e['teacher_all'], '.3f')} | "
                     f"{'-' if e['teacher_seconds'] is None else format(e['teacher_seconds'], '.4f')} | "
                     f"{'-' if e['speedup'] is None else format(e['speedup'], '.1f') + 'x'} |")
    return "\n".join(lines)


__all__ = ["markdown_matched", "matched_speedups"]
