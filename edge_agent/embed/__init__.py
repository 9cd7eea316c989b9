"""Frame -> features: the model's manifest (the converter's contract), the runtime back-ends that run it, and the
extractor that turns images into one array per level."""
