"""Container images the components name. Set EASEL_IMAGE_REGISTRY / EASEL_IMAGE_TAG before
compiling to point the compiled YAML at your registry."""
import os

REGISTRY = os.environ.get("EASEL_IMAGE_REGISTRY", "easel")
TAG = os.environ.get("EASEL_IMAGE_TAG", "0.1.0")
CPU_IMAGE = f"{REGISTRY}/easel-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/easel-cuda:{TAG}"
