"""The global batch size of each step: constant, or ramped up by megatron-core's own calculator.

The size depends only on the samples consumed so far, so a run resumed inside the ramp (in any layout)
takes the same batches; the learning-rate schedule counts samples, so it follows the ramp too.
"""

from __future__ import annotations

from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator

from megatron_llm.config.schema import ScheduleConfig


class BatchSchedule:
    def __init__(self, schedule: ScheduleConfig, data_parallel_size: int) -> None:
        self.global_batch_size = schedule.global_batch_size
        self.per_pass = schedule.micro_batch_size * data_parallel_size
        ramp = schedule.batch_ramp
        self._ramp = None if ramp is None else RampupBatchsizeNumMicroBatchesCalculator(
            global_batch_size=schedule.global_batch_size, micro_batch_size=schedule.micro_batch_size,
            data_parallel_size=data_parallel_size, decrease_batch_size_if_needed=False, rank=1,
            start_global_batch_size=ramp.start, batch_size_increment=ramp.increment, ramup_samples=ramp.samples)

    def size_at(self, consumed_samples: int) -> int:
        """The global batch size of the step that starts after `consumed_samples`."""
        if self._ramp is None:
            return self.global_batch_size
        self._ramp.update(consumed_samples, consistency_check=True)
        return self._ramp.get_current_global_batch_size()

    def samples_after(self, steps: int) -> int:
        """Samples consumed by the first `steps` steps."""
        consumed = 0
        for _ in range(steps):
            consumed += self.size_at(consumed)
        return consumed

    def steps_for(self, samples: int) -> int:
        """Steps needed to consume at least `samples` samples."""
        consumed = steps = 0
        while consumed < samples:
            consumed += self.size_at(consumed)
            steps += 1
        return steps
