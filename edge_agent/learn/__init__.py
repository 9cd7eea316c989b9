"""Good images -> a fitted detector and its threshold: augmentation, synthetic damage, the detectors, the
few-shot fit, the label-free threshold and the store that keeps fitted detectors for rollback."""
