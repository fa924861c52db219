"""On-success and on-failure destinations: URIs, records, targets and the sink that delivers them."""
