"""The inspection loop: source -> embed -> score -> verdict -> sinks, with retrain, threshold changes and rollback.

Threads (docs/architecture.md): the main loop owns the interpreter, the source, the fitted detector, its
threshold and the detector store. Nothing else changes them: other threads (the MQTT command thread, a web
server, a signal handler) hand the loop a job and get a `Future` back. The loop runs jobs between frames: a
change (threshold, rollback) in one turn, a retrain over as many turns as it takes to collect its frames.
Publishing only writes to the sinks (the MQTT one to its on-disk spool), so a slow or absent broker never slows
capture.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.capture import EndOfStream, Frame, FrameSource, ReopeningSource
from edge_agent.capture.factory import open_source
from edge_agent.capture.images import read_folder
from edge_agent.capture.roi import Roi, RoiError, fitted_roi_mismatch
from edge_agent.config import Config, fit_settings
from edge_agent.deliver.messages import (RETRAINING, RUNNING, UNFITTED, alert_message, event_message, state_message,
                                         verdict_message)
from edge_agent.deliver.sink import Sink
from edge_agent.deliver.snapshot import alert_picture, contact_sheet, jpeg
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.detectors.persistence import DetectorFileError, LoadedDetector
from edge_agent.learn.fitting import FitError, fit_images, recorded_threshold_settings, rethreshold
from edge_agent.learn.store import DetectorStore, StoreError
from edge_agent.learn.threshold import is_anomalous
from edge_agent.learn.upright import judged_view
from edge_agent.system.atomic import write_text_atomic
from edge_agent.system.memory import return_freed_memory
from edge_agent.system.systemd_notify import Notifier

log = logging.getLogger(__name__)

_TICK_S = 0.5  # longest the main loop waits for anything, so the watchdog keeps being fed
_STATE_EVERY_S = 10.0
#: The reject rate in the state is over this many latest parts: recent enough to show a drifting line.
RECENT_PARTS = 100
#: The training parts' contact sheet (`edge_agent.deliver.snapshot.contact_sheet`) is at most this wide and tall,
#: and is published (retained) under this name; an empty picture says the current detector has none.
TRAINING_PICTURE_SIDE = 960
TRAINING_PICTURE = "retrain/images"
#: Triggers waiting for the loop, at most: a flood (a PLC writing the coil in a loop) is refused, not queued.
MAX_PENDING_TRIGGERS = 64


@dataclass
class RetrainJob:
    n_images: int
    folder: str | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    started: float = 0.0  # when the loop started it (the timeout counts from there, not from the request)
    outcome: dict[str, Any] | Exception | None = None  # sent to the requester once the loop is back to inspecting


@dataclass
class Change:
    """A change of the fitted detector's state, run by the main loop in one turn."""

    apply: Callable[[], dict[str, Any]]
    retrains_seen: int  # retrains finished when it was asked for: one more means it was meant for another model
    future: Future = field(default_factory=Future)


class RetrainInProgress(ValueError):
    """A change of the detector asked for while a retrain runs."""

    def __init__(self) -> None:
        super().__init__("retrain in progress: threshold and rollback are refused until it ends; send it again then")


