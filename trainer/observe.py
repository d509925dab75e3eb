"""What a training run shows and leaves behind: progress bar, ``log.jsonl``, TensorBoard, PNG curves.

Everything here runs on rank 0 only (other ranks get a :class:`NullObserver`), and the trainer
talks to it through four calls (``train``, ``val``, ``event``, ``close``), so no logging branch sits
in the loop itself.

``OUT_DIR/log.jsonl``: one JSON object per line, each with ``type``, ``epoch`` (1-based, the epoch
the record belongs to) and ``iter`` (optimiser steps completed so far):

- ``{"type": "train", "lr", "loss", "det_loss", "pull_loss", "push_loss", "off_loss",
  "grad_norm", "img_s", "data_s", "iter_s", "eta_s", "mem_gb"}``: means over the last
  ``log_interval`` iterations (mmdet's logger does the same), losses averaged over all processes;
- ``{"type": "val", "AP", "AP50", ... (the 12 COCO stats, 0-1), "eval_s"}``;
- ``{"type": "event", "event": "start" | "resume" | "checkpoint" | "nonfinite" | "end", ...}``.

When a run resumes from a checkpoint at iteration ``i``, records after ``i`` (written by the
interrupted run) are dropped first, so the file always reads as one uninterrupted run; TensorBoard
does the same with ``purge_step``.

``OUT_DIR/tb/``: TensorBoard scalars ``train/*`` (per record) and ``val/*``.
``OUT_DIR/loss.png``, ``OUT_DIR/map.png``: curves redrawn from ``log.jsonl`` with OpenCV after each
epoch and at the end.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from runtime.atomic_write import write_bytes_atomic, write_text_atomic

LOG_NAME = "log.jsonl"
LOSS_KEYS = ("loss", "det_loss", "pull_loss", "push_loss", "off_loss")
MAP_KEYS = ("AP", "AP50", "AP75")


class NullObserver:
    """The observer of ranks other than 0: every call does nothing."""

    def train(self, record: dict[str, Any]) -> None:
        """A training record (means over the log window)."""

    def progress(self, iteration: int, epoch: int, stats: dict[str, float]) -> None:
        """Progress bar update after a step."""

    def val(self, record: dict[str, Any]) -> None:
        """An evaluation record (the 12 COCO stats)."""

    def event(self, name: str, **fields: Any) -> None:
        """A start, resume, checkpoint, nonfinite or end event."""

    def write(self, message: str) -> None:
        """A line of text for the user."""

    def curves(self) -> None:
        """Redraw the PNG curves."""

    def close(self) -> None:
        """Flush and close everything (curves included)."""


class Observer(NullObserver):
    """Rank 0's outputs.

    Args:
        out_dir: run folder.
        total_iters: iterations of the whole run (progress bar and ETA).
        start_iter: iterations already done (0, or the resumed checkpoint's).
        epochs: epochs of the whole run (progress bar text).
        progress: show the tqdm bar (on stderr).
        tensorboard: write TensorBoard events.
    """

    def __init__(
        self,
        out_dir: str | Path,
        total_iters: int,
        start_iter: int,
        epochs: int,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / LOG_NAME
        truncate_log(self.log_path, start_iter)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self.epochs = epochs
        self.bar = tqdm(
            total=total_iters,
            initial=start_iter,
            unit="it",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not progress,
            file=sys.stderr,
        )
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events an interrupted (or earlier) run wrote after the step we start from.
            self.tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_iter + 1)

    def _append(self, record: dict[str, Any]) -> None:
        self._log.write(json.dumps(record, allow_nan=True) + "\n")
        self._log.flush()

    def train(self, record: dict[str, Any]) -> None:
        self._append({"type": "train", **record})
        if self.tb is not None:
            step = record["iter"]
            for k, v in record.items():
                if k not in ("epoch", "iter") and isinstance(v, float | int):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def progress(self, iteration: int, epoch: int, stats: dict[str, float]) -> None:
        self.bar.set_description(f"epoch {epoch}/{self.epochs}", refresh=False)
        self.bar.set_postfix_str(
            f"loss {stats['loss']:.3f} (det {stats['det_loss']:.3f} pull {stats['pull_loss']:.3f} "
            f"push {stats['push_loss']:.3f} off {stats['off_loss']:.3f}) lr {stats['lr']:.2e} "
            f"{stats['img_s']:.1f} img/s",
            refresh=False,
        )
        self.bar.update(iteration - self.bar.n)

    def val(self, record: dict[str, Any]) -> None:
        self._append({"type": "val", **record})
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("epoch", "iter") and isinstance(v, float | int):
                    self.tb.add_scalar(f"val/{k}", v, record["iter"])
        self.write(
            f"epoch {record['epoch']}: AP {100 * record['AP']:.1f}  AP50 {100 * record['AP50']:.1f}  "
            f"AP75 {100 * record['AP75']:.1f}  ({record['eval_s']:.0f} s)"
        )

    def event(self, name: str, **fields: Any) -> None:
        self._append({"type": "event", "event": name, **fields})

    def write(self, message: str) -> None:
        """A line of text above the progress bar."""
        self.bar.write(message, file=sys.stderr)

    def curves(self) -> None:
        write_curves(self.log_path, self.out_dir)

    def close(self) -> None:
        self.bar.close()
        self._log.close()
        if self.tb is not None:
            self.tb.close()
        self.curves()


# --------------------------------------------------------------------------- log file


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a torn last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_log(path: Path, start_iter: int) -> None:
    """Keep only the records up to iteration ``start_iter`` (all of them are dropped for 0)."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if start_iter and r.get("iter", 0) <= start_iter]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


# --------------------------------------------------------------------------- curves (OpenCV, no matplotlib)

_COLOURS = ((40, 40, 40), (200, 80, 30), (40, 140, 40), (30, 60, 200), (160, 40, 160), (20, 150, 170))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_plot(
    series: dict[str, tuple[list[float], list[float]]],
    title: str,
    xlabel: str,
    size: tuple[int, int] = (900, 480),
    log_y: bool = False,
    y_from_zero: bool = False,
) -> np.ndarray:
    """A white BGR image with one line per series, axes, ticks and a legend (uint8 ``[H, W, 3]``)."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 130, 40, 50  # the legend sits in the right margin
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (left, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    pts = {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in series.items() if len(x)}
    if log_y:
        pts = {k: (x[y > 0], np.log10(y[y > 0])) for k, (x, y) in pts.items()}
    pts = {k: (x[np.isfinite(y)], y[np.isfinite(y)]) for k, (x, y) in pts.items()}
    pts = {k: v for k, v in pts.items() if len(v[0])}
    x0, y0, x1, y1 = left, top, w - right, h - bottom
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(img, xlabel, ((x0 + x1) // 2 - 20, h - 12), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not pts:
        cv2.putText(img, "no data yet", (x0 + 20, y0 + 40), font, 0.6, (120, 120, 120), 1, cv2.LINE_AA)
        return img
    xs = np.concatenate([x for x, _ in pts.values()])
    ys = np.concatenate([y for _, y in pts.values()])
    xlo, xhi = float(xs.min()), float(xs.max())
    ylo, yhi = float(ys.min()), float(ys.max())
    if y_from_zero:
        ylo, yhi = 0.0, max(yhi, 1e-6)
    if xhi == xlo:
        xhi = xlo + 1
    pad = 0.05 * (yhi - ylo or 1.0)
    ylo, yhi = (ylo if y_from_zero else ylo - pad), yhi + pad

    def px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)
        v = y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)
        return np.stack([u, v], 1).round().astype(np.int32)

    for t in _nice_ticks(ylo, yhi):
        ((u, v),) = px(np.array([xlo]), np.array([t]))
        cv2.line(img, (x0, v), (x1, v), (230, 230, 230), 1)
        label = f"{10**t:.3g}" if log_y else f"{t:.3g}"
        cv2.putText(img, label, (5, v + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for t in _nice_ticks(xlo, xhi):
        ((u, v),) = px(np.array([t]), np.array([ylo]))
        cv2.line(img, (u, y1), (u, y1 + 4), (0, 0, 0), 1)
        cv2.putText(img, f"{t:g}", (u - 10, y1 + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, (x, y)) in enumerate(pts.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        p = px(x, y)
        if len(p) == 1:
            cv2.circle(img, tuple(int(c) for c in p[0]), 3, colour, -1, cv2.LINE_AA)
        cv2.polylines(img, [p.reshape(-1, 1, 2)], False, colour, 2 if i == 0 else 1, cv2.LINE_AA)
        cv2.line(img, (x1 + 10, y0 + 15 + 18 * i), (x1 + 28, y0 + 15 + 18 * i), colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (x1 + 34, y0 + 20 + 18 * i), font, 0.45, colour, 1, cv2.LINE_AA)
    return img


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if ok:
        write_bytes_atomic(path, buf.tobytes())


def write_curves(log_path: str | Path, out_dir: str | Path) -> None:
    """``loss.png`` (loss parts per iteration, log scale) and ``map.png`` (AP per epoch) from the log."""
    records = read_log(log_path)
    out_dir = Path(out_dir)
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    loss = {k: ([r["iter"] for r in train], [r[k] for r in train]) for k in LOSS_KEYS}
    _write_png(
        out_dir / "loss.png", line_plot(loss, "training loss (summed over stacks)", "iteration", log_y=True)
    )
    maps = {k: ([r["epoch"] for r in val], [100 * r[k] for r in val]) for k in MAP_KEYS}
    _write_png(
        out_dir / "map.png",
        line_plot(maps, "COCO box AP on the validation set (%)", "epoch", y_from_zero=True),
    )
