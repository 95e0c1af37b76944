"""Virt driver of the local cloud: a hypervisor that reports NVIDIA GPUs as PCI devices."""
