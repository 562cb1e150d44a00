"""CoMHE-Bench: the protocol and everything around runs (configs, data, engine, sweeps, reports)."""

__version__ = "0.1.0"
