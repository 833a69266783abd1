"""Rank layout: the operator's rendered group environment maps onto ranks, stages and tensor groups; shards split
heads and vocabulary as the head counts allow; batches split into micro-batches in order."""

from __future__ import annotations

from typing import Any

import pytest

from infleet.operator import api, resources
from infleet.operator.resources import Owner
from infleet.runtime.config import ModelConfig
from infleet.runtime.parallel.groups import Topology, placement_from_env
from infleet.runtime.parallel.pipeline import stage_layers
from infleet.runtime.parallel.tensor import TensorShard

OWNER = Owner("llama", "serving", "uid-1")


def rendered_group(tensor: int, pipeline: int, gpus_per_node: int) -> tuple[list[str], dict[str, Any]]:
    spec = api.InferenceDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "accelerator": {"type": "NVIDIA-L4", "gpusPerNode": gpus_per_node},
            "parallelism": {"tensor": tensor, "pipeline": pipeline},
        }
    )
    want = resources.desired(spec, OWNER, "bf16", gpus_per_node)
    sts = next(o for o in want.objects if o["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    return container["command"], env


def pod_env(env: dict[str, Any], pod: int) -> dict[str, str]:
    """What the kubelet hands pod `pod`: the downward-API rank resolved, the leader's DNS name resolvable here."""
    out = {k: v for k, v in env.items() if isinstance(v, str)}
    out["INFLEET_RANK"] = str(pod)
    out["INFLEET_LEADER_ADDR"] = "localhost"
    return out


def test_operator_env_places_tensor_ranks_in_a_pod_and_stages_across_pods() -> None:
    command, env = rendered_group(tensor=4, pipeline=3, gpus_per_node=4)
    assert command[command.index("--tensor-parallel") + 1] == "4"
    assert command[command.index("--pipeline-parallel") + 1] == "3"
    assert env["INFLEET_WORLD_SIZE"] == "3" and env["INFLEET_GPUS_PER_POD"] == "4"
    assert env["INFLEET_LEADER_PORT"] == str(resources.DIST_PORT)
    assert env["INFLEET_LEADER_ADDR"].endswith("-0.llama-group.serving.svc")
    topo = Topology(4, 3)
    for pod in range(3):
        placement = placement_from_env(topo, pod_env(env, pod))
        assert placement.ranks == list(range(pod * 4, pod * 4 + 4))
        assert {topo.stage(r) for r in placement.ranks} == {pod}  # one stage per pod
        assert placement.leader_addr == "127.0.0.1" and placement.leader_port == resources.DIST_PORT
        assert placement.is_leader_pod == (pod == 0)


def test_a_tensor_group_wider_than_a_node_spans_pods() -> None:
    _, env = rendered_group(tensor=8, pipeline=1, gpus_per_node=4)
    topo = Topology(8, 1)
    placements = [placement_from_env(topo, pod_env(env, pod)) for pod in range(2)]
    assert [p.ranks for p in placements] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert {topo.stage(r) for p in placements for r in p.ranks} == {0}


def test_bad_group_env_is_a_clear_error() -> None:
    topo = Topology(2, 2)
    with pytest.raises(ValueError, match="outside a group"):
        placement_from_env(topo, {"INFLEET_RANK": "3", "INFLEET_WORLD_SIZE": "2", "INFLEET_GPUS_PER_POD": "2"})
    with pytest.raises(ValueError, match="cannot hold"):
        placement_from_env(topo, {"INFLEET_RANK": "0", "INFLEET_WORLD_SIZE": "1", "INFLEET_GPUS_PER_POD": "2"})
    with pytest.raises(ValueError, match="cannot resolve"):
        env = {"INFLEET_RANK": "0", "INFLEET_WORLD_SIZE": "2", "INFLEET_GPUS_PER_POD": "2"}
        placement_from_env(topo, env | {"INFLEET_LEADER_ADDR": "no-such-host.invalid"})
    assert placement_from_env(topo, {}).ranks == [0, 1, 2, 3]  # no group variables: one machine runs all


def smollm2_like(**overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64,
    )  # fmt: skip
    return ModelConfig(**(fields | overrides))


def test_kv_heads_split_when_tensor_divides_them_and_replicate_when_it_is_a_multiple() -> None:
    config = smollm2_like()
    shards = [TensorShard(r, 3, config) for r in range(3)]
    assert [list(s.heads) for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [list(s.kv_heads) for s in shards] == [[0], [1], [2]]
    even = smollm2_like(num_attention_heads=8, num_key_value_heads=2, hidden_size=512)
    four = [TensorShard(r, 4, even) for r in range(4)]
    assert [list(s.kv_heads) for s in four] == [[0], [0], [1], [1]]  # replicated, each with its query heads
    group = 8 // 2
    for s in four:
        assert {h // group for h in s.heads} == set(s.kv_heads)
    assert sum(len(s.vocab) for s in four) == 49152 and four[-1].vocab.stop == 49152


def test_uneven_vocabulary_pads_the_last_shard() -> None:
    shards = [TensorShard(r, 3, smollm2_like(vocab_size=49153)) for r in range(3)]
    assert [len(s.vocab) for s in shards] == [16385, 16385, 16383]
    assert all(s.vocab_per_rank == 16385 for s in shards)


def test_head_counts_that_cannot_be_split_are_refused() -> None:
    with pytest.raises(ValueError, match="does not divide the model's 9 attention heads"):
        TensorShard.check(smollm2_like(), 2)
    with pytest.raises(ValueError, match="neither divides the 3 KV heads"):
        TensorShard.check(smollm2_like(num_attention_heads=18, num_key_value_heads=3, hidden_size=1152), 2)
    with pytest.raises(ValueError, match="exceeds the model's 30 layers"):
        stage_layers(30, 31, 0)


def test_stages_take_contiguous_layers() -> None:
    assert [stage_layers(30, 3, s) for s in range(3)] == [range(0, 10), range(10, 20), range(20, 30)]
    assert [stage_layers(5, 2, s) for s in range(2)] == [range(0, 3), range(3, 5)]


def test_micro_batches_keep_order_and_cover_the_batch() -> None:
    from infleet.runtime.engine.sampler import SamplingParams
    from infleet.runtime.engine.scheduler import ScheduledSequence
    from infleet.runtime.engine.sequence import Sequence
    from infleet.runtime.parallel.runner import split_batch

    entries = [ScheduledSequence(Sequence(str(i), [1] * 40, 40, SamplingParams()), 1) for i in range(5)]
    entries.append(ScheduledSequence(Sequence("p", [1] * 40, 40, SamplingParams()), 40))
    for parts in (1, 2, 3, 6, 9):
        groups = split_batch(entries, parts)
        assert [e for g in groups for e in g] == entries
        assert len(groups) == min(parts, len(entries)) and all(groups)
