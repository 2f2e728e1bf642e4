"""Prometheus metrics: what the server counts, and the gauges read at each scrape."""
