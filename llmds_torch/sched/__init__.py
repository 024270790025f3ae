"""llmds_torch.sched: request scheduling on a paged KV cache.

:class:`IndexedHeap` (the waiting queue), :class:`AdmissionController` (rate limits and queue
caps at the door), :class:`Scheduler` (continuous batching, chunked prefill, preemption by
recompute; sequence groups for samples and beams), and a trace :func:`simulate` that replays arrivals against the real block manager.
"""

from llmds_torch.sched.admission import AdmissionConfig, AdmissionController, RateLimits
from llmds_torch.sched.batch import Batch, ScheduledSeq, StepResult
from llmds_torch.sched.cache_protocol import CacheProtocol
from llmds_torch.sched.errors import (
    InvalidPriority,
    InvalidRequest,
    InvalidStepResult,
    KeyAlreadyPresent,
    KeyNotFound,
    MalformedTrace,
    NonMonotonicTime,
    RequestRefused,
    RequestTooLarge,
    SchedulerStateError,
    TraceFileNotFound,
    UnknownRequest,
)
from llmds_torch.sched.indexed_heap import IndexedHeap
from llmds_torch.sched.metrics import RequestRecord, SchedulerMetrics, percentiles
from llmds_torch.sched.policies import POLICIES
from llmds_torch.sched.request import Request, RequestState, RequestStatus, SequenceState
from llmds_torch.sched.scheduler import Scheduler, SchedulerConfig

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
    "percentiles",
    "POLICIES",
    "Request",
    "RequestState",
    "RequestStatus",
    "SequenceState",
    "Scheduler",
    "SchedulerConfig",
    "InvalidPriority",
    "InvalidRequest",
    "InvalidStepResult",
    "KeyAlreadyPresent",
    "KeyNotFound",
    "MalformedTrace",
    "NonMonotonicTime",
    "RequestRefused",
    "RequestTooLarge",
    "SchedulerStateError",
    "TraceFileNotFound",
    "UnknownRequest",
]
