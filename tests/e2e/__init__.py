"""End-to-end tests against the local cluster (`leitstand cluster up`)."""
