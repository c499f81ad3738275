"""TFX components of segbalance: thin TFX wrappers (``*_gen.py``, ``seg_*.py``, ...) around
pure Beam / NumPy cores (``class_stats_beam.py``, ``drift_metrics.py``, ...).

Import the component from its module, or from the ``segbalance`` root package
(``segbalance.ClassStatsGen``, ``segbalance.ClassStats``): this package imports nothing on
its own, so its light modules do not cost a TFX import.
"""
