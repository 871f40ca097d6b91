"""`leitstand run`: the operator service that turns TrainingJob and Queue objects into bound pods.

The flow, one module each: `kubeclient` (one async HTTP session to kube-apiserver) → `informer`
(list+watch of Pods, Nodes and PriorityClasses into slim records) and the kopf `handlers` (TrainingJob,
Queue) → `cache` (the core's `ClusterState`, kept current pod by pod) → `loop` (snapshot →
`leitstand.scheduler.cycle.run_cycle` → plan) → `binder` (pods, bindings, evictions, status, Events),
all behind the `leader` Lease. Everything here decides nothing itself: decisions come from
`leitstand.scheduler`.
"""
