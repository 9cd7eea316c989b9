"""From a write on the Modbus trigger coil to the part's seq in the registers, through a real agent: a pymodbus
client on loopback, the shipped model (or --model), frames read from a folder as the folder source reads them.

    python -m bench.modbus_latency --images DIR --train DIR [--triggers 50] [--detector NAME] [--model DIR]

The client does what a PLC does (docs/modbus.md): read seq, write 1 on coil 00001 (FC5), then poll the input
registers (FC4, the whole block) until seq changes. The figure is the agent's own (waking the loop, reading and
decoding the frame, embedding, scoring, publishing) plus the server's request handling and the poll interval
(--poll-ms). A PLC's own cycle time and the network come on top; the embedding is slower on a Pi than here.
"""

from __future__ import annotations

import bench.common  # noqa: F401  (first: the agent's thread limits)

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from pymodbus.client import ModbusTcpClient  # noqa: E402

from bench.common import emit, percentile  # noqa: E402
from bench.line_io import add_line_args, start_fitted_agent, stop_and_count  # noqa: E402
from edge_agent.deliver.modbus import N_REGISTERS, REGISTERS, TRIGGER_COIL  # noqa: E402

UNIT = 1
SEQ = next(r for r in REGISTERS if r.name == "seq").address


def seq(client: ModbusTcpClient) -> int:
    words = client.read_input_registers(0, count=N_REGISTERS, device_id=UNIT).registers
    return words[SEQ] << 16 | words[SEQ + 1]


def main() -> None:
    p = argparse.ArgumentParser()
    add_line_args(p, "writes")
    p.add_argument("--poll-ms", type=float, default=1.0, help="the client's poll interval while it waits")
    args = p.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent, out, thread = start_fitted_agent(args, "modbus-latency",
                                            {"modbus": {"enabled": True, "port": port, "unit_id": UNIT}})
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    if not client.connect():
        raise SystemExit(f"no Modbus server on port {port}")

    latencies, writes = [], []
    for n in range(args.warmup + args.triggers):
        before = seq(client)
        t0 = time.perf_counter()
        if client.write_coil(TRIGGER_COIL, True, device_id=UNIT).isError():
            raise SystemExit(f"write {n}: the trigger coil was refused")
        written = time.perf_counter()
        while seq(client) == before:
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"write {n}: seq unchanged after 30 s")
            time.sleep(args.poll_ms / 1000)
        if n >= args.warmup:
            latencies.append((time.perf_counter() - t0) * 1e3)
            writes.append((written - t0) * 1e3)
    client.close()
    inference = stop_and_count(agent, thread, out, args, "writes")
    record = {"bench": "modbus_latency", "triggers": args.triggers, "poll_ms": args.poll_ms,
              "detector": agent.config.detector.name, "model_id": agent.extractor.manifest.model_id,
              "write_to_seq_median_ms": round(statistics.median(latencies), 2),
              "write_to_seq_p95_ms": round(percentile(latencies, 0.95), 2),
              "write_to_seq_max_ms": round(max(latencies), 2),
              "coil_write_median_ms": round(statistics.median(writes), 2),
              "embed_score_median_ms": round(statistics.median(inference), 2)}
    emit(record)
    print(f"coil write -> seq changed over {args.triggers} writes ({record['detector']}, {record['model_id']}, "
          f"poll {args.poll_ms} ms): median {record['write_to_seq_median_ms']} ms, p95 "
          f"{record['write_to_seq_p95_ms']} ms, max {record['write_to_seq_max_ms']} ms; of which the FC5 round "
          f"trip median {record['coil_write_median_ms']} ms, embed + score median {record['embed_score_median_ms']} ms")


if __name__ == "__main__":
    main()
