"""Container images the components name. Set EASEL_IMAGE_REGISTRY / EASEL_IMAGE_TAG before
compiling to point the compiled YAML at your registry."""
import os
import re

REGISTRY = os.environ.get("EASEL_IMAGE_REGISTRY", "easel")
TAG = os.environ.get("EASEL_IMAGE_TAG", "0.1.0")
# an unset shell variable (EASEL_IMAGE_TAG=$TAG) would otherwise compile `easel-cpu:` into every step
if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", TAG):
    raise ValueError(f"EASEL_IMAGE_TAG={TAG!r} is not an image tag (letters, digits, _ . -; at most 128)")
if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*", REGISTRY):
    raise ValueError(f"EASEL_IMAGE_REGISTRY={REGISTRY!r} is not a registry path such as "
                     "registry.example.com:5000/team")
CPU_IMAGE = f"{REGISTRY}/easel-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/easel-cuda:{TAG}"
