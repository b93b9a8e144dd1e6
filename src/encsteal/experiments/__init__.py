"""Running experiments: one config end to end, and its report."""
