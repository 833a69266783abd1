"""Tensor and pipeline parallelism: one process per rank, `torch.distributed` between them.

groups.py (who is who: ranks, stages, tensor groups, from the pod environment), loading.py (each rank reads only
its shard), tensor.py (head/vocab sharding, all-reduce), pipeline.py (stages and micro-batches), channel.py (the
leader's step plans), watchdog.py (heartbeats: one rank gone, all exit), runner.py (the leader's model runner),
worker.py (every other rank's loop), launch.py (start this pod's ranks; the `serve` entry point).
"""
