"""From a trigger edge to the start of the reject pulse, through a real agent: the [gpio] pins on gpiozero's mock
pin factory, the shipped model (or --model), frames read from a folder as the folder source reads them.

    python -m bench.gpio_latency --images DIR --train DIR [--triggers 50] [--detector NAME] [--model DIR]

Every part is made anomalous (a fixed threshold of 0), so that each edge gives a pulse; reject_delay_ms is 0, so
the figure is the agent's own: waking the loop, reading and decoding the frame, embedding, scoring, publishing
(stdout here) and the reject thread's wake-up. The edges are one at a time (the next after the pulse ended).
Mock pins: on a Pi, lgpio's edge callback and the pin write add their own (small) delays, and the embedding is
slower than on this machine.
"""

from __future__ import annotations

import bench.common  # noqa: F401  (first: the agent's thread limits)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from gpiozero import Device  # noqa: E402
from gpiozero.pins.mock import MockFactory, MockPin  # noqa: E402

from bench.common import emit, percentile  # noqa: E402
from bench.line_io import add_line_args, start_fitted_agent, stop_and_count  # noqa: E402

TRIGGER, REJECT = 4, 17


class TimedMockPin(MockPin):
    """gpiozero's mock pin, keeping each change's absolute time (``monotonic``, as the mock pin itself uses)."""

    def __init__(self, factory, info) -> None:
        self.changes: list[tuple[float, bool]] = []
        super().__init__(factory, info)

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:
            self.changes.append((time.monotonic(), bool(value)))
        return changed


def main() -> None:
    p = argparse.ArgumentParser()
    add_line_args(p, "edges")
    args = p.parse_args()

    Device.pin_factory = MockFactory(pin_class=TimedMockPin)
    agent, out, thread = start_fitted_agent(args, "gpio-latency", {
        "threshold": {"override": 0.0},
        "gpio": {"trigger_pin": TRIGGER, "trigger_edge": "falling", "trigger_pull": "up", "trigger_debounce_ms": 1,
                 "reject_pin": REJECT, "reject_pulse_ms": 5, "reject_delay_ms": 0}})
    trigger, reject = Device.pin_factory.pin(TRIGGER), Device.pin_factory.pin(REJECT)

    latencies = []
    for n in range(args.warmup + args.triggers):
        before = len(reject.changes)
        edge = time.monotonic()
        trigger.drive_low()
        deadline = edge + 30
        while len(reject.changes) < before + 2 and time.monotonic() < deadline:  # the pulse's start and end
            time.sleep(0.0005)
        trigger.drive_high()
        if len(reject.changes) < before + 2:
            raise SystemExit(f"edge {n}: no reject pulse within 30 s")
        on_at, on = reject.changes[before]
        assert on, reject.changes[before:]
        if n >= args.warmup:
            latencies.append((on_at - edge) * 1e3)
        time.sleep(0.005)
    inference = stop_and_count(agent, thread, out, args, "edges")
    record = {"bench": "gpio_latency", "triggers": args.triggers,
              "detector": agent.config.detector.name, "model_id": agent.extractor.manifest.model_id,
              "edge_to_pulse_median_ms": round(statistics.median(latencies), 2),
              "edge_to_pulse_p95_ms": round(percentile(latencies, 0.95), 2),
              "edge_to_pulse_max_ms": round(max(latencies), 2),
              "embed_score_median_ms": round(statistics.median(inference), 2)}
    emit(record)
    print(f"trigger edge -> reject pulse start over {args.triggers} edges ({record['detector']}, "
          f"{record['model_id']}, mock pins): median {record['edge_to_pulse_median_ms']} ms, "
          f"p95 {record['edge_to_pulse_p95_ms']} ms, max {record['edge_to_pulse_max_ms']} ms; of which embed + score "
          f"median {record['embed_score_median_ms']} ms")


if __name__ == "__main__":
    main()
