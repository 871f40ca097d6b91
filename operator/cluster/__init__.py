"""The local Kubernetes cluster with simulated GPU nodes (issue 3).

Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and KWOK from published Go
modules into a cache outside the repo (`build`), starts them on loopback ports (`controlplane`), and
fills the cluster with DGX-like KWOK nodes labelled with a topology (`nodes`). The CLI group is
`commands.app` (`leitstand cluster ...`); the end-to-end tests drive it through that CLI. Nothing here
is imported by the scheduler core.
"""
