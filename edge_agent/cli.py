"""``edge-agent``: run the inspection agent, fit, score, retrain, check status and evaluate on a device."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from edge_agent.system.threads import limit_threads

limit_threads()  # the entry point: before the imports below load numpy

from edge_agent.capture.roi import Roi, fitted_roi_mismatch  # noqa: E402
from edge_agent.capture.gpio_trigger import GpioTrigger  # noqa: E402  (gpiozero is imported when a pin opens)
from edge_agent.config import Config, ConfigError, fit_settings, load_config  # noqa: E402
from edge_agent.deliver.sink import CommandSource, FanOut, Sink, TriggerSource, leaves  # noqa: E402
from edge_agent.system.journal import for_stderr, setup_logging  # noqa: E402
from edge_agent.system.lock import StateLock, StateLocked  # noqa: E402

log = logging.getLogger("edge_agent")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _model_dir(config: Config, override: Path | None) -> Path:
    if override is not None:
        return override
    if config.model.path:
        return Path(config.model.path)
    from edge_agent.models import default_model_dir

    return default_model_dir()


def open_extractor(config: Config, model: Path | None = None):
    from edge_agent.embed.features import FeatureExtractor

    return FeatureExtractor(_model_dir(config, model), config.model.delegate, config.model.threads,
                            config.model.edgetpu_device or None)


def cmd_fit(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.learn.fitting import fit_images
    from edge_agent.capture.images import read_folder
    from edge_agent.learn.store import DetectorStore

    extractor = open_extractor(config, args.model)
    _, images = read_folder(args.images, min_images=2, max_pixels=config.source.max_pixels)
    roi = Roi.parse(config.source.roi)
    images = [roi.crop(image) for image in images] if roi else images
    settings = fit_settings(config)
    result = fit_images(lambda ims: extractor.embed(ims, progress="fit"), images, settings)
    path = DetectorStore(config.state_dir, config.retrain.keep).save(result, settings, extractor.manifest,
                                                                     {"roi": config.source.roi})
    print(json.dumps({"saved": str(path), "model_id": extractor.manifest.model_id, "n_train": result.n_train,
                      "distinct_parts": result.distinct_parts,
                      "threshold": result.threshold, "timings_s": result.timings}))
    return 0


def cmd_score(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.capture.images import read_image
    from edge_agent.deliver.messages import ANOMALOUS, GOOD
    from edge_agent.learn.store import DetectorStore
    from edge_agent.learn.threshold import is_anomalous
    from edge_agent.learn.upright import judged_view

    extractor = open_extractor(config, args.model)
    loaded = DetectorStore(config.state_dir, config.retrain.keep).load_current(extractor.manifest)
    if loaded is None:
        raise ConfigError(f"no fitted detector in {config.state_dir}: run 'edge-agent fit --images DIR' first")
    roi = Roi.parse(config.source.roi)
    mismatch = fitted_roi_mismatch(loaded.metadata.get("roi", []), config.source.roi)
    if mismatch:
        raise ConfigError(mismatch)
    threshold = loaded.metadata["threshold"]
    anomalous = 0
    for path in args.images:
        image = read_image(path)
        seen, _ = judged_view(roi.crop(image) if roi else image, loaded.metadata)
        score = float(loaded.detector.score_samples(extractor.embed([seen]))[0])
        bad = bool(is_anomalous(score, threshold))
        anomalous += bad
        print(json.dumps({"image": str(path), "score": round(score, 4), "threshold": round(threshold, 4),
                          "verdict": ANOMALOUS if bad else GOOD}))
    return 1 if anomalous and args.exit_code else 0


def cmd_evaluate(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.learn.augment import PRESETS
    from edge_agent.offline.evaluate import EvalSettings, evaluate, markdown_table

    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    extractor = open_extractor(config, args.model)
    settings = EvalSettings(
        sizes=[s if s == "max" else int(s) for s in _csv(args.sizes)], replicates=args.replicates,
        factors=[int(f) for f in _csv(args.factors)], detectors=_csv(args.detectors), policy=PRESETS[args.preset],
        seed=args.seed, fit=fit_settings(config),
    )
    summary = evaluate(args.data, extractor, args.out, args.cache, settings)
    print(markdown_table(summary, f"{args.data.name} - {extractor.manifest.model_id}"))
    print(f"written to {args.out}")
    return 0


def make_sink(config: Config) -> Sink:
    """The MQTT publisher with its durable spool, or JSON lines on stdout when [mqtt] enabled = false; with the
    line's GPIO pins ([gpio]) behind it: the outputs, then the trigger input (which the agent's run starts and
    stops with the sinks, see `edge_agent.capture.gpio_trigger`); then the PLC's Modbus server ([modbus]) and the
    operator's web page ([web])."""
    first = _main_sink(config)  # numbers the verdicts
    line = _line_io(config) + _plc(config) + web_sinks(config, first)
    return FanOut([first, *line]) if line else first


