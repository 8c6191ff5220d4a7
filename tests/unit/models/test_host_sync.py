"""No host syncs in the training hot paths (models.on_host): on a device whose values cannot be
read cheaply, forward_loss and encode check shapes only. The "meta" device stands in for an
accelerator: reading a meta tensor's value raises, so any value check left in the path fails
these tests, while the same checks still reject bad values on the CPU."""
import pytest
import torch

from model_code.models import on_host
from model_code.models.dvae import DVAE
from model_code.models.transformer import DalleTransformer
from tests.unit.models.test_dvae import CFG as DVAE_CFG
from tests.unit.models.test_transformer import CFG as TRANSFORMER_CFG, batch


def test_on_host_is_the_cpu_only():
    assert on_host(torch.zeros(1))
    assert not on_host(torch.zeros(1, device="meta"))


def test_transformer_loss_reads_no_values_off_the_host():
    torch.manual_seed(0)
    with torch.device("meta"):
        m = DalleTransformer.from_config(TRANSFORMER_CFG)
    ids, mask, codes = (t.to("meta") for t in batch())
    # Easel's half of forward_loss (the GPT-2 forward itself reads one value: transformers'
    # masking looks for packed sequences unless traced, i.e. unless train.compile is on)
    text = m.text_tokens(ids, mask)                 # would raise on any int()/bool() of a value
    image = m._image_tokens(codes, 4)
    assert text.device.type == image.device.type == "meta" and text.shape == (4, 8)
    # the same model on the CPU still names a bad value
    cpu = DalleTransformer.from_config(TRANSFORMER_CFG)
    ids, mask, codes = batch()
    with pytest.raises(ValueError, match="image_codes must lie in"):
        cpu.forward_loss(ids, mask, codes + 100)
    with pytest.raises(ValueError, match="text_ids must lie in"):
        cpu.forward_loss(ids + 1000, mask, codes)


def test_dvae_checks_pixel_values_on_the_host_only():
    torch.manual_seed(0)
    with torch.device("meta"):
        m = DVAE(DVAE_CFG)
    m._check_images(torch.empty(2, 3, 32, 32, device="meta"))   # shapes only: no value read
    with pytest.raises(ValueError, match="must be"):
        m._check_images(torch.empty(2, 3, 30, 32, device="meta"))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        DVAE(DVAE_CFG)._check_images(torch.full((2, 3, 32, 32), 3.0))
