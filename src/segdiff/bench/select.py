"""Choosing the sampling setting on validation (issue 9): the cheapest setting of a small grid that fits
the time left, within a tolerance of the best setting of that grid."""

from __future__ import annotations

IOU_TOLERANCE_POINTS = 0.5  # IoU in percent points


def choose_setting(rows: list[dict], budget_s: float, tolerance: float = IOU_TOLERANCE_POINTS) -> dict:
    """rows: one dict per grid setting with "iou" (validation IoU, percent) and "cost_s" (estimated seconds
    to predict the test split with it), plus the setting's own fields.

    Rule: best = the highest validation IoU of the whole grid. Among the settings whose cost fits budget_s,
    those within `tolerance` points of best are candidates, and the cheapest candidate is chosen (ties: the
    higher IoU). If no fitting setting is within tolerance, the fitting setting with the highest IoU is
    chosen; if none fits, the cheapest setting of the grid. Returns {"row", "best_iou", "reason"}.
    """
    if not rows:
        raise ValueError("the grid is empty")
    best = max(r["iou"] for r in rows)
    fits = [r for r in rows if r["cost_s"] <= budget_s]
    near = [r for r in fits if r["iou"] >= best - tolerance]
    if near:
        row = min(near, key=lambda r: (r["cost_s"], -r["iou"]))
        reason = (
            f"the cheapest setting within {tolerance:g} IoU points of the grid's best ({best:.2f}) that fits "
            f"{budget_s:.0f} s"
        )
    elif fits:
        row = max(fits, key=lambda r: (r["iou"], -r["cost_s"]))
        reason = (
            f"no setting within {tolerance:g} points of the best ({best:.2f}) fits {budget_s:.0f} s: the best that fits"
        )
    else:
        row = min(rows, key=lambda r: (r["cost_s"], -r["iou"]))
        reason = f"nothing fits {budget_s:.0f} s: the cheapest setting of the grid"
    return {"row": row, "best_iou": best, "reason": reason}
