"""Prometheus metrics: what the server counts (:mod:`pillarbox.metrics.registry`).

A low-level package that every layer may import; the gauges read at each scrape and the
``/metrics`` listener are :mod:`pillarbox.exporter`, which sits above the components it
reads.
"""
