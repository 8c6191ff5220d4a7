"""The models: one file per architecture (DESIGN.md), each a plain nn.Module with a config dict."""
import torch


def on_host(t: torch.Tensor) -> bool:
    """Whether reading a value of `t` is free. A value check (`int(x.min())`, `mask.any()`) on an
    accelerator tensor is a host sync that stalls the training step's queued kernels, so the
    models' hot paths (forward_loss, encode) check only shapes and dtypes there; the values are
    guaranteed where the data enters (the loader decodes uint8 pixels, the tokenizer emits ids
    within its vocabulary) and checked at the public inference boundary (generate, decode).
    On the CPU the same check is a cheap reduction and stays, so a bad value from a caller gets
    a clear error there."""
    return t.device.type == "cpu"
