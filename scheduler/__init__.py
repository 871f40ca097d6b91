"""leitstand.scheduler: the pure decision core (no Kubernetes, no HTTP, no clock of its own).

model → state (arrays) → policies | placement (kernels) → fairshare → cycle. Snapshot in, plan out.
"""
