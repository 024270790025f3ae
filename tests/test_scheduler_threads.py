"""Many threads submit while one loop schedules: nothing lost, nothing scheduled twice."""

import random
import threading
import time

from llmds_torch.kv import BlockManager
from llmds_torch.sched import AdmissionConfig, AdmissionController, RateLimits, Request, RequestRefused
from llmds_torch.sched import Scheduler, SchedulerConfig, StepResult

NUM_THREADS = 8
PER_THREAD = 40


def test_concurrent_submission_loses_nothing_and_schedules_nothing_twice():
    manager = BlockManager(num_pages=48, page_size=4)
    config = SchedulerConfig(policy="srpt", max_batch_size=8, max_batch_tokens=32)
    # A loose queue cap makes some submissions race against completions for admission.
    admission = AdmissionController(AdmissionConfig(RateLimits(max_queued_requests=150)))
    scheduler = Scheduler(manager, config, admission=admission)
    clock_lock = threading.Lock()
    clock = [0.0]

    def tick():
        with clock_lock:
            clock[0] += 1e-3
            return clock[0]

    scheduler.clock = tick
    accepted: list[list[int]] = [[] for _ in range(NUM_THREADS)]
    refused = [0] * NUM_THREADS
    go = threading.Barrier(NUM_THREADS + 1)

    def submitter(index):
        rng = random.Random(index)
        go.wait()
        for _ in range(PER_THREAD):
            request = Request([rng.randrange(1, 5000) for _ in range(rng.randrange(1, 30))], rng.randrange(1, 8))
            try:
                accepted[index].append(scheduler.submit(request))  # stamped by the shared clock
            except RequestRefused:
                refused[index] += 1
            if rng.random() < 0.3:
                time.sleep(0)

    threads = [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(NUM_THREADS)]
    for t in threads:
        t.start()
    go.wait()
    finished: list[int] = []
    scheduled_after_finish = []
    deadline = time.monotonic() + 60  # bounded run time
    rng = random.Random(99)
    while time.monotonic() < deadline:
        if not scheduler.has_work() and not any(t.is_alive() for t in threads):
            break
        batch = scheduler.get_batch(tick())
        ids = batch.request_ids
        assert len(ids) == len(set(ids)), "a request twice in one batch"
        scheduled_after_finish += [i for i in ids if i in set(finished)]
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        if batch:
            finished += scheduler.complete_batch([StepResult(i.request_id, rng.randrange(1, 5000))
                                                  for i in batch if i.samples], tick())
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
    all_accepted = [rid for ids in accepted for rid in ids]
    assert len(all_accepted) == len(set(all_accepted)), "two submissions got the same id"
    assert len(all_accepted) + sum(refused) == NUM_THREADS * PER_THREAD
    assert sorted(finished) == sorted(all_accepted), "a request was lost or finished twice"
    assert not scheduled_after_finish
    assert admission.queued_requests == 0 and manager.stats()["pages_used"] == 0


def test_threads_stamping_their_own_clock_reads_are_never_refused_for_time():
    """Each thread reads the clock before the submit lock, so stamps reach admission slightly out
    of order; admission must take that skew, not refuse it."""
    manager = BlockManager(num_pages=64, page_size=4)
    admission = AdmissionController(AdmissionConfig(RateLimits(requests_per_second=1e9, tokens_per_second=1e12)))
    scheduler = Scheduler(manager, SchedulerConfig(), admission=admission)
    errors: list[BaseException] = []
    go = threading.Barrier(NUM_THREADS)

    def submitter(index):
        rng = random.Random(index)
        go.wait()
        for _ in range(PER_THREAD * 5):
            stamp = time.monotonic()
            if rng.random() < 0.5:
                time.sleep(0)  # another thread may stamp and submit in between
            try:
                scheduler.submit(Request([rng.randrange(1, 5000)], 1), now=stamp)
            except Exception as exc:  # noqa: BLE001 - any refusal is the failure under test
                errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(NUM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, f"{len(errors)} refusals, first: {errors[0]!r}"
    assert scheduler.num_waiting == NUM_THREADS * PER_THREAD * 5
    assert admission.queued_requests == NUM_THREADS * PER_THREAD * 5
    assert scheduler.metrics.refused == {}
