"""ercpipe: raw emotion-in-conversation datasets to trained SDT / SDT-VEGA models."""

__version__ = "0.1.0"
