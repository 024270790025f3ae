"""Host arrays of one step sent to the device in one transfer, through a reused staging buffer.

A decode step needs its slot mapping, block table and sequence lengths on the device. Copied one by
one from numpy (pageable memory) that is three synchronous transfers; packed into one pinned buffer it
is one asynchronous transfer, and the buffer is reused (the next upload first waits for the previous
transfer out of it to finish). On CPU the arrays are wrapped without a copy.
"""

import numpy as np
import torch

ALIGN = 8  # bytes: every array starts at a multiple of its item size (at most 8)


class DeviceUpload:
    """Packs numpy arrays into one host buffer and copies it to ``device`` at once.

    Parameters
    ----------
    device : torch.device
    stage : bool | None
        Pack and copy through the staging buffer; default: on any device but the CPU. Forcing it on
        the CPU runs the same packing (the "transfer" is then a copy), which the tests use.
    """

    def __init__(self, device: torch.device, *, stage: bool | None = None):
        self.device = torch.device(device)
        self.stage = self.device.type != "cpu" if stage is None else stage
        self.pinned = self.device.type == "cuda"
        self._host: torch.Tensor | None = None  # uint8 [capacity], pinned on CUDA
        self._done = None  # CUDA event: the last transfer out of ``_host`` has finished

    def _buffer(self, nbytes: int) -> torch.Tensor:
        if self._host is None or self._host.numel() < nbytes:
            capacity = max(nbytes, 2 * (self._host.numel() if self._host is not None else 4096))
            self._host = torch.empty(capacity, dtype=torch.uint8, pin_memory=self.pinned)
            self._done = None
        elif self._done is not None:
            self._done.synchronize()  # the previous step's transfer still reads the buffer
        return self._host

    def __call__(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The arrays as tensors on the device, same dtypes and shapes (one transfer when staged)."""
        if not self.stage:
            return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays)
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += -(-a.nbytes // ALIGN) * ALIGN
        host = self._buffer(max(total, ALIGN))
        packed = host.numpy()
        for a, offset in zip(arrays, offsets):
            packed[offset:offset + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        sent = host[:total].to(self.device, non_blocking=self.pinned)
        if sent.untyped_storage().data_ptr() == host.untyped_storage().data_ptr():
            sent = sent.clone()  # same device: the buffer is reused, so hand out a copy
        if self.pinned:
            self._done = torch.cuda.Event()
            self._done.record()
        return tuple(sent[offset:offset + a.nbytes].view(torch.from_numpy(np.empty(0, a.dtype)).dtype).view(a.shape)
                     for a, offset in zip(arrays, offsets))
