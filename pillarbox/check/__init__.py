"""``pillarbox check``: live deliverability checks with findings and a score out of 10.

- :mod:`.runner`     runs everything concurrently and builds the :class:`.findings.Report`
- :mod:`.findings`   Finding (PASS/WARN/FAIL, what, fix, weight), scoring, text and JSON
- :mod:`.context`    what checks share: settings, resolver, our addresses, expected records
- :mod:`.dnschecks`  reverse DNS, MX, SPF, DKIM, DMARC, TLS-RPT, client SRV, CAA
- :mod:`.spf`        SPF parser, whole-tree lookup counter, check_host evaluator
- :mod:`.mtasts`     MTA-STS record, policy fetch over verified HTTPS, agreement
- :mod:`.server`     listener probes: reachability, TLS certificate, EHLO name, STARTTLS,
                     open-relay attempt
- :mod:`.dnsbl`      public blocklists, with refused-query codes told apart from listings
- :mod:`.wire`       bounded, timed client-side protocol helpers

See docs/dns-and-check.md.
"""
