"""llmds_torch.sched: request scheduling on a paged KV cache.

:class:`IndexedHeap` (the waiting queue), :class:`AdmissionController` (rate limits and queue
caps at the door), :class:`Scheduler` (continuous batching, chunked prefill, preemption by
recompute; sequence groups for samples and beams), and a trace :func:`simulate` that replays
arrivals (:func:`synthetic_trace`, :func:`trace_suite`, :func:`read_azure_trace`) against the real
block manager.
"""

from llmds_torch.sched.admission import AdmissionConfig, AdmissionController, RateLimits
from llmds_torch.sched.batch import Batch, ScheduledSeq, StepResult
from llmds_torch.sched.cache_protocol import CacheProtocol
from llmds_torch.sched import errors
from llmds_torch.sched.errors import *  # noqa: F401,F403  (the package exports its errors)
from llmds_torch.sched.indexed_heap import IndexedHeap
from llmds_torch.sched.metrics import RequestRecord, SchedulerMetrics
from llmds_torch.sched.policies import POLICIES
from llmds_torch.sched.request import Request, RequestState, RequestStatus, SequenceState
from llmds_torch.sched.scheduler import Scheduler, SchedulerConfig
from llmds_torch.sched.simulator import SimulationResult, StepCostModel, simulate
from llmds_torch.sched.traces import TraceRecord, read_azure_trace, synthetic_trace, trace_suite

__all__ = [
    "AdmissionConfig",
    "AdmissionController",
    "RateLimits",
    "Batch",
    "ScheduledSeq",
    "StepResult",
    "CacheProtocol",
    "IndexedHeap",
    "RequestRecord",
    "SchedulerMetrics",
    "POLICIES",
    "Request",
    "RequestState",
    "RequestStatus",
    "SequenceState",
    "Scheduler",
    "SchedulerConfig",
    "simulate",
    "SimulationResult",
    "StepCostModel",
    "TraceRecord",
    "synthetic_trace",
    "trace_suite",
    "read_azure_trace",
] + errors.__all__
