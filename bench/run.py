"""Run every benchmark side by side and print the table (and write docs/performance.md with --write).

    python -m bench.run [--data ../shared/data/mvtec_ad_bottle] [--frames 5000] [--write]

Models are converted once into build/bench-models (B4 with random weights: Keras cannot download its ImageNet
weights here, and latency and memory do not depend on the weight values). Each measurement runs in its own
process so that peak memory is that process's own; a local Mosquitto is started for the publishing path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
MODELS = BUILD / "bench-models"
BACKBONES = {"efficientnet-lite0": "imagenet", "efficientnet-lite1": "imagenet", "efficientnet-lite2": "imagenet",
             "efficientnet-b4": "random"}
PRECISIONS = ("fp32", "fp16", "int8")


def _run(args: list[str], timeout: int = 1800) -> list[dict]:
    print("$", " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]


def _convert(calibration: Path) -> dict[tuple[str, str], Path]:
    out = {}
    for backbone, weights in BACKBONES.items():
        for precision in PRECISIONS:
            folder = MODELS / f"{backbone}-{precision}"
            if not (folder / "manifest.json").is_file():
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "converter.cli", "--backbone", backbone, "--weights", weights,
                                "--precision", precision, "--calibration", str(calibration), "--output", str(folder),
                                "--overwrite"], check=True, cwd=ROOT, capture_output=True, timeout=1800)
                print(f"converted {folder.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            out[(backbone, precision)] = folder
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_ad_bottle")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = p.parse_args()
    calibration = BUILD / "calibration"
    if not calibration.is_dir():
        subprocess.run([sys.executable, "-m", "converter.calibration_set", str(calibration)], check=True, cwd=ROOT)
    models = _convert(calibration)
    rows = []
    for (backbone, precision), folder in models.items():
        for threads in (1, 2):
            rows += _run(["-m", "bench.invoke", str(folder), "--threads", str(threads), "--repeat", "30" if "b4" in backbone else "100"])

    images, train = str(args.data / "test" / "good"), str(args.data / "train" / "good")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    broker = subprocess.Popen([mosquitto, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        agent = _run(["-m", "bench.agent", "--images", images, "--train", train, "--broker", f"127.0.0.1:{port}",
                      "--frames", str(args.frames)])
        paper_detector = _run(["-m", "bench.agent", "--images", images, "--train", train, "--broker",
                               f"127.0.0.1:{port}", "--frames", "1500", "--detector", "mahalanobis"])
    finally:
        broker.terminate()
        broker.wait(10)
    agent_nobroker = _run(["-m", "bench.agent", "--images", images, "--train", train, "--frames", "3000",
                           "--outage-at", "1500"])
    common = ["-m", "bench.agent", "--images", images, "--train", train, "--detector", "mahalanobis"]
    variants = _run(common + ["--frames", "1500", "--frame-size", "224"])
    variants += _run(common + ["--frames", "1500", "--model", str(models[("efficientnet-lite2", "int8")])])
    variants += _run(common + ["--frames", "600", "--model", str(models[("efficientnet-b4", "int8")])])
    b4_agent = _run(["-m", "bench.b4_frame", str(models[("efficientnet-b4", "int8")]), "--images", images, "--train", train])
    paper = _run(["-m", "bench.paper_stack", "--images", images, "--train", train])
    fits = _run(["-m", "bench.fit_time", "--train", train])
    (BUILD / "bench-results.json").write_text(json.dumps(
        {"rows": rows, "agent": agent, "paper_detector": paper_detector, "outage": agent_nobroker,
         "variants": variants, "b4": b4_agent, "paper": paper, "fits": fits}, indent=1))
    report = render(rows, agent, paper_detector, agent_nobroker, variants, b4_agent, paper, fits, args)
    print(report)
    if args.write:
        (ROOT / "docs" / "performance.md").write_text(report)
    return 0


def _get(rows, **kw):
    return next(r for r in rows if all(r.get(k) == v for k, v in kw.items()))


def render(rows, agent, paper_detector, agent_nobroker, variants, b4_agent, paper, fits, args) -> str:
    lines = ["# Performance", "",
             f"Machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"{platform.machine()}; interpreter ai-edge-litert (XNNPACK). Measured in one run of",
             "", "```", f"python -m bench.run --frames {args.frames}{' --write' if args.write else ''}", "```", "",
             "Latencies are min / median over repeated invokes after warm-up; the machine is shared and noisy, so",
             "compare ratios within this table rather than with other runs.", "",
             "## Feature models", "",
             "| backbone | precision | file MB | invoke 1 thread ms (min / med) | invoke 2 threads ms (min / med) | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for backbone in BACKBONES:
        for precision in PRECISIONS:
            r1, r2 = _get(rows, backbone=backbone, precision=precision, threads=1), _get(rows, backbone=backbone, precision=precision, threads=2)
            lines.append(f"| {backbone} | {precision} | {r1['size_mb']} | {r1['min_ms']} / {r1['median_ms']} | "
                         f"{r2['min_ms']} / {r2['median_ms']} | {r2['peak_rss_mb']} |")
    ratio = lambda b: _get(rows, backbone=b, precision="int8", threads=2)["median_ms"] / _get(rows, backbone=b, precision="fp32", threads=2)["median_ms"]
    fit_default, frame_default, steady = (_get(agent, kind=k) for k in ("fit", "frame", "steady"))
    fit, frame = _get(paper_detector, kind="fit"), _get(paper_detector, kind="frame")
    outage = _get(agent_nobroker, kind="outage")
    b4 = _get(b4_agent, kind="b4_frame")
    ps = _get(paper, kind="paper_stack")
    stage_total = frame["loop_median_ms"]
    lines += ["", "## The agent, per frame (shipped Lite0 int8, 2 threads, local Mosquitto)", "",
              f"| stage | Mahalanobis (paper) median ms | share | {fit_default['detector']} (default) median ms | share |",
              "|---|---|---|---|---|"]
    total_default = frame_default["loop_median_ms"]
    for k, name in (("preprocess", "preprocess (resize, quantise)"), ("invoke", "invoke"), ("outputs", "read + dequantise outputs"),
                    ("score", "score"), ("publish", "publish (spool write)")):
        v, d = frame[f"{k}_median_ms"], frame_default[f"{k}_median_ms"]
        lines.append(f"| {name} | {v} | {100 * v / stage_total:.0f}% | {d} | {100 * d / total_default:.0f}% |")
    lines += [f"| whole loop turn (source read to next) | {stage_total} | 100% | {total_default} | 100% |", "",
              f"Fit N=10 x10 with the default {fit_default['detector']} detector: {fit_default['fit_s']} s "
              f"({fit_default['timings_s']}), the agent's own fit in the same process as the frames above (the combined "
              "detector also embeds 3 damaged copies of each good image; fit time alone: below).", "",
              f"Bare invoke in the same process: {frame['invoke_bare_median_ms']} ms median. Frames are the 512x512 "
              "bottle images, decoded in memory (no disk, no PNG decoding).", "",
              "The same loop with other models and frame sizes (publishing to the spool, no broker):", "",
              "| model | frame px | invoke ms | loop turn ms | loop / invoke |", "|---|---|---|---|---|"]
    for v in [f for f in variants if f["kind"] == "frame"]:
        lines.append(f"| {v['model']} | {v['frame_px']} | {v['invoke_median_ms']} | {v['loop_median_ms']} | "
                     f"{v['loop_median_ms'] / v['invoke_median_ms']:.2f} |")
    embed = _get(fits, kind="fit_embed")
    lines += ["", "## Fit time (N=10 x10, shipped Lite0 int8, `python -m bench.fit_time`)", "",
              f"Embedding the {embed['images']} augmented images: {embed['embed_s']} s (augmenting them "
              f"{embed['augment_s']} s; the 30 damaged copies {embed['damage_embed_s']} s). Fitting on those features "
              "(detector, held-out scores, threshold), median of repeated fits:", "",
              "| detector | fit s (median / min) | CPU s | fit / embedding |", "|---|---|---|---|"]
    for f in (r for r in fits if r["kind"] == "fit_time"):
        lines.append(f"| {f['detector']}{' (default)' if f['default'] else ''} | {f['fit_s']} / {f['fit_min_s']} | "
                     f"{f['fit_cpu_s']} | {f['fit_over_embed']} |")
    lines += ["",
              "## Targets", "", "| target | measured | holds |", "|---|---|---|"]

    def row(name, value, ok):
        lines.append(f"| {name} | {value} | {'yes' if ok else 'NO'} |")

    row("B4 int8 / fp32 invoke <= 0.35", f"{ratio('efficientnet-b4'):.2f}", ratio("efficientnet-b4") <= 0.35)
    row("Lite2 int8 / fp32 invoke <= 0.6", f"{ratio('efficientnet-lite2'):.2f}", ratio("efficientnet-lite2") <= 0.6)
    e2e = stage_total / frame["invoke_median_ms"]
    row("end-to-end frame / invoke <= 1.15", f"{stage_total} / {frame['invoke_median_ms']} ms = {e2e:.2f}", e2e <= 1.15)
    row("a broker that goes away does not lower the frame rate (one run, broker stopped mid-way)",
        f"{outage['fps_broker_gone']} fps while gone vs {outage['fps_broker_up']} fps while up "
        f"(publish {outage['publish_gone_median_ms']} vs {outage['publish_up_median_ms']} ms; "
        f"{outage['spool_left']} verdicts waiting in the spool)",
        outage["fps_broker_gone"] >= 0.9 * outage["fps_broker_up"])
    budget = 1.2 * 110 * fit["invoke_median_ms"] / 1e3 + 1
    row("fit N=10 x10 (Mahalanobis) <= 1.2 x 110 invokes + 1 s", f"{fit['fit_s']} s (budget {budget:.2f} s; {fit['timings_s']})", fit["fit_s"] <= budget)
    default_fit = _get(fits, kind="fit_time", default=True)
    row(f"fit N=10 x10 ({default_fit['detector']}, features given) <= {default_fit['target_s']} s",
        f"{default_fit['fit_s']} s (embedding the same images {embed['embed_s']} s)", default_fit["holds"])
    row("agent peak RSS < 300 MB", f"{steady['peak_rss_mb']} MB", steady["peak_rss_mb"] < 300)
    b4r = b4["frame"]["median_ms"] / ps["frame"]["median_ms"]
    row("agent B4 int8 frame <= 0.3 x paper stack frame", f"{b4['frame']['median_ms']} / {ps['frame']['median_ms']} ms = {b4r:.2f}", b4r <= 0.3)
    row(f"steady state over {steady['frames']} frames: RSS growth < 5 MB", f"{steady['rss_growth_mb']} MB", steady["rss_growth_mb"] < 5)
    row("no file descriptor leak", f"{steady['fd_growth']} fds", steady["fd_growth"] <= 0)
    lines += ["", "## Where a target does not hold (or only just), and why", "",
              "- **B4 int8 / fp32 sits at the target's edge** (0.35 to 0.39 over five runs of this script). Both models run on XNNPACK here. Without XNNPACK (op resolver "
              "`BUILTIN_WITHOUT_DEFAULT_DELEGATES`, measured once on this machine, 1 thread) B4 fp32 takes about 262 ms "
              "and int8 147 ms; the design estimate of 'fp32 about 230 ms' matches fp32 *without* XNNPACK. With it, fp32 "
              "drops to the figures above on this AVX-512 CPU and int8 to a third of them: the int8 model is delegated "
              "(147 -> 23 ms), but B4's 127 swish activations (LOGISTIC + MUL) and 35 squeeze-excitation means are "
              "element-wise work where int8 gains little over a fast fp32 kernel. The Lite models have neither, and "
              "their ratio holds. The op-by-op split is not measured (the Python wheel has no op profiler).",
              "- **End-to-end / invoke with the shipped Lite0.** Its invoke is only about 1 ms on this machine, so the "
              "fixed per-frame costs (shrinking a 512 px frame 0.24 ms, the durable spool write with its JSON 0.06 ms, "
              "the Mahalanobis score 0.06 ms, dequantising 0.03 ms) are 35-50% of it from run to run. The same loop holds the target with "
              "frames delivered at the model's size (as a camera ISP's scaled stream would) and with larger models "
              "(table above). The spool write is kept synchronous on purpose: a verdict is on disk before the next frame "
              "is taken, so none is lost if the process is killed. With the default combined detector the patch "
              "search adds about 1 ms per frame: about one embedding, which is what the patch-level issue allows.",
              "", "## The paper's stack (reference, same machine, same run)", "",
              f"Keras EfficientNet-B4 float32 + scikit-learn LedoitWolf: {ps['frame']['median_ms']} ms per frame "
              f"(min {ps['frame']['min_ms']}), fit N=10 x10 {ps['fit_s']} s, peak RSS {ps['peak_rss_mb']} MB. "
              f"The agent with B4 int8: {b4['frame']['median_ms']} ms per frame, fit {b4['fit_s']} s, peak RSS {b4['peak_rss_mb']} MB.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
