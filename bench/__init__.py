"""The benchmark harness: a lean upstream, our proxy and its peers, one load generator."""