def _main_sink(config: Config) -> Sink:
    if not config.mqtt.enabled:
        from edge_agent.deliver.stdout import StdoutSink

        return StdoutSink()
    from edge_agent.deliver.homeassistant import Discovery
    from edge_agent.deliver.publisher import Publisher
    from edge_agent.deliver.spool import Spool
    from edge_agent.deliver.topics import Topics

    config.state_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(config.state_dir / "spool.sqlite3", config.spool.max_messages, config.spool.on_full)
    ha = config.homeassistant
    # Also when off: it takes back the entities an earlier start with [homeassistant] announced.
    discovery = Discovery(ha.discovery_prefix if ha.enabled else None,
                          Topics(config.mqtt.topic_prefix, config.device.id), config.device.id, config.state_dir)
    return Publisher(config.mqtt, config.device.id, spool, discovery=discovery)


def _line_io(config: Config) -> list[Sink]:
    """[gpio]'s output sink and trigger input, each opened only when one of its pins is set."""
    g, line = config.gpio, []
    if g.reject_pin >= 0 or g.ready_pin >= 0 or g.busy_pin >= 0:
        from edge_agent.deliver.gpio import GpioSink

        line.append(_open_pins(lambda: GpioSink(g.reject_pin, g.reject_pulse_ms, g.reject_delay_ms, g.ready_pin,
                                                g.busy_pin, g.active_high)))
    if g.trigger_pin >= 0:
        line.append(_open_pins(lambda: GpioTrigger(g.trigger_pin, g.trigger_edge, g.trigger_pull,
                                                   g.trigger_debounce_ms)))
    return line


def _open_pins(open_: Callable[[], Sink]) -> Sink:
    """gpiozero's failures (not installed, no pin library, a pin in use) as configuration errors: exit status 2."""
    try:
        return open_()
    except ImportError as exc:  # gpiozero missing, or its BadPinFactory: no pin library found
        raise ConfigError(f"[gpio] pins are set but cannot be opened: {exc}. On Raspberry Pi OS: sudo apt install "
                          "python3-gpiozero python3-lgpio, and a virtual environment made with "
                          "--system-site-packages") from None
    except Exception as exc:  # gpiozero's own errors (GPIOPinInUse, PinFixedPull...) name the pin
        raise ConfigError(f"[gpio] cannot open a pin: {type(exc).__name__}: {exc}") from None


def _plc(config: Config) -> list[Sink]:
    """The Modbus TCP server when [modbus] enabled = true; pymodbus missing or the port taken: configuration
    errors (exit status 2) that say what to do."""
    m = config.modbus
    if not m.enabled:
        return []
    try:
        from edge_agent.deliver.modbus import ModbusSink

        return [ModbusSink(m.bind, m.port, m.unit_id)]
    except ImportError as exc:
        raise ConfigError(f"[modbus] is enabled but pymodbus cannot be used: {exc}. Install it with "
                          "pip install 'edge-inspect[modbus]' (Debian's python3-pymodbus is too old)") from None
    except OSError as exc:
        raise ConfigError(f"[modbus] {exc}: another program (another edge-agent?) listens there, or bind is not "
                          "an address of this machine; set [modbus] port or bind") from None


def web_sinks(config: Config, first: Sink) -> list[Sink]:
    """The web page when [web] enabled = true (``first``: the sink whose connection it shows); its port taken: a
    configuration error that names it."""
    w = config.web
    if not w.enabled:
        return []
    from edge_agent.deliver.web import WebSink

    roi = Roi.parse(config.source.roi)
    try:
        return [WebSink(w.password(), w.bind, w.port, history=w.history, gallery=w.gallery, live_fps=w.live_fps,
                        session_hours=w.session_hours, box=roi.box if roi else None,
                        jpeg_quality=config.alerts.jpeg_quality,
                        tls=(w.tls_cert, w.tls_key) if w.tls_cert else None,
                        broker=first.stats if config.mqtt.enabled else None,
                        allowed_hosts=frozenset(w.allowed_hosts), metrics_token=w.metrics_token())]
    except OSError as exc:
        raise ConfigError(f"[web] {w.bind}:{w.port}: {exc.strerror or exc}: another program listens there, or bind "
                          "is not an address of this machine; set [web] port or bind") from None


def build_agent(config: Config, model: Path | None = None, sink: Sink | None = None, source=None):
    """The agent with its sinks; every sink that takes commands (the MQTT publisher, the web page) sends them to
    it, every trigger input (the pin, the Modbus coil) its triggers. The web page logs its users in with its own
    password, so its commands skip the MQTT command token (a broker's secret); the validation is the same."""
    from edge_agent.agent import Agent
    from edge_agent.commands import Commands

    sink = sink or make_sink(config)
    agent = Agent(config, open_extractor(config, model), sink, source)
    commands = Commands(agent, config.mqtt.command_token())
    for leaf in leaves(sink):
        if isinstance(leaf, CommandSource):
            leaf.on_command = Commands(agent) if _logs_in(leaf) else commands
        if isinstance(leaf, TriggerSource):  # one frame per edge on the pin, per write on the coil
            leaf.on_trigger = agent.trigger
    return agent


