"""The local cluster rig: real etcd, kube-apiserver, kube-controller-manager, Kafka,
RabbitMQ and a pod runner standing in for the kubelet, all on this machine.

See ``tests/rig/README.md`` for what runs where and how each piece is obtained.
"""
