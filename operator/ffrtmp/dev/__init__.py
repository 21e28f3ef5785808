"""A local Kubernetes for tests and the demo: etcd, kube-apiserver, controller-manager,
scheduler and KWOK simulated nodes, all built from their Go modules by hack/tools.sh."""