def _logs_in(leaf: Sink) -> bool:
    """The web page, whose users logged in. Not imported to ask: without the page, no leaf can be one."""
    web = sys.modules.get("edge_agent.deliver.web")
    return web is not None and isinstance(leaf, web.WebSink)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    import signal

    agent = build_agent(config, args.model)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    # The shift-start timer may also just signal the process: systemctl kill -s USR1 edge-agent
    signal.signal(signal.SIGUSR1, lambda *_: agent.retrain_on_signal())
    n = agent.run(max_frames=args.max_frames)
    log.info("stopped after %d inspections", n)
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    path = config.state_dir / "state.json"
    if not path.is_file():
        raise ConfigError(f"no {path}: the agent has not run with this state_dir")
    print(path.read_text().strip())
    return 0


def cmd_retrain(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.deliver.remote import send_command

    if not config.mqtt.enabled:
        raise ConfigError("edge-agent retrain asks the running agent over MQTT: enable [mqtt] "
                          "(or signal it: systemctl kill -s USR1 edge-agent)")
    payload = {"n_images": args.n_images} if args.n_images else {}
    if args.images:
        payload["folder"] = str(args.images.resolve())
    reply = send_command(config, "retrain", payload, timeout=args.timeout or config.retrain.timeout_s + 30)
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.offline.demo import run_demo

    return run_demo(args.work, args.n_train, args.n_test, args.cell_type, args.broker, args.web)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML configuration (default: built-in defaults)")
    p.add_argument("--model", type=Path, help="model folder (overrides [model] path)")
    p.add_argument("--state-dir", help="overrides [device] state_dir")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the inspection agent (the systemd service's command)")
    s.add_argument("--max-frames", type=int, help="stop after this many inspections")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("retrain", help="ask the running agent to retrain (over MQTT), wait for the result")
    s.add_argument("--images", type=Path, help="folder of good images on the device (default: next frames)")
    s.add_argument("--n-images", type=int, help="how many good frames to take (default: [retrain] n_images)")
    s.add_argument("--timeout", type=float)
    s.set_defaults(func=cmd_retrain)

    s = sub.add_parser("status", help="print the agent's last state (state.json in the state dir)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("demo", help="real inspection with no camera and no broker: elpv solar cells, shipped model")
    s.add_argument("--work", type=Path, default=Path("demo"), help="folder for the data set and state")
    s.add_argument("--n-train", type=int, default=10)
    s.add_argument("--n-test", type=int, default=40, help="good and defective cells each")
    s.add_argument("--cell-type", default="mono", choices=("mono", "poly"))
    s.add_argument("--broker", help="HOST:PORT: also publish the verdicts over MQTT")
    s.add_argument("--web", type=int, nargs="?", const=8080, metavar="PORT",
                   help="show the operator's web page on 127.0.0.1:PORT (default 8080; 0: any free port) and keep "
                        "the line running until Ctrl-C")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("fit", help="fit the detector on a folder of good images")
    s.add_argument("--images", type=Path, required=True)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("score", help="score images with the current detector (one JSON line each)")
    s.add_argument("images", type=Path, nargs="+")
    s.add_argument("--exit-code", action="store_true", help="exit 1 if any image is anomalous")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("evaluate", help="the paper's protocol on a data set in MVTec layout")
    s.add_argument("--data", type=Path, required=True, help="folder with train/good, test/good, test/<defect>")
    s.add_argument("--out", type=Path, default=Path("evaluation"))
    s.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    s.add_argument("--sizes", default="5,10,20,50,max")
    s.add_argument("--replicates", type=int, default=5)
    s.add_argument("--factors", default="0,10")
    s.add_argument("--detectors", default="mahalanobis,mahalanobis-empirical,knn,padim,patch-knn,combined")
    s.add_argument("--preset", default="object", help="augmentation preset (an MVTec category, object, texture)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_evaluate)
    return p


#: Commands that write the state folder (detectors, spool, cursor): they hold its lock while they run.
_WRITES_STATE = ("run", "fit")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        config = load_config(args.config)
        if args.state_dir:
            config.device.state_dir = args.state_dir
        if args.command in _WRITES_STATE:  # one process at a time on a state folder (fit: use retrain beside run)
            with StateLock(config.state_dir, f"edge-agent {args.command}"):
                return args.func(args, config)
        return args.func(args, config)
    except StateLocked as exc:  # not a configuration error: the service may start once the other process ends
        print(for_stderr(logging.ERROR, f"edge-agent: error: {exc}"), file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(for_stderr(logging.ERROR, f"edge-agent: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
