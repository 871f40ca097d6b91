"""The read side of `leitstand run`: the HTTP API (`/v1/*`, OpenAPI at `/docs`), its authentication and
authorization (TokenReview, SubjectAccessReview), and the Prometheus metrics (`/metrics`).

Served by `leitstand run` itself on its main event loop, reading the scheduler's latest state and
plan (`leitstand.operator.service.loop.Scheduler`) — never a second copy of the state. Nothing here
decides or writes to the cluster except the review requests that authenticate callers.
"""
