"""Every metric and label name the rules, dashboards and report read, in one place.

The runtime's series carry no Kubernetes labels; the scrape config (`scrape.py`) adds them as target labels from
the pod's metadata. Deployments with `engine: vllm` export the same quantities under vLLM's names, so every query
is written once per engine and the results are joined with `or` (a deployment runs one engine, never both).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

# The runtime's bucket edges (seconds) follow vLLM's, extended downwards where a small model on a CPU is fast.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# target labels the scrape config sets, and the pod labels they come from
NAMESPACE = "namespace"
POD = "pod"
DEPLOYMENT = "deployment"
TIER = "tier"
POD_LABEL_DEPLOYMENT = "infleet.dev/deployment"
POD_LABEL_TIER = "infleet.dev/tier"
# per-deployment series are aggregated to these labels
BY = (NAMESPACE, DEPLOYMENT)

# gauges the operator exports, one series per InferenceDeployment (labels namespace, deployment)
DEPLOYMENT_REPLICAS = "infleet_deployment_replicas"
DEPLOYMENT_DESIRED_REPLICAS = "infleet_deployment_desired_replicas"
DEPLOYMENT_TIER_INFO = "infleet_deployment_tier_info"  # value 1, label tier=<current tier>
DEPLOYMENT_DESIRED_TIER_INFO = "infleet_deployment_desired_tier_info"  # value 1, label tier=<the autoscaler's choice>
DEPLOYMENT_COST = "infleet_deployment_cost_per_million_tokens"


@dataclass(frozen=True)
class Histogram:
    """A latency histogram and the bucket edges (seconds) its engine exports."""

    name: str
    buckets: tuple[float, ...]

    @property
    def bucket(self) -> str:
        return f"{self.name}_bucket"

    @property
    def count(self) -> str:
        return f"{self.name}_count"


@dataclass(frozen=True)
class EngineMetrics:
    """The series one engine exports, under that engine's names."""

    engine: str
    ttft: Histogram
    tpot: Histogram
    e2e: Histogram
    running: str
    waiting: str
    kv_cache_usage: str
    prompt_tokens: str
    generation_tokens: str
    prefix_queries: str
    prefix_hits: str


INFLEET = EngineMetrics(
    engine="infleet",
    ttft=Histogram("infleet_time_to_first_token_seconds", TTFT_BUCKETS),
    tpot=Histogram("infleet_inter_token_latency_seconds", ITL_BUCKETS),
    e2e=Histogram("infleet_e2e_request_latency_seconds", REQUEST_BUCKETS),
    running="infleet_num_requests_running",
    waiting="infleet_num_requests_waiting",
    kv_cache_usage="infleet_kv_cache_usage_perc",
    prompt_tokens="infleet_prompt_tokens_total",
    generation_tokens="infleet_generation_tokens_total",
    prefix_queries="infleet_prefix_cache_queries_total",
    prefix_hits="infleet_prefix_cache_hits_total",
)

# speculative decoding (vLLM's spec_decode series): a draft is one step's proposal for one request; emitted tokens are
# what speculating decodes appended (kept drafts plus one each). Over a window, acceptance rate =
# rate(accepted) / rate(draft tokens) and mean accepted length = rate(emitted) / rate(drafts); the two gauges hold
# the same ratios since the runtime started.
SPEC_DRAFTS = "infleet_spec_decode_num_drafts_total"
SPEC_DRAFT_TOKENS = "infleet_spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED_TOKENS = "infleet_spec_decode_num_accepted_tokens_total"
SPEC_EMITTED_TOKENS = "infleet_spec_decode_num_emitted_tokens_total"
SPEC_ACCEPTANCE_RATE = "infleet_spec_decode_draft_acceptance_rate"
SPEC_MEAN_ACCEPTED_LENGTH = "infleet_spec_decode_mean_accepted_length"

# vLLM v1's names and bucket edges (vllm/v1/metrics/loggers.py)
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
VLLM_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
VLLM_REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
VLLM = EngineMetrics(
    engine="vllm",
    ttft=Histogram("vllm:time_to_first_token_seconds", VLLM_TTFT_BUCKETS),
    tpot=Histogram("vllm:inter_token_latency_seconds", VLLM_ITL_BUCKETS),
    e2e=Histogram("vllm:e2e_request_latency_seconds", VLLM_REQUEST_BUCKETS),
    running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting",
    kv_cache_usage="vllm:kv_cache_usage_perc",
    prompt_tokens="vllm:prompt_tokens_total",
    generation_tokens="vllm:generation_tokens_total",
    prefix_queries="vllm:prefix_cache_queries_total",
    prefix_hits="vllm:prefix_cache_hits_total",
)

ENGINES: tuple[EngineMetrics, ...] = (INFLEET, VLLM)


def le(edge: float) -> str:
    """A bucket edge as Python and Go clients write it in the `le` label ("2.0", "0.1")."""
    return floatToGoString(edge)


def by() -> str:
    return ", ".join(BY)


# requests whose output was shaped (runtime; labels model_name, tier, kind = json_object | json_schema | tools)
STRUCTURED_OUTPUT_REQUESTS = "infleet_structured_output_requests_total"
STRUCTURED_OUTPUT_KINDS = ("json_object", "json_schema", "tools")

