"""The Prometheus exporter: gauges probed at scrape time (queue, certificates, store,
bans) and the ``listen.metrics`` listener that serves ``/metrics``. Above the components
it reads; the counters themselves are :mod:`pillarbox.metrics`."""
