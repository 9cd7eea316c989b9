"""The inspection agent: source -> embed -> score -> verdict -> publish, with retrain, rollback and commands.

Threads: the main loop owns the interpreter and the source (a TFLite interpreter is not thread-safe), so
every retrain, even one asked for over MQTT, is a job the main loop runs between frames. Commands arrive on
the publisher's worker thread and only queue jobs or change small, atomically swapped state. Publishing only
writes to the on-disk spool, so a slow or absent broker never slows capture.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import Config, fit_settings
from edge_agent.learn.detectors.persistence import DetectorFileError, LoadedDetector
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.fitting import FitError, fit_images
from edge_agent.capture.images import read_folder
from edge_agent.system.atomic import write_text_atomic
from edge_agent.deliver.snapshot import jpeg, overlay
from edge_agent.capture import EndOfStream, Frame, FrameSource, ReopeningSource, open_source
from edge_agent.learn.store import DetectorStore, StoreError
from edge_agent.system.systemd_notify import Notifier
from edge_agent.learn.threshold import calibrate_threshold

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_TICK_S = 0.5  # longest the main loop waits for anything, so the watchdog keeps being fed


def return_freed_memory() -> None:
    """Give the heap a fit freed back to the system (glibc keeps it otherwise, and the agent runs for months)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RetrainJob:
    n_images: int
    folder: str | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def finish(self, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Agent:
    def __init__(self, config: Config, extractor: FeatureExtractor, publisher: Any,
                 source: FrameSource | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.extractor = extractor
        self.publisher = publisher
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.store = DetectorStore(config.state_dir, config.retrain.keep)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.source = ReopeningSource(source or open_source(config.source, config.state_dir), config.source.reopen_min_s,
                                      config.source.reopen_max_s, self._source_status, self.stop_event)
        self._jobs: queue.Queue[RetrainJob] = queue.Queue()
        self._job: RetrainJob | None = None
        self._triggers = threading.Semaphore(0)
        self._wake = threading.Event()
        self._active: LoadedDetector | None = None
        self._active_path: Path | None = None
        self._source_state: dict[str, Any] = {"status": "closed"}
        self._frame_times: list[float] = []
        self.inspected = 0
        # The longest the loop waits for anything: short enough to feed the watchdog on time.
        self._tick = min(_TICK_S, self.notifier.watchdog_interval or _TICK_S)
        self._load_current()

    # ---- detector -------------------------------------------------------------------------------------
    def _load_current(self) -> None:
        try:
            self._active = self.store.load_current(self.extractor.manifest)
            self._active_path = self.store.current_path() if self._active else None
        except DetectorFileError as exc:
            log.error("current detector unusable, running unfitted: %s", exc)
            self._active, self._active_path = None, None
        if self._active is None:
            log.warning("no fitted detector for %s: unfitted until a retrain", self.extractor.manifest.model_id)

    @property
    def fitted(self) -> bool:
        return self._active is not None

    def state(self) -> dict[str, Any]:
        m = self.extractor.manifest
        meta = self._active.metadata if self._active else {}
        status = "retraining" if self._job else ("running" if self._active else "unfitted")
        return {
            "schema": SCHEMA_VERSION, "device": self.config.device.id, "status": status, "version": __version__,
            "model_id": m.model_id, "backbone": m.backbone, "precision": m.precision,
            "delegate": self.extractor.delegate, "detector": meta.get("detector"),
            "detector_file": self._active_path.name if self._active_path else None,
            "fitted_at": meta.get("fitted_at"), "n_train": meta.get("n_train"), "threshold": meta.get("threshold"),
            "sensitivity": meta.get("sensitivity"), "trigger": self.config.trigger.mode, "fps": round(self.fps(), 2),
            "inspected": self.inspected, "source": self._source_state, "updated_at": _now(),
            **{f"spool_{k}": v for k, v in self.publisher.stats().items() if k in ("queued", "dropped")},
        }

    def publish_state(self) -> None:
        state = self.state()
        self.publisher.publish_state(state)
        try:
            write_text_atomic(self.config.state_dir / "state.json", json.dumps(state, indent=1) + "\n")
        except OSError as exc:
            log.warning("cannot write state.json: %s", exc)

    def fps(self) -> float:
        t = self._frame_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def _source_status(self, status: dict[str, Any]) -> None:
        self._source_state = status
        self.publisher.publish_event("source/status", {"device": self.config.device.id, "at": _now(), **status})

    # ---- commands (publisher worker thread) -----------------------------------------------------------
    def handle_command(self, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
        handlers = {"retrain": self._cmd_retrain, "trigger": self._cmd_trigger, "threshold": self._cmd_threshold,
                    "rollback": self._cmd_rollback, "status": lambda a: self.state()}
        if name not in handlers:
            raise ValueError(f"unknown command {name!r}; commands: {', '.join(handlers)}")
        return handlers[name](args)

    def request_retrain(self, n_images: int | None = None, folder: str | None = None) -> RetrainJob:
        n = self.config.retrain.n_images if n_images is None else n_images
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ValueError(f"n_images must be an integer >= 2, got {n!r}")
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"folder not found on the device: {folder}")
        job = RetrainJob(n, folder)
        self._jobs.put(job)
        self._wake.set()
        return job

    def _cmd_retrain(self, args: dict[str, Any]) -> dict[str, Any]:
        unknown = set(args) - {"n_images", "folder", "request_id"}
        if unknown:
            raise ValueError(f"unknown retrain arguments: {', '.join(sorted(unknown))}")
        job = self.request_retrain(args.get("n_images"), args.get("folder"))
        if not job.done.wait(self.config.retrain.timeout_s + 5):
            raise TimeoutError("retrain still running; its result will come on retrain/progress")
        if job.error:
            raise RuntimeError(job.error)
        return job.result or {}

    def _cmd_trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.config.trigger.mode != "mqtt":
            raise ValueError("trigger is only used with [trigger] mode = \"mqtt\"")
        self._triggers.release()
        self._wake.set()
        return {"queued": True}

    def _cmd_threshold(self, args: dict[str, Any]) -> dict[str, Any]:
        """Move the threshold: {"sensitivity": 0..1} recalibrates from the stored leave-one-out scores,
        {"value": x} fixes it. Saved as a new detector file, so ``rollback`` undoes it too."""
        active = self._active
        if active is None:
            raise ValueError("not fitted yet: retrain first")
        meta = dict(active.metadata)
        if set(args) - {"sensitivity", "value", "request_id"} or ("sensitivity" in args) == ("value" in args):
            raise ValueError('give exactly one of {"sensitivity": 0..1} or {"value": threshold}')
        if "value" in args:
            value = args["value"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"value must be a number, got {value!r}")
            threshold = calibrate_threshold(meta["loo_scores"], override=float(value))
            meta["threshold_override"] = threshold
        else:
            s = args["sensitivity"]
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise ValueError(f"sensitivity must be a number, got {s!r}")
            threshold = calibrate_threshold(meta["loo_scores"], float(s), meta["quantile"], meta["margin"],
                                            method=meta.get("threshold_method", "empirical"))
            meta.update(sensitivity=float(s), threshold_override=None)
        meta["threshold"] = threshold
        path = self.store.save_loaded(active.detector, meta)
        self._active, self._active_path = LoadedDetector(active.detector, meta), path
        self.publish_state()
        return {"threshold": threshold, "detector_file": path.name}

    def _cmd_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            path = self.store.rollback(self.extractor.manifest)
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        self._load_current()
        self.publish_state()
        return {"detector_file": path.name, "threshold": self._active.metadata["threshold"]}

    # ---- retrain (main loop) --------------------------------------------------------------------------
    def _progress(self, job: RetrainJob, stage: str, **extra: Any) -> None:
        payload = {"device": self.config.device.id, "stage": stage, "at": _now(), "n_images": job.n_images, **extra}
        log.info("retrain %s %s", stage, {k: v for k, v in extra.items()})
        self.publisher.publish_event("retrain/progress", payload)

    def _fail(self, job: RetrainJob, error: str, reply: str) -> None:
        self._progress(job, "failed", error=error)
        job.finish(error=reply)

    def _end_job(self) -> None:
        """Back to inspecting (with the new detector or the old one), and say so in the state."""
        self._job = None
        self.publish_state()

    def _run_fit(self, job: RetrainJob, images: list[np.ndarray]) -> None:
        settings = fit_settings(self.config)
        self._progress(job, "fitting", collected=len(images))
        try:
            result = fit_images(lambda ims: self.extractor.embed(ims, "retrain", self.notifier.watchdog), images, settings)
            path = self.store.save(result, settings, self.extractor.manifest)
            self._load_current()
        except (FitError, ValueError, OSError, DetectorFileError) as exc:
            log.error("retrain failed, previous model kept: %s", exc)
            self._fail(job, str(exc), f"retrain failed, previous model kept: {exc}")
            return
        summary = {"detector_file": path.name, "n_train": result.n_train, "threshold": result.threshold,
                   "loo_false_reject_rate": result.report.false_reject_rate, "timings_s": result.timings,
                   "detector_summary": result.detector.describe()}
        self._progress(job, "done", **summary)
        job.finish(summary)
        del result
        return_freed_memory()

    def _start_job(self, job: RetrainJob) -> None:
        self._job = job
        self.publish_state()
        if job.folder is None:
            self._progress(job, "collecting", collected=0)
            return
        try:
            _, images = read_folder(job.folder, min_images=2)
        except ValueError as exc:
            self._fail(job, str(exc), str(exc))
        else:
            self._run_fit(job, images[: job.n_images] if job.n_images else images)
        self._end_job()

    def _collect(self, frame: Frame) -> None:
        job = self._job
        job.frames.append(frame.image)
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

    # ---- inspection -----------------------------------------------------------------------------------
    def inspect(self, frame: Frame) -> dict[str, Any] | None:
        """Judge one frame and publish its verdict (and an alert if anomalous); ``None`` when unfitted."""
        active = self._active
        if active is None:
            return None
        t0 = time.perf_counter()
        features = self.extractor.embed_one(frame.image)
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
        anomalous = score > threshold
        verdict = {
            "schema": SCHEMA_VERSION, "device": self.config.device.id, "frame": frame.name,
            "captured_at": dt.datetime.fromtimestamp(frame.captured_at, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "published_at": _now(), "score": round(score, 5), "threshold": round(threshold, 5),
            "verdict": "anomalous" if anomalous else "good", "model_id": self.extractor.manifest.model_id,
            "detector_file": self._active_path.name if self._active_path else None,
            "latency_ms": {**{k: round(v, 2) for k, v in self.extractor.last_timings.items()},
                           "embed": round((t1 - t0) * 1e3, 2), "score": round((t2 - t1) * 1e3, 2)},
        }
        t3 = time.perf_counter()
        verdict["latency_ms"]["total"] = round((t3 - t0) * 1e3, 2)
        verdict["seq"] = self.publisher.publish_verdict(verdict)
        if anomalous:
            self._alert(frame, verdict, heatmap)
        self.inspected += 1
        self._frame_times = (self._frame_times + [time.monotonic()])[-30:]
        return verdict

    def _wants_heatmap(self, active: LoadedDetector) -> bool:
        a = self.config.alerts
        return a.snapshot and a.heatmap and active.detector.supports_heatmaps

    def _alert(self, frame: Frame, verdict: dict[str, Any], heatmap: np.ndarray | None) -> None:
        a = self.config.alerts
        image = None
        if a.snapshot:
            picture = frame.image if heatmap is None else overlay(frame.image, heatmap)
            image = jpeg(picture, a.jpeg_quality, a.max_side)
        alert = {k: verdict[k] for k in ("schema", "device", "seq", "frame", "captured_at", "score", "threshold", "model_id")}
        self.publisher.publish_alert(alert, image)

    # ---- main loop ------------------------------------------------------------------------------------
    def _next_frame(self) -> Frame | None:
        """A frame when one is due, ``None`` when there is nothing to do this tick."""
        if self._job is None and self.config.trigger.mode == "mqtt":
            if not self._triggers.acquire(timeout=self._tick):
                return None
        elif self._job is None and self._active is None:
            # Unfitted: no verdicts, so take no frames, but keep (re)opening the source so its state is known.
            if self.source.poll_open():
                self._wake.wait(self._tick)
            self._wake.clear()
            return None
        return self.source.read()

    def run(self, max_frames: int | None = None) -> int:
        """Until stopped (or a finite source ends, or ``max_frames`` inspections); returns frames inspected."""
        self.publisher.start()
        self.source.open()
        self.publish_state()
        self.notifier.ready(f"{self.state()['status']}, model {self.extractor.manifest.model_id}")
        min_period = 1.0 / self.config.trigger.max_fps
        last_state = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.notifier.watchdog()
                if self._job is None and not self._jobs.empty():
                    self._start_job(self._jobs.get())
                    continue
                self._check_job_timeout()
                started = time.monotonic()
                try:
                    frame = self._next_frame()
                except EndOfStream:
                    log.info("source ended")
                    break
                if frame is not None:
                    if self._job is not None:
                        self._collect(frame)
                    else:
                        self.inspect(frame)
                    if max_frames is not None and self.inspected >= max_frames:
                        break
                if time.monotonic() - last_state > 10:
                    self.publish_state()
                    last_state = time.monotonic()
                if frame is not None and self.config.trigger.mode == "continuous":
                    self.stop_event.wait(max(0.0, min_period - (time.monotonic() - started)))
        finally:
            self.notifier.stopping()
            self.source.close()
            self.publish_state()
            self.publisher.stop()
        return self.inspected

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