# requests judged against their own deployment's thresholds by the gateway (labels namespace, deployment,
# sli = ttft | tpot | e2e, result = good | bad): the exact SLI, for any engine behind the gateway
SLO_REQUESTS = "infleet_gateway_slo_requests_total"
# requests received for a deployment (labels namespace, deployment), counted on arrival, before any replica is chosen
# or any is ready: the demand the autoscaler sizes for, which tokens served stop showing once replicas fall behind
RECEIVED_REQUESTS = "infleet_gateway_received_requests_total"
SLIS = ("ttft", "tpot", "e2e")
# gauges the operator exports from each InferenceDeployment's spec (labels namespace, deployment; sli for thresholds)
DEPLOYMENT_SLO_THRESHOLD = "infleet_deployment_slo_threshold_seconds"
DEPLOYMENT_SLO_OBJECTIVE = "infleet_deployment_slo_objective_ratio"
DEPLOYMENT_SLO_BUDGET_PERIOD = "infleet_deployment_slo_budget_period_seconds"
DEPLOYMENT_COST_LIMIT = "infleet_deployment_max_cost_per_million_tokens"

# requests by the optional API features they use (label `feature`), counted by the runtime's OpenAI server
REQUEST_FEATURES = "infleet_request_features_total"
FEATURE_N = "n"  # n > 1 choices
FEATURE_LOGPROBS = "logprobs"  # logprobs (completions) or logprobs/top_logprobs (chat)
FEATURE_ECHO = "echo"  # completions' echo
FEATURE_PENALTIES = "penalties"  # presence, frequency or repetition penalty
FEATURE_LOGIT_BIAS = "logit_bias"
FEATURE_SEED = "seed"
FEATURE_STREAM_USAGE = "stream_usage"  # stream_options.include_usage
FEATURES = (
    FEATURE_N, FEATURE_LOGPROBS, FEATURE_ECHO, FEATURE_PENALTIES, FEATURE_LOGIT_BIAS, FEATURE_SEED,
    FEATURE_STREAM_USAGE,
)  # fmt: skip

# the gateway's response cache (labels namespace, deployment, result = hit | miss); only deterministic requests to a
# deployment whose spec.gateway.responseCache is on are looked up
RESPONSE_CACHE_LOOKUPS = "infleet_gateway_response_cache_lookups_total"

# cascades at the gateway (docs/cost-controls.md#cascades): labels namespace, cascade; `model` the served name that
# answered (requests, cost: every model asked for it, priced at its status.costPerMillionTokens) or that was
# escalated from (escalations, with `reason`: mean_logprob, first_token_logprob, regex, json_schema, no_logprobs,
# error)
CASCADE = "cascade"
CASCADE_REQUESTS = "infleet_gateway_cascade_requests_total"
CASCADE_ESCALATIONS = "infleet_gateway_cascade_escalations_total"
CASCADE_COST = "infleet_gateway_cascade_cost_dollars_total"

# per-team metering at the gateway (docs/cost-controls.md): label `team` ("" for traffic no team claims), `model` the
# served name; tokens also carry kind = input | output
TEAM = "team"
MODEL = "model"
TEAM_TOKENS = "infleet_gateway_team_tokens_total"
TEAM_SPEND = "infleet_gateway_team_spend_dollars_total"
TEAM_UNPRICED_TOKENS = "infleet_gateway_team_unpriced_tokens_total"
TEAM_MONTH_SPEND = "infleet_gateway_team_month_spend_dollars"  # gauge: month-to-date (UTC), per gateway replica
TEAM_BUDGET = "infleet_gateway_team_monthly_budget_dollars"  # gauge: the teams file's monthlyBudgetDollars
TEAM_REFUSED = "infleet_gateway_team_refused_requests_total"  # label reason
GATEWAY_PEERS = "infleet_gateway_peers"  # gauge: other gateway replicas read at the last token sync
BUDGET_BURN_THRESHOLDS = (0.5, 0.8, 1.0)  # month-to-date spend / budget that alerts


def gained_since(series: str, start: float, window_seconds: int, by_labels: str) -> str:
    """What a counter gained from `start` to the evaluation time (`window_seconds` later), per replica series then
    summed by `by_labels`: its last value minus its value at `start` (nothing to subtract for a series born later).
    Exact while no counter restarts in place; the gateway's month-to-date spend and the monthly bill both use it."""
    last = f"last_over_time({series}[{window_seconds}s])"
    return f"sum by ({by_labels}) (({last} - {series} @ {start:.3f}) or {last})"


# LoRA adapters (runtime; labels model_name = the base's served name, tier, adapter = the adapter's served name):
# requests and tokens of finished requests that ran through an adapter, and their end-to-end and first-token latency
ADAPTER_LABEL = "adapter"
LORA_REQUESTS = "infleet_lora_requests_total"
LORA_PROMPT_TOKENS = "infleet_lora_prompt_tokens_total"
LORA_GENERATION_TOKENS = "infleet_lora_generation_tokens_total"
LORA_E2E = Histogram("infleet_lora_e2e_request_latency_seconds", REQUEST_BUCKETS)
LORA_TTFT = Histogram("infleet_lora_time_to_first_token_seconds", TTFT_BUCKETS)
