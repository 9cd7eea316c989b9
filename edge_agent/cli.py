"""``edge-agent``: run the inspection agent, fit, score, retrain, check status and evaluate on a device."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge_agent.config import Config, ConfigError, fit_settings, load_config

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
    from edge_agent.features import FeatureExtractor

    return FeatureExtractor(_model_dir(config, model), config.model.delegate, config.model.threads,
                            config.model.edgetpu_device or None)


def cmd_fit(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.fitting import fit_images
    from edge_agent.images import read_folder
    from edge_agent.store import DetectorStore

    extractor = open_extractor(config, args.model)
    _, images = read_folder(args.images, min_images=2)
    settings = fit_settings(config)
    result = fit_images(lambda ims: extractor.embed(ims, progress="fit"), images, settings)
    path = DetectorStore(config.state_dir, config.retrain.keep).save(result, settings, extractor.manifest)
    print(json.dumps({"saved": str(path), "model_id": extractor.manifest.model_id, "n_train": result.n_train,
                      "threshold": result.threshold, "timings_s": result.timings}))
    return 0


def cmd_score(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.images import read_image
    from edge_agent.store import DetectorStore

    extractor = open_extractor(config, args.model)
    loaded = DetectorStore(config.state_dir, config.retrain.keep).load_current(extractor.manifest)
    if loaded is None:
        raise ConfigError(f"no fitted detector in {config.state_dir}: run 'edge-agent fit --images DIR' first")
    threshold = loaded.metadata["threshold"]
    anomalous = 0
    for path in args.images:
        score = float(loaded.detector.score_samples(extractor.embed([read_image(path)]))[0])
        anomalous += score > threshold
        print(json.dumps({"image": str(path), "score": round(score, 4), "threshold": round(threshold, 4),
                          "verdict": "anomalous" if score > threshold else "good"}))
    return 1 if anomalous and args.exit_code else 0


def cmd_evaluate(args: argparse.Namespace, config: Config) -> int:
    from edge_agent.augment import PRESETS
    from edge_agent.evaluate import EvalSettings, evaluate, markdown_table

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML configuration (default: built-in defaults)")
    p.add_argument("--model", type=Path, help="model folder (overrides [model] path)")
    p.add_argument("--state-dir", help="overrides [device] state_dir")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

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
    s.add_argument("--detectors", default="mahalanobis,mahalanobis-empirical,knn,padim")
    s.add_argument("--preset", default="object", help="augmentation preset (an MVTec category, object, texture)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.state_dir:
            config.device.state_dir = args.state_dir
        return args.func(args, config)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
