"""One valid record of every schema (and variants with optional parts), for codec tests."""

from __future__ import annotations

from dispatcher.codecs import models as m

PROFILE = m.AgentProfile(
    tools=["python", "sql"], credentials=["github"], model_types=["llm-large"], capacity=4,
    cpu_millicores=2000, memory_mb=4096, personality=[0.25, -0.5, 1.0], risk_budget=10.0,
    abstention_threshold=0.3, clearance=m.Sensitivity.CONFIDENTIAL, regions=["eu", "us"],
    zone="eu-west-1a", speed=1.5,
)  # fmt: skip
LOAD = m.LoadSpec(
    source=m.LoadSource.WEBHOOK, priority=m.Priority.HIGH, required_capabilities=["python"],
    intent=[0.1, 0.2, 0.3], sensitivity=m.Sensitivity.INTERNAL, region="eu",
    created_at_ms=1_700_000_000_000, deadline_ms=1_700_000_060_000,
    estimated_duration_ms=30_000, risk_score=0.5, session_id="sess-9", zone="eu-west-1a",
)  # fmt: skip
POLICY_DOC = m.PolicyDocument(
    matching_mode=m.MatchingMode.BATCHED, batch_window_ms=50,
    weights={"embedding": 1.0, "balance": 0.5}, constraints={"risk": True},
    tenant_weights={"acme": 2.0, "globex": 1.0}, tenant_quotas={"acme": 100},
    tenant_deny={"globex": ["agent-7"]}, timeouts_ms={"ack": 5000, "heartbeat": 15000},
    retry=m.RetryPolicy(max_attempts=3, backoff_base_ms=100, backoff_max_ms=10_000),
    backpressure=m.Backpressure(max_pending=10_000, high_watermark=8_000, low_watermark=6_000),
    fair_share_reserve=0.25, tenant_first=False, deadline_margin=0.5, drain_limit=64,
    batch_max_loads=128, batch_candidates=8,
)  # fmt: skip

SAMPLES: dict[str, list[m.Record]] = {
    "AgentEvent": [
        m.AgentEvent(
            event_id="e1",
            kind=m.AgentEventKind.REGISTERED,
            agent_id="agent-1",
            pool="pool-a",
            seq=1,
            event_time_ms=1_700_000_000_000,
            profile=PROFILE,
        ),
        m.AgentEvent(
            event_id="e2",
            kind=m.AgentEventKind.HEARTBEAT,
            agent_id="agent-1",
            pool="pool-a",
            seq=2,
            event_time_ms=1_700_000_001_000,
        ),
    ],
    "LoadEvent": [
        m.LoadEvent(
            idempotency_key="k1",
            kind=m.LoadEventKind.ARRIVAL,
            load_id="load-1",
            pool="pool-a",
            tenant="acme",
            event_time_ms=1_700_000_000_000,
            load=LOAD,
        ),
        m.LoadEvent(
            idempotency_key="k2",
            kind=m.LoadEventKind.CANCEL,
            load_id="load-1",
            pool="pool-a",
            tenant="acme",
            event_time_ms=1_700_000_000_500,
        ),
        m.LoadEvent(
            idempotency_key="k3",
            kind=m.LoadEventKind.ARRIVAL,
            load_id="load-2",
            pool="pool-a",
            tenant="acme",
            event_time_ms=1_700_000_000_000,
            load=LOAD.model_copy(
                update={"deadline_ms": None, "session_id": None, "zone": None, "intent": []}
            ),
        ),
    ],
    "TaskResult": [
        m.TaskResult(
            event_id="r1",
            decision_id="d1",
            load_id="load-1",
            agent_id="agent-1",
            pool="pool-a",
            outcome=m.TaskOutcome.FAILED,
            retryable=True,
            reason_code="TIMEOUT",
            event_time_ms=1_700_000_002_000,
        ),
    ],
    "Tick": [m.Tick(pool="pool-a", event_time_ms=1_700_000_003_000)],
    "PolicyUpdate": [
        m.PolicyUpdate(
            policy_id="default",
            version=2,
            author="ops@example",
            effective_from_ms=1_700_000_000_000,
            document=POLICY_DOC,
            content_hash="ab" * 32,
            signature=b"\x01\x02",
            signature_key_id="k-1",
        ),
    ],
    "Assignment": [
        m.Assignment(
            decision_id="d1",
            load_id="load-1",
            agent_id="agent-1",
            pool="pool-a",
            tenant="acme",
            attempt=1,
            policy_version=2,
            priority=m.Priority.HIGH,
            event_time_ms=1_700_000_000_100,
            deadline_ms=1_700_000_060_000,
            ack_by_ms=1_700_000_005_100,
        ),
    ],
    "DecisionRecord": [
        m.DecisionRecord(
            decision_id="d1",
            pool="pool-a",
            load_id="load-1",
            attempt=1,
            outcome=m.DecisionOutcome.ASSIGNED,
            reason_code="BEST_SCORE",
            agent_id="agent-1",
            policy_version=2,
            event_time_ms=1_700_000_000_100,
            input=m.InputPosition(topic="load-arrival", partition=0, offset=41),
            score=0.875,
            score_parts={"embedding": 0.5, "balance": 0.375},
            candidates=12,
            excluded={"capability": 30, "capacity": 7},
            runner_up="agent-2",
            margin=0.125,
        ),
    ],
    "DeadLetter": [
        m.DeadLetter(
            source_topic="load-arrival",
            source_partition=1,
            source_offset=7,
            source_timestamp_ms=1_700_000_000_000,
            source_key=b"pool-a",
            reason=m.DeadLetterReason.MALFORMED,
            error="EOFError",
            payload=b"\x00junk",
            payload_sha256="cd" * 32,
            payload_size=5,
            failed_at_ms=1_700_000_000_001,
        ),
    ],
}