def peak(heatmap: np.ndarray, frame_shape: tuple[int, ...]) -> tuple[int, int]:
    """(x, y) in pixels of the centre of the heat map's highest cell, the map covering an image of that shape."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape[:2])
    (h, w), (rows, cols) = frame_shape[:2], heatmap.shape[:2]
    return int((col + 0.5) * w / cols), int((row + 0.5) * h / rows)


class Agent:
    def __init__(self, config: Config, extractor: FeatureExtractor, sink: Sink,
                 source: FrameSource | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.extractor = extractor
        self.sink = sink
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.store = DetectorStore(config.state_dir, config.retrain.keep)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        model_size = (extractor.manifest.input.width, extractor.manifest.input.height)
        source = source or open_source(config.source, config.state_dir, config.camera, model_size)
        self.source = ReopeningSource(source, config.source.reopen_min_s,
                                      config.source.reopen_max_s, self._source_status, self.stop_event)
        self._retrains: queue.Queue[RetrainJob] = queue.Queue()
        self._changes: queue.Queue[Change] = queue.Queue()
        self._job: RetrainJob | None = None
        # (retrains ended, of which failed, the last one's seconds or None), swapped whole like the tally.
        self._retrain_tally: tuple[int, int, float | None] = (0, 0, None)
        self._retrain_signalled = False  # set by a signal handler: a plain flag, no lock a handler could deadlock on
        # One (part id or None, monotonic time) per trigger: the frame must be exposed after that time.
        self._triggers: queue.SimpleQueue[tuple[str | None, float]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self.roi = Roi.parse(config.source.roi)
        self._roi_errors: set[str] = set()
        self._active: LoadedDetector | None = None
        self._active_path: Path | None = None
        self._source_state: dict[str, Any] = {"status": "closed"}
        self._frame_times: list[float] = []
        # (inspected, rejected), swapped whole so that another thread's status never sees one without the other.
        self._tally: tuple[int, int] = (0, 0)
        self.missed_triggers = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=RECENT_PARTS)  # anomalous or not
        self.publish_errors = 0
        # The longest the loop waits for anything: short enough to feed the watchdog on time.
        self._tick = min(_TICK_S, self.notifier.watchdog_interval or _TICK_S)
        self._load_current()
        self._follow_configured_threshold()

    # ---- requests from other threads: validated by the caller (`edge_agent.commands`), run by the loop -------
    def request_retrain(self, n_images: int | None = None, folder: str | None = None) -> Future:
        """Queue a retrain (on ``folder``'s images, or on the next ``n_images`` frames); its summary when done."""
        if self.stop_event.is_set():
            raise RuntimeError("the agent is stopping; nothing was changed")
        job = RetrainJob(self.config.retrain.n_images if n_images is None else n_images, folder)
        self._retrains.put(job)
        self._wake.set()
        return job.future

    def retrain_on_signal(self) -> None:
        """From a signal handler (SIGUSR1, the shift-start timer): only sets a flag the loop reads."""
        self._retrain_signalled = True

    def submit_change(self, apply: Callable[[], dict[str, Any]]) -> Future:
        """Run ``apply`` on the loop between frames; refused at once while a retrain runs."""
        if self.stop_event.is_set():
            raise RuntimeError("the agent is stopping; nothing was changed")
        if self.retraining:
            raise RetrainInProgress()
        change = Change(apply, self._retrains_done)
        self._changes.put(change)
        self._wake.set()
        return change.future

    def trigger(self, part_id: str | None = None) -> None:
        """One frame for one part (any thread: the MQTT command, a GPIO edge, a PLC coil); ``part_id``, already
        validated by `edge_agent.commands.parse_part_id`, is echoed in that part's verdict."""
        if self.config.trigger.mode != "mqtt":
            raise ValueError('trigger is only used with [trigger] mode = "mqtt"')
        if self._triggers.qsize() >= MAX_PENDING_TRIGGERS:
            raise ValueError(f"trigger refused: {MAX_PENDING_TRIGGERS} triggers are already waiting for the camera")
        self._triggers.put((part_id, time.monotonic()))
        self._wake.set()

    @property
    def retraining(self) -> bool:
        return self._job is not None or not self._retrains.empty() or self._retrain_signalled

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    # ---- detector (main loop) ---------------------------------------------------------------------------------
    def _load_current(self) -> None:
        try:
            self._active = self.store.load_current(self.extractor.manifest)
            self._active_path = self.store.current_path() if self._active else None
        except DetectorFileError as exc:
            log.error("current detector unusable, running unfitted: %s", exc)
            self._active, self._active_path = None, None
        mismatch = (fitted_roi_mismatch(self._active.metadata.get("roi", []), self.config.source.roi)
                    if self._active else None)
        if mismatch:
            log.error("%s", mismatch)
            self._active, self._active_path = None, None
        if self._active is None:
            log.warning("no fitted detector for %s: unfitted until a retrain", self.extractor.manifest.model_id)

    def _follow_configured_threshold(self) -> None:
        """A [threshold] edited since the detector's threshold was set takes effect now, not at the next retrain.

        A threshold moved by a command since then stays: the configuration wins only when it changed.
        """
        active = self._active
        settings = fit_settings(self.config)
        if active is None or recorded_threshold_settings(active.metadata) == settings.threshold_settings():
            return
        try:
            meta = rethreshold(active.metadata, settings)
            path = self.store.save_loaded(active.detector, meta, self.store.picture(self._active_path))
        except (ValueError, KeyError, OSError) as exc:
            log.error("[threshold] changed but cannot be applied to %s, threshold kept at %.4g: %s",
                      self._active_path.name if self._active_path else "?", active.metadata["threshold"], exc)
            return
        log.info("[threshold] changed: threshold %.4g -> %.4g (saved as %s)", active.metadata["threshold"],
                 meta["threshold"], path.name)
        self._active, self._active_path = LoadedDetector(active.detector, meta), path

    def _training_picture(self, images: list[np.ndarray]) -> bytes | None:
        """The contact sheet of a fit's parts; a picture that cannot be made costs the picture, not the fit."""
        try:
            return jpeg(contact_sheet(images, TRAINING_PICTURE_SIDE), self.config.alerts.jpeg_quality,
                        max_side=TRAINING_PICTURE_SIDE)
        except Exception:
            log.exception("the training parts' picture could not be made; the fit is kept without it")
            return None

    def _publish_training_picture(self) -> None:
        """What the detector in use learned from, for an operator to check (one part ten times, a hand)."""
        self.sink.publish_image(TRAINING_PICTURE, self.store.picture(self._active_path) or b"")

    def _view(self, image: np.ndarray) -> np.ndarray | None:
        """What the detector sees of a frame: the region of interest; ``None`` (logged once per kind) when the
        frame is too small for it."""
        if self.roi is None:
            return image
        try:
            return self.roi.crop(image)
        except RoiError as exc:
            if str(exc) not in self._roi_errors:
                self._roi_errors.add(str(exc))
                log.error("frame not judged: %s", exc)
            return None

    def _model_view(self, frame: Frame) -> np.ndarray | None:
        """The frame as the detector sees it: the camera's own model-sized stream when it gives one (no ROI
        then, see `edge_agent.capture.factory.open_source`), else `_view` of the full frame."""
        return frame.model_image if frame.model_image is not None else self._view(frame.image)

    @property
    def fitted(self) -> bool:
        return self._active is not None

    def set_threshold(self, recalibrate: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """New metadata from ``recalibrate`` (`edge_agent.commands.ThresholdChange.apply`), saved as a new
        detector file, so rollback undoes it."""
        active = self._active
        if active is None:
            raise ValueError("not fitted yet: retrain first")
        meta = recalibrate(active.metadata)
        path = self.store.save_loaded(active.detector, meta, self.store.picture(self._active_path))
        self._active, self._active_path = LoadedDetector(active.detector, meta), path
        return {"threshold": meta["threshold"], "detector_file": path.name}

    def rollback(self) -> dict[str, Any]:
        try:
            path = self.store.rollback(self.extractor.manifest)
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        self._load_current()
        self._publish_training_picture()
        if self._active is None:
            raise ValueError(f"rolled back to {path.name}, which cannot be used: running unfitted")
        return {"detector_file": path.name, "threshold": self._active.metadata["threshold"]}

    def _run_changes(self) -> None:
        while True:
            try:
                change = self._changes.get_nowait()
            except queue.Empty:
                return
            try:
                if self._job is not None or change.retrains_seen != self._retrains_done:
                    raise RetrainInProgress()
                change.future.set_result(change.apply())
            except Exception as exc:
                change.future.set_exception(exc)
            self.publish_state()

    # ---- state ------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A snapshot (any thread may ask: it only reads references the loop swaps whole)."""
        m = self.extractor.manifest
        active, path = self._active, self._active_path
        status = RETRAINING if self._job else (RUNNING if active else UNFITTED)
        detector = {**active.metadata, "detector_file": path.name if path else None} if active else {}
        model = {"model_id": m.model_id, "backbone": m.backbone, "precision": m.precision,
                 "delegate": self.extractor.delegate}
        recent = list(self._recent)
        inspected, rejected = self._tally
        retrains, retrain_failures, retrain_last_s = self._retrain_tally
        counts = {"inspected": inspected, "good": inspected - rejected, "rejected": rejected,
                  "reject_rate": round(sum(recent) / len(recent), 4) if recent else None,
                  "missed_triggers": self.missed_triggers, "retrains": retrains,
                  "retrain_failures": retrain_failures, "retrain_last_s": retrain_last_s}
        return state_message(self.config.device.id, status, __version__, model, detector, self.config.trigger.mode,
                             self.fps(), counts, {**self._source_state, **self.source.describe()},
                             self.sink.stats())

    def publish_state(self) -> None:
        state = self.state()
        self.sink.publish_state(state)
        try:
            write_text_atomic(self.config.state_dir / "state.json", json.dumps(state, indent=1) + "\n")
        except OSError as exc:
            log.warning("cannot write state.json: %s", exc)

    def fps(self) -> float:
        t = self._frame_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def _source_status(self, status: dict[str, Any]) -> None:
        self._source_state = status
        self.sink.publish_event("source/status", event_message(self.config.device.id, **status))

    # ---- retrain (main loop) ----------------------------------------------------------------------------------
    def _progress(self, job: RetrainJob, stage: str, **extra: Any) -> None:
        log.info("retrain %s %s", stage, extra)
        self.sink.publish_event("retrain/progress", event_message(self.config.device.id, stage=stage,
                                                                  n_images=job.n_images, **extra))

    def _fail(self, job: RetrainJob, error: str, reply: str) -> None:
        self._progress(job, "failed", error=error)
        job.outcome = RuntimeError(reply)

    def _end_job(self) -> None:
        """Back to inspecting (with the new detector or the old one), say so in the state, then answer the
        requester: whoever acts on the reply (a threshold right after) finds the retrain over."""
        job = self._job
        assert job is not None
        # Counted before the job is cleared: a change asked for in between is refused, not lost.
        ended, failed, _ = self._retrain_tally
        self._retrain_tally = (ended + 1, failed + isinstance(job.outcome, Exception),
                               round(time.monotonic() - job.started, 3))
        self._job = None
        self._drain_triggers()
        self.publish_state()
        if isinstance(job.outcome, Exception):
            job.future.set_exception(job.outcome)
        else:
            job.future.set_result(job.outcome or {})

    def _drain_triggers(self) -> None:
        """Triggers still waiting when a retrain ends came while it fitted (or timed out): their parts have
        passed, so none is replayed on a later part; each is reported."""
        while not self._triggers.empty():
            part_id, triggered_at = self._triggers.get_nowait()
            self._missed(part_id, triggered_at, "came while a retrain fitted")

    def _missed(self, part_id: str | None, triggered_at: float, why: str) -> None:
        """A trigger that got no frame: the part passed without a verdict, which the line must hear about
        (a PLC treats a part without a verdict as rejected)."""
        self.missed_triggers += 1
        age_ms = round((time.monotonic() - triggered_at) * 1e3, 1)
        log.warning("trigger %s missed (%s, %.0f ms old)", part_id or "", why, age_ms)
        self.sink.publish_event("trigger/missed", event_message(self.config.device.id, part_id=part_id,
                                                                age_ms=age_ms, reason=why))

    def _run_fit(self, job: RetrainJob, images: list[np.ndarray]) -> None:
        settings = fit_settings(self.config)
        self._progress(job, "fitting", collected=len(images))
        try:
            result = fit_images(lambda ims: self.extractor.embed(ims, "retrain", self.notifier.watchdog), images, settings)
            path = self.store.save(result, settings, self.extractor.manifest, {"roi": self.config.source.roi},
                                   self._training_picture(images))
            self._load_current()
        except (FitError, ValueError, OSError, DetectorFileError) as exc:
            log.error("retrain failed, previous model kept: %s", exc)
            self._fail(job, str(exc), f"retrain failed, previous model kept: {exc}")
            return
        self._publish_training_picture()
        summary = {"detector_file": path.name, "n_train": result.n_train, "distinct_parts": result.distinct_parts,
                   "pose": result.pose,
                   "threshold": result.threshold,
                   "loo_false_reject_rate": result.report.false_reject_rate, "timings_s": result.timings,
                   "detector_summary": result.detector.describe()}
        self._progress(job, "done", **summary)
        job.outcome = summary
        del result
        return_freed_memory()

    def _start_job(self, job: RetrainJob) -> None:
        self._job = job
        job.started = time.monotonic()
        self.publish_state()
        if job.folder is None:
            self._progress(job, "collecting", collected=0)
            return
        try:
            _, images = read_folder(job.folder, min_images=2, max_pixels=self.config.source.max_pixels,
                                    limit=job.n_images)
        except (ValueError, OSError) as exc:
            message = f"cannot read {job.folder}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            self._fail(job, message, message)
        else:
            views = [self._view(image) for image in images]
            if any(v is None for v in views):
                self._fail(job, "the good images are smaller than [source] roi", "the good images are smaller "
                           f"than [source] roi = {self.config.source.roi}: give frames from this camera")
            else:
                self._run_fit(job, views)
        self._end_job()

    def _collect(self, frame: Frame) -> None:
        job = self._job
        assert job is not None
        view = self._model_view(frame)
        if view is None:
            return
        job.frames.append(view)
        self._progress(job, "collecting", collected=len(job.frames))
        if len(job.frames) >= job.n_images:
            self._run_fit(job, job.frames)
            self._end_job()

    def _check_job_timeout(self) -> None:
        job = self._job
        if job and time.monotonic() - job.started > self.config.retrain.timeout_s:
            msg = f"collected {len(job.frames)} of {job.n_images} frames in {self.config.retrain.timeout_s:.0f} s"
            self._fail(job, msg, f"retrain timed out, previous model kept: {msg}")
            self._end_job()

    # ---- inspection -------------------------------------------------------------------------------------------
    def inspect(self, frame: Frame, part_id: str | None = None) -> dict[str, Any] | None:
        """Judge one frame and publish its verdict (and an alert if anomalous); ``None`` when unfitted."""
        active = self._active
        view = self._model_view(frame) if active is not None else None
        if active is None or view is None:
            return None
        t0 = time.perf_counter()
        seen, turned = judged_view(view, active.metadata)  # its 'upright' was checked when the file was loaded
        t_seen = time.perf_counter()
        features = self.extractor.embed_one(seen)
        t1 = time.perf_counter()
        batch = {k: v[None] for k, v in features.items()}
        heatmap = None
        if self._wants_heatmap(active):  # one search gives both; the map costs little beside it
            scores, maps = active.detector.score_and_heatmaps(batch)
            heatmap = maps[0]
        else:
            scores = active.detector.score_samples(batch)
        score = float(scores[0])
        t2 = time.perf_counter()
        threshold = float(active.metadata["threshold"])
        anomalous = bool(is_anomalous(score, threshold))
        latency = {**self.extractor.last_timings, **({"upright": (t_seen - t0) * 1e3} if turned else {}),
                   "embed": (t1 - t_seen) * 1e3, "score": (t2 - t1) * 1e3, "total": (time.perf_counter() - t0) * 1e3}
        verdict = verdict_message(self.config.device.id, frame.name, frame.captured_at, score, threshold, anomalous,
                                  self.extractor.manifest.model_id,
                                  self._active_path.name if self._active_path else None, latency, part_id)
        # Counted before it is published: a subscriber that has the verdict and asks for status finds it counted.
        self._tally = (self._tally[0] + 1, self._tally[1] + anomalous)
        self._recent.append(anomalous)
        self._frame_times = (self._frame_times + [time.monotonic()])[-30:]
        try:
            self.sink.publish_verdict(verdict)
            if anomalous:
                if heatmap is not None and turned is not None:  # the map covers the window: lay it over the frame
                    heatmap = turned.to_source(heatmap)
                self._alert(frame, verdict, heatmap, score / threshold if threshold > 0 else math.inf)
        except Exception:  # an output that fails (a read-only card under the spool) must not stop inspection
            self.publish_errors += 1
            if self.publish_errors in (1, 10, 100) or self.publish_errors % 1000 == 0:
                log.exception("publishing verdict %d failed (%d so far)", self.inspected, self.publish_errors)
        return verdict

    @property
    def _retrains_done(self) -> int:
        """Retrains ended: a change remembers how many it saw, and is refused if another ended before its turn."""
        return self._retrain_tally[0]

    @property
    def inspected(self) -> int:
        """Parts judged since the agent started."""
        return self._tally[0]

    @property
    def rejected(self) -> int:
        """Of those, judged anomalous."""
        return self._tally[1]

    def _wants_heatmap(self, active: LoadedDetector) -> bool:
        a = self.config.alerts
        return a.snapshot and a.heatmap and active.detector.supports_heatmaps

    def _alert(self, frame: Frame, verdict: dict[str, Any], heatmap: np.ndarray | None, level: float) -> None:
        """``level``: the score over the threshold, which the heat map's colours are anchored to."""
        a = self.config.alerts
        image = None
        box = self.roi.box(frame.image.shape) if self.roi else None
        if a.snapshot:
            image = jpeg(alert_picture(frame.image, heatmap, box, level), a.jpeg_quality, a.max_side)
        where = None
        if heatmap is not None:
            x0, y0, w, h = box or (0, 0, frame.image.shape[1], frame.image.shape[0])
            px, py = peak(heatmap, (h, w))
            where = (x0 + px, y0 + py)
        self.sink.publish_alert(alert_message(verdict, where), image)

    # ---- main loop --------------------------------------------------------------------------------------------
    def _next_frame(self) -> tuple[Frame, str | None] | None:
        """A frame when one is due, with the part id its trigger carried (in trigger mode: one per trigger, also
        while a retrain collects, so that it learns from as many parts as frames); ``None`` when there is nothing
        to do this tick."""
        if self.config.trigger.mode == "mqtt":
            try:
                part_id, triggered_at = self._triggers.get(timeout=self._tick)
            except queue.Empty:
                self.source.poll_open(block=False)  # a failed camera is reopened between parts: "ready" comes back
                return None
            if time.monotonic() - triggered_at > self.config.trigger.max_age_s:
                self._missed(part_id, triggered_at, "older than [trigger] max_age_s when the loop got to it")
                return None
            frame = self.source.read_after(triggered_at)  # the part at the trigger, not a frame queued before it
            if frame is None:
                self._missed(part_id, triggered_at, "no frame from the source")
                return None
            return frame, part_id
        if self._job is None and self._active is None:
            # Unfitted: no verdicts, so take no frames, but keep (re)opening the source so its state is known.
            if self.source.poll_open():
                self._wake.wait(self._tick)
            self._wake.clear()
            return None
        frame = self.source.read()
        return None if frame is None else (frame, None)

    def _run_jobs(self) -> bool:
        """Changes first (in arrival order, before a retrain that came after them), then a pending retrain.
        True when a retrain was started, so the turn ends there."""
        if self._retrain_signalled:
            self.request_retrain()  # queued before the flag is cleared: `retraining` stays true throughout
            self._retrain_signalled = False
        self._run_changes()
        if self._job is None and not self._retrains.empty():
            self._start_job(self._retrains.get())
            return True
        return False

    def run(self, max_frames: int | None = None) -> int:
        """Until stopped (or a finite source ends, or ``max_frames`` inspections); returns frames inspected."""
        self.sink.start()
        self.source.open()
        self.publish_state()
        self._publish_training_picture()
        self.sink.publish_availability(True)
        self.notifier.ready(f"{self.state()['status']}, model {self.extractor.manifest.model_id}")
        min_period = 1.0 / self.config.trigger.max_fps
        last_state = time.monotonic()
        clean = False
        try:
            while not self.stop_event.is_set():
                self.notifier.watchdog()
                if self._run_jobs():
                    continue
                self._check_job_timeout()
                started = time.monotonic()
                try:
                    due = self._next_frame()
                except EndOfStream:
                    log.info("source ended")
                    break
                frame = due[0] if due else None
                if due is not None:
                    job = self._job
                    verdict = self.inspect(*due)  # also while a retrain collects: by the model in use, none unjudged
                    self.sink.publish_frame(frame.image, verdict)  # a live view's latest frame (a reference)
                    if job is not None:
                        self._collect(frame)
                    if max_frames is not None and self.inspected >= max_frames:
                        break
                if time.monotonic() - last_state > _STATE_EVERY_S:
                    self.publish_state()
                    last_state = time.monotonic()
                if frame is not None and self.config.trigger.mode == "continuous":
                    self.stop_event.wait(max(0.0, min_period - (time.monotonic() - started)))
            clean = True
        finally:
            self.notifier.stopping()
            if clean:  # the last frame handed out was judged: a folder source saves its cursor on close
                self.source.close()
            else:  # the frame in hand may have no verdict: leave it to be judged again after the restart
                log.error("the inspection loop failed; the frame in hand will be judged again after a restart")
            self._refuse_pending()
            self.publish_state()
            self.sink.stop()
        return self.inspected

    def _refuse_pending(self) -> None:
        """Jobs nobody will run: their senders get an answer instead of waiting forever."""
        pending: list[Future] = [self._job.future] if self._job else []
        for q in (self._retrains, self._changes):
            while not q.empty():
                pending.append(q.get_nowait().future)
        for future in pending:
            if not future.done():
                future.set_exception(RuntimeError("the agent is stopping; nothing was changed"))
