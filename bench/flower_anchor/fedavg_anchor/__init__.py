"""Flower's FedAvg on dense lenet-300-100: the throughput anchor of bench/scale.py."""
