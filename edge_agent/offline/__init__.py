"""Tools that run beside the line, not on it: the paper's evaluation protocol, data set loaders, metrics and
the demo."""
